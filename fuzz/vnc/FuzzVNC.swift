/// libFuzzer target for the VNC server's client input: the bytes a hostile client sends
/// (version, security choice, auth response, ClientInit, then any messages), delivered through
/// a real socket pair in chunks the input picks, with framebuffer changes and resizes between
/// chunks so updates are encoded in whatever pixel format and encoding the input chose.
/// Invariants beyond "no crash": the server's output to one client stays bounded.
import Config
import DMCore
#if canImport(Glibc)
import Glibc
#endif

private final class Sink: KeyboardInput, PointerInput {
    func keyboardInput(scancodes: [UInt8]) {}
    func pointerInput(dx: Int, dy: Int, wheel: Int, buttons: UInt8) {}
}

private struct Rig {
    let loop: EventLoop
    let framebuffer = Framebuffer(width: 40, height: 30)
    let open: VNCServer
    let locked: VNCServer
    let sink = Sink()

    init() {
        guard let loop = try? EventLoop(lock: DeviceLock(), clock: VirtualClock()) else { fatalError("event loop") }
        self.loop = loop
        var option = VNCOption(address: .unix(path: "/dev/shm/swiftdm-fuzz-vnc-\(getpid())-a"))
        guard let open = try? VNCServer(option: option, framebuffer: framebuffer, loop: loop, name: "fuzz", log: { _ in }) else {
            fatalError("server")
        }
        option.address = .unix(path: "/dev/shm/swiftdm-fuzz-vnc-\(getpid())-b")
        option.password = true
        guard let locked = try? VNCServer(option: option, framebuffer: framebuffer, loop: loop, name: "fuzz", log: { _ in }) else {
            fatalError("server")
        }
        locked.setPassword("fuzz")
        self.open = open
        self.locked = locked
        for server in [open, locked] {
            server.keyboard = sink
            server.pointer = sink
        }
    }
}

nonisolated(unsafe) private let rig = Rig()

private func drain(_ fd: Int32) {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 {}
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVNC(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 1 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let server = bytes[0] & 1 == 0 ? rig.open : rig.locked
    let chunk = 1 + Int(bytes[0] >> 1) % 64
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { return 0 }
    _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
    server.adopt(fd: fds[0], peer: VNCPeerAddress(family: "unix", host: "fuzz", service: ""))
    guard let client = server.clients.last else { return 0 }
    var index = 1
    var round = 0
    while index < bytes.count {
        let end = min(index + chunk, bytes.count)
        _ = bytes[index..<end].withUnsafeBytes { send(fds[1], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        index = end
        client.readable()
        round += 1
        // Change the picture now and then (and its size once in a while), as a display does.
        if round % 3 == 0 {
            if round % 12 == 0 {
                rig.framebuffer.resize(width: 16 + round % 50, height: 8 + round % 40)
            }
            var row = [UInt32](repeating: 0, count: rig.framebuffer.width)
            for i in row.indices { row[i] = UInt32(truncatingIfNeeded: i &* 2_654_435_761 &+ round) & 0xFF_FFFF }
            row.withUnsafeBufferPointer { rig.framebuffer.storeRow(round % rig.framebuffer.height, $0) }
            _ = server.framebufferChanged()
            rig.framebuffer.clearDirty()
        }
        if client.output.count > server.outputLimit { fatalError("output of \(client.output.count) bytes kept") }
        drain(fds[1])
    }
    server.remove(client, reason: nil)
    close(fds[1])
    return 0
}
