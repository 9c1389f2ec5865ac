import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// One RFB connection: the handshake (versions 3.3, 3.7, 3.8; security None or VNC
/// Authentication), then client messages and framebuffer updates. Runs on the event loop
/// under the device lock; input arrives in `readable`, output leaves through a bounded
/// `OutputBuffer` that the loop drains when the socket is writable again.
final class VNCClient {
    enum Phase: Equatable {
        case version
        case securityType
        case authResponse
        case clientInit
        case normal
        /// Discarding the rest of a ClientCutText.
        case skipping(Int)
        case closed
    }

    /// Why a client is dropped: logged once, then the socket is closed.
    struct Drop: Error {
        let reason: String
    }

    static let maxCutText = 1 << 20
    static let readChunk = 65536

    let fd: Int32
    let peer: VNCPeerAddress
    unowned let server: VNCServer
    /// Its own reference: `close` runs from the server's deinit too, when `server` is gone.
    private let loop: EventLoop
    private(set) var phase = Phase.version
    private var minorVersion = 8
    private var challenge: [UInt8] = []
    private(set) var exclusive = false

    private var input: [UInt8] = []
    private var inputStart = 0
    private var readBuffer = [UInt8](repeating: 0, count: readChunk)
    var output = OutputBuffer()
    private var writerArmed = false
    /// Made once: arming the writer after every large update must not allocate a closure.
    private lazy var writableHandler: () -> Void = { [weak self] in self?.writable() }

    private var converter = PixelConverter(.native)
    private var encoder = RectEncoder()
    private var zrle = ZRLEEncoder()
    /// Raw, Hextile or ZRLE: the first of them the client listed.
    private var updateEncoding = RFBEncoding.raw
    private(set) var desktopSizeSupported = false
    private var extendedKeysAcknowledged = false
    private var updateRequested = false
    private var requestedRegion = Rect(x: 0, y: 0, width: 0, height: 0)
    /// Tiles changed since this client's last update (its own copy: the framebuffer's are
    /// cleared after every redraw).
    private var dirty: [Bool] = []
    private var generation = 0
    private var sizeChanged = false
    private var pointerX: Int?
    private var pointerY: Int?
    private var pointerButtons: UInt8 = 0

    init(fd: Int32, peer: VNCPeerAddress, server: VNCServer) {
        self.fd = fd
        self.peer = peer
        self.server = server
        loop = server.loop
        output.append(contentsOf: Array("RFB 003.008\n".utf8))
    }

    // MARK: Input

    /// The socket is readable: read what is there and act on every complete message.
    func readable() {
        guard phase != .closed else { return }
        let n = readBuffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n == 0 {
            server.remove(self, reason: nil)
            return
        }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR || errno == EWOULDBLOCK { return }
            server.remove(self, reason: "read failed: \(String(cString: strerror(errno)))")
            return
        }
        input.append(contentsOf: readBuffer[0..<n])
        do throws(Drop) {
            try process()
        } catch {
            server.remove(self, reason: error.reason)
            return
        }
        if inputStart == input.count {
            input.removeAll(keepingCapacity: true)
            inputStart = 0
        } else if inputStart > 0 {
            input.removeSubrange(..<inputStart)
            inputStart = 0
        }
        flush()
    }

    private var available: Int { input.count - inputStart }

    private func byte(_ i: Int) -> UInt8 { input[inputStart + i] }
    private func u16(_ i: Int) -> UInt16 { UInt16(byte(i)) << 8 | UInt16(byte(i + 1)) }
    private func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) << 16 | UInt32(u16(i + 2)) }

    private func consume(_ n: Int) { inputStart += n }

    /// Handles complete messages; stops at the first incomplete one.
    private func process() throws(Drop) {
        while phase != .closed {
            if case .skipping(let remaining) = phase {
                let n = min(remaining, available)
                consume(n)
                if n < remaining {
                    phase = .skipping(remaining - n)
                    return
                }
                phase = .normal
                continue
            }
            guard try handleOne() else { return }
        }
    }

    /// One message of the current phase; false when more bytes are needed.
    private func handleOne() throws(Drop) -> Bool {
        switch phase {
        case .version:
            guard available >= 12 else { return false }
            try handleVersion(Array(input[inputStart..<(inputStart + 12)]))
            consume(12)
        case .securityType:
            guard available >= 1 else { return false }
            let chosen = byte(0)
            consume(1)
            guard chosen == server.securityType else {
                securityFailed("security type \(chosen) was not offered")
                throw Drop(reason: "client chose security type \(chosen), which was not offered")
            }
            startSecurity()
        case .authResponse:
            guard available >= 16 else { return false }
            let response = Array(input[inputStart..<(inputStart + 16)])
            consume(16)
            guard let password = server.password else {
                securityFailed("authentication failed")
                throw Drop(reason: "login refused: password=on but no VNC password has been set")
            }
            guard response == VNCAuthentication.response(challenge: challenge, password: password) else {
                securityFailed("authentication failed")
                throw Drop(reason: "login refused: wrong VNC password")
            }
            output.append32(0)
            phase = .clientInit
        case .clientInit:
            guard available >= 1 else { return false }
            exclusive = byte(0) == 0
            consume(1)
            try server.admit(self)
            sendServerInit()
            phase = .normal
        case .normal:
            return try handleMessage()
        case .skipping, .closed:
            return false
        }
        return true
    }

    private func handleVersion(_ text: [UInt8]) throws(Drop) {
        // "RFB xxx.yyy\n"
        let digits = text[4..<7] + text[8..<11]
        guard text[0..<4].elementsEqual("RFB ".utf8), text[7] == UInt8(ascii: "."), text[11] == 0x0A,
              digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw Drop(reason: "not an RFB client (bad version string)")
        }
        let major = text[4..<7].reduce(0) { $0 * 10 + Int($1 - 0x30) }
        let minor = text[8..<11].reduce(0) { $0 * 10 + Int($1 - 0x30) }
        guard major == 3, minor >= 3 else { throw Drop(reason: "unsupported RFB version \(major).\(minor)") }
        // 3.4-3.6 (private builds) behave as 3.3; anything newer speaks 3.8.
        minorVersion = minor >= 8 ? 8 : (minor == 7 ? 7 : 3)
        if minorVersion == 3 {
            output.append32(UInt32(server.securityType))
            startSecurity()
        } else {
            output.append(1)
            output.append(server.securityType)
            phase = .securityType
        }
    }

    private func startSecurity() {
        if server.securityType == VNCServer.securityVNCAuth {
            var generator = SystemRandomNumberGenerator()
            challenge = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
            output.append(contentsOf: challenge)
            phase = .authResponse
        } else {
            // 3.8 confirms even "None"; older versions go straight to ClientInit.
            if minorVersion == 8 { output.append32(0) }
            phase = .clientInit
        }
    }

    private func securityFailed(_ reason: String) {
        output.append32(1)
        if minorVersion == 8 {
            output.append32(UInt32(reason.utf8.count))
            output.append(contentsOf: reason.utf8)
        }
        _ = output.flush(to: fd)
    }

    private func sendServerInit() {
        let fb = server.framebuffer
        output.append16(UInt16(fb.width))
        output.append16(UInt16(fb.height))
        output.append(contentsOf: RFBPixelFormat.native.bytes)
        let name = Array(server.name.utf8)
        output.append32(UInt32(name.count))
        output.append(contentsOf: name)
        generation = fb.generation
        dirty = [Bool](repeating: true, count: fb.tilesAcross * fb.tilesDown)
    }

    private func handleMessage() throws(Drop) -> Bool {
        guard available >= 1 else { return false }
        switch byte(0) {
        case 0:  // SetPixelFormat
            guard available >= 20 else { return false }
            let format: RFBPixelFormat
            do throws(RFBPixelFormat.Invalid) {
                format = try RFBPixelFormat(bytes: input[(inputStart + 4)..<(inputStart + 20)])
            } catch {
                throw Drop(reason: error == .colourMap ? "colour-map pixel formats are not supported"
                                                       : "invalid pixel format (\(error))")
            }
            consume(20)
            converter = PixelConverter(format)
            markAllDirty()
        case 2:  // SetEncodings
            guard available >= 4 else { return false }
            let count = Int(u16(2))
            guard available >= 4 + 4 * count else { return false }
            setEncodings((0..<count).map { Int32(bitPattern: u32(4 + 4 * $0)) })
            consume(4 + 4 * count)
        case 3:  // FramebufferUpdateRequest
            guard available >= 10 else { return false }
            let incremental = byte(1) != 0
            let region = Rect(x: Int(u16(2)), y: Int(u16(4)), width: Int(u16(6)), height: Int(u16(8)))
            consume(10)
            updateRequested = true
            requestedRegion = region
            if !incremental { markDirty(region) }
            sendUpdateIfReady()
        case 4:  // KeyEvent
            guard available >= 8 else { return false }
            let down = byte(1) != 0
            let keysym = u32(4)
            consume(8)
            if let key = KeysymMap.key(forKeysym: keysym) { sendKey(key, down: down) }
        case 5:  // PointerEvent
            guard available >= 6 else { return false }
            let buttons = byte(1)
            let x = Int(u16(2))
            let y = Int(u16(4))
            consume(6)
            pointerEvent(x: x, y: y, buttons: buttons)
        case 6:  // ClientCutText: the guest has no clipboard to put it in
            guard available >= 8 else { return false }
            let length = u32(4)
            guard length <= Self.maxCutText else {
                throw Drop(reason: "cut text of \(length) bytes exceeds the \(Self.maxCutText)-byte limit")
            }
            consume(8)
            phase = .skipping(Int(length))
        case 255:  // QEMU's messages
            guard available >= 2 else { return false }
            guard byte(1) == 0 else { throw Drop(reason: "unknown QEMU message subtype \(byte(1))") }
            guard extendedKeysAcknowledged else { throw Drop(reason: "extended key event without the -258 encoding") }
            guard available >= 12 else { return false }
            let down = u16(2) != 0
            let keysym = u32(4)
            let keycode = u32(8)
            consume(12)
            if let key = KeysymMap.key(forXTCode: keycode) ?? KeysymMap.key(forKeysym: keysym) {
                sendKey(key, down: down)
            }
        default:
            throw Drop(reason: "unknown message type \(byte(0))")
        }
        return true
    }

    private func setEncodings(_ encodings: [Int32]) {
        updateEncoding = encodings.first { [RFBEncoding.raw, RFBEncoding.hextile, RFBEncoding.zrle].contains($0) }
            ?? RFBEncoding.raw
        desktopSizeSupported = encodings.contains(RFBEncoding.desktopSize)
        if encodings.contains(RFBEncoding.qemuExtendedKeyEvent) && !extendedKeysAcknowledged {
            // Announced as a pseudo-rectangle; the client may then send message 255/0.
            extendedKeysAcknowledged = true
            let fb = server.framebuffer
            output.append(0)
            output.append(0)
            output.append16(1)
            appendRectHeader(Rect(x: 0, y: 0, width: fb.width, height: fb.height), RFBEncoding.qemuExtendedKeyEvent)
        }
    }

    private func sendKey(_ key: KeysymMap.Key, down: Bool) {
        let codes = KeysymMap.scancodes(for: key, down: down)
        guard !codes.isEmpty else { return }
        server.keyboard?.keyboardInput(scancodes: codes)
    }

    /// RFB pointers are absolute; the PS/2 mouse is relative, so the difference from the last
    /// position moves it. Buttons 4 and 5 are the wheel: a press is one step.
    private func pointerEvent(x: Int, y: Int, buttons: UInt8) {
        let dx = pointerX.map { x - $0 } ?? 0
        let dy = pointerY.map { y - $0 } ?? 0
        pointerX = x
        pointerY = y
        let pressed = buttons & ~pointerButtons
        pointerButtons = buttons
        var wheel = 0
        if pressed & 0x08 != 0 { wheel -= 1 }
        if pressed & 0x10 != 0 { wheel += 1 }
        // RFB: bit 0 left, 1 middle, 2 right. PointerInput: bit 0 left, 1 right, 2 middle.
        let held = (buttons & 1) | (buttons & 4 != 0 ? 2 : 0) | (buttons & 2 != 0 ? 4 : 0)
        server.pointer?.pointerInput(dx: dx, dy: dy, wheel: wheel, buttons: held)
    }

    // MARK: Updates

    private func markAllDirty() {
        for i in dirty.indices { dirty[i] = true }
    }

    private func markDirty(_ region: Rect) {
        let fb = server.framebuffer
        let ts = Framebuffer.tileSize
        let x0 = min(region.x, fb.width) / ts, y0 = min(region.y, fb.height) / ts
        let x1 = min((region.x + region.width + ts - 1) / ts, fb.tilesAcross)
        let y1 = min((region.y + region.height + ts - 1) / ts, fb.tilesDown)
        guard x0 < x1, y0 < y1, dirty.count == fb.tilesAcross * fb.tilesDown else { return }
        for ty in y0..<y1 {
            for tx in x0..<x1 { dirty[ty * fb.tilesAcross + tx] = true }
        }
    }

    /// Takes the framebuffer's changed tiles (after a redraw) and sends them if asked.
    func framebufferChanged() {
        guard phase == .normal || phase.isSkipping else { return }
        let fb = server.framebuffer
        if fb.generation != generation {
            generation = fb.generation
            sizeChanged = true
            dirty = [Bool](repeating: true, count: fb.tilesAcross * fb.tilesDown)
        } else {
            fb.dirtyTiles.withUnsafeBufferPointer { changed in
                for i in changed.indices where changed[i] { dirty[i] = true }
            }
        }
        sendUpdateIfReady()
    }

    /// Sends one FramebufferUpdate when the client asked for one, something changed, and the
    /// previous update has left: a slow client gets fewer, larger updates instead of a queue.
    func sendUpdateIfReady() {
        guard updateRequested, output.isEmpty, phase == .normal || phase.isSkipping else { return }
        let fb = server.framebuffer
        guard sizeChanged || dirty.contains(true) else { return }
        let start = output.endMark
        output.append(0)
        output.append(0)
        let countMark = output.endMark
        output.append16(0)
        var rects = 0
        if sizeChanged {
            sizeChanged = false
            if desktopSizeSupported {
                appendRectHeader(Rect(x: 0, y: 0, width: fb.width, height: fb.height), RFBEncoding.desktopSize)
                rects += 1
            }
            requestedRegion = Rect(x: 0, y: 0, width: fb.width, height: fb.height)
        }
        let ts = Framebuffer.tileSize
        let r = requestedRegion
        let x0 = min(r.x, fb.width) / ts, y0 = min(r.y, fb.height) / ts
        let x1 = min((r.x + r.width + ts - 1) / ts, fb.tilesAcross)
        let y1 = min((r.y + r.height + ts - 1) / ts, fb.tilesDown)
        fb.pixels.withUnsafeBufferPointer { pixels in
            var ty = y0
            while ty < y1 && rects < Int(UInt16.max) {
                var tx = x0
                while tx < x1 && rects < Int(UInt16.max) {
                    guard dirty[ty * fb.tilesAcross + tx] else {
                        tx += 1
                        continue
                    }
                    // A run of dirty tiles along the row is one rectangle.
                    var end = tx
                    while end < x1 && dirty[ty * fb.tilesAcross + end] {
                        dirty[ty * fb.tilesAcross + end] = false
                        end += 1
                    }
                    let rect = Rect(x: tx * ts, y: ty * ts, width: min(end * ts, fb.width) - tx * ts,
                                    height: min((ty + 1) * ts, fb.height) - ty * ts)
                    appendRectHeader(rect, updateEncoding)
                    switch updateEncoding {
                    case RFBEncoding.hextile: encoder.appendHextile(pixels, stride: fb.width, rect, converter, to: &output)
                    case RFBEncoding.zrle: zrle.append(pixels, stride: fb.width, rect, converter, to: &output)
                    default: RectEncoder.appendRaw(pixels, stride: fb.width, rect, converter, to: &output)
                    }
                    rects += 1
                    tx = end
                }
                ty += 1
            }
        }
        guard rects > 0 else {
            output.truncate(to: start)
            return
        }
        output.patch16(at: countMark, UInt16(rects))
        updateRequested = false
        flush()
    }

    private func appendRectHeader(_ r: Rect, _ encoding: Int32) {
        output.append16(UInt16(r.x))
        output.append16(UInt16(r.y))
        output.append16(UInt16(r.width))
        output.append16(UInt16(r.height))
        output.append32(UInt32(bitPattern: encoding))
    }

    // MARK: Output

    /// Sends what the socket takes; waits for writability for the rest. A client whose backlog
    /// passes the server's limit is dropped.
    func flush() {
        guard phase != .closed else { return }
        guard output.flush(to: fd) else {
            server.remove(self, reason: "write failed: \(String(cString: strerror(errno)))")
            return
        }
        if output.count > server.outputLimit {
            server.remove(self, reason: "too slow: \(output.count) bytes of output pending")
            return
        }
        let wantWriter = !output.isEmpty
        guard wantWriter != writerArmed else { return }
        writerArmed = wantWriter
        try? loop.setWriter(fd, wantWriter ? writableHandler : nil)
    }

    private func writable() {
        flush()
        if output.isEmpty { sendUpdateIfReady() }
    }

    func close() {
        guard phase != .closed else { return }
        phase = .closed
        loop.removeReader(fd)
        Glibc.close(fd)
    }
}

extension VNCClient.Phase {
    var isSkipping: Bool {
        if case .skipping = self { return true }
        return false
    }
}
