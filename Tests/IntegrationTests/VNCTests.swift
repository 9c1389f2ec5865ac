import Foundation
import TestTools
import XCTest

/// `-vnc` on the real binary, as libxl starts it: real clients (vncdotool, vncsnapshot)
/// connect, QMP reports and controls the server.
final class VNCTests: XCTestCase {
    /// A display range of our own, so parallel runs do not collide.
    static var firstDisplay: Int { 500 + Int(getpid() % 200) * 2 }

    /// Connects over TCP and logs in with security None, returning the socket.
    static func rfbLogin(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw QMPTestClient.Failure("connect to \(port): errno \(errno)") }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func read(_ n: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            var have = 0
            while have < n {
                let got = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, n - have, 0) }
                guard got > 0 else { throw QMPTestClient.Failure("RFB read failed") }
                have += got
            }
            return out
        }
        func write(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } }
        XCTAssertEqual(String(decoding: try read(12), as: UTF8.self), "RFB 003.008\n")
        write(Array("RFB 003.008\n".utf8))
        XCTAssertEqual(try read(2), [1, 1])
        write([1])
        XCTAssertEqual(try read(4), [0, 0, 0, 0])
        write([1])
        let header = try read(24)
        XCTAssertEqual(Int(header[0]) << 8 | Int(header[1]), 640)
        XCTAssertEqual(Int(header[2]) << 8 | Int(header[3]), 480)
        _ = try read(Int(header[23]))
        return fd
    }

    func testBlankDisplayServedToRealClientsAndReportedByQMP() throws {
        try VMProcess.requireKVM()
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        try ExternalTool.require("/usr/bin/vncsnapshot", "vncsnapshot")
        let first = Self.firstDisplay
        let vm = try QMPVM(["-M", "pc", "-m", "64", "-nodefaults", "-display", "none", "-S",
                            "-vnc", "127.0.0.1:\(first),to=\(first + 100)"])
        let qmp = try vm.client()
        try qmp.negotiate()
        let info = try XCTUnwrap(qmp.execute("query-vnc")["return"] as? [String: Any], vm.stderr)
        XCTAssertEqual(info["enabled"] as? Bool, true)
        XCTAssertEqual(info["host"] as? String, "127.0.0.1")
        XCTAssertEqual(info["family"] as? String, "ipv4")
        XCTAssertEqual(info["auth"] as? String, "none")
        let port = try XCTUnwrap(Int(info["service"] as? String ?? ""))
        XCTAssertTrue((5900 + first...5900 + first + 100).contains(port))

        // A connected client shows in query-vnc.
        let held = try Self.rfbLogin(port: port)
        defer { close(held) }
        let clients = try XCTUnwrap((qmp.execute("query-vnc")["return"] as? [String: Any])?["clients"] as? [[String: Any]])
        XCTAssertEqual(clients.count, 1)
        XCTAssertEqual(clients.first?["host"] as? String, "127.0.0.1")
        XCTAssertEqual(clients.first?["family"] as? String, "ipv4")
        XCTAssertEqual(clients.first?["websocket"] as? Bool, false)
        let hmp = try qmp.execute("human-monitor-command", ["command-line": "info vnc"])
        let text = hmp["return"] as? String ?? ""
        XCTAssertTrue(text.contains("Server: 127.0.0.1:\(port) (ipv4)"), text)
        XCTAssertTrue(text.contains("Client: 127.0.0.1:"), text)

        // vncdotool: a 640x480 black picture (no display device: a blank framebuffer).
        let shot = vm.directory.appendingPathComponent("shot.bmp")
        let (status, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "capture", shot.path])
        XCTAssertEqual(status, 0, output)
        let python = ExternalTool.venv.appendingPathComponent("python3").path
        let (checked, summary) = try ExternalTool.run(python, ["-c", "import sys; from PIL import Image; i = Image.open(sys.argv[1]).convert('RGB'); print(i.size, i.getextrema())", shot.path])
        XCTAssertEqual(checked, 0, summary)
        XCTAssertEqual(summary.trimmingCharacters(in: .whitespacesAndNewlines), "(640, 480) ((0, 0), (0, 0), (0, 0))")

        // vncsnapshot, a second client while the first is still connected (shared).
        let jpeg = vm.directory.appendingPathComponent("snap.jpg")
        let (snapped, snapOutput) = try ExternalTool.run("/usr/bin/vncsnapshot", ["-quiet", "-allowblank", "127.0.0.1:\(port - 5900)", jpeg.path])
        XCTAssertEqual(snapped, 0, snapOutput)
        XCTAssertTrue(FileManager.default.fileExists(atPath: jpeg.path))
        XCTAssertFalse(vm.stderr.contains("vnc"), "nothing alarming logged: \(vm.stderr)")
        // Without password=on, QEMU refuses to set one.
        XCTAssertEqual(QMPTestClient.errorDesc(try qmp.execute("change-vnc-password", ["password": "x"])),
                       "Could not set password")
        _ = try qmp.execute("quit")
    }

    func testPasswordSetThroughQMP() throws {
        try VMProcess.requireKVM()
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        let first = Self.firstDisplay + 120
        let vm = try QMPVM(["-M", "pc", "-m", "64", "-nodefaults", "-display", "none", "-S",
                            "-vnc", "127.0.0.1:\(first),to=\(first + 60),password=on"])
        let qmp = try vm.client()
        try qmp.negotiate()
        let info = try XCTUnwrap(qmp.execute("query-vnc")["return"] as? [String: Any])
        XCTAssertEqual(info["auth"] as? String, "vnc")
        let port = try XCTUnwrap(Int(info["service"] as? String ?? ""))
        let shot = vm.directory.appendingPathComponent("shot.bmp")
        // No password yet: every login is refused, as QEMU does.
        let (refused, _) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "", "capture", shot.path], timeout: 15)
        XCTAssertNotEqual(refused, 0)
        XCTAssertNotNil(try qmp.execute("change-vnc-password", ["password": "libxl-pw"])["return"])
        let (ok, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "libxl-pw", "capture", shot.path])
        XCTAssertEqual(ok, 0, output)
        XCTAssertNotNil(try qmp.execute("set_password", ["protocol": "vnc", "password": "second"])["return"])
        let (old, _) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "libxl-pw", "capture", shot.path], timeout: 15)
        XCTAssertNotEqual(old, 0)
        let (new, newOutput) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "second", "capture", shot.path])
        XCTAssertEqual(new, 0, newOutput)
        XCTAssertEqual(QMPTestClient.errorDesc(try qmp.execute("set_password", ["protocol": "spice", "password": "x"])),
                       "SPICE is not available")
        _ = try qmp.execute("quit")
    }

    func testVNCStartFailureIsAClearError() throws {
        try VMProcess.requireKVM()
        let (status, _, stderr) = try VMProcess.run(["-M", "pc", "-m", "64", "-nodefaults", "-display", "none", "-S",
                                                     "-vnc", "unix:/nonexistent-dir/vnc.sock"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(stderr.contains("Failed to start VNC server"), stderr)
    }
}

/// The VNC server showing a real display: SeaBIOS and vgabios-stdvga draw the text screen on
/// the standard VGA, and real VNC clients see what `screendump` sees.
final class VNCWithVGATests: XCTestCase {
    func testVncdotoolAndVncsnapshotSeeTheSeaBIOSTextScreen() throws {
        try VMProcess.requireKVM()
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        try ExternalTool.require("/usr/bin/vncsnapshot", "vncsnapshot")
        guard FileManager.default.isReadableFile(atPath: VGABootTests.vgaBIOS) else {
            let message = "SKIPPED: \(VGABootTests.vgaBIOS) is missing (apt-get install seabios)"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message)
        }
        let first = VNCTests.firstDisplay + 200
        let vm = try QMPVM(VGABootTests.arguments + ["-debugcon", "file:$DIR/seabios.log",
                                                     "-vnc", "127.0.0.1:\(first),to=\(first + 60)"])
        // SeaBIOS is done drawing when its debug log says there is nothing to boot.
        let log = vm.directory.appendingPathComponent("seabios.log").path
        let deadline = Date().addingTimeInterval(90)
        func logText() -> String { String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self) }
        while Date() < deadline, !logText().contains("No bootable device.") { usleep(100_000) }
        XCTAssertTrue(logText().contains("No bootable device."), "SeaBIOS did not finish: \(logText().suffix(2000))")
        usleep(300_000)
        let qmp = try vm.client()
        try qmp.negotiate()
        let dumpPath = vm.directory.appendingPathComponent("screendump.ppm").path
        XCTAssertNotNil(try qmp.execute("screendump", ["filename": dumpPath])["return"])
        let screendump = try VGABootTests.Picture(ppm: Data(contentsOf: URL(fileURLWithPath: dumpPath)))
        XCTAssertEqual([screendump.width, screendump.height], [720, 400])
        let port = try XCTUnwrap(Int((qmp.execute("query-vnc")["return"] as? [String: Any])?["service"] as? String ?? ""))

        // vncdotool: pixel for pixel what screendump shows, but for the blinking cursor's cell.
        let shot = vm.directory.appendingPathComponent("vnc.bmp")
        let (status, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "capture", shot.path])
        XCTAssertEqual(status, 0, output)
        let ppm = vm.directory.appendingPathComponent("vnc.ppm")
        let python = ExternalTool.venv.appendingPathComponent("python3").path
        let convert = "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], 'PPM')"
        let (converted, text) = try ExternalTool.run(python, ["-c", convert, shot.path, ppm.path])
        XCTAssertEqual(converted, 0, text)
        let viewed = try VGABootTests.Picture(ppm: Data(contentsOf: ppm))
        XCTAssertEqual([viewed.width, viewed.height], [720, 400])
        var differing = 0
        for i in stride(from: 0, to: min(viewed.rgb.count, screendump.rgb.count), by: 3)
            where viewed.rgb[i..<(i + 3)] != screendump.rgb[i..<(i + 3)] { differing += 1 }
        XCTAssertLessThanOrEqual(differing, 9 * 16, "only the cursor cell may differ")
        XCTAssertGreaterThan(viewed.lightPixels(rows: 0..<400), 500, "SeaBIOS's text is on the VNC picture")

        // vncsnapshot (JPEG): the same amount of text, give or take compression.
        let jpeg = vm.directory.appendingPathComponent("snap.jpg")
        let (snapped, snapOutput) = try ExternalTool.run("/usr/bin/vncsnapshot", ["-quiet", "-quality", "100",
                                                                               "127.0.0.1:\(port - 5900)", jpeg.path])
        XCTAssertEqual(snapped, 0, snapOutput)
        let snapPPM = vm.directory.appendingPathComponent("snap.ppm")
        let (snapConverted, snapText) = try ExternalTool.run(python, ["-c", convert, jpeg.path, snapPPM.path])
        XCTAssertEqual(snapConverted, 0, snapText)
        let snap = try VGABootTests.Picture(ppm: Data(contentsOf: snapPPM))
        XCTAssertEqual([snap.width, snap.height], [720, 400])
        let light = Double(screendump.lightPixels(rows: 0..<400))
        XCTAssertEqual(Double(snap.lightPixels(rows: 0..<400)), light, accuracy: light * 0.2)
        _ = try qmp.execute("quit")
    }
}
