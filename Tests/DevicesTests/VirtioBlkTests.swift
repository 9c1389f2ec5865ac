import Backends
import DMCore
import Devices
import XCTest

/// virtio-blk requests end to end (modern driver, INTx) and its parser against malformed chains.
final class VirtioBlkTests: XCTestCase {
    static let typeIn: UInt32 = 0, typeOut: UInt32 = 1, typeFlush: UInt32 = 4, typeGetID: UInt32 = 8
    static let typeDiscard: UInt32 = 11, typeWriteZeroes: UInt32 = 13

    func started(sectors: Int = 64, readOnly: Bool = false) throws -> VirtioBlkRig {
        let rig = try VirtioBlkRig(sectors: sectors, readOnly: readOnly)
        rig.startModern()
        XCTAssertEqual(rig.status, 0x0F)
        return rig
    }

    func testConfigSpace() throws {
        let rig = try started(sectors: 100)
        XCTAssertEqual(rig.common(0x2000, size: 8), 100, "capacity")
        XCTAssertEqual(rig.common(0x2008, size: 4), UInt64(VirtioBlk.sizeMax))
        XCTAssertEqual(rig.common(0x200C, size: 4), UInt64(VirtioBlk.segMax))
        XCTAssertEqual(rig.common(0x2014, size: 4), 512, "blk_size")
        XCTAssertEqual(rig.common(0x2028, size: 4), 1, "max_discard_seg")
        let features = rig.offeredFeatures
        for bit in [1, 2, 6, 9, 13, 14, 28, 29, 32] { XCTAssertNotEqual(features & (1 << UInt64(bit)), 0, "feature \(bit)") }
        XCTAssertEqual(features & (1 << 5), 0, "not read-only")
    }

    func testReadWriteFlush() throws {
        let rig = try started()
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 3, dataLength: 1024, dataWritable: true), 0)
        XCTAssertEqual(try rig.memory.readBytes(at: VirtioBlkRig.data, count: 512), IDETestRig.expectedBlock(3, size: 512))
        XCTAssertEqual(try rig.memory.readBytes(at: VirtioBlkRig.data + 512, count: 512), IDETestRig.expectedBlock(4, size: 512))
        XCTAssertEqual(rig.ring.usedElement(0).length, 1025, "data plus the status byte")
        XCTAssertTrue(rig.legacy.sink.level(0) || rig.device.pci.config.get8(0x06) & 0x08 != 0, "INTx asserted")
        XCTAssertEqual(rig.common(0x1000, size: 1), 1, "ISR: queue interrupt")
        XCTAssertEqual(rig.common(0x1000, size: 1), 0, "ISR clears on read")

        try rig.memory.fill(at: VirtioBlkRig.data, count: 512, byte: 0xAB)
        XCTAssertEqual(rig.request(type: Self.typeOut, sector: 10, dataLength: 512, dataWritable: false), 0)
        XCTAssertEqual(try rig.device.medium.read(at: 10 * 512, count: 512), [UInt8](repeating: 0xAB, count: 512))
        XCTAssertEqual(rig.request(type: Self.typeFlush, sector: 0, dataLength: 0, dataWritable: false), 0)
        XCTAssertEqual(rig.device.stats.readOperations, 1)
        XCTAssertEqual(rig.device.stats.writeOperations, 1)
        XCTAssertEqual(rig.device.stats.flushOperations, 1)
        XCTAssertEqual(rig.device.stats.readBytes, 1024)
    }

    func testGetIDWritesTheSerial() throws {
        let rig = try started()
        try rig.memory.fill(at: VirtioBlkRig.data, count: 64, byte: 0xFF)
        XCTAssertEqual(rig.request(type: Self.typeGetID, sector: 0, dataLength: 20, dataWritable: true), 0)
        XCTAssertEqual(try rig.memory.readBytes(at: VirtioBlkRig.data, count: 20),
                       Array("SWIFTDM-SERIAL".utf8) + [UInt8](repeating: 0, count: 6))
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: VirtioBlkRig.data + 20), 0xFF, "nothing past 20 bytes")
    }

    func testDiscardAndWriteZeroes() throws {
        let rig = try started()
        func range(sector: UInt64, count: UInt32, flags: UInt32) throws {
            try rig.memory.write(sector, at: VirtioBlkRig.data)
            try rig.memory.write(count, at: VirtioBlkRig.data + 8)
            try rig.memory.write(flags, at: VirtioBlkRig.data + 12)
        }
        try range(sector: 5, count: 2, flags: 1)
        XCTAssertEqual(rig.request(type: Self.typeWriteZeroes, sector: 0, dataLength: 16, dataWritable: false), 0)
        XCTAssertEqual(try rig.device.medium.read(at: 5 * 512, count: 1024), [UInt8](repeating: 0, count: 1024))
        XCTAssertEqual(try rig.device.medium.read(at: 7 * 512, count: 512), IDETestRig.expectedBlock(7, size: 512))
        try range(sector: 8, count: 1, flags: 0)
        XCTAssertEqual(rig.request(type: Self.typeDiscard, sector: 0, dataLength: 16, dataWritable: false), 0)
        // Discard with the unmap flag (only meaningful for write-zeroes), and a range past the end.
        try range(sector: 8, count: 1, flags: 1)
        XCTAssertEqual(rig.request(type: Self.typeDiscard, sector: 0, dataLength: 16, dataWritable: false), 2)
        try range(sector: 63, count: 2, flags: 0)
        XCTAssertEqual(rig.request(type: Self.typeDiscard, sector: 0, dataLength: 16, dataWritable: false), 2)
    }

    func testReadOnlyDrive() throws {
        let rig = try started(readOnly: true)
        XCTAssertNotEqual(rig.offeredFeatures & (1 << 5), 0, "VIRTIO_BLK_F_RO")
        XCTAssertEqual(rig.offeredFeatures & (1 << 13), 0, "no discard on a read-only drive")
        XCTAssertEqual(rig.request(type: Self.typeOut, sector: 1, dataLength: 512, dataWritable: false), 1)
        XCTAssertEqual(try rig.device.medium.read(at: 512, count: 512), IDETestRig.expectedBlock(1, size: 512))
        XCTAssertEqual(rig.device.stats.failedWriteOperations, 1)
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 1, dataLength: 512, dataWritable: true), 0)
    }

    func testOutOfRangeAndMisshapenRequests() throws {
        let rig = try started(sectors: 64)
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 64, dataLength: 512, dataWritable: true), 1, "sector past the end")
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 63, dataLength: 1024, dataWritable: true), 1, "running past the end")
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: UInt64.max / 256, dataLength: 512, dataWritable: true), 1,
                       "sector whose byte offset overflows")
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 0, dataLength: 100, dataWritable: true), 1, "not whole sectors")
        XCTAssertEqual(rig.request(type: Self.typeIn, sector: 0, dataLength: 512, dataWritable: false), 1, "read into readable buffers")
        XCTAssertEqual(rig.request(type: 77, sector: 0, dataLength: 0, dataWritable: false), 2, "unknown type: UNSUPP")
        XCTAssertEqual(rig.status & 0x40, 0, "none of these breaks the device")
    }

    func testHeaderSpanningBuffersAndStatusSharingData() throws {
        let rig = try started()
        rig.writeHeader(type: Self.typeIn, sector: 2)
        // Header split 5 + 11 bytes; data and status in one 513-byte writable buffer.
        rig.ring.submit([(VirtioBlkRig.header, 5, false), (VirtioBlkRig.header + 5, 11, false), (VirtioBlkRig.data, 513, true)])
        rig.kick()
        XCTAssertTrue(rig.waitUsed(1))
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: VirtioBlkRig.data + 512), 0, "status after the data")
        XCTAssertEqual(try rig.memory.readBytes(at: VirtioBlkRig.data, count: 512), IDETestRig.expectedBlock(2, size: 512))
    }

    func testShortHeaderBreaksTheQueue() throws {
        let rig = try started()
        rig.ring.submit([(VirtioBlkRig.header, 8, false), (VirtioBlkRig.statusByte, 1, true)])
        rig.kick()
        XCTAssertEqual(rig.status & 0x40, 0x40, "DEVICE_NEEDS_RESET")
        XCTAssertEqual(rig.ring.usedIndex, 0)
        XCTAssertEqual(rig.common(0x1000, size: 1) & 2, 2, "configuration-change interrupt")
        // Further kicks are ignored until the driver resets the device.
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.statusByte, 1, true)])
        rig.kick()
        XCTAssertEqual(rig.ring.usedIndex, 0)
        rig.startModern()
        XCTAssertEqual(rig.status, 0x0F, "a reset recovers the device")
    }

    func testMissingStatusByteBreaksTheQueue() throws {
        let rig = try started()
        rig.writeHeader(type: Self.typeOut, sector: 0)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 512, false)])
        rig.kick()
        XCTAssertEqual(rig.status & 0x40, 0x40)
    }

    func testStatusOutsideGuestMemoryBreaksTheQueue() throws {
        let rig = try started()
        rig.writeHeader(type: Self.typeFlush, sector: 0)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (0x4000_0000, 1, true)])
        rig.kick()
        rig.poster.drain { rig.status & 0x40 != 0 }
        XCTAssertEqual(rig.status & 0x40, 0x40)
    }

    func testDataOutsideGuestMemoryIsAnIOError() throws {
        let rig = try started()
        rig.writeHeader(type: Self.typeIn, sector: 0)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (0xFFE00, 1024, true), (VirtioBlkRig.statusByte, 1, true)])
        rig.kick()
        XCTAssertTrue(rig.waitUsed(1))
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: VirtioBlkRig.statusByte), 1)
        XCTAssertEqual(rig.device.stats.failedReadOperations, 1)
    }

    func testTooManySegmentsIsAnIOError() throws {
        let rig = try VirtioBlkRig()
        rig.ring.size = 256
        rig.startModern()
        rig.writeHeader(type: Self.typeIn, sector: 0)
        // A full-length chain (256 descriptors) with the status in the last data buffer:
        // one data segment more than seg_max.
        var buffers: [(UInt64, UInt32, Bool)] = [(VirtioBlkRig.header, 16, false)]
        for i in 0..<(VirtioBlk.segMax + 1) { buffers.append((0x40000 + UInt64(i) * 512, 512, true)) }
        buffers[buffers.count - 1].1 = 513
        rig.ring.submit(buffers)
        rig.kick()
        XCTAssertTrue(rig.waitUsed(1))
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: 0x40000 + UInt64(VirtioBlk.segMax) * 512 + 512), 1)
        XCTAssertEqual(rig.status & 0x40, 0)
    }

    /// Parses `buffers` as one chain after a write request header for `sector`.
    func parse(_ buffers: [(UInt64, UInt32, Bool)], sector: UInt64 = 0) throws -> (VirtioBlkRequest, [VirtqueueBuffer]) {
        let rig = try VirtioBlkRig()
        var ring = RingDriver(memory: rig.memory)
        rig.writeHeader(type: Self.typeOut, sector: sector)
        var chain = ring.queue.chain(head: ring.submit(buffers))
        var segments: [VirtqueueBuffer] = []
        let request = try VirtioBlkRequest.parse(&chain, memory: rig.memory, segments: &segments, maxSegments: 8)
        return (request, segments)
    }

    func testParserRejectsReadableAfterWritable() throws {
        XCTAssertThrowsError(try parse([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.statusByte, 1, true),
                                        (VirtioBlkRig.data, 512, false)])) {
            XCTAssertEqual($0 as? VirtioBlkRequest.ParseError, .readableAfterWritable)
        }
    }

    func testParserResult() throws {
        let (request, segments) = try parse([(VirtioBlkRig.header, 20, false), (VirtioBlkRig.data, 512, false),
                                             (VirtioBlkRig.statusByte, 1, true)], sector: 0x1234_5678_9A)
        XCTAssertEqual(request.requestType, .write)
        XCTAssertEqual(request.sector, 0x1234_5678_9A)
        XCTAssertEqual(request.statusAddress, VirtioBlkRig.statusByte)
        XCTAssertEqual(request.dataLength, 516, "header bytes past 16 count as data")
        XCTAssertEqual(segments, [VirtqueueBuffer(address: VirtioBlkRig.header + 16, length: 4, writable: false),
                                  VirtqueueBuffer(address: VirtioBlkRig.data, length: 512, writable: false)])
        XCTAssertNil(request.problem)
    }

    func testManyRequestsInFlightAndRefill() throws {
        let rig = try VirtioBlkRig()
        rig.ring.size = 256
        rig.startModern()
        // 80 one-sector reads at once (240 descriptors), each into its own buffer.
        for i in 0..<80 {
            let header = 0x40000 + UInt64(i) * 32
            rig.writeHeader(type: Self.typeIn, sector: UInt64(i % 64), at: header)
            rig.ring.submit([(header, 16, false), (0x50000 + UInt64(i) * 512, 512, true), (header + 16, 1, true)])
        }
        rig.kick()
        XCTAssertTrue(rig.waitUsed(80))
        for i in [0, 37, 79] {
            XCTAssertEqual(try rig.memory.readBytes(at: 0x50000 + UInt64(i) * 512, count: 512),
                           IDETestRig.expectedBlock(i % 64, size: 512))
        }
    }
}

extension VirtioBlkTests {
    /// Counts heap allocations from the doorbell to the used ring (notify, pop, parse, submit to
    /// the worker, I/O into guest memory, completion posted to a running event loop, used ring,
    /// interrupt) when the malloc-counting interposer is preloaded (fuzz/ioreq/alloc-check.sh
    /// with this test's name); skips otherwise.
    func testHotPathAllocatesNothing() throws {
        guard let symbol = dlsym(nil, "sdm_alloc_count") else {  // RTLD_DEFAULT is NULL on glibc
            throw XCTSkip("run through fuzz/ioreq/alloc-check.sh BUNDLE DevicesTests.VirtioBlkTests/testHotPathAllocatesNothing")
        }
        let allocations = unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
        let legacy = try LegacyTestRig()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("virtio-alloc-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = try IDETestRig.patternImage(at: directory.appendingPathComponent("disk.raw").path, blocks: 64, blockSize: 512)
        let loop = try EventLoop(lock: DeviceLock(), clock: VirtualClock(paused: true))
        let loopThread = Thread { loop.run() }
        loopThread.start()
        defer { loop.stop() }
        let device = VirtioBlk(id: "virtio0", medium: try BlockBackend(path: path, options: BlockOpenOptions(format: .raw), workers: 1),
                               readOnly: false, mode: VirtioPCIMode(legacy: false, modern: true), memory: legacy.memory,
                               notifications: ExitNotifications(sink: legacy.sink), poster: loop)
        let bus = PCIBus(portBus: Bus(name: "io", unassignedValue: .max), mmioBus: Bus(name: "mmio", unassignedValue: 0))
        try bus.plug(device, slot: 4)
        device.configWrite(offset: 0x20, size: 4, value: UInt32(VirtioBlkRig.modernBase))
        device.configWrite(offset: 0x04, size: 2, value: 0x0006)
        var ring = RingDriver(memory: legacy.memory)
        func common(_ offset: UInt64, _ size: Int, _ value: UInt64) { device.write(region: 4, offset: offset, size: size, value: value) }
        common(0x14, 1, 3)
        for (select, bits) in [(0, UInt64(1 << 9 | 1 << 28 | 1 << 29)), (1, 1)] {
            common(0x08, 4, UInt64(select))
            common(0x0C, 4, bits)
        }
        common(0x14, 1, 0x0B)
        common(0x20, 8, ring.descriptors)
        common(0x28, 8, ring.avail)
        common(0x30, 8, ring.used)
        common(0x18, 2, UInt64(ring.size))
        common(0x1C, 2, 1)
        common(0x14, 1, 0x0F)
        try legacy.memory.write(UInt32(0), at: VirtioBlkRig.header)
        try legacy.memory.write(UInt64(5), at: VirtioBlkRig.header + 8)
        // Two chains written once: a 4 KiB read in two segments (head 0) and a flush (head 4).
        ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 2048, true),
                     (VirtioBlkRig.data + 2048, 2048, true), (VirtioBlkRig.statusByte, 1, true)])
        try legacy.memory.write(UInt32(4), at: VirtioBlkRig.header + 0x100)
        ring.submit([(VirtioBlkRig.header + 0x100, 16, false), (VirtioBlkRig.statusByte + 1, 1, true)])
        var start: UInt64 = 0
        var lost = 0
        for round in 0..<400 {
            if round == 20 { start = allocations() }  // the first rounds create the request slots
            if round >= 2 { ring.makeAvailable(round % 2 == 0 ? 0 : 4) }
            let target = ring.availIndex
            loop.lock.withLock { device.write(region: 4, offset: 0x3000, size: 2, value: 0) }
            let deadline = monotonicNanoseconds() + 5_000_000_000
            while ring.usedIndex != target && monotonicNanoseconds() < deadline { sched_yield() }
            if ring.usedIndex != target { lost += 1 }
        }
        usleep(100_000)  // let the last completion's tail (interrupt) finish on the loop
        let total = allocations() - start
        XCTAssertEqual(lost, 0)
        XCTAssertEqual(try legacy.memory.read(UInt8.self, at: VirtioBlkRig.statusByte), 0)
        XCTAssertEqual(try legacy.memory.readBytes(at: VirtioBlkRig.data, count: 512), IDETestRig.expectedBlock(5, size: 512))
        XCTAssertEqual(total, 0, "allocations in 380 requests (190 reads, 190 flushes)")
    }
}
