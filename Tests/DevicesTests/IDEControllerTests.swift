import Backends
import DMCore
@testable import Devices
import XCTest

/// PIIX3 IDE with an ATA disk, driven through its ports like SeaBIOS and Linux's ata_piix do.
final class IDEControllerTests: XCTestCase {
    func testPCIIdentityAndLegacyMode() throws {
        let rig = try IDETestRig()
        let config = rig.controller.pci.config
        XCTAssertEqual(config.vendorID, 0x8086)
        XCTAssertEqual(config.deviceID, 0x7010)
        XCTAssertEqual(config.get8(0x09), 0x80, "bus-master capable, both channels in compatibility mode")
        XCTAssertEqual(config.get16(0x0A), 0x0101, "IDE controller class")
        XCTAssertEqual(config.interruptPin, 0, "legacy IRQs 14/15, no INTx")
    }

    func testIdentifyDevice() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.outb(0x1F6, 0xA0)
        rig.outb(0x1F7, 0xEC)
        XCTAssertEqual(rig.waitNotBusy() & 0x08, 0x08, "DRQ")
        XCTAssertTrue(rig.irq14)
        XCTAssertEqual(rig.inb(0x1F7) & 0x58, 0x58)
        XCTAssertFalse(rig.irq14, "reading status acknowledges the interrupt")
        let bytes = rig.readData(512)
        func word(_ i: Int) -> UInt16 { UInt16(bytes[2 * i]) | UInt16(bytes[2 * i + 1]) << 8 }
        XCTAssertEqual(word(0), 0x0040)
        XCTAssertEqual(word(60), 64)
        XCTAssertEqual(word(100), 64)
        XCTAssertNotEqual(word(83) & (1 << 10), 0, "LBA48")
        var model = ""
        for i in 27..<47 { model += String(UnicodeScalar(UInt8(word(i) >> 8))) + String(UnicodeScalar(UInt8(word(i) & 0xFF))) }
        XCTAssertEqual(model.trimmingCharacters(in: .whitespaces), "QEMU HARDDISK")
        XCTAssertEqual(rig.inb(0x1F7), 0x50, "ready after the last word")
    }

    func testPIOReadSectorsLBA28InterruptsPerBlock() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.command28(0x20, lba: 5, count: 3)
        for sector in 5..<8 {
            XCTAssertEqual(rig.waitNotBusy() & 0x08, 0x08, "DRQ for sector \(sector)")
            XCTAssertTrue(rig.irq14, "an interrupt per block")
            _ = rig.inb(0x1F7)
            XCTAssertEqual(rig.readData(512), IDETestRig.expectedBlock(sector, size: 512))
        }
        XCTAssertEqual(rig.inb(0x3F6), 0x50)
        XCTAssertEqual(rig.disk?.stats.readBytes, 3 * 512)
        XCTAssertEqual(rig.disk?.stats.readOperations, 1)
    }

    func testThirtyTwoBitPIO() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.command28(0x20, lba: 12, count: 1)
        rig.waitNotBusy()
        var bytes: [UInt8] = []
        for _ in 0..<128 {
            let v = rig.controller.read(region: PIIX3IDEController.primaryCommandRegion, offset: 0, size: 4)
            for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
        }
        XCTAssertEqual(bytes, IDETestRig.expectedBlock(12, size: 512))
        XCTAssertEqual(rig.inb(0x3F6), 0x50)
    }

    func testChsAddressing() throws {
        let rig = try IDETestRig(diskSectors: 2048)
        // Cylinder 1, head 2, sector 3 with 16 heads and 63 sectors: (1*16+2)*63+2 = 1136.
        rig.outb(0x1F6, 0xA2)
        rig.outb(0x1F2, 1); rig.outb(0x1F3, 3); rig.outb(0x1F4, 1); rig.outb(0x1F5, 0)
        rig.outb(0x1F7, 0x20)
        rig.waitNotBusy()
        XCTAssertEqual(rig.readData(512), IDETestRig.expectedBlock(1136, size: 512))
    }

    func testWriteMultipleLBA48ThenReadMultiple() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.outb(0x1F6, 0xA0); rig.outb(0x1F2, 4); rig.outb(0x1F7, 0xC6)  // SET MULTIPLE 4
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        rig.command48(0x39, lba: 10, count: 6)  // WRITE MULTIPLE EXT
        let payload = (0..<(6 * 512)).map { UInt8(truncatingIfNeeded: $0 * 7) }
        XCTAssertEqual(rig.waitNotBusy() & 0x08, 0x08)
        XCTAssertFalse(rig.irq14, "the first block is requested without an interrupt")
        rig.writeData(Array(payload[0..<2048]))
        XCTAssertEqual(rig.waitNotBusy() & 0x08, 0x08)
        XCTAssertTrue(rig.irq14)
        _ = rig.inb(0x1F7)
        rig.writeData(Array(payload[2048...]))
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        XCTAssertTrue(rig.irq14, "completion interrupt")
        _ = rig.inb(0x1F7)
        rig.command48(0x29, lba: 10, count: 6)  // READ MULTIPLE EXT
        var back: [UInt8] = []
        while rig.waitNotBusy() & 0x08 != 0 {
            _ = rig.inb(0x1F7)
            back += rig.readData(512)
        }
        XCTAssertEqual(back, payload)
        XCTAssertEqual(rig.disk?.stats.writtenBytes, 6 * 512)
    }

    func testDMAReadAndWriteThroughPRDs() throws {
        let rig = try IDETestRig(diskSectors: 64)
        // Read 3 sectors into two segments: 1000 bytes at 0x10000, the rest at 0x20000.
        try rig.writePRD(at: 0x8000, [(0x10000, 1000, false), (0x20000, 1048, true)])
        rig.command28(0xC8, lba: 2, count: 3)
        rig.startBusMaster(table: 0x8000, toMemory: true)
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        XCTAssertTrue(rig.irq14)
        XCTAssertEqual(rig.inb(0xC002) & 0x07, 0x04, "interrupt, no error, no longer active")
        let first = try rig.legacy.memory.readBytes(at: 0x10000, count: 1000)
        let second = try rig.legacy.memory.readBytes(at: 0x20000, count: 536)
        XCTAssertEqual(Array(first[0..<512]), IDETestRig.expectedBlock(2, size: 512))
        XCTAssertEqual(Array(first[512...]) + Array(second[0..<24]), IDETestRig.expectedBlock(3, size: 512))
        rig.outb(0xC000, 0)

        // Write 2 sectors from 0x30000 with WRITE DMA EXT, read them back by PIO.
        let payload = (0..<1024).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }
        try rig.legacy.memory.write(at: 0x30000, bytes: payload)
        try rig.writePRD(at: 0x8100, [(0x30000, 1024, true)])
        rig.command48(0x35, lba: 40, count: 2)
        rig.startBusMaster(table: 0x8100, toMemory: false)
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        rig.outb(0xC000, 0)
        rig.command28(0x20, lba: 40, count: 2)
        var back: [UInt8] = []
        while rig.waitNotBusy() & 0x08 != 0 { back += rig.readData(512) }
        XCTAssertEqual(back, payload)
    }

    func testFlushSetFeaturesAndInitializeDeviceParameters() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.outb(0x1F6, 0xA0)
        rig.outb(0x1F7, 0xE7)
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        XCTAssertEqual(rig.disk?.stats.flushOperations, 1)
        rig.outb(0x1F1, 0x03); rig.outb(0x1F2, 0x42); rig.outb(0x1F7, 0xEF)  // UDMA 2
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        rig.outb(0x1F1, 0x77); rig.outb(0x1F7, 0xEF)
        XCTAssertEqual(rig.waitNotBusy(), 0x41, "unknown feature is aborted")
        XCTAssertEqual(rig.inb(0x1F1), 0x04)
        rig.outb(0x1F6, 0xA7); rig.outb(0x1F2, 32); rig.outb(0x1F7, 0x91)  // 8 heads, 32 sectors
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        XCTAssertEqual(rig.disk?.info.stats.flushOperations, 1)
    }

    func testSoftResetSignaturesAndNIEN() throws {
        let rig = try IDETestRig(diskSectors: 64, cdBlocks: 4)
        rig.outb(0x376, 0x04)
        XCTAssertEqual(rig.inb(0x376) & 0x80, 0x80, "busy during SRST")
        rig.outb(0x376, 0x02)  // release, interrupts disabled
        rig.outb(0x176, 0xA0)
        XCTAssertEqual([rig.inb(0x172), rig.inb(0x173), rig.inb(0x174), rig.inb(0x175)], [1, 1, 0x14, 0xEB], "packet signature")
        rig.outb(0x177, 0xA1)  // IDENTIFY PACKET with nIEN set: no line, but data
        XCTAssertEqual(rig.waitNotBusy(1) & 0x08, 0x08)
        XCTAssertFalse(rig.irq15, "nIEN masks INTRQ")
        rig.outb(0x376, 0x00)
        XCTAssertTrue(rig.irq15, "the pending interrupt shows once unmasked")
        // The ATA disk's signature.
        rig.outb(0x3F6, 0x04); rig.outb(0x3F6, 0x00)
        XCTAssertEqual([rig.inb(0x1F4), rig.inb(0x1F5), rig.inb(0x1F7)], [0, 0, 0x50])
    }

    func testAbsentDriveReadsZeroAndIgnoresCommands() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.outb(0x1F6, 0xB0)  // the slave, which does not exist
        XCTAssertEqual(rig.inb(0x1F7), 0)
        rig.outb(0x1F7, 0xEC)
        XCTAssertEqual(rig.inb(0x1F7), 0)
        XCTAssertFalse(rig.irq14)
        XCTAssertEqual(rig.inb(0x177), 0, "secondary channel without drives")
        rig.outb(0x172, 0x55)
        XCTAssertNotEqual(rig.inb(0x172), 0x55, "no device latches the register (SeaBIOS's presence test)")
    }

    func testXenUnplugRemovesDisksButNotCDROMs() throws {
        let rig = try IDETestRig(diskSectors: 64, cdBlocks: 4)
        XCTAssertEqual(rig.controller.unplugDisks(keepPrimaryMaster: true), [], "bit 2 keeps the primary master")
        XCTAssertEqual(rig.controller.unplugDisks(keepPrimaryMaster: false), ["ide0-hd0"])
        rig.outb(0x1F6, 0xA0)
        XCTAssertEqual(rig.inb(0x1F7), 0, "the disk is gone")
        rig.outb(0x1F7, 0xEC)
        XCTAssertFalse(rig.irq14)
        XCTAssertEqual(rig.controller.drives.map(\.id), ["ide1-cd0"])
        rig.packet([0x00])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0, "the CD still answers")
    }

    func testSnapshotMidPIOReadResumes() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.command28(0x20, lba: 7, count: 2)
        rig.waitNotBusy()
        let head = rig.readData(100)
        var writer = StateWriter()
        rig.controller.saveState(to: &writer)

        let other = try IDETestRig(diskSectors: 64)
        var reader = StateReader(bytes: writer.bytes, section: other.controller.stateID)
        try other.controller.loadState(from: &reader, version: other.controller.stateVersion)
        XCTAssertTrue(reader.isAtEnd)
        let rest = other.readData(412)
        XCTAssertEqual(head + rest, IDETestRig.expectedBlock(7, size: 512))
        XCTAssertEqual(other.waitNotBusy() & 0x08, 0x08)
        XCTAssertEqual(other.readData(512), IDETestRig.expectedBlock(8, size: 512))

        var bad = writer.bytes
        bad[bad.count / 2] ^= 0xFF
        var badReader = StateReader(bytes: Array(bad.prefix(bad.count - 3)), section: "piix3-ide")
        XCTAssertThrowsError(try other.controller.loadState(from: &badReader, version: 1))
    }

    func testResetCancelsInFlightRequestAndClearsState() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.command28(0x20, lba: 1, count: 200 > 64 ? 8 : 8)
        rig.controller.reset()
        XCTAssertEqual(rig.inb(0x1F7), 0x50)
        rig.poster.drain { true }
        XCTAssertEqual(rig.inb(0x1F7), 0x50, "a late completion does not revive the cancelled command")
        rig.command28(0x20, lba: 3, count: 1)
        rig.waitNotBusy()
        XCTAssertEqual(rig.readData(512), IDETestRig.expectedBlock(3, size: 512))
    }
}
