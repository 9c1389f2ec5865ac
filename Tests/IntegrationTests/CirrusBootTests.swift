import Foundation
import XCTest

/// cirrus-vga with the real SeaBIOS and vgabios-cirrus.bin on KVM: a boot sector asks the VGA
/// BIOS for VBE mode 0x111 (640×480, 16 bpp), then draws with the GD5446 blitter alone (a solid
/// fill, a screen-to-screen copy, an inverted transparent pattern expansion). `screendump` must
/// show the three shapes, and the same picture, pixel for pixel, as QEMU 7.2's cirrus-vga for the
/// same disk (QEMU under TCG: its KVM mode does not get through SeaBIOS on this nested KVM).
final class CirrusBootTests: XCTestCase {
    static let vgaBIOS = "/usr/share/seabios/vgabios-cirrus.bin"
    static let arguments = ["-M", "pc", "-m", "32", "-nodefaults", "-vga", "cirrus", "-display", "none"]

    typealias Screen = VGABootTests.Picture

    /// The boot sector's picture: red rectangles at (100,100) and (300,250), 200×100 each, a
    /// green band over rows 400-415, black elsewhere.
    static func checkShapes(_ screen: Screen, _ who: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual([screen.width, screen.height], [640, 480], who, file: file, line: line)
        guard screen.width == 640, screen.height == 480 else { return }
        let expected: [((Int, Int), UInt32)] = [
            ((150, 150), 0xFF0000), ((100, 100), 0xFF0000), ((299, 199), 0xFF0000), ((99, 100), 0), ((300, 199), 0),
            ((350, 300), 0xFF0000), ((300, 250), 0xFF0000), ((499, 349), 0xFF0000), ((500, 349), 0), ((350, 350), 0),
            ((0, 400), 0x00FF00), ((639, 415), 0x00FF00), ((10, 399), 0), ((10, 416), 0), ((5, 5), 0),
        ]
        for ((x, y), colour) in expected {
            XCTAssertEqual(screen[x, y], colour, "\(who): pixel (\(x),\(y))", file: file, line: line)
        }
    }

    func testVBEModeAndBlitsMatchQEMU() throws {
        try VMProcess.requireKVM()
        try DisplayComparison.requireVGABIOS(Self.vgaBIOS, for: "cirrus boot test")
        let build = try VMProcess.guestsBuilt.get()
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("cirrus-boot-\(getpid())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        var disk = Data(count: 1 << 20)
        disk.replaceSubrange(0..<512, with: try Data(contentsOf: build.appendingPathComponent("cirrus-blit.img")))
        // One copy each: QEMU locks its image.
        for name in ["ours.raw", "qemu.raw"] { try disk.write(to: work.appendingPathComponent(name)) }

        let vm = try QMPVM(Self.arguments + ["-drive", "file=\(work.path)/ours.raw,format=raw,if=ide",
                                             "-debugcon", "file:$DIR/debug.log"])
        let log = vm.directory.appendingPathComponent("debug.log").path
        _ = DisplayComparison.wait(for: "CIRRUS", in: log, timeout: 90)
        let logText = DisplayComparison.text(of: log)
        XCTAssertTrue(logText.contains("CIRRUS DONE"), "the boot sector did not finish:\n\(logText.suffix(2000))\n\(vm.stderr)")
        let client = try vm.client()
        try client.negotiate()
        let ours = try client.screendump(to: vm.directory.appendingPathComponent("ours.ppm").path)
        Self.checkShapes(ours, "SwiftDM")
        XCTAssertTrue(vm.process.isRunning, vm.stderr)

        guard DisplayComparison.qemuInstalled else {
            _ = DisplayComparison.skip("qemu-system-x86_64 is not installed; no side-by-side picture")
            return
        }
        let qemu = try QEMUProcess(Self.arguments + ["-drive", "file=\(work.path)/qemu.raw,format=raw,if=ide"],
                                   socket: work.appendingPathComponent("qemu.sock").path)
        defer { qemu.stop() }
        usleep(500_000)
        let qemuClient = try qemu.client()
        try qemuClient.negotiate()
        // QEMU's debug console stays silent here, so watch the screen for the last shape.
        let picture = work.appendingPathComponent("qemu.ppm").path
        var theirs = try qemuClient.screendump(to: picture)
        let qemuDeadline = Date().addingTimeInterval(120)
        while Date() < qemuDeadline, !(theirs.width == 640 && theirs[639, 415] == 0x00FF00) {
            sleep(1)
            theirs = try qemuClient.screendump(to: picture)
        }
        Self.checkShapes(theirs, "QEMU")
        XCTAssertTrue(ours.rgb == theirs.rgb, "SwiftDM's picture differs from QEMU's")
    }

    /// `guests/cirrus-rand.c` (as `-bios`, no VGA BIOS) programs a 320×200×32 mode itself and
    /// runs 2000 seeded random blits of every kind both implementations define alike; the
    /// screendumps must be identical.
    func testRandomBlitsMatchQEMU() throws {
        try VMProcess.requireKVM()
        guard DisplayComparison.qemuInstalled else {
            throw DisplayComparison.skip("qemu-system-x86_64 is not installed; the random-blit comparison cannot run")
        }
        let bios = try VMProcess.guestsBuilt.get().appendingPathComponent("cirrus-rand.bin").path
        let arguments = Self.arguments + ["-bios", bios]
        func waitForDone(_ log: String) -> Bool { DisplayComparison.wait(for: "cirrus-rand: done", in: log, timeout: 120) }
        let vm = try QMPVM(arguments + ["-serial", "file:$DIR/com1.log"])
        XCTAssertTrue(waitForDone(vm.directory.appendingPathComponent("com1.log").path), vm.stderr)
        let client = try vm.client()
        try client.negotiate()
        let ours = try client.screendump(to: vm.directory.appendingPathComponent("ours.ppm").path)
        XCTAssertEqual([ours.width, ours.height], [320, 200])

        let qemuLog = vm.directory.appendingPathComponent("qemu-com1.log").path
        let qemu = try QEMUProcess(arguments + ["-serial", "file:\(qemuLog)"],
                                   socket: vm.directory.appendingPathComponent("qemu.sock").path)
        defer { qemu.stop() }
        XCTAssertTrue(waitForDone(qemuLog), "QEMU's guest did not finish")
        let qemuClient = try qemu.client()
        try qemuClient.negotiate()
        let theirs = try qemuClient.screendump(to: vm.directory.appendingPathComponent("qemu.ppm").path)
        XCTAssertEqual([theirs.width, theirs.height], [ours.width, ours.height])
        let differing = zip(stride(from: 0, to: ours.rgb.count, by: 3), stride(from: 0, to: theirs.rgb.count, by: 3))
            .filter { ours.rgb[$0.0..<$0.0 + 3] != theirs.rgb[$0.1..<$0.1 + 3] }.count
        XCTAssertEqual(differing, 0, "pixels differing from QEMU's picture")
    }

    /// Bad cirrus-vga options are one line naming the option and exit status 1; libxl's
    /// `vgamem_mb=8` starts.
    func testBadCirrusOptionsAreOneLineErrors() throws {
        try VMProcess.requireKVM()
        let base = ["-M", "pc", "-m", "32", "-nodefaults", "-display", "none"]
        let cases: [([String], String)] = [
            (["-vga", "cirrus", "-device", "VGA"], "only one display device per machine"),
            (["-device", "cirrus-vga,vgamem_mb=2"], "vgamem_mb must be 4, 8 or 16"),
            (["-device", "cirrus-vga,vgamem_mb=12"], "vgamem_mb must be 4, 8 or 16"),
            (["-device", "cirrus-vga,vgamem_mb=64"], "parameter 'vgamem_mb' expects a number up to 16"),
            (["-device", "cirrus-vga,romfile=/nonexistent/cirrus.bin"], "romfile /nonexistent/cirrus.bin not found"),
        ]
        for (arguments, expected) in cases { try VMProcess.expectOneLineError(base + arguments, expected) }
        try VMProcess.expectStartsAndStops(base + ["-device", "cirrus-vga,vgamem_mb=8,romfile="])
    }
}
