import DMCore
import Synchronization
import XCTest
@testable import XenAccel

final class XenMapCacheTests: XCTestCase {
    func testReadWriteThroughBucketsSeesGuestRAM() throws {
        let rig = try Rig()
        rig.sim.guestWrite([1, 2, 3, 4], at: 0x12_3450)
        XCTAssertEqual(try rig.mapCache.read(UInt32.self, at: 0x12_3450), 0x0403_0201)
        try rig.mapCache.write(UInt16(0xBEEF), at: 0x20_0000)
        XCTAssertEqual(rig.sim.guestRead(at: 0x20_0000, count: 2), [0xEF, 0xBE])
        XCTAssertEqual(rig.mapCache.statistics.mapped, 2)
        // A second access to the same bucket maps nothing new.
        _ = try rig.mapCache.read(UInt8.self, at: 0x12_0000)
        XCTAssertEqual(rig.sim.mapCalls, 2)
    }

    func testAccessSpanningTwoBuckets() throws {
        let rig = try Rig()
        let bytes = (0..<32).map { UInt8($0) }
        try rig.mapCache.write(at: 0x10_0000 - 16, bytes: bytes)
        XCTAssertEqual(rig.sim.guestRead(at: 0x10_0000 - 16, count: 32), bytes)
        XCTAssertEqual(try rig.mapCache.readBytes(at: 0x10_0000 - 16, count: 32), bytes)
        XCTAssertEqual(rig.sim.liveMappings, rig.mapCache.statistics.mapped, "temporary mappings are released")
    }

    func testFailuresAreErrorsToTheDevice() throws {
        let rig = try Rig(ramSize: 2 << 20)
        // Beyond RAM, past the address limit, overflowing, too large.
        XCTAssertThrowsError(try rig.mapCache.read(UInt32.self, at: 0x4000_0000))
        XCTAssertThrowsError(try rig.mapCache.read(UInt32.self, at: 1 << 60))
        XCTAssertThrowsError(try rig.mapCache.read(UInt64.self, at: UInt64.max - 3))
        XCTAssertThrowsError(try rig.mapCache.readBytes(at: 0, count: 128 << 20))
        // Partially outside RAM: the bucket at 1 MiB is fine, the range running past 2 MiB not.
        XCTAssertThrowsError(try rig.mapCache.readBytes(at: (2 << 20) - 8, count: 16))
        // The hypervisor refuses to map at all.
        rig.sim.setFailMaps(true)
        XCTAssertThrowsError(try rig.mapCache.read(UInt8.self, at: 0x1000)) { error in
            XCTAssertEqual((error as? GuestMemoryError)?.reason, .unmapped)
        }
        rig.sim.setFailMaps(false)
        XCTAssertEqual(try rig.mapCache.read(UInt8.self, at: 0x1000), 0)
        // A hole (a frame Xen refuses inside a bucket) fails only accesses that touch it.
        rig.sim.punchHole(gfn: 0x105)
        XCTAssertThrowsError(try rig.mapCache.read(UInt8.self, at: 0x10_5008))
        XCTAssertNoThrow(try rig.mapCache.read(UInt8.self, at: 0x10_4FFF))
        XCTAssertThrowsError(try rig.mapCache.readBytes(at: 0x10_4FF0, count: 32))
    }

    func testLRUBoundEvictsTheOldestIdleBucket() throws {
        let rig = try Rig(ramSize: 8 << 20, maxBuckets: 2)
        _ = try rig.mapCache.read(UInt8.self, at: 0x00_0000)
        _ = try rig.mapCache.read(UInt8.self, at: 0x10_0000)
        _ = try rig.mapCache.read(UInt8.self, at: 0x00_0000)   // bucket 0 is now the newest
        _ = try rig.mapCache.read(UInt8.self, at: 0x20_0000)   // evicts bucket 1
        XCTAssertEqual(rig.mapCache.statistics.mapped, 2)
        XCTAssertEqual(rig.sim.liveMappings, 2)
        let maps = rig.sim.mapCalls
        _ = try rig.mapCache.read(UInt8.self, at: 0x00_0000)   // still cached
        XCTAssertEqual(rig.sim.mapCalls, maps)
        _ = try rig.mapCache.read(UInt8.self, at: 0x10_0000)   // was evicted: mapped again
        XCTAssertEqual(rig.sim.mapCalls, maps + 1)
    }

    func testBucketsInUseAreNeverEvicted() throws {
        let rig = try Rig(ramSize: 8 << 20, maxBuckets: 1)
        try rig.mapCache.withBytes(at: 0, length: 4, forWriting: false) { _ in
            // The only bucket is locked: another bucket cannot be mapped now.
            XCTAssertNil(try? rig.mapCache.read(UInt8.self, at: 0x30_0000))
            // The same bucket can be used re-entrantly.
            XCTAssertNotNil(try? rig.mapCache.read(UInt8.self, at: 0x100))
        }
        XCTAssertNoThrow(try rig.mapCache.read(UInt8.self, at: 0x30_0000))
    }

    func testInvalidateUnmapsIdleBucketsAndDefersLockedOnes() throws {
        let rig = try Rig()
        _ = try rig.mapCache.read(UInt8.self, at: 0x10_0000)
        XCTAssertEqual(rig.sim.liveMappings, 1)
        rig.mapCache.invalidate()
        XCTAssertEqual(rig.sim.liveMappings, 0)

        rig.sim.guestWrite([7], at: 0x5000)
        try rig.mapCache.withBytes(at: 0x5000, length: 1, forWriting: true) { bytes in
            rig.mapCache.invalidate()
            // Still mapped and usable while the DMA runs.
            XCTAssertEqual(rig.sim.liveMappings, 1)
            XCTAssertEqual(bytes[0], 7)
            bytes[0] = 9
            // A new access maps afresh instead of reusing the invalidated bucket.
            XCTAssertEqual(try? rig.mapCache.read(UInt8.self, at: 0x5000), 9)
            XCTAssertEqual(rig.sim.liveMappings, 2)
        }
        XCTAssertEqual(rig.sim.liveMappings, 1, "the invalidated bucket is unmapped when its user returns")
        XCTAssertEqual(rig.sim.guestRead(at: 0x5000, count: 1), [9])
    }

    func testDirtyLoggingReportsWrites() throws {
        let rig = try Rig()
        try rig.mapCache.write(UInt32(1), at: 0x3000)
        XCTAssertTrue(rig.sim.dmOps.isEmpty)
        rig.mapCache.globalDirtyLogging = true
        try rig.mapCache.write(UInt32(1), at: 0x3000)
        _ = try rig.mapCache.read(UInt32.self, at: 0x3000)
        try rig.mapCache.write(at: 0x4FFE, bytes: [1, 2, 3, 4])
        XCTAssertEqual(rig.sim.dmOps, [.modifiedMemory(3, 1), .modifiedMemory(4, 2)])
        // An ioreq's rep ins through the server is reported too.
        rig.roundTrip(pio(0x1000, size: 4, read: true, data: 0x8000, count: 1, ptr: true))
        XCTAssertEqual(rig.sim.dmOps.last, .modifiedMemory(8, 1))
    }

    func testConcurrentAccessAndInvalidation() throws {
        let rig = try Rig(ramSize: 8 << 20, maxBuckets: 3)
        let cache = rig.mapCache
        let stop = Mutex(false)
        let invalidator = Thread {
            while !stop.withLock({ $0 }) { cache.invalidate() }
        }
        invalidator.start()
        for i in 0..<20_000 {
            let address = UInt64(i % 8) << 20 | UInt64(i & 0xFFF)
            try cache.write(UInt8(truncatingIfNeeded: i), at: address)
            XCTAssertEqual(try cache.read(UInt8.self, at: address), UInt8(truncatingIfNeeded: i))
        }
        stop.withLock { $0 = true }
        usleep(10_000)
        cache.invalidate()
        XCTAssertEqual(rig.sim.liveMappings, 0)
    }
}

final class XenInterruptSinkTests: XCTestCase {
    func testInterruptsBecomeDMOps() throws {
        let sim = try SimulatedXenHypervisor()
        let lines = LineSink()
        let sink = XenInterruptSink(hypervisor: sim, errors: GuestErrorLog(burst: 100) { lines.append($0) })
        sink.setGSI(4, level: true)
        sink.setGSI(4, level: false)
        sink.signalMSI(MSIMessage(address: 0xFEE0_0000, data: 0x4041))
        sink.setPCIIntxLevel(device: 3, intx: 0, level: true)
        sink.setPCILinkRoute(link: 1, routeRegister: 0x0B)
        sink.setPCILinkRoute(link: 2, routeRegister: 0x80)
        XCTAssertEqual(sim.dmOps, [.isaIRQ(4, true), .isaIRQ(4, false), .msi(0xFEE0_0000, 0x4041),
                                   .pciIntx(segment: 0, bus: 0, device: 3, intx: 0, level: true),
                                   .linkRoute(link: 1, irq: 11), .linkRoute(link: 2, irq: 0)])
        // Out of range and failing calls are logged, not sent, never fatal.
        sink.setGSI(20, level: true)
        sink.setPCIIntxLevel(device: 40, intx: 0, level: true)
        sink.setPCILinkRoute(link: 4, routeRegister: 5)
        sim.setFailDMOps(true)
        sink.setGSI(1, level: true)
        XCTAssertEqual(sim.dmOps.count, 6)
        XCTAssertEqual(lines.lines.count, 4)
    }

    func testRouterDrivesTheSink() throws {
        let sim = try SimulatedXenHypervisor()
        let router = InterruptRouter(sink: XenInterruptSink(hypervisor: sim))
        let a = router.line(gsi: 10), b = router.line(gsi: 10)
        a.raise(); b.raise(); a.lower(); b.lower()
        XCTAssertEqual(sim.dmOps, [.isaIRQ(10, true), .isaIRQ(10, false)])
    }
}

final class XenLibrariesTests: XCTestCase {
    func testLoadsOnThisHostAndOpeningNeedsAHypervisor() throws {
        let libraries: XenLibraries
        do {
            libraries = try XenLibraries.load()
        } catch {
            throw XCTSkip("Xen libraries not installed here: \(error)")
        }
        XCTAssertThrowsError(try libraries.openDeviceModel()) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("xendevicemodel_open"), text)
        }
        // And the full hypervisor seam reports the same clearly.
        XCTAssertThrowsError(try LibXenHypervisor(libraries: libraries, domid: 1, vcpus: 1)) { error in
            XCTAssertTrue("\(error)".contains("xendevicemodel_open"), "\(error)")
        }
    }

    func testMissingLibraryIsNamed() {
        XCTAssertThrowsError(try XenLibraries.load(directory: "/nonexistent/xen-libs")) { error in
            guard case let .libraryMissing(library, tried, _)? = error as? XenError else {
                return XCTFail("\(error)")
            }
            XCTAssertEqual(library, "libxentoollog")
            XCTAssertEqual(tried.first, "/nonexistent/xen-libs/libxentoollog.so.1")
            XCTAssertTrue("\(error)".contains("libxentoollog not found"), "\(error)")
        }
    }
}
