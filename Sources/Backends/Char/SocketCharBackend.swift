import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// Where a socket chardev listens or connects.
public enum CharSocketAddress: Equatable, Sendable, CustomStringConvertible {
    case unix(path: String)
    /// An empty host means every local address for a server, localhost for a client.
    case tcp(host: String, port: UInt16)

    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case let .tcp(host, port): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}

/// `-chardev socket,...` / `-serial unix:P,server=on,wait=off` / `-serial tcp:H:P,...`.
///
/// As a server it listens and serves one client at a time: while a client is connected the
/// listener leaves the event loop, so later clients wait in the backlog until it goes; output
/// with no client is dropped. With `wait` (QEMU's default for servers) creation blocks until
/// the first client connects, as QEMU does at startup. As a client it connects at creation
/// and stays disconnected once the peer goes (no `reconnect`). A unix socket is created mode
/// 0600 and its file is removed at close. Writes never block: a full socket drops bytes.
public final class SocketCharBackend: CharBackend, @unchecked Sendable {
    public let id: String
    public let address: CharSocketAddress
    public let isServer: Bool
    /// The bound TCP port (useful when the spec asked for port 0).
    public private(set) var localPort: UInt16?

    private weak var loop: (any CharBackendLoop)?
    private let noDelay: Bool
    private var listenFD: Int32 = -1
    private var clientFD: Int32 = -1
    private var listening = false
    private var pump: InputPump?
    private weak var frontend: (any CharFrontend)?
    private var ownsSocketFile = false

    public var isConnected: Bool { clientFD >= 0 }

    public var filename: String {
        let role = isServer ? ",server=on" : ""
        return (isConnected ? "" : "disconnected:") + address.description + role
    }

    public init(id: String, address: CharSocketAddress, server: Bool, wait: Bool, noDelay: Bool = false,
                loop: any CharBackendLoop) throws(CharBackendError) {
        self.id = id
        self.address = address
        self.isServer = server
        self.noDelay = noDelay
        self.loop = loop
        do {
            if server {
                try listen()
                if wait {
                    GuestErrorLog.stderrSink("swiftdm: waiting for connection on: \(filename)")
                    var entry = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
                    while poll(&entry, 1, -1) < 0 && errno == EINTR {}
                    acceptClient()
                }
                if !isConnected { try watchListener() }
            } else {
                try connect()
            }
        } catch {
            close()
            throw CharBackendError(id: id, error)
        }
    }

    deinit { close() }

    // MARK: Setup

    private func listen() throws(SystemError) {
        switch address {
        case .unix(let path):
            listenFD = try bindUnixServerSocket(path: path)
            ownsSocketFile = true
        case let .tcp(host, port):
            try bindTCP(host: host, port: port)
        }
        guard Glibc.listen(listenFD, 1) == 0 else { throw SystemError("listen") }
        try FD.setNonBlocking(listenFD)
    }

    private func bindTCP(host: String, port: UInt16) throws(SystemError) {
        var lastError = SystemError("bind \(address)", errno: EADDRNOTAVAIL)
        for candidate in try resolve(host: host.isEmpty ? nil : host, port: port, passive: true) {
            let fd = socket(candidate.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = SystemError("socket"); continue }
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            let result = candidate.address.withUnsafeBytes {
                bind(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
            }
            if result == 0 {
                listenFD = fd
                localPort = boundPort(fd)
                return
            }
            lastError = SystemError("bind \(address)")
            Glibc.close(fd)
        }
        throw lastError
    }

    private func connect() throws(SystemError) {
        switch address {
        case .unix(let path):
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SystemError("socket") }
            guard try withUnixAddress(path, { Glibc.connect(fd, $0, $1) }) == 0 else {
                let error = SystemError("connect \(path)")
                Glibc.close(fd)
                throw error
            }
            try adopt(fd)
        case let .tcp(host, port):
            var lastError = SystemError("connect \(address)", errno: EADDRNOTAVAIL)
            for candidate in try resolve(host: host.isEmpty ? "localhost" : host, port: port, passive: false) {
                let fd = socket(candidate.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { continue }
                let result = candidate.address.withUnsafeBytes {
                    Glibc.connect(fd, $0.baseAddress?.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
                }
                if result == 0 {
                    try adopt(fd)
                    return
                }
                lastError = SystemError("connect \(address)")
                Glibc.close(fd)
            }
            throw lastError
        }
    }

    // MARK: Connections

    private func watchListener() throws(SystemError) {
        guard listenFD >= 0, !listening, let loop else { return }
        try loop.addReader(listenFD) { [weak self] in self?.acceptClient() }
        listening = true
    }

    private func acceptClient() {
        guard clientFD < 0, listenFD >= 0 else { return }
        // accept4 is not exported by Swift's Glibc module; the listener is close-on-exec and
        // the client gets both flags right after.
        let fd = accept(listenFD, nil, nil)
        guard fd >= 0 else { return }  // EAGAIN: the client gave up already
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        if listening {
            loop?.removeReader(listenFD)
            listening = false
        }
        do {
            try adopt(fd)
        } catch {
            GuestErrorLog.stderrSink("swiftdm: chardev '\(id)': \(error)")
            dropClient()
        }
    }

    private func adopt(_ fd: Int32) throws(SystemError) {
        clientFD = fd
        try FD.setNonBlocking(fd)
        if noDelay, case .tcp = address {
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        guard let loop else { throw SystemError("event loop gone", errno: ESHUTDOWN) }
        pump = InputPump(fd: fd, loop: loop) { [weak self] _ in self?.dropClient() }
        pump?.attach(frontend)
    }

    /// The peer went away: forget it and, as a server, take the next client.
    private func dropClient() {
        pump?.stop()
        pump = nil
        FD.closeIfOpen(&clientFD)
        if isServer {
            do {
                try watchListener()
            } catch {
                GuestErrorLog.stderrSink("swiftdm: chardev '\(id)': \(error)")
            }
        }
    }

    // MARK: CharBackend

    public func attach(_ frontend: any CharFrontend) {
        self.frontend = frontend
        pump?.attach(frontend)
    }

    public func frontendReady() { pump?.resume() }

    public func write(byte: UInt8) {
        guard clientFD >= 0 else { return }
        if case .failed = FD.write(byte: byte, to: clientFD, socket: true) { dropClient() }
    }

    public func write(_ bytes: ArraySlice<UInt8>) {
        guard clientFD >= 0 else { return }
        if case .failed = FD.write(bytes, to: clientFD, socket: true) { dropClient() }
    }

    public func close() {
        pump?.stop()
        pump = nil
        FD.closeIfOpen(&clientFD)
        if listening {
            loop?.removeReader(listenFD)
            listening = false
        }
        FD.closeIfOpen(&listenFD)
        if ownsSocketFile, case .unix(let path) = address {
            unlink(path)
            ownsSocketFile = false
        }
    }
}

// MARK: Address plumbing

private struct ResolvedAddress {
    let family: Int32
    let address: [UInt8]
}

private func resolve(host: String?, port: UInt16, passive: Bool) throws(SystemError) -> [ResolvedAddress] {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_flags = passive ? AI_PASSIVE : 0
    var list: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host, String(port), &hints, &list)
    guard status == 0 else {
        throw SystemError("resolve \(host ?? "*"): \(String(cString: gai_strerror(status)))", errno: EINVAL)
    }
    defer { freeaddrinfo(list) }
    var found: [ResolvedAddress] = []
    var cursor = list
    while let entry = cursor?.pointee {
        if let address = entry.ai_addr {
            let bytes = UnsafeRawBufferPointer(start: address, count: Int(entry.ai_addrlen))
            found.append(ResolvedAddress(family: entry.ai_family, address: Array(bytes)))
        }
        cursor = entry.ai_next
    }
    return found
}

/// A unix stream socket bound to `path`, mode 0600, not yet listening: what every server-mode
/// socket (chardev or QMP monitor) starts from. A stale socket from an earlier run is replaced;
/// any other file at `path` is left alone. On failure nothing is left open or on disk.
public func bindUnixServerSocket(path: String) throws(SystemError) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SystemError("socket") }
    var info = stat()
    if lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK { unlink(path) }
    do throws(SystemError) {
        guard try withUnixAddress(path, { bind(fd, $0, $1) }) == 0 else { throw SystemError("bind \(path)") }
    } catch {
        Glibc.close(fd)
        throw error
    }
    // Before listen(), so no one can connect while the mode is still the umask's.
    guard chmod(path, 0o600) == 0 else {
        let error = SystemError("chmod \(path)")
        unlink(path)
        Glibc.close(fd)
        throw error
    }
    return fd
}

/// Calls `body` with a sockaddr_un for `path`, which must fit sun_path with its NUL.
private func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws(SystemError) -> Int32 {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard !bytes.isEmpty, bytes.count < capacity else { throw SystemError("unix socket path \(path)", errno: ENAMETOOLONG) }
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

private func boundPort(_ fd: Int32) -> UInt16? {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let result = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard result == 0 else { return nil }
    // sin_port and sin6_port both sit at offset 2, in network order.
    let family = Int32(storage.ss_family)
    guard family == AF_INET || family == AF_INET6 else { return nil }
    return withUnsafeBytes(of: storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
}
