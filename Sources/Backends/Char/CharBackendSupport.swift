import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// What character backends need from the event loop: descriptors to watch and timers (the pty
/// polls for a client). `EventLoop` provides it; tests drive a hand-run stand-in.
public protocol CharBackendLoop: AnyObject {
    var clock: VirtualClock { get }
    func addReader(_ fd: Int32, _ handler: @escaping () -> Void) throws(SystemError)
    func removeReader(_ fd: Int32)
    func makeTimer(_ fire: @escaping () -> Void) -> any DeviceTimer
}

extension EventLoop: CharBackendLoop {}

/// A failure to create a backend, naming the chardev.
public struct CharBackendError: Error, Equatable, CustomStringConvertible {
    public let id: String
    public let reason: String
    public init(id: String, reason: String) {
        self.id = id
        self.reason = reason
    }
    public init(id: String, _ error: SystemError) {
        self.init(id: id, reason: error.description)
    }
    public var description: String { "chardev '\(id)': \(reason)" }
}

/// The result of a write that must not block.
enum WriteOutcome: Equatable {
    case written
    /// The peer cannot take more now; the bytes were dropped.
    case wouldBlock
    /// The peer is gone (EPIPE, EIO, ECONNRESET, ...).
    case failed(Int32)
}

enum FD {
    static func setNonBlocking(_ fd: Int32) throws(SystemError) {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl(O_NONBLOCK)") }
    }

    /// One byte, no allocation: the UART hot path.
    static func write(byte: UInt8, to fd: Int32, socket: Bool) -> WriteOutcome {
        var value = byte
        return withUnsafeBytes(of: &value) { writeOnce($0, to: fd, socket: socket) }
    }

    /// Writes as much of `bytes` as the descriptor takes without blocking; drops the rest.
    static func write(_ bytes: ArraySlice<UInt8>, to fd: Int32, socket: Bool) -> WriteOutcome {
        bytes.withUnsafeBytes { buffer in
            var done = 0
            while done < buffer.count {
                let start = buffer.baseAddress?.advanced(by: done)
                let count = buffer.count - done
                let n = socket
                    ? send(fd, start, count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    : Glibc.write(fd, start, count)
                if n > 0 {
                    done += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    return .wouldBlock
                } else {
                    return .failed(n < 0 ? errno : EIO)
                }
            }
            return .written
        }
    }

    private static func writeOnce(_ buffer: UnsafeRawBufferPointer, to fd: Int32, socket: Bool) -> WriteOutcome {
        while true {
            let n = socket
                ? send(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                : Glibc.write(fd, buffer.baseAddress, buffer.count)
            if n == buffer.count { return .written }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .wouldBlock }
            return .failed(n < 0 ? errno : EIO)
        }
    }

    /// Whether a write would not block right now (for descriptors we must not make
    /// non-blocking because they are shared with our parent, like stdout).
    static func isWritable(_ fd: Int32) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        return poll(&entry, 1, 0) == 1 && entry.revents & Int16(POLLOUT) != 0
    }

    static func closeIfOpen(_ fd: inout Int32) {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }
}

/// Feeds a readable descriptor to a frontend, never more than its `receiveCapacity`.
///
/// Our event loop is level-triggered, so a descriptor with unread input must leave the loop
/// while the frontend has no room (or there is no frontend), or the loop would spin; it comes
/// back on `frontendReady`. Each readiness gets one `read`, which never blocks even on a
/// descriptor in blocking mode (stdin is left blocking because our parent shares it).
final class InputPump {
    let fd: Int32
    private weak var loop: (any CharBackendLoop)?
    private weak var frontend: (any CharFrontend)?
    private var buffer = [UInt8](repeating: 0, count: 4096)
    private var watching = false
    private(set) var active = true
    /// Called once on end of file or a read error; the pump has already stopped.
    private let onEnd: (_ errno: Int32) -> Void

    init(fd: Int32, loop: any CharBackendLoop, onEnd: @escaping (_ errno: Int32) -> Void) {
        self.fd = fd
        self.loop = loop
        self.onEnd = onEnd
    }

    deinit { stop() }

    func attach(_ frontend: (any CharFrontend)?) {
        self.frontend = frontend
        resume()
    }

    /// Starts or restarts watching if there is somewhere for input to go.
    func resume() {
        guard active, !watching, let loop, let frontend, frontend.receiveCapacity > 0 else { return }
        do {
            try loop.addReader(fd) { [weak self] in self?.readable() }
            watching = true
        } catch {
            // epoll refuses regular files and /dev/null (stdin redirected from them); such an
            // input simply never delivers anything, which is what a guest would see anyway.
            active = false
        }
    }

    func stop() {
        pause()
        active = false
    }

    /// Undoes `stop` (a pty whose client came back).
    func restart() {
        active = true
        resume()
    }

    private func pause() {
        if watching {
            loop?.removeReader(fd)
            watching = false
        }
    }

    private func readable() {
        guard let frontend else { pause(); return }
        let room = min(frontend.receiveCapacity, buffer.count)
        guard room > 0 else { pause(); return }
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, room) }
        if n > 0 {
            frontend.receive(buffer[0..<n])
            if frontend.receiveCapacity == 0 { pause() }
        } else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            let error = n == 0 ? 0 : errno
            stop()
            onEnd(error)
        }
    }
}
