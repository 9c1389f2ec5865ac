import Backends
import DMCore
import Devices
import XCTest

/// The virtio-pci transport: identity, capabilities, common configuration at every width,
/// feature negotiation, status and reset, MSI-X, the legacy interface, doorbells, state.
final class VirtioPCITransportTests: XCTestCase {
    func testTransitionalIdentity() throws {
        let rig = try VirtioBlkRig()
        let config = rig.device.pci.config
        XCTAssertEqual(config.vendorID, 0x1AF4)
        XCTAssertEqual(config.deviceID, 0x1001)
        XCTAssertEqual(config.get8(0x08), 0, "revision 0 for a transitional device")
        XCTAssertEqual(config.get16(0x2C), 0x1AF4)
        XCTAssertEqual(config.get16(0x2E), 2, "subsystem = virtio device type, for legacy drivers")
        XCTAssertEqual(config.get32(0x08) >> 8, 0x01_0000)
        XCTAssertEqual(config.interruptPin, 1)
        XCTAssertEqual(rig.device.pci.mapped[0], VirtioBlkRig.legacyBase)
        XCTAssertEqual(rig.device.pci.mapped[1], VirtioBlkRig.msixBase)
        XCTAssertEqual(rig.device.pci.mapped[4], VirtioBlkRig.modernBase)
    }

    func testModernOnlyIdentityAndNoLegacyBAR() throws {
        let rig = try VirtioBlkRig(mode: VirtioPCIMode(legacy: false, modern: true))
        XCTAssertEqual(rig.device.pci.config.deviceID, 0x1042)
        XCTAssertEqual(rig.device.pci.config.get8(0x08), 1)
        XCTAssertEqual(rig.device.pci.config.get16(0x2E), PCIConfigSpace.qemuSubsystem)
        rig.device.configWrite(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(rig.device.configRead(offset: 0x10, size: 4), 0, "no BAR0")
    }

    /// Walks the capability list: the four virtio structures plus PCI-config access, and MSI-X.
    func capabilities(_ rig: VirtioBlkRig) -> [UInt8: (type: UInt8, bar: UInt8, offset: UInt32, length: UInt32, at: Int)] {
        var result: [UInt8: (UInt8, UInt8, UInt32, UInt32, Int)] = [:]
        XCTAssertNotEqual(rig.device.configRead(offset: 0x06, size: 2) & 0x10, 0, "capability list bit")
        var at = Int(rig.device.configRead(offset: 0x34, size: 1))
        var seen = 0
        while at != 0 && seen < 16 {
            let id = UInt8(rig.device.configRead(offset: at, size: 1))
            if id == 0x09 {
                let type = UInt8(rig.device.configRead(offset: at + 3, size: 1))
                result[type] = (type, UInt8(rig.device.configRead(offset: at + 4, size: 1)),
                                rig.device.configRead(offset: at + 8, size: 4), rig.device.configRead(offset: at + 12, size: 4), at)
            } else {
                result[0x80 | id] = (id, 0, 0, 0, at)
            }
            at = Int(rig.device.configRead(offset: at + 1, size: 1))
            seen += 1
        }
        return result
    }

    func testCapabilities() throws {
        let rig = try VirtioBlkRig()
        let caps = capabilities(rig)
        XCTAssertEqual(caps[1]?.bar, 4)
        XCTAssertEqual(caps[1]?.offset, 0)
        XCTAssertEqual(caps[3]?.offset, 0x1000)
        XCTAssertEqual(caps[4]?.offset, 0x2000)
        XCTAssertEqual(caps[2]?.offset, 0x3000)
        XCTAssertNotNil(caps[5], "PCI-config access capability")
        let msix = try XCTUnwrap(caps[0x91])
        XCTAssertEqual(rig.device.configRead(offset: msix.at + 2, size: 2) & 0x7FF, 1, "two vectors")
        XCTAssertEqual(rig.device.configRead(offset: 0x70 + 16, size: 4), 4, "notify_off_multiplier")
        // The capabilities are read-only.
        rig.device.configWrite(offset: 0x40, size: 4, value: 0)
        XCTAssertEqual(rig.device.configRead(offset: 0x40, size: 1), 0x09)
        let legacyOnly = try VirtioBlkRig(mode: VirtioPCIMode(legacy: true, modern: false))
        XCTAssertEqual(capabilities(legacyOnly).keys.sorted(), [0x91], "no virtio capabilities without the modern interface")
    }

    func testCommonConfigAtEveryWidth() throws {
        let rig = try VirtioBlkRig()
        let features = rig.offeredFeatures
        rig.setCommon(0x00, size: 4, 0)
        var low: UInt64 = 0
        for i in 0..<4 { low |= rig.common(0x04 + UInt64(i), size: 1) << (8 * UInt64(i)) }
        XCTAssertEqual(low, features & 0xFFFF_FFFF, "byte reads")
        XCTAssertEqual(rig.common(0x04, size: 2) | rig.common(0x06, size: 2) << 16, features & 0xFFFF_FFFF, "word reads")
        XCTAssertEqual(rig.common(0x00, size: 8) >> 32, features & 0xFFFF_FFFF, "a qword read spans select and feature")
        // Queue addresses: one 64-bit write, two 32-bit halves, four 16-bit pieces, eight bytes.
        rig.setCommon(0x16, size: 2, 0)
        rig.setCommon(0x20, size: 8, 0x1122_3344_5566_7780)
        XCTAssertEqual(rig.common(0x20, size: 8), 0x1122_3344_5566_7780)
        rig.setCommon(0x28, size: 4, 0x9ABC_DEF0)
        rig.setCommon(0x2C, size: 4, 0x1234_5678)
        XCTAssertEqual(rig.common(0x28, size: 8), 0x1234_5678_9ABC_DEF0)
        for i in 0..<4 { rig.setCommon(0x30 + UInt64(2 * i), size: 2, UInt64(0x1111 * (i + 1))) }
        XCTAssertEqual(rig.common(0x30, size: 8), 0x4444_3333_2222_1111)
        for i in 0..<8 { rig.setCommon(0x20 + UInt64(i), size: 1, UInt64(i + 1)) }
        XCTAssertEqual(rig.common(0x20, size: 8), 0x0807_0605_0403_0201)
        XCTAssertEqual(rig.common(0x12, size: 2), 1, "num_queues")
        XCTAssertEqual(rig.common(0x18, size: 2), 256, "queue_size starts at the maximum")
        XCTAssertEqual(rig.common(0x1E, size: 2), 0, "queue_notify_off")
        // Past the structure, and an unselectable queue.
        XCTAssertEqual(rig.common(0x38, size: 4), 0)
        rig.setCommon(0x16, size: 2, 5)
        XCTAssertEqual(rig.common(0x18, size: 2), 0, "no queue 5")
        rig.setCommon(0x20, size: 4, 0x1000)  // ignored
        XCTAssertEqual(rig.common(0x20, size: 4), 0)
        // Writes to read-only fields change nothing.
        rig.setCommon(0x12, size: 2, 9)
        XCTAssertEqual(rig.common(0x12, size: 2), 1)
    }

    func testFeatureNegotiationFailures() throws {
        let rig = try VirtioBlkRig()
        // A feature the device never offered.
        rig.startModern { $0 | (1 << 40) }
        XCTAssertEqual(rig.status & 0x08, 0, "FEATURES_OK refused")
        // A modern driver without VERSION_1.
        rig.startModern { $0 & ~(1 << 32) }
        XCTAssertEqual(rig.status & 0x08, 0)
        // Accepted, then the driver tries to change its features: ignored.
        rig.startModern { $0 & ~(1 << 29) }
        XCTAssertEqual(rig.status, 0x0F)
        rig.setDriverFeatures(rig.offeredFeatures)
        rig.setCommon(0x08, size: 4, 0)
        XCTAssertEqual(rig.common(0x0C, size: 4) & (1 << 29), 0)
    }

    func testBadQueueLayoutNeedsReset() throws {
        let rig = try VirtioBlkRig()
        rig.ring.size = 6  // not a power of two
        rig.startModern()
        XCTAssertEqual(rig.status & 0x40, 0x40)
        XCTAssertEqual(rig.common(0x1C, size: 2), 0, "queue not enabled")
        rig.ring.size = 8
        rig.ring.used = 0x4000_0000  // outside RAM
        rig.startModern()
        XCTAssertEqual(rig.status & 0x40, 0x40)
        rig.ring.used = 0x12000
        rig.startModern()
        XCTAssertEqual(rig.status, 0x0F)
    }

    func testResetDuringIO() throws {
        let rig = try VirtioBlkRig()
        rig.startModern()
        rig.writeHeader(type: 0, sector: 1)
        try rig.memory.write(UInt8(0xEE), at: VirtioBlkRig.statusByte)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 512, true), (VirtioBlkRig.statusByte, 1, true)])
        rig.kick()
        rig.setCommon(0x14, size: 1, 0)  // reset while the worker has the request
        XCTAssertEqual(rig.status, 0)
        XCTAssertEqual(rig.common(0x1C, size: 2), 0, "queue disabled by the reset")
        Thread.sleep(forTimeInterval: 0.1)
        rig.poster.drain { true }
        XCTAssertEqual(rig.ring.usedIndex, 0, "the stale completion touched nothing")
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: VirtioBlkRig.statusByte), 0xEE)
        // The device works again after a fresh start.
        rig.ring = RingDriver(memory: rig.memory)
        try rig.memory.fill(at: 0x10000, count: 0x3000, byte: 0)
        rig.startModern()
        XCTAssertEqual(rig.request(type: 0, sector: 2, dataLength: 512, dataWritable: true), 0)
    }

    func testMSIXDeliveryMaskingAndPending() throws {
        let rig = try VirtioBlkRig()
        let caps = capabilities(rig)
        let msixCap = try XCTUnwrap(caps[0x91]).at
        rig.startModern { $0 & ~(1 << 29) }  // without EVENT_IDX every completion interrupts
        // Vector 1 for the queue; program both table entries.
        rig.setCommon(0x16, size: 2, 0)
        rig.setCommon(0x1A, size: 2, 1)
        XCTAssertEqual(rig.common(0x1A, size: 2), 1)
        rig.setCommon(0x1A, size: 2, 7)
        XCTAssertEqual(rig.common(0x1A, size: 2), 0xFFFF, "a vector the table lacks reads NO_VECTOR")
        rig.setCommon(0x1A, size: 2, 1)
        rig.device.write(region: 1, offset: 16, size: 8, value: 0xFEE0_0000)
        rig.device.write(region: 1, offset: 24, size: 4, value: 0x4041)
        rig.device.configWrite(offset: msixCap + 2, size: 2, value: 0x8000)
        XCTAssertEqual(rig.request(type: 0, sector: 0, dataLength: 512, dataWritable: true), 0)
        XCTAssertTrue(rig.notifications.messages.isEmpty, "entries start masked")
        XCTAssertEqual(rig.device.read(region: 1, offset: 0x800, size: 8), 2, "pending bit for vector 1")
        XCTAssertFalse(rig.legacy.sink.level(0) || rig.device.pci.config.get8(0x06) & 0x08 != 0, "no INTx with MSI-X")
        rig.device.write(region: 1, offset: 28, size: 4, value: 0)  // unmask
        XCTAssertEqual(rig.notifications.messages, [MSIMessage(address: 0xFEE0_0000, data: 0x4041)])
        XCTAssertEqual(rig.device.read(region: 1, offset: 0x800, size: 8), 0)
        XCTAssertEqual(rig.request(type: 0, sector: 0, dataLength: 512, dataWritable: true), 0)
        XCTAssertEqual(rig.notifications.messages.count, 2)
        // Function mask holds the next one back.
        rig.device.configWrite(offset: msixCap + 2, size: 2, value: 0xC000)
        XCTAssertEqual(rig.request(type: 0, sector: 0, dataLength: 512, dataWritable: true), 0)
        XCTAssertEqual(rig.notifications.messages.count, 2)
        rig.device.configWrite(offset: msixCap + 2, size: 2, value: 0x8000)
        XCTAssertEqual(rig.notifications.messages.count, 3)
        // Vector control bits other than the mask read as zero.
        rig.device.write(region: 1, offset: 12, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(rig.device.read(region: 1, offset: 12, size: 4), 1)
    }

    func testLegacyDriver() throws {
        let rig = try VirtioBlkRig(mode: VirtioPCIMode(legacy: true, modern: false))
        func io(_ offset: UInt64, _ size: Int) -> UInt64 { rig.device.read(region: 0, offset: offset, size: size) }
        func out(_ offset: UInt64, _ size: Int, _ value: UInt64) { rig.device.write(region: 0, offset: offset, size: size, value: value) }
        XCTAssertEqual(io(0x00, 4) & (1 << 9), 1 << 9, "host features (FLUSH)")
        out(0x12, 1, 3)
        out(0x04, 4, io(0x00, 4))
        out(0x0E, 2, 0)
        XCTAssertEqual(io(0x0C, 2), 256, "legacy queue size is fixed")
        // Legacy layout at one page: descriptors, avail right after, used on the next 4 KiB.
        rig.ring.size = 256
        rig.ring.descriptors = 0x10000
        rig.ring.avail = 0x10000 + 16 * 256
        rig.ring.used = 0x12000
        out(0x08, 4, 0x10)
        XCTAssertEqual(io(0x08, 4), 0x10)
        out(0x12, 1, 7)
        XCTAssertEqual(io(0x14, 8), 64, "device config (capacity) at 0x14 without MSI-X")
        rig.writeHeader(type: 0, sector: 9)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 512, true), (VirtioBlkRig.statusByte, 1, true)])
        out(0x10, 2, 0)  // notify queue 0
        XCTAssertTrue(rig.waitUsed(1))
        XCTAssertEqual(try rig.memory.readBytes(at: VirtioBlkRig.data, count: 512), IDETestRig.expectedBlock(9, size: 512))
        XCTAssertEqual(io(0x13, 1), 1, "ISR")
        out(0x08, 4, 0)  // PFN 0 resets
        XCTAssertEqual(io(0x12, 1), 0)
    }

    func testPCIConfigAccessWindow() throws {
        let rig = try VirtioBlkRig()
        let cap = try XCTUnwrap(capabilities(rig)[5]).at
        // Read num_queues (common config 0x12) through the window.
        rig.device.configWrite(offset: cap + 4, size: 1, value: 4)
        rig.device.configWrite(offset: cap + 8, size: 4, value: 0x12)
        rig.device.configWrite(offset: cap + 12, size: 4, value: 2)
        XCTAssertEqual(rig.device.configRead(offset: cap + 16, size: 4), 1)
        // Write device_status through it.
        rig.device.configWrite(offset: cap + 8, size: 4, value: 0x14)
        rig.device.configWrite(offset: cap + 12, size: 4, value: 1)
        rig.device.configWrite(offset: cap + 16, size: 1, value: 1)
        XCTAssertEqual(rig.status, 1)
        // Misaligned, past the BAR, or another BAR: refused.
        rig.device.configWrite(offset: cap + 8, size: 4, value: 0x13)
        rig.device.configWrite(offset: cap + 12, size: 4, value: 2)
        XCTAssertEqual(rig.device.configRead(offset: cap + 16, size: 4), 0)
        rig.device.configWrite(offset: cap + 8, size: 4, value: 0x3FFE)
        rig.device.configWrite(offset: cap + 12, size: 4, value: 4)
        XCTAssertEqual(rig.device.configRead(offset: cap + 16, size: 4), 0)
        rig.device.configWrite(offset: cap + 4, size: 1, value: 1)
        rig.device.configWrite(offset: cap + 8, size: 4, value: 0)
        XCTAssertEqual(rig.device.configRead(offset: cap + 16, size: 4), 0)
    }

    func testDoorbellsFollowDriverOKAndBARs() throws {
        let rig = try VirtioBlkRig()
        XCTAssertTrue(rig.notifications.doorbells.isEmpty)
        rig.startModern()
        XCTAssertEqual(rig.notifications.doorbells.map(\.doorbell), [
            Doorbell(space: .memory, address: VirtioBlkRig.modernBase + 0x3000, length: 2),
            Doorbell(space: .port, address: VirtioBlkRig.legacyBase + 0x10, length: 2, value: 0),
        ])
        // A doorbell the accelerator serves reaches the queue.
        rig.writeHeader(type: 0, sector: 4)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 512, true), (VirtioBlkRig.statusByte, 1, true)])
        rig.notifications.doorbells[0].handler()
        XCTAssertTrue(rig.waitUsed(1))
        // Moving the BAR moves the doorbell; disabling memory decoding removes it.
        rig.device.configWrite(offset: 0x20, size: 4, value: 0xD000_0000)
        XCTAssertEqual(rig.notifications.doorbells.first?.doorbell.address, 0xD000_3000)
        rig.device.configWrite(offset: 0x04, size: 2, value: 0x0005)
        XCTAssertEqual(rig.notifications.doorbells.map(\.doorbell.space), [.port])
        rig.setCommon(0x14, size: 1, 0)
        rig.device.configWrite(offset: 0x04, size: 2, value: 0x0007)
        XCTAssertTrue(rig.notifications.doorbells.isEmpty, "a reset removes them")
    }

    func testStateRoundTripAndHostileState() throws {
        let rig = try VirtioBlkRig()
        rig.startModern()
        XCTAssertEqual(rig.request(type: 0, sector: 1, dataLength: 512, dataWritable: true), 0)
        var writer = StateWriter()
        rig.device.saveState(to: &writer)
        let saved = writer.bytes

        let other = try VirtioBlkRig()
        var reader = StateReader(bytes: saved, section: "virtio")
        try other.device.loadState(from: &reader, version: 1)
        XCTAssertTrue(reader.isAtEnd)
        XCTAssertEqual(other.status, 0x0F)
        XCTAssertEqual(other.device.transport.queues, rig.device.transport.queues)
        // The restored device serves the next request on the same rings.
        // The guest's RAM travels with the device state: copy the rings over.
        try other.memory.write(at: 0x10000, bytes: try rig.memory.readBytes(at: 0x10000, count: 0x3000))
        other.ring.availIndex = rig.ring.availIndex
        other.ring.nextDescriptor = rig.ring.nextDescriptor
        XCTAssertEqual(other.request(type: 0, sector: 2, dataLength: 512, dataWritable: true), 0)

        // Truncations and a corrupted queue address are refused, never crash.
        for cut in stride(from: 0, to: saved.count, by: 7) {
            var r = StateReader(bytes: Array(saved[0..<cut]), section: "virtio")
            let fresh = try VirtioBlkRig()
            XCTAssertThrowsError(try fresh.device.loadState(from: &r, version: 1))
        }
        var corrupt = saved
        corrupt[corrupt.count - 30] ^= 0xFF  // inside the queue's ring addresses
        var r = StateReader(bytes: corrupt, section: "virtio")
        XCTAssertThrowsError(try VirtioBlkRig().device.loadState(from: &r, version: 1))
        // A reserved bit in MSI-X vector 0's control word (after the PCI config: 4 + 256 + 1).
        var badControl = saved
        badControl[4 + 256 + 1 + 4 + 13] = 1
        var m = StateReader(bytes: badControl, section: "virtio")
        XCTAssertThrowsError(try VirtioBlkRig().device.loadState(from: &m, version: 1))
    }

    func testSystemResetRestoresPowerOnState() throws {
        let rig = try VirtioBlkRig()
        rig.startModern()
        rig.device.reset()
        XCTAssertEqual(rig.device.pci.mapped[4], nil, "BARs unprogrammed")
        XCTAssertEqual(rig.device.pci.config.get16(0x04), 0)
        XCTAssertEqual(rig.device.transport.status, 0)
        XCTAssertEqual(rig.device.transport.queues[0], SplitVirtqueue(maxSize: 256))
    }

    /// Without accelerator fast paths (Xen): no doorbells, MSIs through the interrupt sink.
    func testExitFallbackDeliversMSIThroughTheSink() throws {
        final class MSISink: InterruptSink, @unchecked Sendable {
            var messages: [MSIMessage] = []
            func setGSI(_ gsi: UInt32, level: Bool) {}
            func signalMSI(_ message: MSIMessage) { messages.append(message) }
        }
        let sink = MSISink()
        let rig = try VirtioBlkRig(fallback: sink)
        let msixCap = try XCTUnwrap(capabilities(rig)[0x91]).at
        rig.startModern { $0 & ~(1 << 29) }
        XCTAssertTrue(rig.notifications.doorbells.isEmpty)
        rig.setCommon(0x16, size: 2, 0)
        rig.setCommon(0x1A, size: 2, 0)
        rig.device.write(region: 1, offset: 0, size: 4, value: 0xFEE0_1000)
        rig.device.write(region: 1, offset: 8, size: 4, value: 0x51)
        rig.device.write(region: 1, offset: 12, size: 4, value: 0)
        rig.device.configWrite(offset: msixCap + 2, size: 2, value: 0x8000)
        XCTAssertEqual(rig.request(type: 0, sector: 0, dataLength: 512, dataWritable: true), 0)
        XCTAssertEqual(sink.messages, [MSIMessage(address: 0xFEE0_1000, data: 0x51)])
    }

    func testNoQueueProcessingWithoutBusMastering() throws {
        let rig = try VirtioBlkRig()
        rig.startModern()
        rig.device.configWrite(offset: 0x04, size: 2, value: 0x0003)
        rig.writeHeader(type: 0, sector: 1)
        rig.ring.submit([(VirtioBlkRig.header, 16, false), (VirtioBlkRig.data, 512, true), (VirtioBlkRig.statusByte, 1, true)])
        rig.kick()
        Thread.sleep(forTimeInterval: 0.05)
        rig.poster.drain { true }
        XCTAssertEqual(rig.ring.usedIndex, 0, "rings untouched")
        rig.device.configWrite(offset: 0x04, size: 2, value: 0x0007)
        rig.kick()
        XCTAssertTrue(rig.waitUsed(1))
    }
}
