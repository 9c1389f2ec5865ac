import Foundation
import XCTest

/// Direct kernel boot on KVM with Debian's SeaBIOS and QEMU's linuxboot_dma.bin: the stand-in
/// bzImage of guests/linuxboot/stub.S reports what it was handed (command line, initrd, its own
/// protected-mode payload at 1 MiB, the patched setup header), and QEMU 7.2 must print the same.
final class LinuxBootTests: XCTestCase {
    var workDirectory: URL!

    override func setUpWithError() throws {
        workDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("linuxboot-\(getpid())-\(name.hashValue & 0xFFFF)")
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let workDirectory { try? FileManager.default.removeItem(at: workDirectory) }
    }

    func path(_ name: String) -> String { workDirectory.appendingPathComponent(name).path }

    /// The stub's checksum: s = rol(s, 1) + w over little-endian 32-bit words, tail zero-padded.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var sum: UInt32 = 0
        var i = 0
        while i < bytes.count {
            var word: UInt32 = 0
            for b in 0..<min(4, bytes.count - i) { word |= UInt32(bytes[i + b]) << (8 * UInt32(b)) }
            sum = (sum << 1 | sum >> 31) &+ word
            i += 4
        }
        return sum
    }

    static func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }

    /// The stub's setup plus `payload` bytes, syssize set; returns the file and the payload.
    func stubKernel(payload size: Int) throws -> (String, [UInt8]) {
        let build = try VMProcess.guestsBuilt.get()
        var bytes = [UInt8](try Data(contentsOf: build.appendingPathComponent("linuxboot-stub.setup")))
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 / 251) }
        withUnsafeBytes(of: UInt32(size / 16).littleEndian) { bytes.replaceSubrange(0x1F4..<0x1F8, with: $0) }
        let file = path("stub.bzImage")
        try Data(bytes + payload).write(to: URL(fileURLWithPath: file))
        return (file, payload)
    }

    func initrd(_ size: Int) throws -> (String, [UInt8]) {
        var state: UInt32 = 0x1234_5678
        let bytes = (0..<size).map { _ -> UInt8 in
            state = state &* 1_103_515_245 &+ 12345
            return UInt8(truncatingIfNeeded: state >> 16)
        }
        let file = path("initrd.img")
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return (file, bytes)
    }

    static let commandLine = "console=ttyS0 swiftdm-linuxboot vga=0x317 root=/dev/ram0 a=b,c"

    func bootArguments(kernel: String, initrd: String) -> [String] {
        ["-M", "pc", "-m", "128", "-nodefaults", "-nographic", "-serial", "stdio",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
         "-kernel", kernel, "-initrd", initrd, "-append", Self.commandLine]
    }

    /// The lines every faithful loader produces (the initrd's address is the firmware's choice).
    func checkStubReport(_ out: String, payload: [UInt8], initrd: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(out.contains("LINUXBOOT cmdline=[\(Self.commandLine)]"), out, file: file, line: line)
        XCTAssertTrue(out.contains("size=\(Self.hex8(UInt32(initrd.count))) sum=\(Self.hex8(Self.checksum(initrd)))"), out, file: file, line: line)
        XCTAssertTrue(out.contains("LINUXBOOT kernel size=\(Self.hex8(UInt32(payload.count))) sum=\(Self.hex8(Self.checksum(payload)))"), out, file: file, line: line)
        XCTAssertTrue(out.contains("LINUXBOOT header loader=000000b0 loadflags=00000081 heap_end=0000fe00 cmdline_ptr=00020000 vid_mode=00000317"),
                      out, file: file, line: line)
        XCTAssertTrue(out.contains("LINUXBOOT done"), out, file: file, line: line)
        // The initrd lies in RAM, page-aligned, above the kernel.
        if let range = out.range(of: "initrd addr="), let address = UInt32(out[range.upperBound...].prefix(8), radix: 16) {
            XCTAssertEqual(address & 0xFFF, 0, file: file, line: line)
            XCTAssertGreaterThanOrEqual(address, 0x10_0000 + UInt32(payload.count), file: file, line: line)
            XCTAssertLessThanOrEqual(UInt64(address) + UInt64(initrd.count), 128 << 20, file: file, line: line)
        } else {
            XCTFail("no initrd line: \(out)", file: file, line: line)
        }
    }

    func testStubKernelBootsByFwCfgDMA() throws {
        try VMProcess.requireKVM()
        let (kernel, payload) = try stubKernel(payload: 256 << 10)
        let (initrdFile, initrd) = try initrd(300_001)
        let (status, out, err) = try VMProcess.run(bootArguments(kernel: kernel, initrd: initrdFile), timeout: 120)
        XCTAssertEqual(status, 99, out + err)
        XCTAssertTrue(out.contains("Booting from ROM"), "SeaBIOS booted the linuxboot ROM's entry: \(out)")
        checkStubReport(out, payload: payload, initrd: initrd)
    }

    func testKernelBootsBeforeABootIndexDisk() throws {
        try VMProcess.requireKVM()
        let build = try VMProcess.guestsBuilt.get()
        var disk = try Data(contentsOf: build.appendingPathComponent("bootsector.img"))
        disk.append(Data(count: 1024 * 1024 - disk.count))
        try disk.write(to: URL(fileURLWithPath: path("disk.raw")))
        let (kernel, payload) = try stubKernel(payload: 4096)
        let (initrdFile, initrd) = try initrd(5000)
        let (status, out, err) = try VMProcess.run(bootArguments(kernel: kernel, initrd: initrdFile) + [
            "-drive", "if=none,id=hd,file=\(path("disk.raw")),format=raw", "-device", "ide-hd,drive=hd,bootindex=1"], timeout: 120)
        XCTAssertEqual(status, 99, out + err)
        checkStubReport(out, payload: payload, initrd: initrd)
        XCTAssertFalse(out.contains("SWIFTDM BOOT OK"), out)
        let (dupStatus, _, dupErr) = try VMProcess.run(bootArguments(kernel: kernel, initrd: initrdFile) + [
            "-drive", "if=none,id=hd,file=\(path("disk.raw")),format=raw", "-device", "ide-hd,drive=hd,bootindex=0"])
        XCTAssertEqual(dupStatus, 1)
        XCTAssertTrue(dupErr.contains("bootindex 0 is used twice"), dupErr)
    }

    /// The same stub under QEMU 7.2 (KVM): the peer prints the same report.
    func testQEMUPrintsTheSameReport() throws {
        try VMProcess.requireKVM()
        let qemu = "/usr/bin/qemu-system-x86_64"
        guard FileManager.default.isExecutableFile(atPath: qemu) else { throw XCTSkip("qemu-system-x86_64 is not installed") }
        let (kernel, payload) = try stubKernel(payload: 256 << 10)
        let (initrdFile, initrd) = try initrd(300_001)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = ["-accel", "kvm"] + bootArguments(kernel: kernel, initrd: initrdFile)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 99, out)
        checkStubReport(out, payload: payload, initrd: initrd)
    }

    /// Every bad file or option is one line naming the option, and exit status 1, before any VM exists.
    func testBadKernelInitrdAndCommandLineAreOneLineErrors() throws {
        let (kernel, _) = try stubKernel(payload: 4096)
        let (initrdFile, _) = try initrd(100)
        try Data("#!/bin/sh\n".utf8 + [UInt8](repeating: 0, count: 4096)).write(to: URL(fileURLWithPath: path("script")))
        let fat = path("fat.img")
        FileManager.default.createFile(atPath: fat, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: fat))
        try handle.truncate(atOffset: 200 << 20)  // sparse: 200 MiB that do not fit in 128 MiB
        try handle.close()
        let base = ["-M", "pc", "-m", "128", "-nodefaults", "-nographic"]
        let cases: [([String], String)] = [
            (["-kernel", path("missing")], "-kernel \(path("missing")): No such file or directory"),
            (["-kernel", path("script")], "-kernel \(path("script")): not a Linux bzImage"),
            (["-kernel", kernel, "-initrd", path("missing")], "-initrd \(path("missing")): No such file or directory"),
            (["-kernel", kernel, "-initrd", initrdFile + "," + initrdFile], "several initrds (comma-separated) are not supported"),
            (["-kernel", kernel, "-initrd", fat], "-initrd \(fat): initrd of 209715200 bytes does not fit"),
            (["-kernel", kernel, "-append", String(repeating: "x", count: 2048)], "-append: command line of 2048 bytes is longer than the kernel's limit of 2047"),
            (["-kernel", kernel, "-append", "vga=fancy"], "-append: invalid 'vga=' kernel parameter"),
            (["-initrd", initrdFile], "-initrd \(initrdFile): only allowed with -kernel"),
            (["-append", "quiet"], "-append quiet: only allowed with -kernel"),
            (["-kernel", kernel, "-global", "fw_cfg_io.dma_enabled=maybe"], "-global"),
        ]
        for (arguments, expected) in cases {
            let (status, out, err) = try VMProcess.run(base + arguments, timeout: 30)
            XCTAssertEqual(status, 1, "\(arguments): \(out) \(err)")
            XCTAssertTrue(err.contains(expected), "\(arguments): expected '\(expected)' in: \(err)")
            XCTAssertEqual(err.split(separator: "\n").count, 1, "one line: \(err)")
        }
    }
}
