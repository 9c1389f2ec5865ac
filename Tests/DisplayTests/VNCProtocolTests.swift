import Config
import DMCore
import Foundation
import XCTest
@testable import Display

final class VNCProtocolTests: XCTestCase {
    private var harness: VNCHarness!

    override func setUpWithError() throws { harness = try VNCHarness() }
    override func tearDown() { harness.stop() }

    private func pattern(_ x: Int, _ y: Int) -> UInt32 {
        UInt32(x * 4 & 0xFF) << 16 | UInt32(y * 5 & 0xFF) << 8 | UInt32((x ^ y) & 0xFF)
    }

    func testVersion38HandshakeAndServerInit() throws {
        let client = try harness.connect()
        let initMessage = try client.handshake()
        XCTAssertEqual(initMessage.width, 64)
        XCTAssertEqual(initMessage.height, 48)
        // 32 bpp, depth 24, little-endian, true colour, maxes 255, shifts 16/8/0.
        XCTAssertEqual(initMessage.format, [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
        XCTAssertEqual(initMessage.name, "test")
    }

    func testVersion37And33Handshakes() throws {
        let old = try harness.connect()
        XCTAssertEqual(try old.handshake(version: "RFB 003.003\n").width, 64)
        let middle = try harness.connect()
        XCTAssertEqual(try middle.handshake(version: "RFB 003.007\n").height, 48)
        // Apple's 3.889 speaks 3.8.
        let apple = try harness.connect()
        XCTAssertEqual(try apple.handshake(version: "RFB 003.889\n").name, "test")
    }

    func testBadVersionStringClosesOnlyThatClient() throws {
        let good = try harness.connect()
        _ = try good.handshake()
        let bad = try harness.connect()
        _ = try bad.read(12)
        try bad.send("GET / HTTP/1.1\r\n")
        XCTAssertTrue(bad.isClosed())
        let old = try harness.connect()
        _ = try old.read(12)
        try old.send("RFB 002.000\n")
        XCTAssertTrue(old.isClosed())
        XCTAssertTrue(harness.log.contains { $0.contains("bad version string") }, "\(harness.log)")
        // The first client still works.
        var pixels = [UInt32](repeating: 1, count: 64 * 48)
        try good.requestUpdate(incremental: false, width: 64, height: 48)
        _ = try good.readUpdate(into: &pixels, stride: 64)
        XCTAssertTrue(pixels == [UInt32](repeating: 0, count: 64 * 48))
    }

    private func vncAuth(_ client: RFBTestClient, password: String, version: String = "RFB 003.008\n") throws -> UInt32 {
        XCTAssertEqual(String(decoding: try client.read(12), as: UTF8.self), "RFB 003.008\n")
        try client.send(version)
        if version == "RFB 003.003\n" {
            XCTAssertEqual(try client.u32(), 2)
        } else {
            XCTAssertEqual(try client.read(2), [1, 2])
            try client.send([2])
        }
        let challenge = try client.read(16)
        try client.send(VNCAuthentication.response(challenge: challenge, password: Array(password.utf8)))
        return try client.u32()
    }

    func testVNCAuthenticationAcceptsTheRightPasswordOnly() throws {
        harness.stop()
        var option = VNCOption(address: .unix(path: NSTemporaryDirectory() + "vnc-auth-\(getpid()).sock"))
        option.password = true
        harness = try VNCHarness(option: option)
        // password=on and no password yet: every login fails, as in QEMU.
        let early = try harness.connect()
        XCTAssertEqual(try vncAuth(early, password: ""), 1)
        XCTAssertGreaterThan(try early.u32(), 0, "3.8 gives a reason")
        XCTAssertTrue(early.isClosed())
        XCTAssertTrue(harness.log.contains { $0.contains("no VNC password has been set") }, "\(harness.log)")

        harness.lock.withLock { harness.server.setPassword("sekrit") }
        let wrong = try harness.connect()
        XCTAssertEqual(try vncAuth(wrong, password: "guess"), 1)
        let right = try harness.connect()
        XCTAssertEqual(try vncAuth(right, password: "sekrit"), 0)
        XCTAssertEqual(try right.clientInit().width, 64)
        let old = try harness.connect()
        XCTAssertEqual(try vncAuth(old, password: "sekrit", version: "RFB 003.003\n"), 0)
        XCTAssertEqual(try old.clientInit().height, 48)
        // Only the first eight characters count.
        harness.lock.withLock { harness.server.setPassword("longpassword") }
        let long = try harness.connect()
        XCTAssertEqual(try vncAuth(long, password: "longpass"), 0)
    }

    func testUnofferedSecurityTypeIsRefused() throws {
        let client = try harness.connect()
        _ = try client.read(12)
        try client.send("RFB 003.008\n")
        XCTAssertEqual(try client.read(2), [1, 1])
        try client.send([2])
        XCTAssertEqual(try client.u32(), 1)
        XCTAssertTrue(client.isClosed())
    }

    func testFullAndIncrementalRawUpdates() throws {
        harness.draw(pattern)
        let client = try harness.connect()
        _ = try client.handshake()
        var pixels = [UInt32](repeating: 0xDEAD, count: 64 * 48)
        try client.requestUpdate(incremental: false, width: 64, height: 48)
        _ = try client.readUpdate(into: &pixels, stride: 64)
        XCTAssertTrue(pixels == harness.framebuffer.pixels)

        // One changed tile: an incremental request gets exactly that 16x16 rectangle.
        try client.requestUpdate(incremental: true, width: 64, height: 48)
        usleep(50_000)
        harness.draw { x, y in x >= 20 && x < 24 && y >= 17 && y < 19 ? 0x00FF_00FF : self.pattern(x, y) }
        let rects = try client.readUpdate(into: &pixels, stride: 64)
        XCTAssertEqual(rects.map { [$0.x, $0.y, $0.width, $0.height] }, [[16, 16, 16, 16]])
        XCTAssertTrue(pixels == harness.framebuffer.pixels)
    }

    func testHextileAndOtherPixelFormatsRoundTrip() throws {
        harness.draw { x, y in
            switch (x / 16, y / 16) {
            case (0, _): return 0x0012_3456  // solid
            case (1, _): return (x + y) % 5 == 0 ? 0x00FF_FFFF : 0x0000_0080  // two colours
            case (2, _): return UInt32(truncatingIfNeeded: (x * 7 + y * 13) % 4) * 0x0040_2010  // few colours
            default: return UInt32(truncatingIfNeeded: x &* 2_654_435_761 ^ y &* 40503) & 0x00FF_FFFF  // noise: raw
            }
        }
        let formats: [TestPixelFormat] = [
            .native,
            TestPixelFormat(bitsPerPixel: 32, bigEndian: true, redMax: 255, greenMax: 255, blueMax: 255,
                            redShift: 0, greenShift: 8, blueShift: 16),
            TestPixelFormat(bitsPerPixel: 16, bigEndian: false, redMax: 31, greenMax: 63, blueMax: 31,
                            redShift: 11, greenShift: 5, blueShift: 0),
            TestPixelFormat(bitsPerPixel: 16, bigEndian: true, redMax: 31, greenMax: 31, blueMax: 31,
                            redShift: 10, greenShift: 5, blueShift: 0),
            TestPixelFormat(bitsPerPixel: 8, bigEndian: false, redMax: 7, greenMax: 7, blueMax: 3,
                            redShift: 0, greenShift: 3, blueShift: 6),
        ]
        for format in formats {
            for encoding: Int32 in [5, 0] {
                let client = try harness.connect()
                _ = try client.handshake()
                try client.send(format.message)
                try client.setEncodings([encoding, 0])
                try client.requestUpdate(incremental: false, width: 64, height: 48)
                var pixels = [UInt32](repeating: 0xDEAD, count: 64 * 48)
                let rects = try client.readUpdate(into: &pixels, stride: 64, format: format)
                XCTAssertTrue(rects.allSatisfy { $0.encoding == encoding })
                XCTAssertTrue(pixels == harness.framebuffer.pixels.map(format.expected),
                               "\(format.bitsPerPixel) bpp, big-endian \(format.bigEndian), encoding \(encoding)")
            }
        }
    }

    func testInvalidPixelFormatsCloseTheClient() throws {
        let cases: [(String, [UInt8])] = [
            ("colour map", [0, 0, 0, 0, 8, 8, 0, 0, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0]),
            ("24 bpp", [0, 0, 0, 0, 24, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]),
            ("max not 2^n-1", [0, 0, 0, 0, 32, 24, 0, 1, 0, 200, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]),
            ("shift outside the pixel", [0, 0, 0, 0, 16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 14, 5, 0, 0, 0, 0]),
        ]
        for (name, message) in cases {
            let client = try harness.connect()
            _ = try client.handshake()
            try client.send(message)
            XCTAssertTrue(client.isClosed(), name)
        }
        XCTAssertTrue(harness.log.contains { $0.contains("colour-map pixel formats are not supported") }, "\(harness.log)")
    }

    func testHostileMessagesDropOnlyTheirClient() throws {
        let bystander = try harness.connect()
        _ = try bystander.handshake()
        let unknown = try harness.connect()
        _ = try unknown.handshake()
        try unknown.send([77, 1, 2, 3])
        XCTAssertTrue(unknown.isClosed())
        let giant = try harness.connect()
        _ = try giant.handshake()
        try giant.send([6, 0, 0, 0] + be32(0xFFFF_FFF0))
        XCTAssertTrue(giant.isClosed())
        let qemuWithoutAck = try harness.connect()
        _ = try qemuWithoutAck.handshake()
        try qemuWithoutAck.send([255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1E])
        XCTAssertTrue(qemuWithoutAck.isClosed())
        // A client that vanishes mid-message.
        let vanishing = try harness.connect()
        _ = try vanishing.handshake()
        try vanishing.send([2, 0, 0, 200, 0, 0])
        vanishing.disconnect()
        XCTAssertTrue(harness.log.contains { $0.contains("unknown message type 77") }, "\(harness.log)")
        XCTAssertTrue(harness.log.contains { $0.contains("exceeds the 1048576-byte limit") }, "\(harness.log)")
        try bystander.send([4, 1, 0, 0, 0, 0, 0, 0x61])
        XCTAssertTrue(harness.waitUntil { self.harness.keyboard.received == [0x1C] })
    }

    func testTruncatedAndSplitMessagesAndCutText() throws {
        let client = try harness.connect()
        _ = try client.handshake()
        let text = Array("clipboard text".utf8)
        let stream: [UInt8] = [6, 0, 0, 0] + be32(UInt32(text.count)) + text + [4, 1, 0, 0, 0, 0, 0xFF, 0x0D]
            + [4, 0, 0, 0, 0, 0, 0xFF, 0x0D]
        for byte in stream {
            try client.send([byte])
            usleep(500)
        }
        XCTAssertTrue(harness.waitUntil { self.harness.keyboard.received == [0x5A, 0xF0, 0x5A] },
                      "\(harness.keyboard.received)")
    }

    func testKeysymsBecomeSet2ScanCodes() throws {
        let client = try harness.connect()
        _ = try client.handshake()
        func key(_ keysym: UInt32, _ down: Bool) throws { try client.send([4, down ? 1 : 0, 0, 0] + be32(keysym)) }
        for keysym: UInt32 in [0x41, 0xFFE3, 0xFF52, 0xFFBE, 0xFFB7, 0x31, 0x21, 0xFF13] {
            try key(keysym, true)
            try key(keysym, false)
        }
        let expected: [UInt8] = [0x1C, 0xF0, 0x1C,  // A (the same key as a)
                                 0x14, 0xF0, 0x14,  // Control_L
                                 0xE0, 0x75, 0xE0, 0xF0, 0x75,  // Up
                                 0x05, 0xF0, 0x05,  // F1
                                 0x6C, 0xF0, 0x6C,  // KP_7
                                 0x16, 0xF0, 0x16, 0x16, 0xF0, 0x16,  // 1 and ! are one key
                                 0xE1, 0x14, 0x77, 0xE1, 0xF0, 0x14, 0xF0, 0x77]  // Pause: make only
        XCTAssertTrue(harness.waitUntil { self.harness.keyboard.received == expected }, "\(harness.keyboard.received)")
    }

    func testQEMUExtendedKeyEventsUseTheXTCode() throws {
        let client = try harness.connect()
        _ = try client.handshake()
        try client.setEncodings([0, -258])
        var none: [UInt32] = []
        let ack = try client.readUpdate(into: &none, stride: 0)
        XCTAssertEqual(ack.map(\.encoding), [-258])
        // XT 0x1E is A whatever the keysym says (a non-US layout); 0x9D is right Control.
        try client.send([255, 0, 0, 1] + be32(0x71) + be32(0x1E))
        try client.send([255, 0, 0, 0] + be32(0x71) + be32(0x1E))
        try client.send([255, 0, 0, 1] + be32(0xFFE4) + be32(0x9D))
        XCTAssertTrue(harness.waitUntil { self.harness.keyboard.received == [0x1C, 0xF0, 0x1C, 0xE0, 0x14] },
                      "\(harness.keyboard.received)")
    }

    func testPointerEventsBecomeRelativeMotion() throws {
        let client = try harness.connect()
        _ = try client.handshake()
        func pointer(_ buttons: UInt8, _ x: Int, _ y: Int) throws { try client.send([5, buttons] + be16(x) + be16(y)) }
        try pointer(0, 10, 10)
        try pointer(1, 15, 7)  // left
        try pointer(4, 15, 7)  // right (RFB bit 2)
        try pointer(8, 15, 7)  // wheel up
        try pointer(0, 15, 7)
        try pointer(16, 12, 7)  // wheel down
        typealias E = VNCHarness.Pointer.Event
        let expected = [E(dx: 0, dy: 0, wheel: 0, buttons: 0), E(dx: 5, dy: -3, wheel: 0, buttons: 1),
                        E(dx: 0, dy: 0, wheel: 0, buttons: 2), E(dx: 0, dy: 0, wheel: -1, buttons: 0),
                        E(dx: 0, dy: 0, wheel: 0, buttons: 0), E(dx: -3, dy: 0, wheel: 1, buttons: 0)]
        XCTAssertTrue(harness.waitUntil { self.harness.pointer.events == expected }, "\(harness.pointer.events)")
    }

    func testDesktopSizeOnResize() throws {
        let client = try harness.connect()
        _ = try client.handshake()
        try client.setEncodings([5, -223])
        var pixels = [UInt32](repeating: 0, count: 64 * 48)
        try client.requestUpdate(incremental: false, width: 64, height: 48)
        _ = try client.readUpdate(into: &pixels, stride: 64)
        try client.requestUpdate(incremental: true, width: 64, height: 48)
        harness.lock.withLock {
            harness.framebuffer.resize(width: 40, height: 20)
            harness.server.framebufferChanged()
        }
        var resized = [UInt32](repeating: 7, count: 40 * 20)
        let rects = try client.readUpdate(into: &resized, stride: 40)
        XCTAssertEqual(rects.first.map { [$0.width, $0.height, Int($0.encoding)] }, [40, 20, -223])
        XCTAssertTrue(resized == [UInt32](repeating: 0, count: 40 * 20))
    }

    func testSharePolicies() throws {
        // allow-exclusive (the default): an exclusive client disconnects the others...
        let first = try harness.connect()
        _ = try first.handshake()
        let exclusive = try harness.connect()
        _ = try exclusive.handshake(shared: false)
        XCTAssertTrue(first.isClosed())
        // ...and shared clients are refused while it is there.
        let late = try harness.connect()
        _ = try late.read(12)
        try late.send("RFB 003.008\n")
        _ = try late.read(2)
        try late.send([1])
        _ = try late.u32()
        try late.send([1])
        XCTAssertTrue(late.isClosed())

        harness.stop()
        var option = VNCOption(address: .unix(path: NSTemporaryDirectory() + "vnc-share-\(getpid()).sock"))
        option.share = .forceShared
        harness = try VNCHarness(option: option)
        let sharing = try harness.connect()
        _ = try sharing.handshake()
        let greedy = try harness.connect()
        _ = try greedy.read(12)
        try greedy.send("RFB 003.008\n")
        _ = try greedy.read(2)
        try greedy.send([1])
        _ = try greedy.u32()
        try greedy.send([0])
        XCTAssertTrue(greedy.isClosed())
        try sharing.requestUpdate(incremental: false, width: 64, height: 48)
        var pixels = [UInt32](repeating: 0, count: 64 * 48)
        _ = try sharing.readUpdate(into: &pixels, stride: 64)
    }

    func testAClientThatNeverReadsDoesNotStallOthers() throws {
        harness.stop()
        harness = try VNCHarness(width: 1024, height: 768)
        let stalled = try harness.connect()
        _ = try stalled.handshake()
        let reader = try harness.connect()
        _ = try reader.handshake()
        var pixels = [UInt32](repeating: 0, count: 1024 * 768)
        for frame in 0..<5 {
            let draw = { self.harness.draw { x, y in UInt32(truncatingIfNeeded: x * 3 + y * 11 + frame * 977) & 0xFFFFFF } }
            if frame == 0 { draw() }
            try stalled.requestUpdate(incremental: frame > 0, width: 1024, height: 768)
            try reader.requestUpdate(incremental: frame > 0, width: 1024, height: 768)
            if frame > 0 {
                usleep(20_000)
                draw()
            }
            _ = try reader.readUpdate(into: &pixels, stride: 1024)
            XCTAssertTrue(pixels == harness.framebuffer.pixels, "frame \(frame)")
        }
    }

    func testUnixSocketListener() throws {
        harness.stop()
        let path = NSTemporaryDirectory() + "vnc-listen-\(getpid()).sock"
        harness = try VNCHarness(option: VNCOption(address: .unix(path: path)))
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(rc, 0)
        let client = RFBTestClient(fd: fd)
        XCTAssertEqual(try client.handshake().name, "test")
        XCTAssertTrue(harness.waitUntil { self.harness.lock.withLock { self.harness.server.clientAddresses.count == 1 } })
        XCTAssertEqual(harness.lock.withLock { harness.server.clientAddresses.first?.family }, "unix")
        XCTAssertEqual(harness.server.address, VNCPeerAddress(family: "unix", host: path, service: ""))
    }

    func testTCPListenerMovesUpToTo() throws {
        let base = 5900 + 50 + Int(getpid() % 100)
        let blocker = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(blocker) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(base).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(blocker, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try XCTSkipIf(bound != 0, "port \(base) busy")
        listen(blocker, 1)
        harness.stop()
        var option = VNCOption(address: .tcp(host: "127.0.0.1", display: base - 5900))
        option.toDisplay = base - 5900 + 10
        harness = try VNCHarness(option: option)
        XCTAssertEqual(harness.server.address.family, "ipv4")
        XCTAssertEqual(harness.server.address.host, "127.0.0.1")
        XCTAssertEqual(Int(harness.server.address.service).map { $0 > base }, true)
        // Without to=, a taken port is an error.
        XCTAssertThrowsError(try VNCServer(option: VNCOption(address: .tcp(host: "127.0.0.1", display: base - 5900)),
                                           framebuffer: Framebuffer(), loop: harness.loop, name: "x", log: { _ in }))
    }

    func testIPv6ListenerAndClient() throws {
        harness.stop()
        let display = 250 + Int(getpid() % 50)
        var option = VNCOption(address: .tcp(host: "::1", display: display))
        option.toDisplay = display + 40
        do {
            harness = try VNCHarness(option: option)
        } catch {
            harness = try VNCHarness()
            throw XCTSkip("SKIPPED: no IPv6 loopback here (\(error))")
        }
        XCTAssertEqual(harness.server.address.family, "ipv6")
        XCTAssertEqual(harness.server.address.host, "::1")
        let port = try XCTUnwrap(Int(harness.server.address.service))
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_port = in_port_t(port).bigEndian
        addr.sin6_addr = in6addr_loopback
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        XCTAssertEqual(rc, 0)
        let client = RFBTestClient(fd: fd)
        XCTAssertEqual(try client.handshake().name, "test")
        XCTAssertTrue(harness.waitUntil { self.harness.lock.withLock { self.harness.server.clientAddresses.first?.family == "ipv6" } })
    }
}
