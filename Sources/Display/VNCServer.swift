import Config
import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// Where a socket is: for `query-vnc` and log lines.
public struct VNCPeerAddress: Equatable, Sendable {
    /// "ipv4", "ipv6" or "unix", as QMP's NetworkAddressFamily.
    public var family: String
    public var host: String
    public var service: String

    public init(family: String, host: String, service: String) {
        self.family = family
        self.host = host
        self.service = service
    }
}

public struct VNCError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
}

/// A VNC (RFB) server as QEMU's `-vnc`: listens on TCP port 5900+display (or the next free one
/// up to `to=`), or on a Unix socket, serves any number of clients from the machine's
/// framebuffer and feeds their keys and pointer to the PS/2 devices. Everything runs on the
/// event loop with the device lock held; no client can block another or the loop.
public final class VNCServer {
    static let securityNone: UInt8 = 1
    static let securityVNCAuth: UInt8 = 2
    static let maxClients = 64

    public let option: VNCOption
    public let framebuffer: Framebuffer
    let loop: EventLoop
    let name: String
    private let log: (String) -> Void
    public weak var keyboard: (any KeyboardInput)?
    public weak var pointer: (any PointerInput)?
    /// Told when a client has logged in (the machine starts its display refresh).
    public var onClientConnected: (() -> Void)?

    private var listeners: [Int32] = []
    public private(set) var address: VNCPeerAddress
    private(set) var clients: [VNCClient] = []
    /// The VNC password's bytes; nil until set (then `password=on` refuses every login).
    private(set) var password: [UInt8]?

    var securityType: UInt8 { option.password ? Self.securityVNCAuth : Self.securityNone }

    /// Output a client may have pending before it is dropped: two full raw frames and some.
    var outputLimit: Int { 8 * framebuffer.width * framebuffer.height + (1 << 20) }

    /// Opens the listening socket(s). `name` is the desktop name clients show.
    public init(option: VNCOption, framebuffer: Framebuffer, loop: EventLoop, name: String,
                log: @escaping (String) -> Void = GuestErrorLog.stderrSink) throws(VNCError) {
        self.option = option
        self.framebuffer = framebuffer
        self.loop = loop
        self.name = name
        self.log = log
        switch option.address {
        case .unix(let path):
            (listeners, address) = try Self.listenUnix(path)
        case .tcp(let host, let display):
            (listeners, address) = try Self.listenTCP(host: host, display: display, to: option.toDisplay ?? display,
                                                      option: option)
        }
        for fd in listeners {
            do throws(SystemError) {
                try loop.addReader(fd) { [weak self] in self?.accept(from: fd) }
            } catch {
                close()  // and not again from deinit: the listeners are forgotten
                throw VNCError(message: "vnc: \(error)")
            }
        }
    }

    deinit { close() }

    /// Stops listening and disconnects every client (the machine shuts down). Idempotent.
    public func close() {
        for fd in listeners {
            loop.removeReader(fd)
            Glibc.close(fd)
        }
        if !listeners.isEmpty, case .unix(let path) = option.address { unlink(path) }
        listeners = []
        for client in clients { client.close() }
        clients = []
    }

    // MARK: Clients

    public var hasClients: Bool { !clients.isEmpty }
    public var clientAddresses: [VNCPeerAddress] { clients.filter { $0.phase == .normal || $0.phase.isSkipping }.map(\.peer) }
    public var authName: String { option.password ? "vnc" : "none" }

    /// `change-vnc-password`: the first eight bytes count, as in VNC Authentication.
    public func setPassword(_ text: String) {
        password = Array(text.utf8.prefix(8))
    }

    /// After each redraw, before the framebuffer's dirty tiles are cleared: sends each client
    /// what changed. Returns whether anyone is connected (and so wants more redraws).
    @discardableResult
    public func framebufferChanged() -> Bool {
        for client in clients { client.framebufferChanged() }
        return hasClients
    }

    private func accept(from listener: Int32) {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.accept(listener, $0, &length)
                }
            }
            guard fd >= 0 else {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    log("swiftdm: vnc: accept: \(String(cString: strerror(errno)))")
                }
                return
            }
            // Swift's Glibc lacks accept4: the flags are set right after.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let peer = Self.describe(&storage, length: length, fallback: address)
            adopt(fd: fd, peer: peer)
        }
    }

    /// Serves a connected socket (accepted here, or handed in by tests).
    func adopt(fd: Int32, peer: VNCPeerAddress) {
        guard clients.count < Self.maxClients else {
            log("swiftdm: vnc: refusing \(peer.host):\(peer.service): already \(Self.maxClients) clients")
            Glibc.close(fd)
            return
        }
        if peer.family != "unix" {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let client = VNCClient(fd: fd, peer: peer, server: self)
        do throws(SystemError) {
            try loop.addReader(fd) { [weak client] in client?.readable() }
        } catch {
            log("swiftdm: vnc: \(error)")
            Glibc.close(fd)
            return
        }
        clients.append(client)
        client.flush()
    }

    /// ClientInit: applies the share policy (QEMU's): with allow-exclusive an exclusive client
    /// disconnects the others, and a shared one is refused while an exclusive one is connected;
    /// force-shared refuses exclusive clients; ignore lets everyone share.
    func admit(_ client: VNCClient) throws(VNCClient.Drop) {
        let others = clients.filter { $0 !== client }
        switch option.share {
        case .allowExclusive:
            if client.exclusive {
                for other in others { remove(other, reason: "an exclusive client connected") }
            } else if others.contains(where: { $0.exclusive && $0.phase != .clientInit }) {
                throw VNCClient.Drop(reason: "a client has exclusive access")
            }
        case .forceShared:
            if client.exclusive { throw VNCClient.Drop(reason: "exclusive access refused (share=force-shared)") }
        case .ignore:
            break
        }
        onClientConnected?()
    }

    /// Closes a client; `reason` (nil for an orderly disconnect) goes to the log.
    func remove(_ client: VNCClient, reason: String?) {
        guard let index = clients.firstIndex(where: { $0 === client }) else { return }
        if let reason { log("swiftdm: vnc: client \(client.peer.host):\(client.peer.service) dropped: \(reason)") }
        clients.remove(at: index)
        client.close()
    }

    // MARK: Sockets

    private static func listenUnix(_ path: String) throws(VNCError) -> ([Int32], VNCPeerAddress) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        let bytes = Array(path.utf8)
        guard bytes.count < capacity, !bytes.contains(0) else {
            throw VNCError(message: "vnc: unix socket path '\(path)' is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VNCError(message: "vnc: socket: \(String(cString: strerror(errno)))") }
        // As QEMU: a stale socket file from an earlier run is replaced.
        unlink(path)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw VNCError(message: "vnc: cannot listen on unix:\(path): \(message)")
        }
        return ([fd], VNCPeerAddress(family: "unix", host: path, service: ""))
    }

    /// Binds every address `host` resolves to on port 5900+display, moving to the next display
    /// (up to `to`) while one of them is taken.
    private static func listenTCP(host: String, display: Int, to last: Int,
                                  option: VNCOption) throws(VNCError) -> ([Int32], VNCPeerAddress) {
        var lastError = ""
        for d in display...max(display, last) {
            let port = VNCOption.basePort + d
            var hints = addrinfo()
            hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
            hints.ai_family = option.ipv4Only ? AF_INET : (option.ipv6Only ? AF_INET6 : AF_UNSPEC)
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let status = host.isEmpty ? getaddrinfo(nil, "\(port)", &hints, &list) : getaddrinfo(host, "\(port)", &hints, &list)
            guard status == 0, let first = list else {
                throw VNCError(message: "vnc: cannot resolve '\(host)': \(String(cString: gai_strerror(status)))")
            }
            defer { freeaddrinfo(first) }
            var fds: [Int32] = []
            var inUse = false
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let ai = entry {
                entry = ai.pointee.ai_next
                let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { continue }
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                if ai.pointee.ai_family == AF_INET6 {
                    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                if bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 && listen(fd, 16) == 0 {
                    fds.append(fd)
                } else {
                    if errno == EADDRINUSE { inUse = true }
                    lastError = String(cString: strerror(errno))
                    Glibc.close(fd)
                }
            }
            if inUse || fds.isEmpty {
                for fd in fds { Glibc.close(fd) }
                continue
            }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fds[0], $0, &length) }
            }
            let fallback = VNCPeerAddress(family: "ipv4", host: host, service: "\(port)")
            return (fds, describe(&storage, length: length, fallback: fallback))
        }
        let ports = last > display ? "ports \(VNCOption.basePort + display)-\(VNCOption.basePort + last)"
                                   : "port \(VNCOption.basePort + display)"
        throw VNCError(message: "vnc: cannot listen on \(host.isEmpty ? "*" : host) \(ports): \(lastError)")
    }

    static func describe(_ storage: inout sockaddr_storage, length: socklen_t, fallback: VNCPeerAddress) -> VNCPeerAddress {
        let family: String
        switch Int32(storage.ss_family) {
        case AF_INET: family = "ipv4"
        case AF_INET6: family = "ipv6"
        case AF_UNIX: return VNCPeerAddress(family: "unix", host: fallback.host, service: "")
        default: return fallback
        }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let status = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                            NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard status == 0 else { return fallback }
        func text(_ chars: [CChar]) -> String {
            String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return VNCPeerAddress(family: family, host: text(host), service: text(service))
    }
}
