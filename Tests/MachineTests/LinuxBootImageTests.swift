import Foundation
import Config
import DMCore
@testable import Devices
@testable import Machine
import XCTest

/// A synthetic bzImage: boot sector + `setupSects` setup sectors with a protocol `version`
/// header, then `payload` bytes. Tests break one field at a time.
struct SyntheticBzImage {
    var bytes: [UInt8]

    init(setupSects: UInt8 = 4, version: UInt16 = 0x020F, payload: Int = 4096, loadFlags: UInt8 = 0x01,
         initrdMax: UInt32 = 0x7FFF_FFFF, cmdlineSize: UInt32 = 2047, xloadFlags: UInt16 = 0) {
        let setup = (Int(setupSects == 0 ? 4 : setupSects) + 1) * 512
        bytes = [UInt8](repeating: 0, count: setup + payload)
        for i in 0..<payload { bytes[setup + i] = UInt8(truncatingIfNeeded: i &* 7) }
        bytes[0x1F1] = setupSects
        put32(UInt32(payload / 16), 0x1F4)
        put16(0xAA55, 0x1FE)
        bytes[0x200] = 0xEB
        bytes[0x201] = 0x6A
        bytes.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        put16(version, 0x206)
        bytes[0x211] = loadFlags
        put32(0x10_0000, 0x214)
        put32(initrdMax, 0x22C)
        put16(xloadFlags, 0x236)
        put32(cmdlineSize, 0x238)
    }

    mutating func put16(_ v: UInt16, _ at: Int) { bytes[at] = UInt8(v & 0xFF); bytes[at + 1] = UInt8(v >> 8) }
    mutating func put32(_ v: UInt32, _ at: Int) { for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }

    func parse() throws(LinuxBootError) -> LinuxBootImage {
        try LinuxBootImage(head: Array(bytes.prefix(LinuxBootImage.headSize)), fileSize: bytes.count)
    }
}

func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
func le16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }

final class LinuxBootImageTests: XCTestCase {
    func assertRejected(_ image: SyntheticBzImage, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try image.parse(), file: file, line: line) { error in
            let e = error as! LinuxBootError
            XCTAssertEqual(e.option, .kernel, file: file, line: line)
            XCTAssertTrue(e.reason.contains(fragment), "'\(e.reason)' lacks '\(fragment)'", file: file, line: line)
        }
    }

    func testSyntheticImageLayoutAndPatchesLikeQEMU() throws {
        var image = try SyntheticBzImage(payload: 8192).parse()
        XCTAssertEqual(image.setupSize, 5 * 512)
        XCTAssertEqual(image.kernelSize, 8192)
        XCTAssertEqual(image.protocolVersion, 0x020F)
        try image.place(commandLine: "console=ttyS0 vga=0x317", initrdSize: 1_000_000, belowFourGiB: 128 << 20)
        let s = image.setup
        XCTAssertEqual(s[0x210], 0xB0, "type_of_loader: QEMU's")
        XCTAssertEqual(s[0x211], 0x81, "LOADED_HIGH | CAN_USE_HEAP")
        XCTAssertEqual(le16(s, 0x224), 0xFE00, "heap_end_ptr = cmdline - setup - 0x200")
        XCTAssertEqual(le32(s, 0x228), 0x2_0000, "cmd_line_ptr")
        XCTAssertEqual(le16(s, 0x1FA), 0x317, "vid_mode from vga=")
        // QEMU: initrd_max = RAM - 0x28000 - 1, initrd at (max - size) & ~4095.
        let expected = UInt32(((128 << 20) - 0x28000 - 1 - 1_000_000) & ~0xFFF)
        XCTAssertEqual(image.initrdAddress, expected)
        XCTAssertEqual(le32(s, 0x218), expected)
        XCTAssertEqual(le32(s, 0x21C), 1_000_000)
    }

    func testInitrdAddressMaxAndAbove4GFlag() throws {
        var image = try SyntheticBzImage(initrdMax: 0x37FF_FFFF).parse()
        try image.place(commandLine: "", initrdSize: 4096, belowFourGiB: 2 << 30)
        XCTAssertEqual(image.initrdAddress, UInt32((0x37FF_FFFF - 4096) & ~0xFFF), "the kernel's limit wins below RAM")
        var high = try SyntheticBzImage(version: 0x020C, initrdMax: 0x37FF_FFFF, xloadFlags: 0x02).parse()
        XCTAssertEqual(high.initrdAddressMax, UInt32.max)
        try high.place(commandLine: "", initrdSize: 4096, belowFourGiB: 2 << 30)
        XCTAssertEqual(high.initrdAddress, UInt32(((2 << 30) - 0x28000 - 1 - 4096) & ~0xFFF))
        var old = try SyntheticBzImage(version: 0x0202).parse()
        XCTAssertEqual(old.initrdAddressMax, 0x37FF_FFFF, "before 2.03 there is no initrd_addr_max")
        XCTAssertEqual(old.maxCommandLineLength, 255, "before 2.06 there is no cmdline_size")
        try old.place(commandLine: "", initrdSize: nil, belowFourGiB: 64 << 20)
        XCTAssertNil(old.initrdAddress)
        XCTAssertEqual(le32(old.setup, 0x218), 0)
    }

    func testHostileHeadersAreRejected() {
        assertRejected(SyntheticBzImage(version: 0x0201), "too old")
        assertRejected(SyntheticBzImage(loadFlags: 0), "zImage")
        var magic = SyntheticBzImage(); magic.bytes[0x202] = UInt8(ascii: "X")
        assertRejected(magic, "HdrS")
        var flag = SyntheticBzImage(); flag.put16(0x1234, 0x1FE)
        assertRejected(flag, "boot flag")
        assertRejected(SyntheticBzImage(setupSects: 64), "larger than")
        var sys = SyntheticBzImage(payload: 4096); sys.put32(4096 / 16 + 1, 0x1F4)
        assertRejected(sys, "the file has 4096")
        var jump = SyntheticBzImage(); jump.bytes[0x200] = 0xE9
        assertRejected(jump, "jump")
        var backward = SyntheticBzImage(setupSects: 1); backward.bytes[0x201] = 0xFF
        assertRejected(backward, "jump")
        // The file ends inside the setup sectors it claims.
        let truncated = SyntheticBzImage(setupSects: 30, payload: 16)
        XCTAssertThrowsError(try LinuxBootImage(head: Array(truncated.bytes.prefix(2048)), fileSize: 2048)) { error in
            XCTAssertTrue((error as! LinuxBootError).reason.contains("ends inside"))
        }
        // Tiny and empty files.
        for size in [0, 1, 0x203, 0x210, 600] {
            XCTAssertThrowsError(try LinuxBootImage(head: [UInt8](repeating: 0, count: size), fileSize: size))
        }
        var elf = SyntheticBzImage(); elf.bytes.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        assertRejected(elf, "ELF")
        var multiboot = [UInt8](repeating: 0, count: 4096)
        for (i, v) in [UInt32(0x1BAD_B002), 0, 0 &- 0x1BAD_B002].enumerated() {
            for b in 0..<4 { multiboot[64 + 4 * i + b] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(b))) }
        }
        XCTAssertThrowsError(try LinuxBootImage(head: multiboot, fileSize: 4096)) { error in
            XCTAssertTrue((error as! LinuxBootError).reason.contains("multiboot"))
        }
    }

    func testRandomHeadersNeverCrash() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var image = SyntheticBzImage(setupSects: UInt8.random(in: 0...70, using: &rng), payload: Int.random(in: 0...64, using: &rng) * 16)
            for _ in 0..<Int.random(in: 0...8, using: &rng) {
                image.bytes[Int.random(in: 0x1F0..<0x270, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            let size = Int.random(in: 0...image.bytes.count, using: &rng)
            if var parsed = try? LinuxBootImage(head: Array(image.bytes.prefix(min(size, LinuxBootImage.headSize))), fileSize: size) {
                XCTAssertLessThanOrEqual(parsed.setupSize + parsed.kernelSize, size)
                _ = try? parsed.place(commandLine: "x", initrdSize: Int.random(in: 0...(200 << 20), using: &rng),
                                      belowFourGiB: UInt64.random(in: 1...4096, using: &rng) << 20)
            }
        }
    }

    func testCommandLineAndInitrdLimits() throws {
        var image = try SyntheticBzImage(cmdlineSize: 10).parse()
        XCTAssertNoThrow(try image.place(commandLine: "0123456789", initrdSize: nil, belowFourGiB: 64 << 20))
        XCTAssertThrowsError(try image.place(commandLine: "0123456789A", initrdSize: nil, belowFourGiB: 64 << 20)) { error in
            XCTAssertEqual((error as! LinuxBootError).option, .append)
        }
        var huge = try SyntheticBzImage(cmdlineSize: .max).parse()
        XCTAssertThrowsError(try huge.place(commandLine: String(repeating: "a", count: 0x80000), initrdSize: nil, belowFourGiB: 64 << 20),
                             "the command line must end below the EBDA whatever the header says")
        XCTAssertThrowsError(try image.place(commandLine: "a\u{0}b", initrdSize: nil, belowFourGiB: 64 << 20))
        XCTAssertThrowsError(try image.place(commandLine: "vga=banana", initrdSize: nil, belowFourGiB: 64 << 20))
        XCTAssertEqual(try LinuxBootImage.videoMode("a vga=ask b"), 0xFFFD)
        XCTAssertEqual(try LinuxBootImage.videoMode("vga=normal"), 0xFFFF)
        XCTAssertEqual(try LinuxBootImage.videoMode("vga=791"), 791)
        XCTAssertEqual(try LinuxBootImage.videoMode("vga=0x31A"), 0x31A)
        XCTAssertEqual(try LinuxBootImage.videoMode("vga=017"), 15)
        XCTAssertNil(try LinuxBootImage.videoMode("console=ttyS0"))
        // Initrd: too big for RAM, for initrd_addr_max, or overlapping the kernel.
        XCTAssertThrowsError(try image.place(commandLine: "", initrdSize: 64 << 20, belowFourGiB: 64 << 20)) { error in
            XCTAssertEqual((error as! LinuxBootError).option, .initrd)
        }
        var low = try SyntheticBzImage(initrdMax: 0x0100_0000).parse()
        XCTAssertThrowsError(try low.place(commandLine: "", initrdSize: 16 << 20, belowFourGiB: 1 << 30))
        var big = try SyntheticBzImage(payload: 30 << 20).parse()
        XCTAssertThrowsError(try big.place(commandLine: "", initrdSize: 2 << 20, belowFourGiB: 30 << 20)) { error in
            XCTAssertEqual((error as! LinuxBootError).option, .kernel, "the kernel alone does not fit")
        }
        XCTAssertThrowsError(try big.place(commandLine: "", initrdSize: 2 << 20, belowFourGiB: 33 << 20)) { error in
            XCTAssertEqual((error as! LinuxBootError).option, .initrd, "kernel fits, initrd would overlap it")
        }
    }

    /// Debian's kernel, when one is on this machine (never committed).
    func testRealDebianKernelHeader() throws {
        let candidates = (try? FileManager.default.contentsOfDirectory(atPath: "/boot"))?.filter { $0.hasPrefix("vmlinuz-") }.map { "/boot/" + $0 } ?? []
        let lab = (try? FileManager.default.contentsOfDirectory(atPath: "/var/cache/swiftdm-lab"))?
            .filter { $0.hasPrefix("rootfs-") }.map { "/var/cache/swiftdm-lab/\($0)/vmlinuz" } ?? []
        guard let path = (candidates + lab).first(where: { FileManager.default.isReadableFile(atPath: $0) }),
              let data = FileManager.default.contents(atPath: path) else {
            throw XCTSkip("no Debian kernel in /boot or the Xen lab's cache")
        }
        let bytes = [UInt8](data)
        var image = try LinuxBootImage(head: Array(bytes.prefix(LinuxBootImage.headSize)), fileSize: bytes.count)
        XCTAssertGreaterThanOrEqual(image.protocolVersion, 0x020F)
        XCTAssertEqual(image.setupSize, (Int(bytes[0x1F1]) + 1) * 512)
        XCTAssertEqual(image.maxCommandLineLength, 2047)
        XCTAssertEqual(image.initrdAddressMax, UInt32.max, "x86-64 kernels can take an initrd above 4 GiB")
        try image.place(commandLine: "console=ttyS0", initrdSize: 30 << 20, belowFourGiB: 512 << 20)
        XCTAssertEqual(image.setup[0x211] & 0x81, 0x81)
        XCTAssertEqual(Array(image.setup[0x202..<0x206]), Array("HdrS".utf8))
    }
}

final class LinuxBootFwCfgTests: XCTestCase {
    func temporaryFile(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "linuxboot-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func romDirectory(_ names: [String]) throws -> String {
        let dir = NSTemporaryDirectory() + "roms-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var rom = [UInt8](repeating: 0, count: 1536)
        rom[0] = 0x55; rom[1] = 0xAA; rom[2] = 3
        for name in names { try Data(rom).write(to: URL(fileURLWithPath: dir + "/" + name)) }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testItemsFilesAndBootOrderEntry() throws {
        let kernel = SyntheticBzImage(payload: 64 << 10)
        let initrd = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        var config = VMConfig()
        config.kernel = try temporaryFile(kernel.bytes)
        config.initrd = try temporaryFile(initrd)
        config.append = "console=ttyS0"
        let boot = try XCTUnwrap(LinuxBoot.load(config, belowFourGiB: 128 << 20, dma: true,
                                               romDirectories: [try romDirectory(["linuxboot_dma.bin"])]))
        let rig = try TestMemory(size: 128 << 20)
        let fwcfg = FwCfg(memory: rig.memory)
        XCTAssertEqual(try boot.install(into: fwcfg), "/rom@genroms/linuxboot_dma.bin")
        XCTAssertEqual(fwcfg.itemData(key: 0x16), [0, 0, 1, 0])
        XCTAssertEqual(fwcfg.itemData(key: 0x17), [0, 0x0A, 0, 0], "5 sectors of setup")
        XCTAssertEqual(fwcfg.itemData(key: 0x18)?.count, 2560)
        XCTAssertEqual(fwcfg.itemData(key: 0x07), [0, 0, 0x10, 0])
        XCTAssertEqual(fwcfg.itemData(key: 0x11), Array(kernel.bytes[2560...]))
        XCTAssertEqual(fwcfg.itemData(key: 0x13), [0, 0, 2, 0])
        XCTAssertEqual(fwcfg.itemData(key: 0x14), [14, 0, 0, 0])
        XCTAssertEqual(fwcfg.itemData(key: 0x15), Array("console=ttyS0\u{0}".utf8))
        XCTAssertEqual(fwcfg.itemData(key: 0x12), initrd)
        XCTAssertEqual(fwcfg.itemData(key: 0x0B), [0xA0, 0x86, 0x01, 0])
        XCTAssertEqual(fwcfg.itemData(key: 0x0A).map { le32($0, 0) }, boot.image.initrdAddress)
        XCTAssertEqual(le32(fwcfg.itemData(key: 0x18)!, 0x218), boot.image.initrdAddress)

        // The kernel by DMA in one transfer, then by PIO byte by byte: the same bytes.
        var descriptor: [UInt8] = []
        for v in [UInt32(0x11 << 16 | 0x08 | 0x02).bigEndian, UInt32(65536).bigEndian] { withUnsafeBytes(of: v) { descriptor += $0 } }
        withUnsafeBytes(of: UInt64(0x10_0000 - 0x123).bigEndian) { descriptor += $0 }
        try rig.memory.write(at: 0x1000, bytes: descriptor)
        fwcfg.write(region: 0, offset: 8, size: 4, value: UInt64(UInt32(0x1000).byteSwapped))
        XCTAssertEqual(try rig.memory.read(UInt32.self, at: 0x1000), 0, "DMA completed without error")
        XCTAssertEqual(try rig.memory.readBytes(at: 0x10_0000 - 0x123, count: 65536), Array(kernel.bytes[2560...]),
                       "a transfer that crosses a 1 MiB boundary lands whole")
        fwcfg.write(region: 0, offset: 0, size: 2, value: 0x11)
        let pio = (0..<65536).map { _ in UInt8(fwcfg.read(region: 0, offset: 1, size: 1)) }
        XCTAssertEqual(pio, Array(kernel.bytes[2560...]))
    }

    func testNoInitrdNoItemsAndClearErrors() throws {
        let kernel = SyntheticBzImage()
        let roms = try romDirectory(["linuxboot.bin"])
        var config = VMConfig()
        config.kernel = try temporaryFile(kernel.bytes)
        let boot = try XCTUnwrap(LinuxBoot.load(config, belowFourGiB: 64 << 20, dma: false, romDirectories: [roms]))
        let rig = try TestMemory(size: 64 << 20)
        let fwcfg = FwCfg(memory: rig.memory, dmaEnabled: false)
        XCTAssertEqual(try boot.install(into: fwcfg), "/rom@genroms/linuxboot.bin")
        XCTAssertNil(fwcfg.itemData(key: 0x12))
        XCTAssertNil(fwcfg.itemData(key: 0x0A))
        XCTAssertEqual(fwcfg.itemData(key: 0x15), [0])

        func message(_ config: VMConfig, dma: Bool = false) -> String {
            do {
                _ = try LinuxBoot.load(config, belowFourGiB: 64 << 20, dma: dma, romDirectories: [roms])
                return "no error"
            } catch { return error.description }
        }
        var c = config
        XCTAssertTrue(message(c, dma: true).contains("linuxboot_dma.bin not found"), message(c, dma: true))
        c.kernel = "/nonexistent/bzImage"
        XCTAssertEqual(message(c), "-kernel /nonexistent/bzImage: No such file or directory")
        c.kernel = try temporaryFile(Array("not a kernel".utf8) + [UInt8](repeating: 0, count: 600))
        XCTAssertTrue(message(c).hasPrefix("-kernel \(c.kernel!): not a Linux bzImage"), message(c))
        c = config
        c.initrd = "/nonexistent/a,/nonexistent/b"
        XCTAssertTrue(message(c).contains("several initrds"), message(c))
        c.initrd = try temporaryFile([UInt8](repeating: 1, count: 64 << 20))
        XCTAssertTrue(message(c).hasPrefix("-initrd \(c.initrd!): initrd of 67108864 bytes does not fit"), message(c))
        c = config
        c.append = String(repeating: "x", count: 3000)
        XCTAssertTrue(message(c).hasPrefix("-append: command line of 3000 bytes is longer"), message(c))
    }
}

/// Plain RAM at 0 for fw_cfg DMA.
final class TestMemory {
    let host: HostMemory
    let memory: PhysicalMemory
    init(size: Int) throws {
        host = try HostMemory(size: size)
        memory = PhysicalMemory(regions: [.init(guestAddress: 0, size: UInt64(size), backing: host, backingOffset: 0, writable: true)])
    }
}
