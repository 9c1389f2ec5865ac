import Backends
import DMCore
@testable import Devices
import XCTest

/// A guest that lies: out-of-range LBAs, bad PRD tables, huge counts, absent devices, stray data
/// port accesses. Each ends as an aborted command or an I/O error for the guest; the device model
/// neither crashes nor touches anything outside the image or guest RAM.
final class IDEHostileTests: XCTestCase {
    func testOutOfRangeLBAsAreAborted() throws {
        let rig = try IDETestRig(diskSectors: 64)
        rig.command28(0x20, lba: 63, count: 2)  // one past the end
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        XCTAssertEqual(rig.inb(0x1F1), 0x04)
        XCTAssertTrue(rig.irq14)
        rig.command28(0x30, lba: 0x0FFF_FFFF, count: 0)  // 256 sectors at the top of LBA28
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.command48(0x24, lba: 0xFFFF_FFFF_FFFF, count: 0)  // 65536 sectors at the top of LBA48
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.command48(0x25, lba: 1, count: 0)  // DMA of 65536 sectors on a 64-sector disk
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.outb(0x1F6, 0xA0); rig.outb(0x1F2, 1); rig.outb(0x1F3, 0); rig.outb(0x1F7, 0x20)  // CHS sector 0
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.outb(0x1F2, 0); rig.outb(0x1F7, 0xC4)  // READ MULTIPLE before SET MULTIPLE
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.outb(0x1F2, 3); rig.outb(0x1F7, 0xC6)  // multiple count not a power of two
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        XCTAssertEqual(rig.disk?.stats.readBytes, 0)
    }

    func testCDReadsOutsideTheMediumFail() throws {
        let rig = try IDETestRig(diskSectors: nil, cdBlocks: 4)
        rig.packet([0x28, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0x01)
        XCTAssertTrue(rig.requestSense() == (0x05, 0x21, 0))
        rig.packet([0xA8, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0x01)
        rig.packet([0xFF])
        XCTAssertEqual(rig.atapiReadAll().1 & 0x01, 0x01, "unknown opcode")
        XCTAssertTrue(rig.requestSense() == (0x05, 0x20, 0))
    }

    func testBadPRDTablesEndInDMAErrors() throws {
        let rig = try IDETestRig(diskSectors: 64, ramSize: 1 << 20)
        let cases: [(String, [(UInt32, UInt32, Bool)])] = [
            ("segment outside RAM", [(0xFFFF_F000, 1024, true)]),
            ("segment straddling the end of RAM", [(0x000F_FF00, 1024, true)]),
            ("table too short", [(0x10000, 512, true)]),
            ("a zero count (64 KiB) segment running off the end of RAM", [(0x000F_FE00, 0, true)]),
        ]
        for (what, entries) in cases {
            try rig.writePRD(at: 0x8000, entries)
            rig.command28(0xC8, lba: 0, count: 2)
            rig.startBusMaster(table: 0x8000, toMemory: true)
            XCTAssertEqual(rig.waitNotBusy(), 0x41, what)
            XCTAssertEqual(rig.inb(0xC002) & 0x03, 0x02, "\(what): BM error, not active")
            rig.outb(0xC000, 0)
            _ = rig.inb(0x1F7)
        }
        // The table itself outside RAM.
        rig.command28(0xCA, lba: 0, count: 1)
        rig.startBusMaster(table: 0xFFFF_FFF8, toMemory: false)
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.outb(0xC000, 0)
        // An endless table: 8300 two-byte entries without EOT for a 32 KiB transfer; the walk
        // stops at 8192 entries (a table lives in 64 KiB).
        let endless = [(UInt32, UInt32, Bool)](repeating: (0x10000, 2, false), count: 8300)
        try rig.writePRD(at: 0x20000, endless)
        rig.command28(0xCA, lba: 0, count: 64)
        rig.startBusMaster(table: 0x20000, toMemory: false)
        XCTAssertEqual(rig.waitNotBusy(), 0x41)
        rig.outb(0xC000, 0)
        XCTAssertEqual(rig.disk?.stats.writtenBytes, 0, "nothing written from a bad table")
        // A huge transfer with a plausible table still finishes, sector by sector.
        try rig.writePRD(at: 0x8000, [(0x10000, 0, false), (0x20000, 0, false), (0x30000, 0, false), (0x40000, 0, true)])
        rig.command48(0x25, lba: 0, count: 64)
        rig.startBusMaster(table: 0x8000, toMemory: true)
        XCTAssertEqual(rig.waitNotBusy(), 0x50)
        XCTAssertEqual(try rig.legacy.memory.readBytes(at: 0x10000 + 63 * 512, count: 4), [63, 0, 0, 0])
    }

    func testDataPortWithoutDRQ() throws {
        let rig = try IDETestRig(diskSectors: 64, emptyCDROM: true)
        XCTAssertEqual(rig.inw(0x1F0), 0xFFFF)
        rig.outw(0x1F0, 0x1234)
        XCTAssertEqual(rig.inw(0x170), 0xFFFF)
        // Reading past the end of a block: the extra accesses see nothing.
        rig.outb(0x1F6, 0xA0); rig.outb(0x1F7, 0xEC)
        rig.waitNotBusy()
        _ = rig.readData(512)
        XCTAssertEqual(rig.inw(0x1F0), 0xFFFF)
        XCTAssertGreaterThan(rig.errors.count, 0, "reported as guest errors")
    }

    func testRandomRegisterTrafficNeverCrashes() throws {
        let rig = try IDETestRig(diskSectors: 64, cdBlocks: 8)
        var generator = SystemRandomNumberGenerator()
        let ports: [UInt16] = Array(0x1F0...0x1F7) + Array(0x170...0x177) + [0x3F6, 0x376] + Array(0xC000...0xC00F)
        for _ in 0..<20_000 {
            let port = ports.randomElement(using: &generator) ?? 0x1F7
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: _ = rig.inb(port)
            case 1: _ = rig.inw(port)
            case 2 where port == 0xC000 || port == 0xC008: rig.outb(port, UInt8.random(in: 0...1) | 0x08)
            case 2 where port == 0x3F6 || port == 0x376: rig.outb(port, UInt8.random(in: 0...0xFF) & 0x86)
            default: rig.outb(port, UInt8.random(in: 0...0xFF, using: &generator))
            }
            rig.poster.drain { true }
        }
        // Whatever state the fuzzing left, a reset brings back a working disk.
        rig.controller.reset()
        rig.poster.drain { true }
        rig.command28(0x20, lba: 9, count: 1)
        rig.waitNotBusy()
        XCTAssertEqual(rig.readData(512), IDETestRig.expectedBlock(9, size: 512))
    }

    func testStateLoadRejectsGarbage() throws {
        let rig = try IDETestRig(diskSectors: 64)
        var writer = StateWriter()
        rig.controller.saveState(to: &writer)
        for cut in [0, 10, 300, writer.bytes.count - 1] {
            var reader = StateReader(bytes: Array(writer.bytes.prefix(cut)), section: "piix3-ide")
            XCTAssertThrowsError(try rig.controller.loadState(from: &reader, version: 1))
        }
        var reader = StateReader(bytes: writer.bytes, section: "piix3-ide")
        XCTAssertThrowsError(try rig.controller.loadState(from: &reader, version: 7))
    }
}
