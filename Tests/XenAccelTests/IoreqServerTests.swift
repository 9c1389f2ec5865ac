import DMCore
import XCTest
@testable import XenAccel

final class IoreqLayoutTests: XCTestCase {
    func testSlotDecodeMatchesXenLayout() {
        // Bytes as GCC lays out struct ioreq (checked against Xen 4.17's ioreq.h): state 0xF,
        // data_is_ptr, dir and df all set give byte 30 = 0x7F; dir alone 0x20.
        var r = Ioreq(addr: 0x1234, data: 0xDEAD_BEEF_0000_0001, count: 7, size: 4, vpEventPort: 99, state: 1,
                      dataIsPointer: true, isRead: true, decrementing: true, type: 1)
        var bytes = r.encoded
        XCTAssertEqual(bytes.count, 32)
        XCTAssertEqual(bytes[30], 0x71)
        XCTAssertEqual(bytes[31], 1)
        r.state = 0xF
        bytes = r.encoded
        XCTAssertEqual(bytes[30], 0x7F)
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyBytes(from: bytes) }
        XCTAssertEqual(Ioreq(decoding: words), r)
        XCTAssertEqual(Ioreq(isRead: true).encoded[30], 0x20)
    }

    func testBufferedEntryDecodeMatchesGCCBitfields() {
        // From a C program filling struct buf_ioreq {type=0xAB, dir=1, size=3, addr=0xFFFFF}.
        let e = BufferedIoreq(decoding: 0x1122_3344_FFFF_FEAB)
        XCTAssertEqual(e, BufferedIoreq(type: 0xAB, isRead: true, sizeLog2: 3, addr: 0xFFFFF, data: 0x1122_3344))
        XCTAssertEqual(e.encoded, 0x1122_3344_FFFF_FEAB)
    }

    func testPCIAddressDecode() {
        let a = PCIAddress(sbdf: 0x0001_2A0B)  // segment 1, bus 0x2A, device 1, function 3
        XCTAssertEqual(a, PCIAddress(segment: 1, bus: 0x2A, device: 1, function: 3))
        XCTAssertEqual(a.sbdf, 0x0001_2A0B)
        XCTAssertEqual(a.description, "0001:2a:01.3")
    }
}

final class IoreqServerTests: XCTestCase {
    func testPortReadAndWrite() throws {
        let rig = try Rig()
        XCTAssertEqual(rig.roundTrip(pio(0x1004, size: 2, read: true)), (0x1122_3344_5566_7788 + 4) & 0xFFFF)
        // Write data is masked to the access size before the device sees it.
        XCTAssertEqual(rig.roundTrip(pio(0x1010, size: 1, read: false, data: 0xFFFF_FF5A)), 0x5A)
        XCTAssertEqual(rig.portDevice.accesses.last, .init(offset: 0x10, size: 1, write: true, value: 0x5A))
        // Responses are posted to the vCPU's own port, after unmasking it.
        XCTAssertEqual(rig.sim.notified, [rig.sim.vcpuPorts[0], rig.sim.vcpuPorts[0]])
        XCTAssertEqual(rig.sim.unmasked, [rig.sim.vcpuPorts[0], rig.sim.vcpuPorts[0]])
        XCTAssertEqual(rig.server.counters.served, 2)
        XCTAssertTrue(rig.errorLines.isEmpty, "\(rig.errorLines)")
    }

    func testSecondVCPUUsesItsOwnSlot() throws {
        let rig = try Rig(vcpus: 3)
        XCTAssertEqual(rig.roundTrip(pio(0x1000, size: 4, read: true), vcpu: 2), 0x5566_7788)
        XCTAssertEqual(rig.sim.notified, [rig.sim.vcpuPorts[2]])
        XCTAssertEqual(rig.sim.slot(0).state, 0)
    }

    func testPortRepeatWithoutPointer() throws {
        let rig = try Rig()
        rig.roundTrip(pio(0x1000, size: 1, read: false, data: 7, count: 3))
        XCTAssertEqual(rig.portDevice.accesses.count, 3)
        XCTAssertTrue(rig.portDevice.accesses.allSatisfy { $0 == .init(offset: 0, size: 1, write: true, value: 7) })
    }

    func testRepInsAndOutsBothDirections() throws {
        for df in [false, true] {
            let rig = try Rig()
            var n: UInt64 = 0
            rig.portDevice.readValue = { _ in n += 1; return 0xA0 + n }
            // rep insw of 4 items to 0x2000 (df: downwards from 0x2006).
            let base: UInt64 = df ? 0x2006 : 0x2000
            XCTAssertEqual(rig.roundTrip(pio(0x1002, size: 2, read: true, data: base, count: 4, ptr: true, df: df)), base)
            let words = rig.sim.guestRead(at: 0x2000, count: 8)
            let expected: [UInt8] = df ? [0xA4, 0, 0xA3, 0, 0xA2, 0, 0xA1, 0] : [0xA1, 0, 0xA2, 0, 0xA3, 0, 0xA4, 0]
            XCTAssertEqual(words, expected, "df=\(df)")

            // rep outsb of 3 bytes from 0x3000.
            rig.sim.guestWrite([1, 2, 3], at: 0x3000)
            let src: UInt64 = df ? 0x3002 : 0x3000
            rig.roundTrip(pio(0x1008, size: 1, read: false, data: src, count: 3, ptr: true, df: df))
            let out = rig.portDevice.accesses.filter(\.write).map(\.value)
            XCTAssertEqual(out, df ? [3, 2, 1] : [1, 2, 3], "df=\(df)")
        }
    }

    func testMMIOReadWriteAndRepeat() throws {
        let rig = try Rig()
        XCTAssertEqual(rig.roundTrip(copy(Rig.mmioBase + 0x10, size: 8, read: true)), 0x1122_3344_5566_7788 + 0x10)
        rig.roundTrip(copy(Rig.mmioBase + 0x20, size: 4, read: false, data: 0xFFFF_FFFF_1234_5678, count: 3, df: true))
        let writes = rig.mmioDevice.accesses.filter(\.write)
        XCTAssertEqual(writes.map(\.offset), [0x20, 0x1C, 0x18])
        XCTAssertTrue(writes.allSatisfy { $0.value == 0x1234_5678 })
    }

    func testMMIOToAndFromMemoryBothDirections() throws {
        for df in [false, true] {
            let rig = try Rig()
            // Device → memory (a rep movs reading MMIO): 2 quadwords.
            let dst: UInt64 = df ? 0x5008 : 0x5000
            let dev: UInt64 = Rig.mmioBase + (df ? 0x108 : 0x100)
            rig.roundTrip(copy(dev, size: 8, read: true, data: dst, count: 2, ptr: true, df: df))
            let got = rig.sim.guestRead(at: 0x5000, count: 16)
            var expected: [UInt8] = []
            for off: UInt64 in [0x100, 0x108] {
                withUnsafeBytes(of: (0x1122_3344_5566_7788 &+ off).littleEndian) { expected += $0 }
            }
            XCTAssertEqual(got, expected, "df=\(df)")
            // Memory → device.
            rig.sim.guestWrite([0x11, 0x22, 0x33, 0x44], at: 0x6000)
            let src: UInt64 = df ? 0x6002 : 0x6000
            let to: UInt64 = Rig.mmioBase + (df ? 0x202 : 0x200)
            rig.roundTrip(copy(to, size: 2, read: false, data: src, count: 2, ptr: true, df: df))
            let writes = rig.mmioDevice.accesses.filter(\.write)
            XCTAssertEqual(writes.map(\.offset), df ? [0x202, 0x200] : [0x200, 0x202])
            XCTAssertEqual(writes.map(\.value), df ? [0x4433, 0x2211] : [0x2211, 0x4433])
        }
    }

    func testPCIConfigReadAndWrite() throws {
        let rig = try Rig()
        let sbdf: UInt64 = 0x0000_0018  // 00:03.0
        let read = Ioreq(addr: sbdf << 32 | 0x40, count: 1, size: 2, isRead: true, type: Ioreq.Kind.pciConfig.rawValue)
        XCTAssertEqual(rig.roundTrip(read), 0x0040)  // 0xCAFE0040 masked to 2 bytes
        let write = Ioreq(addr: sbdf << 32 | 0x3C, data: 0xAB_CD0B, count: 1, size: 1, type: Ioreq.Kind.pciConfig.rawValue)
        rig.roundTrip(write)
        XCTAssertEqual(rig.pciAccesses.count, 2)
        XCTAssertEqual(rig.pciAccesses[1].0, PCIAddress(device: 3))
        XCTAssertEqual(rig.pciAccesses[1].1, 0x3C)
        XCTAssertEqual(rig.pciAccesses[1].3, true)
        XCTAssertEqual(rig.pciAccesses[1].4, 0x0B)
    }

    func testInvalidateAndTimeOffset() throws {
        let rig = try Rig()
        XCTAssertNotNil(rig.roundTrip(Ioreq(type: Ioreq.Kind.invalidate.rawValue)))
        XCTAssertEqual(rig.invalidations, 1)
        XCTAssertNotNil(rig.roundTrip(Ioreq(data: 12345, type: Ioreq.Kind.timeOffset.rawValue)))
        XCTAssertTrue(rig.errorLines.isEmpty)
    }

    func testPendingShutdownIsActedOnBeforeTheResponse() throws {
        let rig = try Rig()
        let sim = rig.sim
        rig.portDevice.duringAccess = { [unowned server = rig.server!] in server.requestShutdown(.reboot) }
        rig.sim.send(pio(0x1000, size: 1, read: false, data: 1))
        // Check from inside notify-time: the dm-op was recorded before the slot went to IORESP_READY.
        rig.server.handlePendingEvents()
        XCTAssertEqual(sim.dmOps, [.shutdown(.reboot)])
        XCTAssertEqual(sim.takeResponse(), 1)
    }

    /// Counts heap allocations while the server handles requests, when the malloc-counting
    /// interposer is preloaded (fuzz/ioreq/alloc-check.sh); skips otherwise.
    func testHotPathAllocatesNothing() throws {
        guard let symbol = dlsym(nil, "sdm_alloc_count") else {  // RTLD_DEFAULT is NULL on glibc
            throw XCTSkip("run through fuzz/ioreq/alloc-check.sh to count allocations")
        }
        let allocations = unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
        let rig = try Rig()
        rig.portDevice.record = false
        rig.mmioDevice.record = false
        rig.pciAccesses.reserveCapacity(1000)  // the test's own PCI hook records accesses
        let requests: [Ioreq] = [
            pio(0x1000, size: 4, read: true), pio(0x1004, size: 2, read: false, data: 0x1234),
            copy(Rig.mmioBase, size: 8, read: true), copy(Rig.mmioBase + 8, size: 4, read: false, data: 5, count: 4),
            pio(0x1008, size: 1, read: true, data: 0x4000, count: 64, ptr: true),
            copy(Rig.mmioBase + 0x100, size: 8, read: false, data: 0x4000, count: 8, ptr: true, df: true),
            Ioreq(addr: 0x18 << 32 | 4, count: 1, size: 4, isRead: true, type: Ioreq.Kind.pciConfig.rawValue),
        ]
        var counted: [UInt64] = []
        for round in 0..<50 {
            for request in requests {
                rig.sim.send(request)
                rig.sim.sendBuffered(type: .pio, addr: 0x1010, size: 4, data: 1)
                rig.sim.clearRecords()
                let before = allocations()
                rig.server.handlePendingEvents()
                let after = allocations()
                if round > 0 { counted.append(after - before) }  // round 0 maps the bucket
                _ = rig.sim.takeResponse()
            }
        }
        XCTAssertEqual(counted.reduce(0, +), 0, "allocations per request: \(counted.prefix(20))")
        XCTAssertTrue(rig.errorLines.isEmpty, "\(rig.errorLines)")
    }

    func testThreadServesRequests() throws {
        let rig = try Rig()
        try rig.server.start()
        defer { rig.server.stop() }
        rig.sim.send(pio(0x1000, size: 4, read: true))
        var response: UInt64?
        for _ in 0..<2000 where response == nil {
            response = rig.sim.takeResponse()
            if response == nil { usleep(1000) }
        }
        XCTAssertEqual(response, 0x5566_7788)
    }
}
