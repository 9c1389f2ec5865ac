import Backends
import Config
import DMCore
#if canImport(Glibc)
import Glibc
#endif

public struct MonitorError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The QMP monitor: every `-mon`/`-qmp` socket, the command table, fd sets and event delivery.
///
/// All of it runs on the machine's event loop (socket callbacks arrive with the `DeviceLock`
/// held, so handlers may read device state directly). Operations that wait for vCPUs go
/// through the host's completion-based methods, which leave the lock while they wait.
public final class Monitor: MonitorEventSink {
    /// The QEMU version we speak for: libxl picks its code paths from the greeting (≥ 2.8:
    /// `eject id=`, `blockdev-change-medium`; ≥ 2.11: `xen-save-devices-state live=`).
    public static let qemuVersion = (major: 7, minor: 2, micro: 0)
    public static let eventNames = ["SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME", "SUSPEND", "WAKEUP", "DEVICE_DELETED", "DEVICE_TRAY_MOVED"]

    public weak var host: (any MonitorHost)?
    public let fdSets = FileDescriptorSets()
    /// SwiftDM's own version, sent as `package` in the greeting and `query-version`.
    public let package: String
    let commands: QMPCommandTable
    private var servers: [QMPServer] = []
    private let loop: any CharBackendLoop

    public init(host: any MonitorHost, loop: any CharBackendLoop, package: String) {
        self.host = host
        self.loop = loop
        self.package = package
        commands = QMPCommands.table
    }

    deinit { close() }

    /// Opens the sockets the command line asks for. `chardevs` are the `-chardev` lists.
    public func listen(monitors: [MonitorOption], chardevs: [OptionList]) throws(MonitorError) {
        var compatIndex = 0
        for option in monitors {
            switch option.source {
            case .chardev(let id):
                guard let list = chardevs.last(where: { $0.entries.contains { $0.key == "id" && $0.value == id } }) else {
                    throw MonitorError("-mon chardev=\(id): no chardev with id '\(id)'")
                }
                let (address, wait) = try Self.parseChardev(list)
                try addServer(label: id, address: address, wait: wait)
            case .shorthand(let text):
                let spec: CharBackendSpec
                do { spec = try CharBackendSpec(shorthand: text, option: "-qmp") } catch { throw MonitorError(error.description) }
                guard case let .socket(.unix(path), server, wait, _) = spec, server else {
                    throw MonitorError("-qmp \(text): the monitor must be a unix socket server (unix:PATH,server=on)")
                }
                try addServer(label: "compat_monitor\(compatIndex)", address: .unixPath(path), wait: wait)
                compatIndex += 1
            }
        }
    }

    /// `-chardev socket,id=X,path=P|fd=N,server=on[,wait=off]` for a monitor.
    static func parseChardev(_ original: OptionList) throws(MonitorError) -> (QMPListenAddress, wait: Bool) {
        var list = original
        let fail = { (reason: String) in MonitorError("-chardev \(original.text): \(reason)") }
        do {
            guard list.take("backend") == "socket" else { throw fail("a QMP monitor needs a socket chardev") }
            _ = list.take("id")
            guard try list.takeBool("server") == true else { throw fail("a QMP monitor socket must be a server (server=on)") }
            let wait = try list.takeBool("wait") ?? true
            _ = try list.takeBool("nodelay")
            let address: QMPListenAddress
            if let path = list.take("path") {
                guard !path.isEmpty, path.utf8.count < 108, !path.utf8.contains(0) else { throw fail("invalid socket path") }
                address = .unixPath(path)
            } else if let text = list.take("fd") {
                guard let fd = Int32(text), fd >= 3 else { throw fail("fd= expects a descriptor number of 3 or more") }
                address = .inheritedFD(fd)
            } else {
                throw fail("a QMP monitor socket needs path= or fd=")
            }
            try list.rejectUnknown()
            return (address, wait)
        } catch let error as MonitorError {
            throw error
        } catch let error as ConfigError {
            throw MonitorError(error.description)
        } catch {
            throw fail("\(error)")
        }
    }

    public func addServer(label: String, address: QMPListenAddress, wait: Bool = false) throws(MonitorError) {
        servers.append(try QMPServer(label: label, address: address, wait: wait, monitor: self, loop: loop))
    }

    /// Closes every socket and removes the socket files we created.
    public func close() {
        for server in servers { server.close() }
        servers = []
    }

    public var chardevs: [ChardevInfo] { servers.map(\.chardevInfo) }

    var versionInfo: JSONValue {
        ["qemu": ["micro": .int(Self.qemuVersion.micro), "minor": .int(Self.qemuVersion.minor),
                  "major": .int(Self.qemuVersion.major)],
         "package": .string(package)]
    }

    var qemuVersionString: String { "\(Self.qemuVersion.major).\(Self.qemuVersion.minor).\(Self.qemuVersion.micro)" }

    func connectionClosed() {
        fdSets.connectionClosed(vmRunning: host?.isRunning ?? false)
    }

    // MARK: Events

    /// Sends an event, timestamped with the wall clock as QEMU does, to every negotiated
    /// client of every monitor. Loop thread.
    public func emit(event: String, data: JSONObject?) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var message = JSONObject([("timestamp", ["seconds": .int(now.tv_sec), "microseconds": .int(now.tv_nsec / 1000)]),
                                  ("event", .string(event))])
        if let data { message["data"] = .object(data) }
        let value = JSONValue.object(message)
        for server in servers { server.connection?.sendEvent(value) }
    }
}
