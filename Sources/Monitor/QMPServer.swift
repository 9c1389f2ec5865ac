import Backends
import CMonitor
import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// Where a QMP monitor listens.
public enum QMPListenAddress: Equatable, Sendable {
    /// We create the socket file (mode 0600) and remove it at exit.
    case unixPath(String)
    /// A listening socket our parent opened (libxl's `-chardev socket,fd=N`); we neither
    /// create nor remove its file.
    case inheritedFD(Int32)
}

/// One `-mon` on a listening unix socket: one client at a time (later ones wait in the
/// backlog, as with QEMU's socket chardev), any number of clients one after another — libxl
/// opens a new connection per operation.
final class QMPServer {
    let label: String
    let address: QMPListenAddress
    private unowned let monitor: Monitor
    private let loop: any CharBackendLoop
    private var listenFD: Int32 = -1
    private var listening = false
    private var ownsSocketFile = false
    private(set) var connection: QMPConnection?
    /// The socket's path as getsockname reports it (for query-chardev with an inherited fd).
    private var boundPath = ""

    init(label: String, address: QMPListenAddress, wait: Bool, monitor: Monitor, loop: any CharBackendLoop) throws(MonitorError) {
        self.label = label
        self.address = address
        self.monitor = monitor
        self.loop = loop
        do {
            try open()
            if wait {
                GuestErrorLog.stderrSink("swiftdm: waiting for connection on: \(filename)")
                var entry = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
                while poll(&entry, 1, -1) < 0 && errno == EINTR {}
                accept()
            }
            if connection == nil { try watchListener() }
        } catch {
            close()
            throw MonitorError("chardev '\(label)': \(error)")
        }
    }

    var filename: String {
        (connection == nil ? "disconnected:" : "") + "unix:\(boundPath),server=on"
    }

    var chardevInfo: ChardevInfo { ChardevInfo(label: label, filename: filename, frontendOpen: true) }

    private func open() throws(SystemError) {
        switch address {
        case .unixPath(let path):
            listenFD = try bindUnixServerSocket(path: path)
            ownsSocketFile = true
            guard listen(listenFD, 16) == 0 else { throw SystemError("listen") }
            boundPath = path
        case .inheritedFD(let fd):
            var type: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else {
                throw SystemError("fd=\(fd) is not a socket")
            }
            var accepting: Int32 = 0
            length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0, accepting != 0 else {
                throw SystemError("fd=\(fd) is not a listening socket", errno: EINVAL)
            }
            listenFD = fd
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            boundPath = socketPath(fd) ?? "fd\(fd)"
        }
        let flags = fcntl(listenFD, F_GETFL)
        guard flags >= 0, fcntl(listenFD, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl(O_NONBLOCK)") }
    }

    private func watchListener() throws(SystemError) {
        guard listenFD >= 0, !listening else { return }
        try loop.addReader(listenFD) { [weak self] in self?.accept() }
        listening = true
    }

    private func accept() {
        guard connection == nil, listenFD >= 0 else { return }
        let fd = Glibc.accept(listenFD, nil, nil)
        guard fd >= 0 else { return }  // EAGAIN: the client gave up already
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        if listening {
            loop.removeReader(listenFD)
            listening = false
        }
        do {
            let accepted = try QMPConnection(fd: fd, server: self, monitor: monitor, loop: loop)
            connection = accepted
            accepted.start()
        } catch {
            GuestErrorLog.stderrSink("swiftdm: monitor '\(label)': \(error)")
            Glibc.close(fd)
            connectionEnded()
        }
    }

    /// The client went away (or was dropped): take the next one.
    func connectionEnded() {
        connection = nil
        monitor.connectionClosed()
        do {
            try watchListener()
        } catch {
            GuestErrorLog.stderrSink("swiftdm: monitor '\(label)': \(error)")
        }
    }

    func close() {
        connection?.close(notify: false)
        connection = nil
        if listening {
            loop.removeReader(listenFD)
            listening = false
        }
        if listenFD >= 0 {
            Glibc.close(listenFD)
            listenFD = -1
        }
        if ownsSocketFile, case .unixPath(let path) = address {
            unlink(path)
            ownsSocketFile = false
        }
    }
}

/// One accepted client: reads (with passed descriptors), feeds its session, writes replies
/// without ever blocking the loop. Output the socket cannot take yet is kept and flushed when
/// it becomes writable; a client that lets more than `maxBacklog` pile up is dropped.
final class QMPConnection {
    static let readChunk = 65536
    /// Replies and events waiting for a client that is not reading.
    static let maxBacklog = 8 << 20
    /// Above this much waiting output we stop taking commands from the client.
    static let inputPauseBacklog = 256 << 10

    private var fd: Int32
    private unowned let server: QMPServer
    private let loop: any CharBackendLoop
    private var session: QMPSession?
    private var readerInstalled = false
    private var backlog: [UInt8] = []
    private var backlogStart = 0
    private var writeWatch: Int32 = -1
    private var readBuffer = [UInt8](repeating: 0, count: QMPConnection.readChunk)

    init(fd: Int32, server: QMPServer, monitor: Monitor, loop: any CharBackendLoop) throws(SystemError) {
        self.fd = fd
        self.server = server
        self.loop = loop
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SystemError("fcntl(O_NONBLOCK)") }
        let session = QMPSession(monitor: monitor) { [weak self] bytes in self?.write(bytes) }
        self.session = session
        session.inputStateChanged = { [weak self] in self?.updateReader() }
    }

    /// Greets the client and starts reading. Separate from `init` because a client that has
    /// already gone makes the greeting fail, which ends the connection through the server,
    /// and the server must know the connection before that happens.
    func start() {
        session?.start()
        updateReader()
    }

    deinit { close(notify: false) }

    private var pendingOutput: Int { backlog.count - backlogStart }

    private func updateReader() {
        guard fd >= 0 else { return }
        let want = (session?.wantsInput ?? false) && pendingOutput < Self.inputPauseBacklog
        if want && !readerInstalled {
            do {
                try loop.addReader(fd) { [weak self] in self?.readable() }
                readerInstalled = true
            } catch {
                close(notify: true)
            }
        } else if !want && readerInstalled {
            loop.removeReader(fd)
            readerInstalled = false
        }
    }

    private func readable() {
        var fds = [Int32](repeating: -1, count: 8)
        var count: Int32 = 0
        let n = readBuffer.withUnsafeMutableBytes { buffer in
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                sdm_recv_with_fds(fd, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, Int32(fdBuffer.count), &count)
            }
        }
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { return }
        let passed = Array(fds.prefix(Int(max(0, count))))
        guard n > 0 else {
            for passedFD in passed { Glibc.close(passedFD) }
            close(notify: true)
            return
        }
        session?.receive(readBuffer[0..<n], passedFDs: passed)
        updateReader()
    }

    private func write(_ bytes: [UInt8]) {
        guard fd >= 0 else { return }
        if pendingOutput == 0 {
            let written = send(bytes[...])
            guard written >= 0 else { return }
            if written == bytes.count { return }
            backlog = Array(bytes[written...])
            backlogStart = 0
        } else {
            guard pendingOutput + bytes.count <= Self.maxBacklog else {
                GuestErrorLog.stderrSink("swiftdm: monitor '\(server.label)': client is not reading its replies; dropping it")
                close(notify: true)
                return
            }
            backlog += bytes
        }
        watchWritable()
        updateReader()
    }

    /// Sends what the socket takes now; -1 if the connection failed (and is now closed).
    private func send(_ bytes: ArraySlice<UInt8>) -> Int {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { buffer in
                Glibc.send(fd, buffer.baseAddress?.advanced(by: done), buffer.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n > 0 {
                done += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                // EPIPE/ECONNRESET: the client left in the middle of a reply.
                close(notify: true)
                return -1
            }
        }
        return done
    }

    private func watchWritable() {
        guard writeWatch < 0, fd >= 0 else { return }
        writeWatch = sdm_writable_watch_create(fd)
        guard writeWatch >= 0 else {
            close(notify: true)
            return
        }
        do {
            try loop.addReader(writeWatch) { [weak self] in self?.writable() }
        } catch {
            close(notify: true)
        }
    }

    private func writable() {
        guard writeWatch >= 0, sdm_writable_watch_poll(writeWatch) == 1 else { return }
        let written = send(backlog[backlogStart...])
        guard written >= 0 else { return }
        backlogStart += written
        if pendingOutput == 0 {
            backlog = []
            backlogStart = 0
            stopWritableWatch()
        }
        updateReader()
    }

    private func stopWritableWatch() {
        guard writeWatch >= 0 else { return }
        loop.removeReader(writeWatch)
        Glibc.close(writeWatch)
        writeWatch = -1
    }

    func close(notify: Bool) {
        guard fd >= 0 else { return }
        session?.close()
        if readerInstalled {
            loop.removeReader(fd)
            readerInstalled = false
        }
        stopWritableWatch()
        Glibc.close(fd)
        fd = -1
        backlog = []
        if notify { server.connectionEnded() }
    }

    func sendEvent(_ message: JSONValue) { session?.sendEvent(message) }
}

// MARK: Socket plumbing

private func socketPath(_ fd: Int32) -> String? {
    var address = sockaddr_un()
    var length = socklen_t(MemoryLayout<sockaddr_un>.size)
    let result = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard result == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
    let path = withUnsafeBytes(of: address.sun_path) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
    return path.isEmpty ? nil : path
}
