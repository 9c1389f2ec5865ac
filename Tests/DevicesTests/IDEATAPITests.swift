import Backends
import DMCore
@testable import Devices
import XCTest

/// The ATAPI CD-ROM: the PACKET protocol, the MMC commands firmware and Linux use, media change.
final class IDEATAPITests: XCTestCase {
    func testInquiryAndReadCapacity() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 10)
        rig.packet([0x12, 0, 0, 0, 36])
        let (inquiry, status) = rig.atapiReadAll()
        XCTAssertEqual(status & 0x01, 0)
        XCTAssertEqual(inquiry.count, 36)
        XCTAssertEqual(inquiry[0], 0x05, "CD/DVD device")
        XCTAssertEqual(inquiry[1], 0x80, "removable")
        XCTAssertEqual(String(decoding: inquiry[16..<28], as: UTF8.self), "QEMU DVD-ROM")
        rig.packet([0x25])
        let (capacity, _) = rig.atapiReadAll()
        XCTAssertEqual(capacity, [0, 0, 0, 9, 0, 0, 8, 0])
    }

    func testRead10WithSmallByteCountLimit() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 10)
        rig.packet([0x28, 0, 0, 0, 0, 3, 0, 0, 2], limit: 1000)
        let (data, status) = rig.atapiReadAll()
        XCTAssertEqual(status & 0x01, 0)
        XCTAssertEqual(data, IDETestRig.expectedBlock(3, size: 2048) + IDETestRig.expectedBlock(4, size: 2048))
        XCTAssertEqual(rig.inb(0x172) & 0x03, 0x03, "interrupt reason: status phase")
    }

    func testRead12ByDMA() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 10)
        try rig.writePRD(at: 0x9000, [(0x40000, 4096, true)])
        rig.packet([0xA8, 0, 0, 0, 0, 7, 0, 0, 0, 2], dma: true)
        rig.startBusMaster(table: 0x9000, toMemory: true, channel: 1)
        XCTAssertEqual(rig.waitNotBusy(1) & 0x09, 0)
        XCTAssertTrue(rig.irq15)
        XCTAssertEqual(try rig.legacy.memory.readBytes(at: 0x40000, count: 4096),
                       IDETestRig.expectedBlock(7, size: 2048) + IDETestRig.expectedBlock(8, size: 2048))
    }

    func testReadTOCFormats() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 300)
        rig.packet([0x43, 0, 0, 0, 0, 0, 0, 0x03, 0x24])
        let (toc, _) = rig.atapiReadAll()
        XCTAssertEqual(toc, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x16, 0xAA, 0, 0, 0, 0x01, 0x2C])
        rig.packet([0x43, 0x02, 0, 0, 0, 0, 0, 0x03, 0x24])  // MSF
        let (msf, _) = rig.atapiReadAll()
        XCTAssertEqual(Array(msf[8..<12]), [0, 0, 2, 0], "track 1 at 00:02:00")
        rig.packet([0x43, 0, 1, 0, 0, 0, 0, 0, 12])
        let (session, _) = rig.atapiReadAll()
        XCTAssertEqual(session.count, 12)
        XCTAssertEqual(Array(session[0..<4]), [0, 10, 1, 1])
        rig.packet([0x43, 0x02, 2, 0, 0, 0, 0, 0x03, 0x24])
        let (raw, _) = rig.atapiReadAll()
        XCTAssertEqual(raw.count, 4 + 4 * 11)
        XCTAssertEqual(raw[4 + 2 * 11 + 3], 0xA2, "lead-out point")
    }

    func testModeSenseGetConfigurationAndEvents() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 10)
        rig.packet([0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 64])
        let (mode10, _) = rig.atapiReadAll()
        XCTAssertEqual(mode10.count, 8 + 22)
        XCTAssertEqual(mode10[8], 0x2A)
        rig.packet([0x1A, 0, 0x3F, 0, 255])
        let (mode6, _) = rig.atapiReadAll()
        XCTAssertEqual(Int(mode6[0]), mode6.count - 1)
        rig.packet([0x46, 0, 0, 0, 0, 0, 0, 0, 64])
        let (config, _) = rig.atapiReadAll()
        XCTAssertEqual(Array(config[6..<8]), [0, 0x08], "current profile: CD-ROM")
        rig.packet([0x51, 0, 0, 0, 0, 0, 0, 0, 34])
        let (disc, _) = rig.atapiReadAll()
        XCTAssertEqual(Array(disc.prefix(4)), [0, 32, 0x0E, 1], "READ DISC INFORMATION")
        rig.packet([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
        let (event, _) = rig.atapiReadAll()
        XCTAssertEqual(event, [0, 6, 4, 0x10, 0, 2, 0, 0], "media class, no event, medium present")
        rig.packet([0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8])
        _ = rig.atapiReadAll()
        XCTAssertEqual(rig.requestSense().key, 0x05, "asynchronous GESN is refused")
    }

    func testEmptyDriveThenInsertedMediumAndEject() throws {
        let rig = try IDETestRig(diskSectors: nil, emptyCDROM: true)
        rig.packet([0x00])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0x01)
        XCTAssertEqual(rig.inb(0x171) >> 4, 0x02, "sense key in the error register")
        XCTAssertTrue(rig.requestSense() == (0x02, 0x3A, 0x01))
        rig.packet([0x25])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0x01, "no capacity without a medium")

        // The monitor inserts a medium into the empty drive (QEMU 7.2 crashed here).
        guard let drive = rig.cdrom else { return XCTFail() }
        var moves: [Bool] = []
        drive.onTrayMoved = { _, open in moves.append(open) }
        let path = try IDETestRig.patternImage(at: rig.directory.appendingPathComponent("new.iso").path, blocks: 5, blockSize: 2048)
        try drive.changeMedium(path: path, format: .raw, readOnly: true)
        XCTAssertEqual(moves, [true, false])
        rig.packet([0x00])
        _ = rig.atapiReadAll()
        XCTAssertTrue(rig.requestSense() == (0x02, 0x3A, 0x00), "first: not ready")
        rig.packet([0x00])
        _ = rig.atapiReadAll()
        XCTAssertTrue(rig.requestSense() == (0x06, 0x28, 0x00), "then: medium may have changed")
        rig.packet([0x00])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0, "then ready")
        rig.packet([0x28, 0, 0, 0, 0, 4, 0, 0, 1])
        XCTAssertEqual(rig.atapiReadAll().0, IDETestRig.expectedBlock(4, size: 2048))

        // The guest locks the tray: eject fails without force, and asks the guest instead.
        rig.packet([0x1E, 0, 0, 0, 1])
        _ = rig.atapiReadAll()
        XCTAssertThrowsError(try drive.eject(force: false))
        rig.packet([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
        XCTAssertEqual(rig.atapiReadAll().0[4], 1, "eject request event")
        rig.packet([0x1B, 0, 0, 0, 0x02])  // guest eject while locked
        _ = rig.atapiReadAll()
        XCTAssertTrue(rig.requestSense() == (0x02, 0x53, 0x02))
        try drive.eject(force: true)
        XCTAssertTrue(drive.trayOpen)
        XCTAssertNil(drive.info.path)
        rig.packet([0x00])
        _ = rig.atapiReadAll()
        XCTAssertTrue(rig.requestSense() == (0x02, 0x3A, 0x02), "tray open")
    }

    func testStepwiseMediaChangeAsQMPDoesIt() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 4)
        guard let drive = rig.cdrom else { return XCTFail() }
        let path = try IDETestRig.patternImage(at: rig.directory.appendingPathComponent("b.iso").path, blocks: 6, blockSize: 2048)
        let backend = try BlockBackend(path: path, options: BlockOpenOptions(format: .raw, readOnly: true), workers: 1)
        XCTAssertThrowsError(try drive.putMedium(backend), "tray closed")
        drive.openTray()
        XCTAssertThrowsError(try drive.putMedium(backend), "old medium still in")
        drive.removeMedium()
        try drive.putMedium(backend)
        XCTAssertTrue(drive.trayOpen)
        drive.closeTray()
        XCTAssertEqual(drive.info.size, 6 * 2048)
        rig.packet([0x25])
        _ = rig.atapiReadAll()
        XCTAssertTrue(rig.requestSense() == (0x02, 0x3A, 0x00), "the change is reported")
        XCTAssertThrowsError(try ATADrive(kind: .disk, medium: nil, id: "hd", serial: "x").eject(force: true))
    }

    func testATACommandsOnPacketDeviceAbortWithSignature() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 4)
        rig.outb(0x176, 0xA0)
        rig.outb(0x177, 0xEC)
        XCTAssertEqual(rig.waitNotBusy(1) & 0x01, 0x01)
        XCTAssertEqual([rig.inb(0x174), rig.inb(0x175)], [0x14, 0xEB])
        rig.outb(0x177, 0x08)  // DEVICE RESET
        XCTAssertEqual(rig.inb(0x177), 0)
    }
}
