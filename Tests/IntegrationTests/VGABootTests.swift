import Foundation
import XCTest

/// The standard VGA with the real SeaBIOS and the real vgabios-stdvga.bin on KVM: SeaBIOS finds
/// the VGA BIOS in the ROM BAR, the VGA BIOS sets mode 3, SeaBIOS prints on the text screen, and
/// `screendump` shows it — the same rows of text QEMU 7.2 (under TCG, quick enough for SeaBIOS)
/// shows for the same command line.
final class VGABootTests: XCTestCase {
    static let vgaBIOS = "/usr/share/seabios/vgabios-stdvga.bin"
    static let arguments = ["-M", "pc", "-m", "32", "-nodefaults", "-vga", "std", "-display", "none"]

    struct Picture {
        let width: Int
        let height: Int
        let rgb: [UInt8]

        /// A binary PPM (P6, maxval 255) as screendump writes it.
        init(ppm data: Data) throws {
            let bytes = [UInt8](data)
            var fields: [String] = []
            var index = 0
            while fields.count < 4, index < bytes.count {
                while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A { index += 1 }
                var field = ""
                while index < bytes.count, bytes[index] != 0x20, bytes[index] != 0x0A {
                    field.append(Character(UnicodeScalar(bytes[index]))); index += 1
                }
                fields.append(field)
            }
            index += 1
            guard fields.count == 4, fields[0] == "P6", let w = Int(fields[1]), let h = Int(fields[2]), fields[3] == "255",
                  bytes.count - index == w * h * 3 else { throw QMPTestClient.Failure("not a P6 PPM: \(fields)") }
            width = w
            height = h
            rgb = Array(bytes[index...])
        }

        /// The pixels of rows [first, first + count).
        func band(_ first: Int, _ count: Int) -> ArraySlice<UInt8> { rgb[(first * width * 3)..<((first + count) * width * 3)] }

        func lightPixels(rows: Range<Int>) -> Int {
            var count = 0
            for y in rows {
                for x in 0..<width where Int(rgb[(y * width + x) * 3]) + Int(rgb[(y * width + x) * 3 + 1]) > 256 { count += 1 }
            }
            return count
        }
    }

    /// Waits for SeaBIOS's last word in its debug log, then takes a screendump over QMP.
    func bootAndScreendump(client connect: () throws -> QMPTestClient, log: String, picture: String,
                           timeout: TimeInterval = 90) throws -> Picture {
        _ = DisplayComparison.wait(for: "No bootable device.", in: log, timeout: timeout)
        let text = DisplayComparison.text(of: log)
        XCTAssertTrue(text.contains("No bootable device."), "SeaBIOS did not finish (\(log)):\n\(text.suffix(3000))")
        XCTAssertTrue(text.contains("Running option rom at c000:0003"), "SeaBIOS ran the VGA BIOS from the ROM BAR")
        usleep(300_000)  // the last characters reach the screen just after the log line
        let client = try connect()
        try client.negotiate()
        return try client.screendump(to: picture)
    }

    func testSeaBIOSTextOnTheStandardVGAMatchesQEMU() throws {
        try VMProcess.requireKVM()
        try DisplayComparison.requireVGABIOS(Self.vgaBIOS, for: "VGA boot test")
        let vm = try QMPVM(Self.arguments + ["-debugcon", "file:$DIR/seabios.log"])
        let ours = try bootAndScreendump(client: { try vm.client() }, log: vm.directory.appendingPathComponent("seabios.log").path,
                                         picture: vm.directory.appendingPathComponent("swiftdm.ppm").path)
        XCTAssertEqual([ours.width, ours.height], [720, 400], "80×25 text in 9×16 cells")
        XCTAssertGreaterThan(ours.lightPixels(rows: 0..<16), 300, "the SeaBIOS banner on the first text row")
        XCTAssertEqual(ours.lightPixels(rows: 300..<400), 0, "nothing below the messages")
        XCTAssertTrue(vm.process.isRunning, vm.stderr)

        guard DisplayComparison.qemuInstalled else {
            _ = DisplayComparison.skip("qemu-system-x86_64 is not installed; no side-by-side picture")
            return
        }
        let qemuLog = vm.directory.appendingPathComponent("qemu-seabios.log").path
        // QEMU's -debugcon listens on 0xE9; Debian's SeaBIOS logs to 0x402.
        let qemu = try QEMUProcess(Self.arguments + [
            "-chardev", "file,id=seabios,path=\(qemuLog)", "-device", "isa-debugcon,iobase=0x402,chardev=seabios"],
                                   socket: vm.directory.appendingPathComponent("qemu.sock").path)
        defer { qemu.stop() }
        let theirs = try bootAndScreendump(client: { try qemu.client() }, log: qemuLog,
                                           picture: vm.directory.appendingPathComponent("qemu.ppm").path)
        XCTAssertEqual([theirs.width, theirs.height], [ours.width, ours.height])
        guard theirs.width == ours.width, theirs.height == ours.height else { return }
        // Row by row of text (16 pixel lines each). SeaBIOS tries floppy and hard disk in the
        // machine's boot order, so those rows may come in another order: compare the rows as
        // a multiset, and allow the cursor's row (it blinks) to differ.
        let rows = ours.height / 16
        XCTAssertEqual(ours.band(0, 16), theirs.band(0, 16), "the banner row is pixel-identical")
        var unmatched = (0..<rows).map { theirs.band($0 * 16, 16) }
        var missing: [Int] = []
        for row in 0..<rows {
            if let at = unmatched.firstIndex(of: ours.band(row * 16, 16)) {
                unmatched.remove(at: at)
            } else {
                missing.append(row)
            }
        }
        XCTAssertLessThanOrEqual(missing.count, 1, "text rows with no identical row under QEMU: \(missing)")
    }

    /// Bad VGA options are one line naming the option and exit status 1, before the guest runs.
    func testBadVGAOptionsAreOneLineErrors() throws {
        try VMProcess.requireKVM()
        let base = ["-M", "pc", "-m", "32", "-nodefaults", "-display", "none"]
        let cases: [([String], String)] = [
            (["-vga", "std", "-device", "VGA"], "only one display device per machine"),
            (["-device", "VGA,vgamem_mb=0"], "vgamem_mb must be between 1 and 256"),
            (["-device", "VGA,vgamem_mb=512"], "parameter 'vgamem_mb' expects a number up to 256"),
            (["-device", "VGA,romfile=/nonexistent/vga.bin"], "romfile /nonexistent/vga.bin not found"),
            (["-device", "VGA,colour=blue"], "colour"),
        ]
        for (arguments, expected) in cases { try VMProcess.expectOneLineError(base + arguments, expected) }
        // romfile="" means no ROM BAR: the machine starts (and is stopped right away).
        try VMProcess.expectStartsAndStops(base + ["-device", "VGA,romfile=,vgamem_mb=5"])
    }

    /// The lab's hvm-vga payload on KVM: text through the VGA BIOS, then 1024×768×32 through
    /// the DISPI registers with eight colour bars stored straight into the linear framebuffer
    /// (BAR0, a KVM memory slot), then a white box the redraw must pick up.
    func testVBELinearFramebufferOnKVM() throws {
        try VMProcess.requireKVM()
        guard FileManager.default.isReadableFile(atPath: Self.vgaBIOS),
              FileManager.default.isExecutableFile(atPath: "/usr/bin/as") else {
            throw DisplayComparison.skip("\(Self.vgaBIOS) or binutils (as, ld) missing; the VBE test cannot run")
        }
        let build = FileManager.default.temporaryDirectory.appendingPathComponent("swiftdm-vbe-\(getpid())")
        try FileManager.default.createDirectory(at: build, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: build) }
        let image = build.appendingPathComponent("vga.img").path
        let object = build.appendingPathComponent("vga.o").path
        let source = VMProcess.repositoryRoot.appendingPathComponent("lab/xen/payloads/vga.S").path
        for command in [["/usr/bin/as", "--32", "-o", object, source],
                        ["/usr/bin/ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat", "binary", "-e", "_start", "-o", image, object],
                        ["/usr/bin/truncate", "-s", "1M", image]] {
            let tool = Process()
            tool.executableURL = URL(fileURLWithPath: command[0])
            tool.arguments = Array(command.dropFirst())
            try tool.run()
            tool.waitUntilExit()
            XCTAssertEqual(tool.terminationStatus, 0, "\(command)")
        }
        let machine = try QMPVM(Self.arguments + ["-serial", "file:$DIR/serial.log", "-drive", "file=\(image),format=raw,if=ide"])
        let directory = machine.directory.path
        let client = try machine.client()
        try client.negotiate()
        func waitForSerial(_ marker: String) -> Bool { DisplayComparison.wait(for: marker, in: "\(directory)/serial.log", timeout: 120) }
        func screendump(_ name: String) throws -> Picture { try client.screendump(to: "\(directory)/\(name).ppm") }

        XCTAssertTrue(waitForSerial("LAB-VGA-TEXT"), machine.stderr)
        let text = try screendump("text")
        XCTAssertEqual([text.width, text.height], [720, 400])
        XCTAssertGreaterThan(text.lightPixels(rows: 0..<16), 100, "the payload's line on the first row")

        XCTAssertTrue(waitForSerial("LAB-VGA-LFB"), machine.stderr)
        let bars = try screendump("bars")
        XCTAssertEqual([bars.width, bars.height], [1024, 768])
        let colours: [UInt32] = [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00, 0xFF00FF, 0x00FFFF, 0x808080, 0x404040]
        for (bar, colour) in colours.enumerated() {
            for y in [0, 383, 767] { XCTAssertEqual(bars[bar * 128 + 64, y], colour, "bar \(bar) at line \(y)") }
        }

        XCTAssertTrue(waitForSerial("LAB-VGA-BOX"), machine.stderr)
        let box = try screendump("box")
        XCTAssertEqual(box[32, 32], 0xFFFFFF)
        XCTAssertEqual(box[95, 95], 0xFFFFFF)
        XCTAssertEqual(box[96, 96], 0xFF0000, "the bar again past the box")
    }
}
