import Backends
import DMCore
@testable import Devices
import Foundation
import Synchronization
import XCTest

final class MSIRecorder: Sendable {
    private let list = Mutex<[MSIMessage]>([])
    func record(_ message: MSIMessage) { list.withLock { $0.append(message) } }
    var messages: [MSIMessage] { list.withLock { $0 } }
}

/// An AHCI controller with a patterned raw disk on port 0 and (optionally) a CD on port 1,
/// driven through ABAR like a guest driver: command lists, command tables, PRDTs and the
/// received-FIS area are built in simulated guest RAM.
final class AHCITestRig {
    static let commandList: UInt64 = 0x1_0000
    static let fisArea: UInt64 = 0x1_1000
    static let tables: UInt64 = 0x2_0000  // slot n's table at tables + n * 0x1000
    static let data: UInt64 = 0x10_0000

    let legacy: LegacyTestRig
    let poster = QueuedPoster()
    let controller: AHCIController
    let drives: PatternDrives
    let msi = MSIRecorder()
    let errors = GuestErrorLog(burst: 1000, sink: { _ in })
    var memory: PhysicalMemory { legacy.memory }
    var disk: ATADrive? { drives.disk }
    var cdrom: ATADrive? { drives.cdrom }

    init(diskSectors: Int? = 64, cdBlocks: Int? = nil, ramSize: Int = 4 << 20) throws {
        legacy = try LegacyTestRig(ramSize: ramSize)
        drives = try PatternDrives(diskSectors: diskSectors, cdBlocks: cdBlocks, diskID: "ahcidisk-0", cdID: "ahcicd-1")
        let msi = msi
        controller = AHCIController(memory: legacy.memory, poster: poster, msi: { msi.record($0) }, log: errors)
        if let disk = drives.disk { controller.attach(disk, port: 0) }
        if let cdrom = drives.cdrom { controller.attach(cdrom, port: 1) }
    }

    // MARK: registers

    func hba(_ offset: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: controller.read(region: 5, offset: offset, size: 4)) }
    func setHBA(_ offset: UInt64, _ value: UInt32) { controller.write(region: 5, offset: offset, size: 4, value: UInt64(value)) }
    func port(_ p: Int, _ offset: UInt64) -> UInt32 { hba(0x100 + 0x80 * UInt64(p) + offset) }
    func setPort(_ p: Int, _ offset: UInt64, _ value: UInt32) { setHBA(0x100 + 0x80 * UInt64(p) + offset, value) }

    /// SeaBIOS's bring-up: list and FIS area, FIS receive on, started, interrupts enabled.
    func startPort(_ p: Int) {
        setPort(p, 0x00, UInt32(Self.commandList + UInt64(p) * 0x400))
        setPort(p, 0x04, 0)
        setPort(p, 0x08, UInt32(Self.fisArea + UInt64(p) * 0x100))
        setPort(p, 0x0C, 0)
        setPort(p, 0x14, AHCIPortInterrupt.defined)
        setPort(p, 0x18, port(p, 0x18) | AHCIPortCommand.fisReceiveEnable)
        setPort(p, 0x18, port(p, 0x18) | AHCIPortCommand.start)
        setHBA(0x04, 2)
    }

    func list(_ p: Int) -> UInt64 { Self.commandList + UInt64(p) * 0x400 }
    func fis(_ p: Int) -> UInt64 { Self.fisArea + UInt64(p) * 0x100 }

    /// A host-to-device register FIS (command bit set).
    static func registerFIS(_ command: UInt8, lba: UInt64 = 0, count: UInt16 = 0, features: UInt16 = 0,
                            device: UInt8 = 0x40) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 20)
        f[0] = 0x27
        f[1] = 0x80
        f[2] = command
        f[3] = UInt8(features & 0xFF)
        (f[4], f[5], f[6], f[7]) = (UInt8(lba & 0xFF), UInt8((lba >> 8) & 0xFF), UInt8((lba >> 16) & 0xFF), device)
        (f[8], f[9], f[10]) = (UInt8((lba >> 24) & 0xFF), UInt8((lba >> 32) & 0xFF), UInt8((lba >> 40) & 0xFF))
        f[11] = UInt8(features >> 8)
        (f[12], f[13]) = (UInt8(count & 0xFF), UInt8(count >> 8))
        return f
    }

    /// Writes slot `slot`'s header and table: `fis`, `packet` (ATAPI), PRDT of (address, bytes).
    func prepare(port p: Int = 0, slot: Int = 0, fis: [UInt8], prdt: [(UInt64, Int)], write: Bool = false,
                 packet: [UInt8]? = nil, table: UInt64? = nil, prdtLength: Int? = nil) throws {
        let table = table ?? Self.tables + UInt64(p * 32 + slot) * 0x1000
        let length = UInt32(prdtLength ?? prdt.count)
        let flags = length << 16 | (packet != nil ? 1 << 5 : 0) | (write ? 1 << 6 : 0) | 5
        let header = list(p) + UInt64(slot * 32)
        try memory.write(flags, at: header)
        try memory.write(UInt32(0), at: header + 4)
        try memory.write(table, at: header + 8)
        guard table < UInt64(legacy.ram.size) else { return }
        try memory.write(at: table, bytes: fis)
        if let packet { try memory.write(at: table + 0x40, bytes: packet + [UInt8](repeating: 0, count: 16 - packet.count)) }
        for (i, entry) in prdt.enumerated() {
            try memory.write(entry.0, at: table + 0x80 + UInt64(16 * i))
            try memory.write(UInt32(entry.1 - 1), at: table + 0x80 + UInt64(16 * i) + 12)
        }
    }

    /// Issues `slot` and runs completions until its CI bit clears or the port reports an error.
    @discardableResult
    func run(port p: Int = 0, slot: Int = 0) -> Bool {
        setPort(p, 0x38, 1 << UInt32(slot))
        return poster.drain { port(p, 0x38) & (1 << UInt32(slot)) == 0 || port(p, 0x10) & AHCIPortInterrupt.taskFileError != 0 }
    }

    func taskFile(_ p: Int = 0) -> (status: UInt8, error: UInt8) {
        let tfd = port(p, 0x20)
        return (UInt8(tfd & 0xFF), UInt8((tfd >> 8) & 0xFF))
    }

    func prdbc(port p: Int = 0, slot: Int = 0) throws -> UInt32 { try memory.read(UInt32.self, at: list(p) + UInt64(slot * 32 + 4)) }

    /// Clears ST and restarts the port, as SeaBIOS does after an error.
    func recover(_ p: Int = 0) {
        setPort(p, 0x18, port(p, 0x18) & ~AHCIPortCommand.start)
        setPort(p, 0x10, 0xFFFF_FFFF)
        setPort(p, 0x18, port(p, 0x18) | AHCIPortCommand.start)
    }

    func clearInterrupts(_ p: Int = 0) { setPort(p, 0x10, 0xFFFF_FFFF) }

    /// Runs whatever completions arrive within half a second (abandoned requests finishing).
    func settle(seconds: TimeInterval = 0.5) {
        let deadline = Date().addingTimeInterval(seconds)
        poster.drain { Date() > deadline }
    }

    func settleBriefly() { settle(seconds: 0.002) }
}

final class AHCIRegisterTests: XCTestCase {
    func testPCIIdentityCapabilitiesAndBARs() throws {
        let rig = try AHCITestRig()
        let c = rig.controller
        XCTAssertEqual(c.configRead(offset: 0, size: 4), 0x2922_8086)
        XCTAssertEqual(c.configRead(offset: 0x08, size: 4), 0x0106_0102)
        XCTAssertEqual(c.configRead(offset: 0x2C, size: 4), 0x1100_1AF4)
        XCTAssertEqual(c.configRead(offset: 0x3D, size: 1), 1, "INTA")
        XCTAssertEqual(c.configRead(offset: 0x06, size: 2) & 0x10, 0x10, "capability list")
        XCTAssertEqual(c.configRead(offset: 0x34, size: 1), 0x80)
        XCTAssertEqual(c.configRead(offset: 0x80, size: 4), 0x0080_A805, "MSI, next SATA, 64-bit, one vector")
        XCTAssertEqual(c.configRead(offset: 0xA8, size: 4), 0x0010_0012, "SATA capability 1.0, last")
        XCTAssertEqual(c.configRead(offset: 0xAC, size: 4), 0x48, "index/data pair in BAR4 at 0x10")
        // Capabilities are read-only except the MSI registers a driver programs.
        c.configWrite(offset: 0x80, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(c.configRead(offset: 0x80, size: 4), 0x00F1_A805)
        c.configWrite(offset: 0xA8, size: 4, value: 0)
        XCTAssertEqual(c.configRead(offset: 0xA8, size: 4), 0x0010_0012)
        // BAR sizing: 32 bytes of I/O and 4 KiB of memory.
        c.configWrite(offset: 0x20, size: 4, value: 0xFFFF_FFFF)
        c.configWrite(offset: 0x24, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(c.configRead(offset: 0x20, size: 4), 0xFFFF_FFE1)
        XCTAssertEqual(c.configRead(offset: 0x24, size: 4), 0xFFFF_F000)
        XCTAssertEqual(c.configRead(offset: 0x10, size: 4), 0, "no BAR0")
    }

    func testHBARegistersAndPortSignatures() throws {
        let rig = try AHCITestRig(cdBlocks: 4)
        XCTAssertEqual(rig.hba(0x00), 0xC014_1F05, "64-bit, NCQ, Gen1, AHCI only, 32 slots, 6 ports")
        XCTAssertEqual(rig.hba(0x04), 0x8000_0000, "AE, interrupts off")
        XCTAssertEqual(rig.hba(0x0C), 0x3F)
        XCTAssertEqual(rig.hba(0x10), 0x0001_0000)
        XCTAssertEqual(rig.hba(0x24), 0, "CAP2")
        XCTAssertEqual(rig.port(0, 0x28), 0x113, "disk: link up")
        XCTAssertEqual(rig.port(0, 0x24), 0x0000_0101, "ATA signature")
        XCTAssertEqual(rig.port(0, 0x20) & 0xFF, 0x50)
        XCTAssertEqual(rig.port(1, 0x24), 0xEB14_0101, "ATAPI signature")
        XCTAssertEqual(rig.port(2, 0x28), 0, "empty port: no device")
        XCTAssertEqual(rig.port(2, 0x20), 0x7F)
        XCTAssertEqual(rig.port(0, 0x18), AHCIPortCommand.spinUp | AHCIPortCommand.powerOn)
        // Sub-byte reads see the dword; sub-dword writes are dropped.
        XCTAssertEqual(rig.controller.read(region: 5, offset: 0x01, size: 1), 0x1F)
        XCTAssertEqual(rig.controller.read(region: 5, offset: 0x00, size: 8), 0x8000_0000_C014_1F05)
        rig.controller.write(region: 5, offset: 0x04, size: 1, value: 1)
        XCTAssertEqual(rig.hba(0x04), 0x8000_0000)
        // Port registers keep what the spec lets software write.
        rig.setPort(0, 0x00, 0x1234_5FFF)
        rig.setPort(0, 0x04, 0x1)
        rig.setPort(0, 0x08, 0x0000_0FFF)
        rig.setPort(0, 0x14, 0xFFFF_FFFF)
        XCTAssertEqual(rig.port(0, 0x00), 0x1234_5C00)
        XCTAssertEqual(rig.port(0, 0x04), 1)
        XCTAssertEqual(rig.port(0, 0x08), 0x0000_0F00)
        XCTAssertEqual(rig.port(0, 0x14), AHCIPortInterrupt.defined)
        rig.setPort(0, 0x18, AHCIPortCommand.fisReceiveEnable | AHCIPortCommand.start)
        XCTAssertEqual(rig.port(0, 0x18) & 0xC011, 0xC011, "FR and CR follow FRE and ST")
        // GHC.HR: ports back to defaults, pointers kept, HR reads 0.
        rig.setHBA(0x04, 3)
        XCTAssertEqual(rig.hba(0x04), 0x8000_0000)
        XCTAssertEqual(rig.port(0, 0x14), 0)
        XCTAssertEqual(rig.port(0, 0x18), AHCIPortCommand.spinUp | AHCIPortCommand.powerOn)
        XCTAssertEqual(rig.port(0, 0x00), 0x1234_5C00)
        // Machine reset clears them too.
        rig.controller.reset()
        XCTAssertEqual(rig.port(0, 0x00), 0)
    }

    func testIndexDataPairReachesABAR() throws {
        let rig = try AHCITestRig()
        let c = rig.controller
        c.write(region: 4, offset: 0x10, size: 4, value: 0x0C)
        XCTAssertEqual(c.read(region: 4, offset: 0x10, size: 4), 0x0C)
        XCTAssertEqual(c.read(region: 4, offset: 0x14, size: 4), 0x3F, "PI through the pair")
        c.write(region: 4, offset: 0x10, size: 4, value: 0x114)
        c.write(region: 4, offset: 0x14, size: 4, value: 0x1)
        XCTAssertEqual(rig.port(0, 0x14), 1, "P0IE written through the pair")
        XCTAssertEqual(c.read(region: 4, offset: 0x00, size: 4), 0)
        c.write(region: 4, offset: 0x14, size: 2, value: 0xFFFF)
        XCTAssertEqual(rig.port(0, 0x14), 1, "16-bit access ignored")
    }

    func testInterruptsFollowPortStatusEnableAndMSI() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xE7), prdt: [])  // FLUSH CACHE
        rig.run()
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.d2hRegisterFIS, 1)
        XCTAssertEqual(rig.hba(0x08), 1)
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0x08, "INTx asserted")
        rig.setPort(0, 0x14, 0)
        XCTAssertEqual(rig.hba(0x08), 0, "disabled in PxIE: IS clear")
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0)
        rig.setPort(0, 0x14, AHCIPortInterrupt.defined)
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0x08)
        rig.controller.configWrite(offset: 0x82, size: 2, value: 1)
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0, "MSI on: the pending interrupt leaves INTx")
        rig.controller.configWrite(offset: 0x82, size: 2, value: 0)
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0x08, "MSI off: back on INTx")
        rig.clearInterrupts()
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0, "cleared PxIS deasserts")
        // MSI: a message per new interrupt condition, INTx stays low.
        rig.controller.configWrite(offset: 0x84, size: 4, value: 0xFEE0_1000)
        rig.controller.configWrite(offset: 0x8C, size: 2, value: 0x4041)
        rig.controller.configWrite(offset: 0x82, size: 2, value: 1)
        rig.run()
        XCTAssertEqual(rig.msi.messages, [MSIMessage(address: 0xFEE0_1000, data: 0x4041)])
        XCTAssertEqual(rig.controller.pci.config.get8(0x06) & 0x08, 0)
        rig.setHBA(0x04, 0)
        rig.clearInterrupts()
        rig.run()
        XCTAssertEqual(rig.msi.messages.count, 1, "GHC.IE off: no message")
    }
}

final class AHCICommandTests: XCTestCase {
    func testIdentifyMovesPIODataThroughThePRDTWithPIOSetupAndD2HFISes() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xA1), prdt: [(AHCITestRig.data, 512)])  // IDENTIFY PACKET to a disk
        rig.run()
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError)
        XCTAssertEqual(rig.taskFile().status & 0x01, 1)
        XCTAssertEqual(rig.taskFile().error, 0x04)
        rig.recover()
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 256), (AHCITestRig.data + 0x1000, 256)])
        XCTAssertTrue(rig.run())
        let isr = rig.port(0, 0x10)
        XCTAssertEqual(isr & 0x3, 0x3, "PIO setup and D2H register FIS")
        XCTAssertEqual(rig.taskFile().status, 0x50)
        let first = try rig.memory.readBytes(at: AHCITestRig.data, count: 256)
        let second = try rig.memory.readBytes(at: AHCITestRig.data + 0x1000, count: 256)
        let words = (first + second).withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        XCTAssertEqual(words[0], 0x0040)
        XCTAssertEqual(words[75], 31, "NCQ depth 32")
        XCTAssertEqual(words[76] & 0x100, 0x100, "NCQ supported")
        XCTAssertEqual(words[100], 64)
        XCTAssertEqual(try rig.prdbc(), 512)
        let pio = try rig.memory.readBytes(at: rig.fis(0) + 0x20, count: 20)
        XCTAssertEqual(pio[0], 0x5F)
        XCTAssertEqual(pio[1] & 0x60, 0x60, "interrupt, device to host")
        XCTAssertEqual(pio[15], 0x50, "ending status")
        XCTAssertEqual(Int(pio[16]) | Int(pio[17]) << 8, 512)
        let d2h = try rig.memory.readBytes(at: rig.fis(0) + 0x40, count: 4)
        XCTAssertEqual(d2h, [0x34, 0x40, 0x50, 0x00])
    }

    func testReadAndWriteDMAAcrossPRDTEntries() throws {
        let rig = try AHCITestRig(diskSectors: 512)
        rig.startPort(0)
        let d = AHCITestRig.data
        try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 5, count: 3), prdt: [(d, 1000), (d + 0x2000, 536)])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.taskFile().status & 0x89, 0)
        let blocks = try rig.memory.readBytes(at: d, count: 1000) + rig.memory.readBytes(at: d + 0x2000, count: 536)
        XCTAssertEqual(blocks, (5..<8).flatMap { IDETestRig.expectedBlock($0, size: 512) })
        XCTAssertEqual(try rig.prdbc(), 1536)
        // WRITE DMA (LBA28), then READ DMA it back into another buffer.
        try rig.memory.write(at: d + 0x4000, bytes: [UInt8](repeating: 0xA5, count: 1024))
        try rig.prepare(slot: 1, fis: AHCITestRig.registerFIS(0xCA, lba: 10, count: 2), prdt: [(d + 0x4000, 1024)], write: true)
        XCTAssertTrue(rig.run(slot: 1))
        try rig.prepare(slot: 2, fis: AHCITestRig.registerFIS(0xC8, lba: 10, count: 2), prdt: [(d + 0x8000, 4096)])
        XCTAssertTrue(rig.run(slot: 2))
        XCTAssertEqual(try rig.memory.readBytes(at: d + 0x8000, count: 1024), [UInt8](repeating: 0xA5, count: 1024))
        XCTAssertEqual(try rig.prdbc(slot: 2), 1024, "PRD bytes beyond the transfer are left alone")
        XCTAssertEqual(rig.disk?.stats.readBytes, 2560)
        XCTAssertEqual(rig.disk?.stats.writtenBytes, 1024)
        // More than the channel's 64 KiB transfer buffer: 300 sectors in one PRD.
        try rig.prepare(slot: 3, fis: AHCITestRig.registerFIS(0x25, lba: 200, count: 300), prdt: [(d, 300 * 512)])
        XCTAssertTrue(rig.run(slot: 3))
        XCTAssertEqual(try rig.memory.readBytes(at: d + 299 * 512, count: 512), IDETestRig.expectedBlock(499, size: 512))
        XCTAssertEqual(try rig.prdbc(slot: 3), 300 * 512)
    }

    func testMultiSectorPIOWriteAndReadThroughThePRDT() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        let d = AHCITestRig.data
        let pattern = (0..<(3 * 512)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        try rig.memory.write(at: d, bytes: pattern[0..<700])
        try rig.memory.write(at: d + 0x1000, bytes: pattern[700...])
        try rig.prepare(fis: AHCITestRig.registerFIS(0x30, lba: 20, count: 3), prdt: [(d, 700), (d + 0x1000, 836)], write: true)
        XCTAssertTrue(rig.run())  // WRITE SECTORS: three DRQ blocks gathered from two PRDs
        XCTAssertEqual(rig.taskFile().status, 0x50)
        XCTAssertEqual(try rig.prdbc(), 1536)
        rig.clearInterrupts()
        try rig.prepare(fis: AHCITestRig.registerFIS(0x20, lba: 20, count: 3), prdt: [(d + 0x8000, 100), (d + 0x9000, 1436)])
        XCTAssertTrue(rig.run())  // READ SECTORS: three blocks, each with a PIO Setup FIS
        XCTAssertEqual(rig.port(0, 0x10) & 0x3, 0x3)
        XCTAssertEqual(try rig.memory.readBytes(at: d + 0x8000, count: 100) + rig.memory.readBytes(at: d + 0x9000, count: 1436), pattern)
        XCTAssertEqual(try rig.memory.readBytes(at: rig.fis(0) + 0x20 + 15, count: 1), [0x50], "last block's ending status")
    }

    func testATAPIPIOReplyInBlocksOfTheByteCountLimit() throws {
        let rig = try AHCITestRig(diskSectors: nil, cdBlocks: 8)
        rig.startPort(1)
        let d = AHCITestRig.data
        // READ (10) of 2 blocks by PIO with a 1000-byte limit: five DRQ blocks into one PRD.
        try rig.prepare(port: 1, fis: AHCITestRig.registerFIS(0xA0, lba: 1000 << 8), prdt: [(d, 4096)],
                        packet: [0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0, 0, 0])
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(try rig.memory.readBytes(at: d, count: 4096),
                       IDETestRig.expectedBlock(4, size: 2048) + IDETestRig.expectedBlock(5, size: 2048))
        XCTAssertEqual(try rig.prdbc(port: 1), 4096)
    }

    func testFlushSetFeaturesAndReadNativeMax() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEF, count: 0x45, features: 0x03), prdt: [])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.disk?.transferMode, 0x45)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEA), prdt: [])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.disk?.stats.flushOperations, 1)
        try rig.prepare(fis: AHCITestRig.registerFIS(0x27), prdt: [])
        XCTAssertTrue(rig.run())
        let d2h = try rig.memory.readBytes(at: rig.fis(0) + 0x40, count: 8)
        XCTAssertEqual(d2h[4], 63, "last LBA in the D2H FIS")
    }

    func testNCQCompletesWithSetDeviceBits() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        let d = AHCITestRig.data
        for tag in 0..<3 {
            let fis = AHCITestRig.registerFIS(0x60, lba: UInt64(tag * 4), count: UInt16(tag) << 3, features: 2)
            try rig.prepare(slot: tag, fis: fis, prdt: [(d + UInt64(tag) * 0x1000, 1024)])
        }
        rig.setPort(0, 0x34, 0x7)
        rig.setPort(0, 0x38, 0x7)
        XCTAssertTrue(rig.poster.drain { rig.port(0, 0x34) == 0 })
        XCTAssertEqual(rig.port(0, 0x38), 0)
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.setDeviceBitsFIS, AHCIPortInterrupt.setDeviceBitsFIS)
        for tag in 0..<3 {
            XCTAssertEqual(try rig.memory.readBytes(at: d + UInt64(tag) * 0x1000, count: 1024),
                           (tag * 4..<tag * 4 + 2).flatMap { IDETestRig.expectedBlock($0, size: 512) })
        }
        let sdb = try rig.memory.readBytes(at: rig.fis(0) + 0x58, count: 8)
        XCTAssertEqual(sdb[0], 0xA1)
        XCTAssertEqual(sdb[4], 0x04, "last completion: tag 2")
        // WRITE FPDMA QUEUED, then read it back.
        try rig.memory.write(at: d + 0x10000, bytes: [UInt8](repeating: 0x3C, count: 512))
        try rig.prepare(slot: 5, fis: AHCITestRig.registerFIS(0x61, lba: 40, count: 5 << 3, features: 1), prdt: [(d + 0x10000, 512)], write: true)
        rig.setPort(0, 0x34, 1 << 5)
        rig.setPort(0, 0x38, 1 << 5)
        XCTAssertTrue(rig.poster.drain { rig.port(0, 0x34) == 0 })
        try rig.prepare(fis: AHCITestRig.registerFIS(0xC8, lba: 40, count: 1), prdt: [(d + 0x20000, 512)])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(try rig.memory.readBytes(at: d + 0x20000, count: 512), [UInt8](repeating: 0x3C, count: 512))
    }

    func testATAPIPacketByDMAAndPIO() throws {
        let rig = try AHCITestRig(diskSectors: nil, cdBlocks: 8)
        rig.startPort(1)
        let d = AHCITestRig.data
        try rig.prepare(port: 1, fis: AHCITestRig.registerFIS(0xA1), prdt: [(d, 512)])
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(try rig.memory.read(UInt16.self, at: d) >> 8 & 0x1F, 5, "CD-ROM device type")
        // Media change is reported first, as on IDE.
        let read10: [UInt8] = [0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0, 0, 0]
        try rig.prepare(port: 1, fis: AHCITestRig.registerFIS(0xA0, features: 1), prdt: [(d, 4096)], packet: read10)
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(try rig.memory.readBytes(at: d, count: 4096),
                       IDETestRig.expectedBlock(2, size: 2048) + IDETestRig.expectedBlock(3, size: 2048))
        XCTAssertEqual(try rig.prdbc(port: 1), 4096)
        // INQUIRY by PIO.
        try rig.prepare(port: 1, fis: AHCITestRig.registerFIS(0xA0, lba: 0xFFFE << 8), prdt: [(d + 0x8000, 36)],
                        packet: [0x12, 0, 0, 0, 36, 0])
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(Array(try rig.memory.readBytes(at: d + 0x8000 + 16, count: 12)), Array("QEMU DVD-ROM".utf8))
        // A read past the end: CHECK CONDITION, TFES, sense key in the error register.
        try rig.prepare(port: 1, fis: AHCITestRig.registerFIS(0xA0, features: 1), prdt: [(d, 4096)],
                        packet: [0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0, 0, 0])
        rig.run(port: 1)
        XCTAssertEqual(rig.taskFile(1).error >> 4, 0x05)
        XCTAssertEqual(rig.port(1, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError)
    }

    func testSoftResetAndCOMRESETReportTheSignature() throws {
        let rig = try AHCITestRig(cdBlocks: 4)
        rig.startPort(1)
        var control = [UInt8](repeating: 0, count: 20)
        control[0] = 0x27
        control[15] = 0x04
        try rig.prepare(port: 1, fis: control, prdt: [])
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(rig.taskFile(1).status & 0x80, 0x80, "SRST held: busy")
        control[15] = 0
        try rig.prepare(port: 1, fis: control, prdt: [])
        rig.setPort(1, 0x18, rig.port(1, 0x18) | AHCIPortCommand.commandListOverride)
        XCTAssertTrue(rig.run(port: 1))
        XCTAssertEqual(rig.port(1, 0x24), 0xEB14_0101)
        let d2h = try rig.memory.readBytes(at: rig.fis(1) + 0x40, count: 16)
        XCTAssertEqual([d2h[12], d2h[4], d2h[5], d2h[6]], [1, 1, 0x14, 0xEB])
        // COMRESET through PxSCTL.DET.
        rig.setPort(0, 0x2C, 1)
        XCTAssertEqual(rig.port(0, 0x28), 0, "link down while DET=1")
        rig.setPort(0, 0x2C, 0)
        XCTAssertEqual(rig.port(0, 0x28), 0x113)
        XCTAssertEqual(rig.port(0, 0x24), 0x0000_0101)
    }

    func testMediaCommandsReachAnAHCICDROM() throws {
        let rig = try AHCITestRig(diskSectors: nil, cdBlocks: 4)
        XCTAssertEqual(rig.controller.drives.map(\.id), ["ahcicd-1"])
        try rig.cdrom?.eject(force: false)
        XCTAssertNil(rig.cdrom?.medium)
        XCTAssertEqual(rig.cdrom?.info.trayOpen, true)
    }
}

/// A guest that lies to the HBA: every case ends as an error the guest can see, never a crash
/// or an access outside guest RAM or the image.
final class AHCIHostileTests: XCTestCase {
    func testCommandListAndTableOutsideRAMAreHostBusFatal() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        rig.setPort(0, 0x00, 0xFFFF_FC00)
        rig.setPort(0, 0x04, 0xFFFF_FFFF)
        rig.setPort(0, 0x38, 1)
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.hostBusFatal, AHCIPortInterrupt.hostBusFatal)
        XCTAssertEqual(rig.port(0, 0x38), 1, "the slot stays issued for the error handler")
        rig.setPort(0, 0x38, 2)
        XCTAssertEqual(rig.port(0, 0x38), 3, "halted: nothing runs until ST is cleared")
        rig.recover()
        XCTAssertEqual(rig.port(0, 0x38), 0)
        rig.setPort(0, 0x00, UInt32(rig.list(0)))
        rig.setPort(0, 0x04, 0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)], table: 0xFFFF_FFFF_FFFF_FF80)
        rig.setPort(0, 0x38, 1)
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.hostBusFatal, AHCIPortInterrupt.hostBusFatal)
        rig.recover()
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)], table: 0x8000_0000)
        rig.setPort(0, 0x38, 1)
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.hostBusFatal, AHCIPortInterrupt.hostBusFatal)
        // The FIS area outside RAM: the command still completes (the FIS is lost).
        rig.recover()
        rig.setPort(0, 0x08, 0xFFFF_FF00)
        rig.setPort(0, 0x0C, 0xFFFF_FFFF)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.taskFile().status, 0x50)
    }

    func testBadPRDTsEndInTaskFileErrors() throws {
        let rig = try AHCITestRig(ramSize: 4 << 20)
        rig.startPort(0)
        let cases: [(String, [(UInt64, Int)], Int?)] = [
            ("no PRDT at all", [], nil),
            ("PRDT shorter than the transfer", [(AHCITestRig.data, 512)], nil),
            ("segment outside RAM", [(0xFFFF_F000, 1024)], nil),
            ("segment straddling the end of RAM", [(0x3F_FF00, 1024)], nil),
            ("65535 entries claimed, one readable before RAM ends", [(AHCITestRig.data, 2)], 65535),
        ]
        for (what, prdt, length) in cases {
            try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 0, count: 2), prdt: prdt,
                            table: length == nil ? nil : 0x3F_FF00, prdtLength: length)
            rig.run()
            XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError, what)
            XCTAssertEqual(rig.taskFile().error, 0x04, what)
            rig.recover()
        }
        // 65535 two-byte entries do cover a one-sector read: walked to the end, no more.
        let table = AHCITestRig.tables
        try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 3, count: 1), prdt: [], table: table, prdtLength: 65535)
        for i in 0..<256 {
            try rig.memory.write(AHCITestRig.data + UInt64(2 * i), at: table + 0x80 + UInt64(16 * i))
            try rig.memory.write(UInt32(1), at: table + 0x80 + UInt64(16 * i) + 12)
        }
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.taskFile().status, 0x50)
        XCTAssertEqual(try rig.memory.readBytes(at: AHCITestRig.data, count: 512), IDETestRig.expectedBlock(3, size: 512))
    }

    func testOutOfRangeLBAsAndHugeCountsAreAborted() throws {
        let rig = try AHCITestRig(diskSectors: 64)
        rig.startPort(0)
        let cases: [(String, [UInt8])] = [
            ("one past the end", AHCITestRig.registerFIS(0x25, lba: 63, count: 2)),
            ("65536 sectors", AHCITestRig.registerFIS(0x25, lba: 0, count: 0)),
            ("top of LBA48", AHCITestRig.registerFIS(0x35, lba: 0xFFFF_FFFF_FFFF, count: 1)),
            ("NCQ past the end", AHCITestRig.registerFIS(0x60, lba: 64, count: 0, features: 1)),
            ("unknown command", AHCITestRig.registerFIS(0xFF)),
        ]
        for (what, fis) in cases {
            try rig.prepare(fis: fis, prdt: [(AHCITestRig.data, 0x10000)])
            rig.setPort(0, 0x34, 1)
            rig.run()
            XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError, what)
            XCTAssertEqual(rig.taskFile().status & 0x01, 1, what)
            rig.recover()
            XCTAssertEqual(rig.port(0, 0x34), 0, "\(what): ST cleared SACT")
        }
        var notRegister = AHCITestRig.registerFIS(0xEC)
        notRegister[0] = 0x46
        try rig.prepare(fis: notRegister, prdt: [(AHCITestRig.data, 512)])
        rig.run()
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError, "data FIS as a command")
        XCTAssertEqual(rig.disk?.stats.readBytes, 0)
        XCTAssertEqual(rig.disk?.stats.writtenBytes, 0)
    }

    func testCommandsWhileStoppedOrToAnEmptyPortGoNowhere() throws {
        let rig = try AHCITestRig()
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)])
        rig.setPort(0, 0x34, 1)
        rig.setPort(0, 0x38, 1)
        XCTAssertEqual(rig.port(0, 0x38), 0, "CI ignored while ST is clear")
        XCTAssertEqual(rig.port(0, 0x34), 0)
        XCTAssertEqual(rig.port(0, 0x10), 0)
        rig.startPort(2)
        try rig.prepare(port: 2, fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)])
        rig.run(port: 2)
        XCTAssertEqual(rig.port(2, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError)
    }

    func testNCQTagReuseWhileQueuedIsHarmless() throws {
        let rig = try AHCITestRig()
        rig.startPort(0)
        let d = AHCITestRig.data
        // Two slots naming the same tag, and a slot re-issued at once.
        try rig.prepare(slot: 0, fis: AHCITestRig.registerFIS(0x60, lba: 1, count: 0, features: 1), prdt: [(d, 512)])
        try rig.prepare(slot: 1, fis: AHCITestRig.registerFIS(0x60, lba: 2, count: 0, features: 1), prdt: [(d + 0x1000, 512)])
        rig.setPort(0, 0x34, 0x3)
        rig.setPort(0, 0x38, 0x3)
        rig.setPort(0, 0x38, 0x1)
        XCTAssertTrue(rig.poster.drain { rig.port(0, 0x38) == 0 && rig.controller.ports[0].runningSlot == nil })
        XCTAssertEqual(rig.port(0, 0x34), 0x2, "tag 0 completed (twice); tag 1 was never named")
        XCTAssertEqual(try rig.memory.readBytes(at: d + 0x1000, count: 512), IDETestRig.expectedBlock(2, size: 512))
        XCTAssertEqual(rig.port(0, 0x10) & AHCIPortInterrupt.taskFileError, 0)
    }

    func testStopAndResetInTheMiddleOfIO() throws {
        let rig = try AHCITestRig(diskSectors: 4096)
        rig.startPort(0)
        let d = AHCITestRig.data
        try rig.memory.fill(at: d, count: 0x20_0000, byte: 0xEE)
        try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 0, count: 2048), prdt: [(d, 1 << 20)])
        rig.setPort(0, 0x38, 1)
        XCTAssertEqual(rig.taskFile().status & 0x80, 0x80, "busy while the backend reads")
        rig.setPort(0, 0x18, rig.port(0, 0x18) & ~AHCIPortCommand.start)
        XCTAssertEqual(rig.port(0, 0x38), 0)
        XCTAssertEqual(rig.taskFile().status, 0x50)
        rig.settle()
        XCTAssertEqual(try rig.memory.readBytes(at: d, count: 4), [0xEE, 0xEE, 0xEE, 0xEE], "a late completion writes nothing")
        // The same with GHC.HR, then the port works again.
        rig.startPort(0)
        rig.setPort(0, 0x38, 1)
        rig.setHBA(0x04, 1)
        rig.settle()
        XCTAssertEqual(try rig.memory.readBytes(at: d, count: 4), [0xEE, 0xEE, 0xEE, 0xEE])
        XCTAssertEqual(rig.port(0, 0x38), 0)
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 7, count: 1), prdt: [(d, 512)])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(try rig.memory.readBytes(at: d, count: 512), IDETestRig.expectedBlock(7, size: 512))
    }

    /// Random register writes (ports, GHC, index/data pair) and random command lists, tables and
    /// PRDTs in RAM, from a fixed seed; afterwards an HBA reset brings back a working port.
    func testRandomGuestNeverBreaksTheHBA() throws {
        let rig = try AHCITestRig(cdBlocks: 8, ramSize: 4 << 20)
        var rng = LegacyHostileAccessTests.SplitMix(state: 0x5EED_A4C1)
        let portOffsets: [UInt64] = [0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x2C, 0x30, 0x34, 0x38, 0x38, 0x38, 0x3C, 0x40]
        var noise = [UInt8](repeating: 0, count: 0x1000)
        for round in 0..<3000 {
            switch rng.next() % 10 {
            case 0:
                // Scribble over a command list, FIS area or command tables with bytes that are
                // often plausible (pointers into RAM, small PRDT lengths).
                for i in 0..<noise.count { noise[i] = UInt8(truncatingIfNeeded: rng.next()) }
                let base = [AHCITestRig.commandList, AHCITestRig.tables, AHCITestRig.tables + 0x1000 * UInt64(rng.next() % 64)][Int(rng.next() % 3)]
                if rng.next() % 2 == 0 {
                    for i in stride(from: 0, to: noise.count, by: 8) where rng.next() % 3 != 0 {
                        let pointer = (rng.next() % (4 << 20)) & ~0x7F
                        for b in 0..<4 { noise[i + b] = UInt8(truncatingIfNeeded: pointer >> (8 * UInt64(b))) }
                        noise[i + 4] = 0; noise[i + 5] = 0; noise[i + 6] = 0; noise[i + 7] = 0
                    }
                }
                try rig.memory.write(at: base, bytes: noise)
            case 1, 5:
                // A plausible command: register FIS with an interesting opcode, random fields,
                // a PRDT of random entries mostly inside RAM.
                let commands: [UInt8] = [0xEC, 0xA1, 0x25, 0x35, 0xC8, 0xCA, 0x20, 0x30, 0xC4, 0xC5, 0xC6, 0x60, 0x61,
                                         0xA0, 0xE7, 0xEA, 0xEF, 0xF8, 0x27, 0x40, 0x91, 0x08, 0x90,
                                         UInt8(truncatingIfNeeded: rng.next())]
                var fis = AHCITestRig.registerFIS(commands[Int(rng.next() % UInt64(commands.count))], lba: rng.next() % 80,
                                                  count: UInt16(truncatingIfNeeded: rng.next() % 9 == 0 ? rng.next() : rng.next() % 8),
                                                  features: UInt16(truncatingIfNeeded: rng.next() % 4 == 0 ? rng.next() : rng.next() % 3))
                if rng.next() % 8 == 0 { fis[1] = 0; fis[15] = UInt8(truncatingIfNeeded: rng.next()) }  // control FIS
                let entries = Int(rng.next() % 4)
                let prdt = (0..<entries).map { _ in (UInt64(0x10_0000) + rng.next() % (3 << 20), Int(rng.next() % 0x3000) + 1) }
                let p = Int(rng.next() % 3), slot = Int(rng.next() % 32)
                try rig.prepare(port: p, slot: slot, fis: fis, prdt: prdt, write: rng.next() % 2 == 0,
                                packet: rng.next() % 2 == 0 ? [UInt8]((0..<12).map { _ in UInt8(truncatingIfNeeded: rng.next()) }) : nil,
                                prdtLength: rng.next() % 16 == 0 ? Int(rng.next() % 65536) : nil)
                if rng.next() % 2 == 0 {
                    // Usually issue it at once, as a driver would, on a running port.
                    if rig.port(p, 0x18) & 1 == 0 { rig.startPort(p) } else if rng.next() % 4 != 0 { rig.recover(p) }
                    rig.setPort(p, 0x38, 1 << UInt32(slot))
                }
            case 2:
                rig.setHBA(0x04, UInt32(truncatingIfNeeded: rng.next()) & (rng.next() % 16 == 0 ? 3 : 2))
            case 3:
                rig.controller.write(region: 4, offset: [0x10, 0x14][Int(rng.next() % 2)], size: 4, value: rng.next() & 0x1FFF)
            case 4:
                rig.controller.write(region: 5, offset: rng.next() % 4096, size: [1, 2, 4, 8][Int(rng.next() % 4)], value: rng.next())
            default:
                let p = Int(rng.next() % 3)
                let offset = portOffsets[Int(rng.next() % UInt64(portOffsets.count))]
                var value = UInt32(truncatingIfNeeded: rng.next())
                if offset == 0x00 { value = rng.next() % 4 == 0 ? value % (4 << 20) : UInt32(rig.list(p)) }
                if offset == 0x08 { value = rng.next() % 4 == 0 ? value % (4 << 20) : UInt32(rig.fis(p)) }
                if offset == 0x04 || offset == 0x0C { value = rng.next() % 8 == 0 ? value : 0 }
                if offset == 0x18 { value |= rng.next() % 2 == 0 ? 0x11 : 0 }
                rig.setPort(p, offset, value)
            }
            if round % 16 == 0 { rig.settleBriefly() }
            for offset: UInt64 in stride(from: 0, to: 0x400, by: 4) { _ = rig.hba(offset) }
        }
        rig.settle()
        let issued = [rig.disk, rig.cdrom].compactMap { $0?.stats }.reduce(0) { $0 + $1.readOperations + $1.writeOperations + $1.flushOperations }
        print("random guest: \(issued) reads, writes and flushes reached the drives")
        XCTAssertGreaterThan(issued, 0, "the random command lists should reach the drives now and then")
        rig.setHBA(0x04, 1)
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)])
        XCTAssertTrue(rig.run())
        XCTAssertEqual(rig.taskFile().status, 0x50)
        XCTAssertEqual(try rig.memory.read(UInt16.self, at: AHCITestRig.data + 200), 64, "IDENTIFY word 100")
    }

    func testStateRoundTripAndInFlightCommandFailsAfterLoad() throws {
        let rig = try AHCITestRig(diskSectors: 4096)
        rig.startPort(0)
        try rig.prepare(fis: AHCITestRig.registerFIS(0xEC), prdt: [(AHCITestRig.data, 512)])
        XCTAssertTrue(rig.run())
        let copy = try AHCITestRig(diskSectors: 4096)
        try roundTrip(rig.controller, into: copy.controller)
        for offset: UInt64 in [0x00, 0x08, 0x10, 0x14, 0x18, 0x20, 0x24, 0x28, 0x38] {
            XCTAssertEqual(copy.port(0, offset), rig.port(0, offset), "port register \(hex(offset))")
        }
        XCTAssertEqual(copy.hba(0x04), rig.hba(0x04))
        // Saved with a read in flight: the restored port fails it with TFES.
        try rig.prepare(fis: AHCITestRig.registerFIS(0x25, lba: 0, count: 2048), prdt: [(AHCITestRig.data, 1 << 20)])
        rig.setPort(0, 0x38, 1)
        let target = try AHCITestRig(diskSectors: 4096)
        try roundTrip(rig.controller, into: target.controller)
        XCTAssertEqual(target.port(0, 0x10) & AHCIPortInterrupt.taskFileError, AHCIPortInterrupt.taskFileError)
        XCTAssertEqual(target.taskFile().status & 0x89, 0x01)
        // A stream naming a running slot out of range is refused.
        var writer = StateWriter()
        rig.controller.saveState(to: &writer)
        var bytes = writer.bytes
        let portStart = 4 + PCIConfigSpace.size + 1 + 1 + 4  // PCI config (length-prefixed), INTx, GHC.IE, index
        bytes[portStart + 8 + 8 + 4 * 8 + 1 + 1] = 40  // port 0's running slot
        var reader = StateReader(bytes: bytes, section: "ahci")
        XCTAssertThrowsError(try target.controller.loadState(from: &reader, version: 1))
    }
}
