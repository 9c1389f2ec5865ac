import Foundation
import XCTest

/// SeaBIOS on KVM booting the test boot sector from virtio-blk: raw and qcow2, through the
/// modern interface of a modern-only and of a transitional function, and through the legacy
/// interface alone; `bootindex` and QMP reaching the virtio drive.
extension StorageBootTests {
    func virtioDevice(_ image: String, format: String, _ properties: String) -> [String] {
        ["-drive", "if=none,id=vd0,file=\(image),format=\(format)", "-device", "virtio-blk-pci,drive=vd0\(properties)"]
    }

    func testSeaBIOSBootsRawVirtioModernOnly() throws {
        try expectBootSector(virtioDevice(try bootSectorDisk(), format: "raw", ",disable-legacy=on"), drive: "80")
    }

    func testSeaBIOSBootsQcow2VirtioModernOnly() throws {
        try expectBootSector(virtioDevice(try qcow2(from: try bootSectorDisk()), format: "qcow2", ",disable-legacy=on"), drive: "80")
    }

    func testSeaBIOSBootsRawVirtioTransitional() throws {
        try expectBootSector(virtioDevice(try bootSectorDisk(), format: "raw", ",disable-legacy=off,disable-modern=off"),
                             drive: "80")
    }

    func testSeaBIOSBootsQcow2VirtioTransitional() throws {
        // -drive if=virtio: a transitional virtio-blk-pci, as QEMU makes it.
        try expectBootSector(["-drive", "file=\(try qcow2(from: try bootSectorDisk())),if=virtio,format=qcow2"], drive: "80")
    }

    func testSeaBIOSBootsVirtioThroughTheLegacyInterface() throws {
        try expectBootSector(virtioDevice(try bootSectorDisk(), format: "raw", ",disable-modern=on,addr=5"), drive: "80")
    }

    func testBootIndexPicksTheVirtioDiskOverIDE() throws {
        // An IDE disk that is not bootable would be the first hard disk (0x80) by default; with
        // bootindex SeaBIOS puts the virtio disk first, so it becomes 0x80 and boots.
        FileManager.default.createFile(atPath: path("blank.raw"), contents: Data(count: 1 << 20))
        try expectBootSector(["-drive", "file=\(path("blank.raw")),if=ide,index=0,format=raw"]
                             + virtioDevice(try bootSectorDisk(), format: "raw", ",addr=6,bootindex=1"), drive: "80")
    }

    func testQMPQueryBlockReportsVirtioDrive() throws {
        let qmpPath = path("qmp.sock")
        let vm = try VMProcess(["-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                                "-qmp", "unix:\(qmpPath),server=on,wait=off"]
                               + virtioDevice(try bootSectorDisk(), format: "raw", ",id=disk0,serial=VSERIAL"))
        defer {
            vm.signal(SIGTERM)
            _ = vm.waitForExit(timeout: 10)
        }
        // The boot sector prints, then halts (no isa-debug-exit here): its read was counted.
        XCTAssertNotNil(vm.waitForOutput("SWIFTDM BOOT OK", timeout: 60), vm.stdout + vm.stderr)
        let qmp = try SerialSocket(path: qmpPath, timeout: 10)
        XCTAssertTrue(qmp.wait(for: "\"QMP\"", timeout: 10), qmp.text)
        qmp.send("{\"execute\":\"qmp_capabilities\"}\n", typing: false)
        XCTAssertTrue(qmp.wait(for: "\"return\"", timeout: 10), qmp.text)
        qmp.send("{\"execute\":\"query-block\"}\n", typing: false)
        XCTAssertTrue(qmp.wait(for: "disk.raw", timeout: 10), qmp.text)
        XCTAssertTrue(qmp.text.contains("\"device\": \"vd0\"") || qmp.text.contains("\"device\":\"vd0\""), qmp.text)
        XCTAssertTrue(qmp.text.contains("disk0"), qmp.text)
        qmp.send("{\"execute\":\"query-blockstats\"}\n", typing: false)
        XCTAssertTrue(qmp.wait(for: "rd_operations", timeout: 10), qmp.text)
        let compact = qmp.text.replacingOccurrences(of: " ", with: "")
        XCTAssertFalse(compact.contains("\"rd_operations\":0,"), "the boot sector read is counted: \(qmp.text)")
    }

    func testVirtioCommandLineErrorsAreOneLineAndExitOne() throws {
        let disk = try bootSectorDisk()
        let cases: [(String, String)] = [
            ("disable-legacy=on,disable-modern=on", "neither modern nor legacy"),
            ("disable-legacy=maybe", "does not accept value 'maybe'"),
            ("drive=nosuch", "can't find value 'nosuch'"),
            ("bootindex=x", "bootindex"),
            ("addr=1", "already used"),
        ]
        for (properties, message) in cases {
            let (status, _, stderr) = try VMProcess.run(["-m", "64", "-nodefaults", "-display", "none"]
                                                        + virtioDevice(disk, format: "raw", "," + properties), timeout: 30)
            XCTAssertEqual(status, 1, "\(properties): \(stderr)")
            XCTAssertTrue(stderr.contains(message), "\(properties): \(stderr)")
        }
    }

    /// guests/virtio-blk.c as firmware: a virtio 1.x driver with MSI-X on KVM (doorbell through
    /// an ioeventfd, completions through an irqfd), modern-only and transitional.
    func testVirtioDriverGuestWithMSIXOnKVM() throws {
        let build = try VMProcess.guestsBuilt.get()
        let disk = try patternImages().disk
        for mode in ["disable-legacy=on", "disable-legacy=off"] {
            let (status, out, err) = try VMProcess.run(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                                                        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                                                        "-bios", build.appendingPathComponent("virtio-blk.bin").path,
                                                        "-drive", "if=none,id=vd,file=\(disk),format=raw",
                                                        "-device", "virtio-blk-pci,drive=vd,serial=VIRTIO-SERIAL,\(mode),addr=3"],
                                                       timeout: 60)
            XCTAssertTrue(out.contains("PASS virtio-blk"), "\(mode): guest output:\n\(out)\nstderr:\n\(err)")
            XCTAssertEqual(status, 1, mode)
        }
    }

    /// xen-save-devices-state after SeaBIOS drove the disk (queue live), then -incoming: the
    /// virtio-blk section is in the stream and loads into a fresh process.
    func testVirtioStateSavesAndLoads() throws {
        let drive = virtioDevice(try bootSectorDisk(), format: "raw", ",id=disk0")
        let source = try QMPVM(QMPVM.guestArguments + drive)
        let client = try source.client()
        try client.negotiate()
        var reads = 0
        let deadline = Date().addingTimeInterval(60)
        while reads == 0 && Date() < deadline {
            let stats = try client.execute("query-blockstats")["return"] as? [[String: Any]] ?? []
            reads = (stats.first?["stats"] as? [String: Any])?["rd_operations"] as? Int ?? 0
            if reads == 0 { usleep(200_000) }
        }
        XCTAssertGreaterThan(reads, 0, "SeaBIOS read through virtio: \(source.stderr)")
        let saved = try source.saveStateAndQuit(client)
        XCTAssertNotNil(saved.range(of: Data("virtio-blk@virtio-blk-pci-vd0".utf8)), "virtio section in the stream")

        let copy = "/tmp/swiftdm-virtio-incoming-\(getpid()).bin"
        try saved.write(to: URL(fileURLWithPath: copy))
        defer { unlink(copy) }
        let target = try QMPVM(QMPVM.guestArguments + drive + ["-incoming", "fd:3"], shellRedirections: "3<\(copy)")
        let second = try target.client()
        try second.negotiate()
        let status = (try second.execute("query-status")["return"] as? [String: Any])?["status"] as? String
        XCTAssertEqual(status, "paused", target.stderr)
        XCTAssertNotNil(try second.execute("cont")["return"])
    }
}
