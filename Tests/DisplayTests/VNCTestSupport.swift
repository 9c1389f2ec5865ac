import Config
import DMCore
import Foundation
import XCTest
@testable import Display

/// A VNC server on its own event loop thread, with a keyboard and a pointer that record what
/// arrives. Tests touch the framebuffer and the server only under `lock`.
final class VNCHarness: @unchecked Sendable {
    final class Keyboard: KeyboardInput, @unchecked Sendable {
        private let guardLock = NSLock()
        private var codes: [UInt8] = []
        func keyboardInput(scancodes: [UInt8]) { guardLock.withLock { codes += scancodes } }
        var received: [UInt8] { guardLock.withLock { codes } }
    }
    final class Pointer: PointerInput, @unchecked Sendable {
        struct Event: Equatable { var dx: Int, dy: Int, wheel: Int, buttons: UInt8 }
        private let guardLock = NSLock()
        private var list: [Event] = []
        func pointerInput(dx: Int, dy: Int, wheel: Int, buttons: UInt8) {
            guardLock.withLock { list.append(Event(dx: dx, dy: dy, wheel: wheel, buttons: buttons)) }
        }
        var events: [Event] { guardLock.withLock { list } }
    }

    let lock = DeviceLock()
    let loop: EventLoop
    let framebuffer: Framebuffer
    let server: VNCServer
    let keyboard = Keyboard()
    let pointer = Pointer()
    private let logLock = NSLock()
    private var logLines: [String] = []
    private var thread: Thread?

    init(option: VNCOption? = nil, width: Int = 64, height: Int = 48) throws {
        loop = try EventLoop(lock: lock, clock: VirtualClock())
        framebuffer = Framebuffer(width: width, height: height)
        let path = NSTemporaryDirectory() + "vnc-test-\(getpid())-\(UUID().uuidString.prefix(8)).sock"
        var collected: (String) -> Void = { _ in }
        server = try VNCServer(option: option ?? VNCOption(address: .unix(path: path)), framebuffer: framebuffer,
                               loop: loop, name: "test", log: { collected($0) })
        collected = { [unowned self] line in logLock.withLock { logLines.append(line) } }
        server.keyboard = keyboard
        server.pointer = pointer
        let loop = loop
        let thread = Thread { loop.run() }
        thread.start()
        self.thread = thread
    }

    func stop() {
        loop.stop()
        while thread?.isFinished == false { usleep(1000) }
    }

    var log: [String] { logLock.withLock { logLines } }

    /// A client on one end of a socket pair; the server gets the other.
    func connect() throws -> RFBTestClient {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw RFBTestClient.Failure("socketpair") }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        lock.withLock { server.adopt(fd: fds[0], peer: VNCPeerAddress(family: "unix", host: "pair", service: "")) }
        return RFBTestClient(fd: fds[1])
    }

    /// Draws `pixel(x, y)` into the framebuffer and tells the server, as a redraw does.
    func draw(_ pixel: (Int, Int) -> UInt32) {
        lock.withLock {
            var row = [UInt32](repeating: 0, count: framebuffer.width)
            for y in 0..<framebuffer.height {
                for x in 0..<framebuffer.width { row[x] = pixel(x, y) }
                row.withUnsafeBufferPointer { framebuffer.storeRow(y, $0) }
            }
            server.framebufferChanged()
            framebuffer.clearDirty()
        }
    }

    func waitUntil(_ timeout: TimeInterval = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(2000)
        }
        return condition()
    }
}

/// The client side of RFB, by hand: blocking reads with a timeout.
final class RFBTestClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }
    let fd: Int32

    init(fd: Int32) {
        self.fd = fd
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { if !disconnected { close(fd) } }

    private var disconnected = false
    /// Drops the connection now (a client that vanishes); the descriptor is closed once only, as a
    /// second close could hit a descriptor number another part of the test process reused.
    func disconnect() {
        guard !disconnected else { return }
        disconnected = true
        close(fd)
    }

    func send(_ bytes: [UInt8]) throws {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n == bytes.count else { throw Failure("send failed") }
    }
    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func read(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var have = 0
        while have < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, count - have, 0) }
            guard n > 0 else { throw Failure(n == 0 ? "connection closed after \(have) of \(count) bytes" : "read timed out") }
            have += n
        }
        return out
    }
    func u8() throws -> UInt8 { try read(1)[0] }
    func u16() throws -> Int { let b = try read(2); return Int(b[0]) << 8 | Int(b[1]) }
    func u32() throws -> UInt32 { let b = try read(4); return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]) }

    /// True when the server closed the connection (reading any pending bytes first).
    func isClosed() -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, 0)
            if n == 0 { return true }
            if n < 0 { return errno != EAGAIN && errno != EWOULDBLOCK }
        }
    }

    struct ServerInit { var width: Int, height: Int, format: [UInt8], name: String }

    /// Version, security None and ClientInit.
    func handshake(version: String = "RFB 003.008\n", shared: Bool = true) throws -> ServerInit {
        XCTAssertEqual(String(decoding: try read(12), as: UTF8.self), "RFB 003.008\n")
        try send(version)
        if version == "RFB 003.003\n" {
            XCTAssertEqual(try u32(), 1)
        } else {
            XCTAssertEqual(try read(2), [1, 1])
            try send([1])
            // 3.8 and anything newer confirm even "None".
            if let minor = Int(version.dropFirst(8).prefix(3)), minor >= 8 { XCTAssertEqual(try u32(), 0) }
        }
        return try clientInit(shared: shared)
    }

    func clientInit(shared: Bool = true) throws -> ServerInit {
        try send([shared ? 1 : 0])
        let width = try u16(), height = try u16()
        let format = try read(16)
        let name = String(decoding: try read(Int(try u32())), as: UTF8.self)
        return ServerInit(width: width, height: height, format: format, name: name)
    }

    func setEncodings(_ encodings: [Int32]) throws {
        var m: [UInt8] = [2, 0, UInt8(encodings.count >> 8), UInt8(encodings.count & 0xFF)]
        for e in encodings { m += be32(UInt32(bitPattern: e)) }
        try send(m)
    }

    func requestUpdate(incremental: Bool, x: Int = 0, y: Int = 0, width: Int, height: Int) throws {
        try send([3, incremental ? 1 : 0] + be16(x) + be16(y) + be16(width) + be16(height))
    }

    struct RectHeader { var x: Int, y: Int, width: Int, height: Int, encoding: Int32 }

    /// Reads one FramebufferUpdate, decoding Raw and Hextile rectangles into `pixels` (native
    /// 32-bit little-endian format assumed), returning the rectangle headers.
    func readUpdate(into pixels: inout [UInt32], stride: Int, format: TestPixelFormat = .native) throws -> [RectHeader] {
        XCTAssertEqual(try u8(), 0, "FramebufferUpdate")
        _ = try u8()
        let count = try u16()
        var rects: [RectHeader] = []
        for _ in 0..<count {
            let r = RectHeader(x: try u16(), y: try u16(), width: try u16(), height: try u16(),
                               encoding: Int32(bitPattern: try u32()))
            rects.append(r)
            switch r.encoding {
            case 0:
                let data = try read(r.width * r.height * format.bytesPerPixel)
                for row in 0..<r.height {
                    for col in 0..<r.width {
                        pixels[(r.y + row) * stride + r.x + col] = format.decode(data, at: (row * r.width + col) * format.bytesPerPixel)
                    }
                }
            case 5:
                try HextileDecoder.decode(r.x, r.y, r.width, r.height, format: format, read: read, into: &pixels, stride: stride)
            default:
                break  // pseudo-encodings carry no data
            }
        }
        return rects
    }
}

func be16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

/// A pixel format as the test decodes it back to 0x00RRGGBB (channels widened back by
/// shifting, so only formats with 8-bit channels round-trip exactly).
struct TestPixelFormat {
    var bitsPerPixel: Int, bigEndian: Bool
    var redMax: Int, greenMax: Int, blueMax: Int
    var redShift: Int, greenShift: Int, blueShift: Int

    static let native = TestPixelFormat(bitsPerPixel: 32, bigEndian: false, redMax: 255, greenMax: 255, blueMax: 255,
                                        redShift: 16, greenShift: 8, blueShift: 0)
    var bytesPerPixel: Int { bitsPerPixel / 8 }

    var message: [UInt8] {
        [0, 0, 0, 0, UInt8(bitsPerPixel), 24, bigEndian ? 1 : 0, 1] + be16(redMax) + be16(greenMax) + be16(blueMax)
            + [UInt8(redShift), UInt8(greenShift), UInt8(blueShift), 0, 0, 0]
    }

    func decode(_ data: [UInt8], at offset: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<bytesPerPixel {
            let b = UInt32(data[offset + i])
            v |= bigEndian ? b << UInt32(8 * (bytesPerPixel - 1 - i)) : b << UInt32(8 * i)
        }
        func channel(_ max: Int, _ shift: Int) -> UInt32 {
            let bits = max.nonzeroBitCount
            return (v >> UInt32(shift) & UInt32(max)) << UInt32(8 - bits)
        }
        return channel(redMax, redShift) << 16 | channel(greenMax, greenShift) << 8 | channel(blueMax, blueShift)
    }

    /// What a framebuffer pixel becomes after the server's narrowing and our widening.
    func expected(_ pixel: UInt32) -> UInt32 {
        func keep(_ value: UInt32, _ max: Int) -> UInt32 { value & ~UInt32((1 << (8 - max.nonzeroBitCount)) - 1) }
        return keep(pixel >> 16 & 0xFF, redMax) << 16 | keep(pixel >> 8 & 0xFF, greenMax) << 8 | keep(pixel & 0xFF, blueMax)
    }
}

/// Hextile as the RFB specification describes it, written independently of the encoder.
enum HextileDecoder {
    static func decode(_ rx: Int, _ ry: Int, _ rw: Int, _ rh: Int, format: TestPixelFormat, read: (Int) throws -> [UInt8],
                       into pixels: inout [UInt32], stride: Int) throws {
        let bpp = format.bytesPerPixel
        func pixel() throws -> UInt32 { format.decode(try read(bpp), at: 0) }
        var background: UInt32?
        var foreground: UInt32?
        var ty = ry
        while ty < ry + rh {
            let th = min(16, ry + rh - ty)
            var tx = rx
            while tx < rx + rw {
                let tw = min(16, rx + rw - tx)
                let flags = try read(1)[0]
                if flags & 1 != 0 {
                    let data = try read(tw * th * bpp)
                    for y in 0..<th {
                        for x in 0..<tw { pixels[(ty + y) * stride + tx + x] = format.decode(data, at: (y * tw + x) * bpp) }
                    }
                    background = nil
                    foreground = nil
                } else {
                    if flags & 2 != 0 { background = try pixel() }
                    guard let bg = background else { throw RFBTestClient.Failure("hextile tile without a background") }
                    if flags & 4 != 0 { foreground = try pixel() }
                    for y in 0..<th { for x in 0..<tw { pixels[(ty + y) * stride + tx + x] = bg } }
                    if flags & 8 != 0 {
                        let n = Int(try read(1)[0])
                        for _ in 0..<n {
                            let colour: UInt32
                            if flags & 16 != 0 {
                                colour = try pixel()
                            } else {
                                guard let fg = foreground else { throw RFBTestClient.Failure("subrects without a foreground") }
                                colour = fg
                            }
                            let b = try read(2)
                            let sx = Int(b[0] >> 4), sy = Int(b[0] & 15), sw = Int(b[1] >> 4) + 1, sh = Int(b[1] & 15) + 1
                            guard sx + sw <= tw, sy + sh <= th else { throw RFBTestClient.Failure("subrect outside its tile") }
                            for y in sy..<(sy + sh) { for x in sx..<(sx + sw) { pixels[(ty + y) * stride + tx + x] = colour } }
                        }
                    }
                }
                tx += 16
            }
            ty += 16
        }
    }
}
