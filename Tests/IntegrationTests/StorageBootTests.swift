import Foundation
import XCTest

/// Real firmware and bootloaders reading our IDE disk and ATAPI CD-ROM: SeaBIOS loads a boot
/// sector from a disk and from an El Torito CD (raw and qcow2 each), and GRUB (Debian's
/// grub-pc-bin, installed by hand into a partitioned image) reaches its prompt and reads a FAT
/// partition through BIOS int 13h when commands are typed on the serial port.
final class StorageBootTests: XCTestCase {
    // MARK: fixtures

    static func tool(_ name: String) throws -> String {
        for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        let message = "SKIPPED: \(name) is not installed (scripts/setup-debian.sh installs it)"
        FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
        throw XCTSkip(message)
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.tool(tool))
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw NSError(domain: tool, code: Int(process.terminationStatus),
                          userInfo: [NSLocalizedDescriptionKey: "\(tool) \(arguments.joined(separator: " ")) failed: \(text)"])
        }
        return text
    }

    var workDirectory: URL!

    override func setUpWithError() throws {
        try VMProcess.requireKVM()
        workDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("storage-boot-\(getpid())-\(name.hashValue & 0xFFFF)")
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let workDirectory { try? FileManager.default.removeItem(at: workDirectory) }
    }

    func path(_ name: String) -> String { workDirectory.appendingPathComponent(name).path }

    func bootSector() throws -> Data {
        let build = try VMProcess.guestsBuilt.get()
        return try Data(contentsOf: build.appendingPathComponent("bootsector.img"))
    }

    /// A 1 MiB disk whose MBR is the test boot sector.
    func bootSectorDisk() throws -> String {
        var disk = Data(count: 1 << 20)
        disk.replaceSubrange(0..<512, with: try bootSector())
        try disk.write(to: URL(fileURLWithPath: path("disk.raw")))
        return path("disk.raw")
    }

    /// An ISO with the boot sector as its no-emulation El Torito image.
    func bootSectorISO() throws -> String {
        let tree = path("iso")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try bootSector().write(to: URL(fileURLWithPath: tree + "/boot.img"))
        try Self.run("xorriso", ["-as", "mkisofs", "-quiet", "-o", path("cd.iso"), "-b", "boot.img",
                                 "-no-emul-boot", "-boot-load-size", "4", tree])
        return path("cd.iso")
    }

    /// pattern.raw: 1024 sectors, sector n starting with n (LE32) and filled with n's low byte
    /// (what the ide-dma and virtio-blk guests check).
    @discardableResult
    func patternDisk() throws -> String {
        var disk = Data(count: 1024 * 512)
        for n in 0..<1024 {
            disk.replaceSubrange(n * 512..<(n + 1) * 512, with: [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: 512))
            withUnsafeBytes(of: UInt32(n).littleEndian) { disk.replaceSubrange(n * 512..<n * 512 + 4, with: $0) }
        }
        try disk.write(to: URL(fileURLWithPath: path("pattern.raw")))
        return path("pattern.raw")
    }

    func qcow2(from raw: String) throws -> String {
        let out = raw + ".qcow2"
        try Self.run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, out])
        return out
    }

    /// Runs until the boot sector exits through isa-debug-exit (status 99).
    func expectBootSector(_ arguments: [String], drive: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let vm = try VMProcess(["-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                                "-device", "isa-debug-exit"] + arguments)
        let status = vm.waitForExit(timeout: 90)
        XCTAssertEqual(status, 99, "exit status; stdout:\n\(vm.stdout)\nstderr:\n\(vm.stderr)", file: file, line: line)
        XCTAssertTrue(vm.stdout.contains("SWIFTDM BOOT OK DL=\(drive)"), "stdout:\n\(vm.stdout)", file: file, line: line)
    }

    // MARK: boot sector

    func testSeaBIOSBootsRawIDEDisk() throws {
        // libxl's form for an emulated IDE disk.
        try expectBootSector(["-drive", "file=\(try bootSectorDisk()),if=ide,index=0,media=disk,format=raw,cache=writeback"],
                             drive: "80")
    }

    func testSeaBIOSBootsQcow2IDEDisk() throws {
        try expectBootSector(["-drive", "file=\(try qcow2(from: try bootSectorDisk())),if=ide,index=0,media=disk,format=qcow2"],
                             drive: "80")
    }

    func testSeaBIOSBootsElToritoRawISO() throws {
        // libxl's form for a CD-ROM, with an empty second CD drive next to it.
        try expectBootSector(["-drive", "if=none,readonly=on,id=ide-5632,file=\(try bootSectorISO()),format=raw",
                              "-device", "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
                              "-device", "ide-cd,id=ide-5696,bus=ide.1,unit=1", "-boot", "order=d"],
                             drive: "E0")
    }

    func testSeaBIOSBootsElToritoQcow2ISO() throws {
        try expectBootSector(["-drive", "file=\(try qcow2(from: try bootSectorISO())),if=ide,index=2,media=cdrom,format=qcow2",
                              "-boot", "d"],
                             drive: "E0")
    }

    func testHardDiskBootsWithEmptyCDROMAndHdaShorthand() throws {
        let vm = try VMProcess(["-m", "64", "-nodefaults", "-nographic", "-serial", "stdio", "-device", "isa-debug-exit",
                                "-hda", try bootSectorDisk(), "-drive", "if=ide,index=2,media=cdrom"])
        XCTAssertEqual(vm.waitForExit(timeout: 90), 99, vm.stdout + vm.stderr)
        XCTAssertTrue(vm.stdout.contains("SWIFTDM BOOT OK DL=80"), vm.stdout)
        XCTAssertTrue(vm.stderr.contains("image format was not specified"), "the no-probing warning: \(vm.stderr)")
    }

    func testBootIndexPutsTheCDROMFirst() throws {
        // Both are bootable and CMOS says hard disk first; bootindex (fw_cfg bootorder) wins.
        try expectBootSector(["-drive", "if=none,id=hd,file=\(try bootSectorDisk()),format=raw",
                              "-drive", "if=none,id=cd,file=\(try bootSectorISO()),format=raw",
                              "-device", "ide-hd,drive=hd,bus=ide.0,unit=0,bootindex=2",
                              "-device", "ide-cd,drive=cd,bus=ide.1,unit=0,bootindex=1"],
                             drive: "E0")
    }

    /// guests/ide-dma.c as firmware: BAR4, PRD tables, IRQ 14 and 15 through the PIC on KVM, ATA and ATAPI DMA.
    func testBusMasterDMAGuestOnKVM() throws {
        try patternDisk()
        var cd = Data(count: 16 * 2048)
        for n in 0..<16 {
            cd.replaceSubrange(n * 2048..<(n + 1) * 2048, with: [UInt8](repeating: UInt8(n), count: 2048))
            withUnsafeBytes(of: UInt32(n).littleEndian) { cd.replaceSubrange(n * 2048..<n * 2048 + 4, with: $0) }
        }
        try cd.write(to: URL(fileURLWithPath: path("pattern.iso")))
        let build = try VMProcess.guestsBuilt.get()
        let (status, out, err) = try VMProcess.run(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                                                    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                                                    "-bios", build.appendingPathComponent("ide-dma.bin").path,
                                                    "-drive", "file=\(path("pattern.raw")),format=raw,if=ide,index=0",
                                                    "-drive", "file=\(path("pattern.iso")),format=raw,if=ide,index=2,media=cdrom"],
                                                   timeout: 60)
        XCTAssertTrue(out.contains("PASS ide-dma"), "guest output:\n\(out)\nstderr:\n\(err)")
        XCTAssertEqual(status, 1)
    }

    /// An empty CD drive gets its medium over QMP while SeaBIOS waits to retry the boot (QEMU
    /// 7.2 crashed on this); after the reboot SeaBIOS boots the new CD.
    func testMediumInsertedIntoEmptyDriveOverQMPBootsAfterReboot() throws {
        let iso = try bootSectorISO()
        let qmpPath = path("qmp.sock")
        let vm = try VMProcess(["-m", "64", "-nodefaults", "-nographic", "-serial", "stdio", "-device", "isa-debug-exit",
                                "-qmp", "unix:\(qmpPath),server=on,wait=off",
                                "-drive", "if=none,readonly=on,id=ide-5632",
                                "-device", "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
                                "-boot", "order=d,reboot-timeout=1000"])
        XCTAssertNotNil(vm.waitForOutput("No bootable device", timeout: 60), vm.stdout + vm.stderr)
        let qmp = try SerialSocket(path: qmpPath, timeout: 10)
        XCTAssertTrue(qmp.wait(for: "\"QMP\"", timeout: 10), qmp.text)
        qmp.send("{\"execute\":\"qmp_capabilities\"}\n", typing: false)
        XCTAssertTrue(qmp.wait(for: "\"return\"", timeout: 10), qmp.text)
        qmp.send("{\"execute\":\"blockdev-change-medium\",\"arguments\":{\"id\":\"ide-5632\",\"filename\":\"\(iso)\",\"format\":\"raw\"}}\n",
                 typing: false)
        XCTAssertTrue(qmp.wait(for: "\"return\"", timeout: 10), qmp.text)
        XCTAssertTrue(qmp.text.contains("DEVICE_TRAY_MOVED"), qmp.text)
        qmp.send("{\"execute\":\"query-block\"}\n", typing: false)
        XCTAssertTrue(qmp.wait(for: "cd.iso", timeout: 10), qmp.text)
        XCTAssertEqual(vm.waitForExit(timeout: 60), 99, vm.stdout + vm.stderr)
        XCTAssertTrue(vm.stdout.contains("SWIFTDM BOOT OK DL=E0"), vm.stdout)
    }

    func testDriveErrorsAreOneLineAndExitOne() throws {
        let cases: [([String], String)] = [
            (["-drive", "file=\(path("missing.img")),format=raw"], "could not open"),
            (["-drive", "file=x,if=scsi"], "unsupported interface"),
            (["-drive", "file=x,format=vmdk"], "unsupported format"),
            (["-device", "ide-hd,drive=nosuch"], "can't find value 'nosuch'"),
            (["-device", "ide-cd,bus=ide.7"], "Bus 'ide.7' not found"),
            (["-hda", try bootSectorDisk(), "-drive", "file=\(try bootSectorDisk()),index=0,format=raw"], "exists"),
        ]
        for (arguments, message) in cases {
            let (status, _, stderr) = try VMProcess.run(["-m", "64", "-nodefaults", "-display", "none"] + arguments, timeout: 30)
            XCTAssertEqual(status, 1, "\(arguments): \(stderr)")
            XCTAssertTrue(stderr.contains(message), "\(arguments): \(stderr)")
        }
    }

    // MARK: GRUB

    /// boot.img in the MBR (keeping the partition table), core.img from sector 1 (boot.img's
    /// default kernel sector; core's own blocklist defaults to the sectors after it), and a
    /// FAT partition from 1 MiB holding hello.txt. No loop devices, no grub-install.
    func grubDisk() throws -> String {
        let grubDir = "/usr/lib/grub/i386-pc"
        guard FileManager.default.fileExists(atPath: grubDir + "/boot.img") else {
            throw XCTSkip("SKIPPED: grub-pc-bin is not installed")
        }
        let early = path("early.cfg")
        try """
        serial --unit=0 --speed=115200
        terminal_input serial
        terminal_output serial
        set prefix=(hd0,msdos1)/boot/grub

        """.write(toFile: early, atomically: true, encoding: .utf8)
        try Self.run("grub-mkimage", ["-O", "i386-pc", "-o", path("core.img"), "-c", early, "-p", "(hd0,msdos1)/boot/grub",
                                      "biosdisk", "part_msdos", "fat", "normal", "ls", "cat", "echo", "serial", "terminal"])
        let partitionStart = 2048, partitionSectors = 6144
        FileManager.default.createFile(atPath: path("part.img"), contents: Data(count: partitionSectors * 512))
        try Self.run("mformat", ["-i", path("part.img"), "-T", "\(partitionSectors)", "-h", "4", "-s", "32", "::"])
        try "hello from the fat partition\n".write(toFile: path("hello.txt"), atomically: true, encoding: .utf8)
        try Self.run("mcopy", ["-i", path("part.img"), path("hello.txt"), "::/hello.txt"])

        var disk = Data(count: (partitionStart + partitionSectors) * 512)
        let boot = try Data(contentsOf: URL(fileURLWithPath: grubDir + "/boot.img"))
        disk.replaceSubrange(0..<440, with: boot.prefix(440))
        var entry: [UInt8] = [0x80, 0xFE, 0xFF, 0xFF, 0x0E, 0xFE, 0xFF, 0xFF]
        for value in [UInt32(partitionStart), UInt32(partitionSectors)] { withUnsafeBytes(of: value.littleEndian) { entry += $0 } }
        disk.replaceSubrange(446..<462, with: entry)
        disk[510] = 0x55
        disk[511] = 0xAA
        let core = try Data(contentsOf: URL(fileURLWithPath: path("core.img")))
        XCTAssertLessThan(core.count, (partitionStart - 1) * 512, "core.img fits before the partition")
        disk.replaceSubrange(512..<512 + core.count, with: core)
        let part = try Data(contentsOf: URL(fileURLWithPath: path("part.img")))
        disk.replaceSubrange(partitionStart * 512..<partitionStart * 512 + part.count, with: part)
        try disk.write(to: URL(fileURLWithPath: path("grub.raw")))
        return path("grub.raw")
    }

    func expectGRUB(_ driveOption: String) throws {
        let socketPath = path("serial.sock")
        let vm = try VMProcess(["-m", "64", "-nodefaults", "-display", "none",
                                "-serial", "unix:\(socketPath),server=on,wait=off", "-drive", driveOption])
        defer {
            vm.signal(SIGTERM)
            _ = vm.waitForExit(timeout: 10)
        }
        let serial = try SerialSocket(path: socketPath, timeout: 10)
        // GRUB decompresses its core with a ~3 M instructions/s vCPU here: about a minute.
        XCTAssertTrue(serial.wait(for: "grub>", timeout: 240), "GRUB prompt; serial:\n\(serial.text)\nstderr:\n\(vm.stderr)")
        serial.send("ls\r")
        XCTAssertTrue(serial.wait(for: "(hd0,msdos1)", timeout: 60), "ls lists the partition:\n\(serial.text)")
        serial.send("cat (hd0,msdos1)/hello.txt\r")
        XCTAssertTrue(serial.wait(for: "hello from the fat partition", timeout: 60), "cat shows the file:\n\(serial.text)")
    }

    func testGRUBFromRawDiskListsPartitionsAndReadsAFile() throws {
        try expectGRUB("file=\(try grubDisk()),format=raw,if=ide,index=0,media=disk")
    }

    func testGRUBFromQcow2DiskListsPartitionsAndReadsAFile() throws {
        try expectGRUB("file=\(try qcow2(from: try grubDisk())),format=qcow2,if=ide,index=0,media=disk")
    }
}

/// The test's end of `-serial unix:PATH,server=on`: connects (retrying while the VM starts),
/// collects everything the guest prints, sends keystrokes.
final class SerialSocket: @unchecked Sendable {
    private let fd: Int32
    private var received = Data()

    init(path: String, timeout: TimeInterval) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                let bytes = Array(path.utf8.prefix(raw.count - 1))
                raw.copyBytes(from: bytes + [0])
            }
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if ok == 0 {
                self.fd = fd
                return
            }
            close(fd)
            guard Date() < deadline else {
                throw NSError(domain: "serial", code: 1, userInfo: [NSLocalizedDescriptionKey: "cannot connect to \(path)"])
            }
            usleep(50_000)
        }
    }

    deinit { close(fd) }

    var text: String { String(decoding: received, as: UTF8.self) }

    /// `typing`: one byte at a time, as typed (GRUB reads its serial port by polling).
    func send(_ text: String, typing: Bool = true) {
        guard typing else {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            return
        }
        for byte in text.utf8 {
            var b = byte
            _ = write(fd, &b, 1)
            usleep(20_000)
        }
    }

    /// Reads until `needle` appears after what was seen when called; true if it did.
    func wait(for needle: String, timeout: TimeInterval) -> Bool {
        let start = received.count
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            if String(decoding: received[start...], as: UTF8.self).contains(needle) { return true }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) >= 0 else { return false }
            if poller.revents & Int16(POLLIN | POLLHUP) != 0 {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { return String(decoding: received[start...], as: UTF8.self).contains(needle) }
                received.append(contentsOf: buffer[0..<n])
            }
        }
        return String(decoding: received[start...], as: UTF8.self).contains(needle)
    }
}
