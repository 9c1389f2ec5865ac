import Backends
import DMCore
import Devices
import Foundation
import Synchronization
import XCTest

/// Stands in for the event loop: completions queue up and the test runs them.
final class QueuedPoster: BlockCompletionPoster {
    private let queue = Mutex<[@Sendable () -> Void]>([])
    func post(_ work: @escaping @Sendable () -> Void) { queue.withLock { $0.append(work) } }

    /// Runs posted completions until `done` holds (or 5 s pass).
    @discardableResult
    func drain(until done: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let work = queue.withLock { q -> [@Sendable () -> Void] in defer { q.removeAll() }; return q }
            for w in work { w() }
            if done() { return true }
            if work.isEmpty { usleep(200) }
        }
        return done()
    }
}

/// A disk of `diskSectors` sectors whose every sector starts with its number (LE32) and is
/// filled with its low byte, and a CD of `cdBlocks` 2048-byte blocks patterned the same way
/// (or an empty CD drive), in a temporary directory that goes away with them.
final class PatternDrives {
    let directory: URL
    let disk: ATADrive?
    let cdrom: ATADrive?

    init(diskSectors: Int?, cdBlocks: Int?, emptyCDROM: Bool = false, diskID: String, cdID: String) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ata-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if let diskSectors {
            let path = try IDETestRig.patternImage(at: directory.appendingPathComponent("disk.raw").path, blocks: diskSectors, blockSize: 512)
            disk = ATADrive(kind: .disk, medium: try BlockBackend(path: path, options: BlockOpenOptions(format: .raw), workers: 1),
                            id: diskID, serial: "QM00001")
        } else {
            disk = nil
        }
        if let cdBlocks {
            let path = try IDETestRig.patternImage(at: directory.appendingPathComponent("cd.iso").path, blocks: cdBlocks, blockSize: 2048)
            cdrom = ATADrive(kind: .cdrom, medium: try BlockBackend(path: path, options: BlockOpenOptions(format: .raw, readOnly: true),
                                                                   workers: 1),
                             id: cdID, serial: "QM00003")
        } else {
            cdrom = emptyCDROM ? ATADrive(kind: .cdrom, medium: nil, id: cdID, serial: "QM00003") : nil
        }
    }

    deinit { try? FileManager.default.removeItem(at: directory) }
}

/// A PIIX3 IDE controller with a raw disk (primary master) and/or a CD-ROM (secondary master),
/// driven through its port windows like a guest driver would.
final class IDETestRig {
    let legacy: LegacyTestRig
    let poster = QueuedPoster()
    let controller: PIIX3IDEController
    let drives: PatternDrives
    let errors = GuestErrorLog(burst: 1000, sink: { _ in })
    var disk: ATADrive? { drives.disk }
    var cdrom: ATADrive? { drives.cdrom }
    var directory: URL { drives.directory }

    init(diskSectors: Int? = 64, cdBlocks: Int? = nil, emptyCDROM: Bool = false, ramSize: Int = 1 << 20) throws {
        legacy = try LegacyTestRig(ramSize: ramSize)
        drives = try PatternDrives(diskSectors: diskSectors, cdBlocks: cdBlocks, emptyCDROM: emptyCDROM,
                                   diskID: "ide0-hd0", cdID: "ide1-cd0")
        controller = PIIX3IDEController(drives: [[drives.disk, nil], [drives.cdrom, nil]],
                                        irqs: [legacy.router.line(gsi: 14), legacy.router.line(gsi: 15)],
                                        memory: legacy.memory, poster: poster, log: errors)
    }

    static func patternImage(at path: String, blocks: Int, blockSize: Int) throws -> String {
        var data = Data(count: blocks * blockSize)
        for b in 0..<blocks {
            let base = b * blockSize
            for i in 0..<blockSize { data[base + i] = UInt8(truncatingIfNeeded: b) }
            withUnsafeBytes(of: UInt32(b).littleEndian) { for (i, byte) in $0.enumerated() { data[base + i] = byte } }
        }
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    static func expectedBlock(_ b: Int, size: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: b), count: size)
        withUnsafeBytes(of: UInt32(b).littleEndian) { for (i, byte) in $0.enumerated() { bytes[i] = byte } }
        return bytes
    }

    // MARK: ports

    /// (region, offset) for a legacy port or a BAR4 offset (`bm` = 0xC000 + offset).
    func route(_ port: UInt16) -> (Int, UInt64) {
        switch port {
        case 0x1F0...0x1F7: return (PIIX3IDEController.primaryCommandRegion, UInt64(port - 0x1F0))
        case 0x3F6: return (PIIX3IDEController.primaryControlRegion, 0)
        case 0x170...0x177: return (PIIX3IDEController.secondaryCommandRegion, UInt64(port - 0x170))
        case 0x376: return (PIIX3IDEController.secondaryControlRegion, 0)
        case 0xC000...0xC00F: return (4, UInt64(port - 0xC000))
        default: fatalError("not an IDE port")
        }
    }

    func outb(_ port: UInt16, _ value: UInt8) {
        let (region, offset) = route(port)
        controller.write(region: region, offset: offset, size: 1, value: UInt64(value))
    }
    func outl(_ port: UInt16, _ value: UInt32) {
        let (region, offset) = route(port)
        controller.write(region: region, offset: offset, size: 4, value: UInt64(value))
    }
    func inb(_ port: UInt16) -> UInt8 {
        let (region, offset) = route(port)
        return UInt8(truncatingIfNeeded: controller.read(region: region, offset: offset, size: 1))
    }
    func inw(_ port: UInt16) -> UInt16 {
        let (region, offset) = route(port)
        return UInt16(truncatingIfNeeded: controller.read(region: region, offset: offset, size: 2))
    }
    func outw(_ port: UInt16, _ value: UInt16) {
        let (region, offset) = route(port)
        controller.write(region: region, offset: offset, size: 2, value: UInt64(value))
    }

    /// The channel's command block base.
    func base(_ channel: Int) -> UInt16 { channel == 0 ? 0x1F0 : 0x170 }

    /// Waits (running completions) until BSY clears; returns the alternate status.
    @discardableResult
    func waitNotBusy(_ channel: Int = 0) -> UInt8 {
        let control: UInt16 = channel == 0 ? 0x3F6 : 0x376
        poster.drain { inb(control) & 0x80 == 0 }
        return inb(control)
    }

    /// Issues an LBA28 command on the primary master.
    func command28(_ command: UInt8, lba: UInt32, count: UInt8, channel: Int = 0) {
        let b = base(channel)
        outb(b + 6, 0xE0 | UInt8((lba >> 24) & 0x0F))
        outb(b + 2, count)
        outb(b + 3, UInt8(lba & 0xFF))
        outb(b + 4, UInt8((lba >> 8) & 0xFF))
        outb(b + 5, UInt8((lba >> 16) & 0xFF))
        outb(b + 7, command)
    }

    func command48(_ command: UInt8, lba: UInt64, count: UInt16) {
        outb(0x1F6, 0x40)
        outb(0x1F2, UInt8(count >> 8)); outb(0x1F2, UInt8(count & 0xFF))
        outb(0x1F3, UInt8((lba >> 24) & 0xFF)); outb(0x1F3, UInt8(lba & 0xFF))
        outb(0x1F4, UInt8((lba >> 32) & 0xFF)); outb(0x1F4, UInt8((lba >> 8) & 0xFF))
        outb(0x1F5, UInt8((lba >> 40) & 0xFF)); outb(0x1F5, UInt8((lba >> 16) & 0xFF))
        outb(0x1F7, command)
    }

    /// Reads `bytes` through the data port (16-bit).
    func readData(_ bytes: Int, channel: Int = 0) -> [UInt8] {
        var out: [UInt8] = []
        for _ in 0..<(bytes / 2) {
            let w = inw(base(channel))
            out.append(UInt8(w & 0xFF))
            out.append(UInt8(w >> 8))
        }
        return out
    }

    func writeData(_ bytes: [UInt8], channel: Int = 0) {
        for i in stride(from: 0, to: bytes.count, by: 2) {
            outw(base(channel), UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8)
        }
    }

    var irq14: Bool { legacy.sink.level(14) }
    var irq15: Bool { legacy.sink.level(15) }

    /// Builds a PRD table at `table` from (address, byteCount, last) entries.
    func writePRD(at table: UInt64, _ entries: [(UInt32, UInt32, Bool)]) throws {
        for (i, e) in entries.enumerated() {
            try legacy.memory.write(e.0, at: table + UInt64(8 * i))
            try legacy.memory.write(e.1 | (e.2 ? 0x8000_0000 : 0), at: table + UInt64(8 * i + 4))
        }
    }

    /// Programs BAR4's channel 0 bus master: table, direction, start.
    func startBusMaster(table: UInt32, toMemory: Bool, channel: Int = 0) {
        let bm = UInt16(0xC000 + 8 * channel)
        outl(bm + 4, table)
        outb(bm + 2, 0x06)  // clear interrupt and error
        outb(bm, (toMemory ? 0x08 : 0) | 0x01)
    }

    // MARK: ATAPI

    /// Sends a 12-byte packet on the secondary master (PIO, byte count limit `limit`).
    func packet(_ bytes: [UInt8], limit: UInt16 = 0xFFFE, dma: Bool = false) {
        var cdb = bytes
        cdb += [UInt8](repeating: 0, count: 12 - cdb.count)
        outb(0x176, 0xA0)
        outb(0x171, dma ? 1 : 0)
        outb(0x174, UInt8(limit & 0xFF))
        outb(0x175, UInt8(limit >> 8))
        outb(0x177, 0xA0)
        writeData(cdb, channel: 1)
    }

    /// Collects a PIO data-in phase of an ATAPI command until it completes; returns the data
    /// and the final status.
    func atapiReadAll() -> ([UInt8], UInt8) {
        var data: [UInt8] = []
        for _ in 0..<10_000 {
            let status = waitNotBusy(1)
            if status & 0x08 == 0 { _ = inb(0x177); return (data, status) }
            let count = Int(inb(0x174)) | Int(inb(0x175)) << 8
            _ = inb(0x177)
            data += readData(count + (count & 1), channel: 1).prefix(count)
        }
        return (data, 0xFF)
    }

    func requestSense() -> (key: UInt8, asc: UInt8, ascq: UInt8) {
        packet([0x03, 0, 0, 0, 18])
        let (data, _) = atapiReadAll()
        guard data.count >= 14 else { return (0xFF, 0xFF, 0xFF) }
        return (data[2] & 0x0F, data[12], data[13])
    }
}
