import Config
import DMCore
import Foundation
import TestTools
import XCTest
@testable import Display

/// The server against real VNC clients: vncdotool (Python, from .build-venv) and vncsnapshot
/// (TightVNC-based C). Each test skips loudly when its client is not installed
/// (scripts/setup-debian.sh installs both).
final class VNCClientInteropTests: XCTestCase {
    private var harness: VNCHarness?
    private var directory: URL!

    override func setUpWithError() throws {
        directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vnc-interop-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        harness?.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// A TCP server on 127.0.0.1, somewhere in a range of displays this process picks.
    private func startServer(password: Bool = false, width: Int = 320, height: Int = 200) throws -> (VNCHarness, Int) {
        let first = 300 + Int(getpid() % 200) * 2
        var option = VNCOption(address: .tcp(host: "127.0.0.1", display: first))
        option.toDisplay = first + 100
        option.password = password
        let h = try VNCHarness(option: option, width: width, height: height)
        harness = h
        let port = Int(h.server.address.service) ?? 0
        return (h, port)
    }

    /// A binary PPM (P6, maxval 255) as 0x00RRGGBB pixels.
    static func readPPM(_ url: URL) throws -> (width: Int, height: Int, pixels: [UInt32]) {
        let data = [UInt8](try Data(contentsOf: url))
        var index = 0
        func token() -> String {
            while index < data.count, data[index] == 0x23 || data[index] <= 0x20 {
                if data[index] == 0x23 { while index < data.count, data[index] != 0x0A { index += 1 } }
                index += 1
            }
            let start = index
            while index < data.count, data[index] > 0x20 { index += 1 }
            return String(decoding: data[start..<index], as: UTF8.self)
        }
        guard token() == "P6", let w = Int(token()), let h = Int(token()), token() == "255" else {
            throw RFBTestClient.Failure("not a P6 PPM")
        }
        index += 1
        guard data.count - index >= w * h * 3 else { throw RFBTestClient.Failure("truncated PPM") }
        let pixels = (0..<(w * h)).map { i -> UInt32 in
            let o = index + i * 3
            return UInt32(data[o]) << 16 | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2])
        }
        return (w, h, pixels)
    }

    /// Big blocks of distinct colours (JPEG survives them) with fine detail in one corner.
    static func pattern(_ x: Int, _ y: Int) -> UInt32 {
        let palette: [UInt32] = [0xFF0000, 0x00FF00, 0x0000FF, 0xFFFF00, 0x00FFFF, 0xFF00FF, 0xFFFFFF, 0x808080]
        if x < 32 && y < 32 { return (x + y) % 2 == 0 ? 0x123456 : 0xFEDCBA }
        return palette[(x / 40 + y / 50 * 3) % palette.count]
    }

    func testVncdotoolCaptureMatchesTheFramebuffer() throws {
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        let (h, port) = try startServer()
        h.draw(Self.pattern)
        // vncdotool saves through PIL, which writes no PPM; BMP is lossless too.
        let shot = directory.appendingPathComponent("shot.bmp")
        let (status, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "capture", shot.path])
        XCTAssertEqual(status, 0, output)
        let image = try readImage(shot)
        XCTAssertEqual(image.width, 320)
        XCTAssertEqual(image.height, 200)
        XCTAssertTrue(image.pixels == h.lock.withLock { h.framebuffer.pixels }, "every pixel as drawn")
    }

    /// vncdotool's command line asks for Raw only; its library decodes ZRLE (with Python's
    /// zlib), so a short script asks for that.
    func testVncdotoolZRLECaptureMatchesTheFramebuffer() throws {
        let python = ExternalTool.venv.appendingPathComponent("python3").path
        try ExternalTool.require(ExternalTool.venv.appendingPathComponent("vncdo").path, "vncdotool")
        let (h, port) = try startServer(width: 333, height: 211)
        h.draw { x, y in
            // Solid areas, few-colour areas, runs and noise: every ZRLE tile form.
            if y < 64 { return Self.pattern(x, y) }
            if y < 128 { return (x / 3 + y) % 5 == 0 ? 0xFF00FF : 0x202020 + UInt32(x / 50) }
            if x < 200 { return UInt32(truncatingIfNeeded: (x / 7) &* 977 &+ (y / 9) &* 131) & 0xFFFFFF }
            return UInt32(truncatingIfNeeded: x &* 2_654_435_761 ^ y &* 40503) & 0xFFFFFF
        }
        let shot = directory.appendingPathComponent("zrle.bmp")
        let script = """
            import sys
            from vncdotool import api, client, rfb
            client.VNCDoToolClient.encoding = rfb.Encoding.ZRLE
            c = api.connect(sys.argv[1])
            c.captureScreen(sys.argv[2])
            c.disconnect()
            api.shutdown()
            """
        let (status, output) = try ExternalTool.run(python, ["-c", script, "127.0.0.1::\(port)", shot.path])
        XCTAssertEqual(status, 0, output)
        let image = try readImage(shot)
        XCTAssertEqual(image.width, 333)
        XCTAssertEqual(image.height, 211)
        XCTAssertTrue(image.pixels == h.lock.withLock { h.framebuffer.pixels }, "every pixel as drawn, through ZRLE")
    }

    func testVncdotoolKeysArriveAsScanCodes() throws {
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        let (h, port) = try startServer()
        let (status, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "key", "a", "key", "shift-b",
                                                    "key", "enter", "key", "f1", "key", "up", "type", "1!"])
        XCTAssertEqual(status, 0, output)
        let expected: [UInt8] = [0x1C, 0xF0, 0x1C,
                                 0x12, 0x32, 0xF0, 0x32, 0xF0, 0x12,
                                 0x5A, 0xF0, 0x5A,
                                 0x05, 0xF0, 0x05,
                                 0xE0, 0x75, 0xE0, 0xF0, 0x75,
                                 0x16, 0xF0, 0x16, 0x16, 0xF0, 0x16]
        XCTAssertTrue(h.waitUntil { h.keyboard.received == expected }, "\(h.keyboard.received.map { String($0, radix: 16) })")
    }

    func testVncdotoolPasswordAndPointer() throws {
        let vncdo = ExternalTool.venv.appendingPathComponent("vncdo").path
        try ExternalTool.require(vncdo, "vncdotool")
        let (h, port) = try startServer(password: true)
        h.lock.withLock { h.server.setPassword("s3cret") }
        let (status, output) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "s3cret",
                                                    "move", "10", "20", "move", "30", "25", "click", "1"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(h.waitUntil { h.pointer.events.contains { $0.dx == 20 && $0.dy == 5 } }, "\(h.pointer.events)")
        XCTAssertTrue(h.pointer.events.contains { $0.buttons == 1 }, "left click: \(h.pointer.events)")
        // The wrong password fails the login.
        let (wrong, _) = try ExternalTool.run(vncdo, ["-s", "127.0.0.1::\(port)", "-p", "nope", "key", "a"], timeout: 15)
        XCTAssertNotEqual(wrong, 0)
        XCTAssertTrue(h.log.contains { $0.contains("wrong VNC password") }, "\(h.log)")
    }

    /// vncsnapshot writes JPEG; PIL (vncdotool's dependency) turns it into PPM for comparison,
    /// with a tolerance for JPEG at the block centres.
    private func vncsnapshot(_ h: VNCHarness, port: Int, extra: [String]) throws -> (width: Int, height: Int, pixels: [UInt32]) {
        let jpeg = directory.appendingPathComponent("snap\(extra.count).jpg")
        let (status, output) = try ExternalTool.run("/usr/bin/vncsnapshot", ["-quiet", "-allowblank"] + extra
                                                + ["127.0.0.1:\(port - 5900)", jpeg.path])
        XCTAssertEqual(status, 0, output)
        return try readImage(jpeg)
    }

    /// Any image PIL reads, as pixels (through a PPM that PIL writes under another name).
    private func readImage(_ url: URL) throws -> (width: Int, height: Int, pixels: [UInt32]) {
        let ppm = url.deletingPathExtension().appendingPathExtension("ppm")
        let python = ExternalTool.venv.appendingPathComponent("python3").path
        let (converted, text) = try ExternalTool.run(python, ["-c", "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], 'PPM')",
                                                      url.path, ppm.path])
        XCTAssertEqual(converted, 0, text)
        return try Self.readPPM(ppm)
    }

    func testVncsnapshotRawAndHextile() throws {
        try ExternalTool.require("/usr/bin/vncsnapshot", "vncsnapshot")
        try ExternalTool.require(ExternalTool.venv.appendingPathComponent("python3").path, "the .build-venv Python (for PIL)")
        let (h, port) = try startServer()
        h.draw(Self.pattern)
        for extra in [[], ["-encodings", "hextile"]] {
            let image = try vncsnapshot(h, port: port, extra: extra)
            XCTAssertEqual(image.width, 320)
            XCTAssertEqual(image.height, 200)
            for by in 0..<4 {
                for bx in 0..<8 {
                    let x = bx * 40 + 20, y = by * 50 + 25
                    let want = Self.pattern(x, y), got = image.pixels[y * 320 + x]
                    for shift: UInt32 in [16, 8, 0] {
                        let a = Int(want >> shift & 0xFF), b = Int(got >> shift & 0xFF)
                        XCTAssertLessThan(abs(a - b), 24, "\(extra) block (\(bx), \(by)): \(String(got, radix: 16)) for \(String(want, radix: 16))")
                    }
                }
            }
        }
    }

    func testVncsnapshotWithAPasswordFile() throws {
        try ExternalTool.require("/usr/bin/vncsnapshot", "vncsnapshot")
        try ExternalTool.require(ExternalTool.venv.appendingPathComponent("python3").path, "the .build-venv Python (for PIL)")
        let (h, port) = try startServer(password: true)
        h.lock.withLock { h.server.setPassword("tiger") }
        h.draw(Self.pattern)
        // vncpasswd's file: the password (8 bytes, zero-padded) DES-encrypted under VNC's fixed
        // key, bit-reversed like every VNC key — our DES against the client's.
        let fixedKey: [UInt8] = [23, 82, 107, 6, 35, 78, 88, 7]
        let padded = Array("tiger".utf8) + [UInt8](repeating: 0, count: 3)
        let file = directory.appendingPathComponent("passwd")
        try Data(VNCAuthentication.response(challenge: padded + padded, password: fixedKey).prefix(8)).write(to: file)
        let image = try vncsnapshot(h, port: port, extra: ["-passwd", file.path])
        XCTAssertEqual(image.width, 320)
        XCTAssertFalse(h.log.contains { $0.contains("wrong VNC password") }, "\(h.log)")
    }
}
