import Config
import DMCore

/// A character backend as the command line describes it, in either of QEMU's syntaxes:
/// `-chardev BACKEND,id=ID,key=value...` or the `-serial`/`-debugcon` shorthand (`stdio`,
/// `null`, `none`, `pty`, `file:PATH`, `unix:PATH[,server=on,wait=off]`,
/// `tcp:HOST:PORT[,server=on,wait=off]`, `chardev:ID`). Parsing only validates; creating the
/// backend (opening files, binding sockets) is `makeCharBackend`.
public enum CharBackendSpec: Equatable, Sendable {
    case null
    /// `-serial none`: no device at all (the machine leaves the port out).
    case none
    /// `signal=off` makes Ctrl-C reach the guest instead of ending us.
    case stdio(allowSignals: Bool)
    case file(path: String, append: Bool)
    case pty
    case socket(address: CharSocketAddress, server: Bool, wait: Bool, noDelay: Bool)
    /// A reference to a `-chardev` by id; the machine resolves it.
    case chardev(id: String)

    static let supportedBackends = "null, stdio, file, pty, socket"

    /// From a `-chardev` option list (parsed with implied key "backend"). The `id` key is left
    /// for the machine; every other key must be understood.
    public init(chardev list: OptionList) throws(ConfigError) {
        var list = list
        let fail = { (reason: String) in ConfigError(option: list.option, value: list.text, reason: reason) }
        guard let backend = list.take("backend"), !backend.isEmpty else { throw fail("missing backend type") }
        _ = list.take("id")
        if try list.takeBool("mux") == true { throw fail("mux=on is not supported") }
        switch backend {
        case "null":
            self = .null
        case "stdio":
            self = .stdio(allowSignals: try list.takeBool("signal") ?? true)
        case "file":
            guard let path = list.take("path") else { throw fail("file needs path=") }
            try Self.validatePath(path, fail)
            if list.has("in") { throw fail("a separate input file (in=) is not supported") }
            self = .file(path: path, append: try list.takeBool("append") ?? false)
        case "pty":
            self = .pty
        case "socket":
            let server = try list.takeBool("server") ?? false
            let wait = try list.takeBool("wait") ?? true
            let noDelay = try list.takeBool("nodelay") ?? false
            if try list.takeBool("telnet") == true { throw fail("telnet=on is not supported") }
            let address: CharSocketAddress
            if let path = list.take("path") {
                guard !list.has("host") && !list.has("port") else { throw fail("give either path= or host=/port=") }
                address = try Self.unixAddress(path, fail)
            } else if let portText = list.take("port") {
                let host = list.take("host") ?? ""
                address = .tcp(host: try Self.validateHost(host, fail), port: try Self.port(portText, server: server, fail))
            } else {
                throw fail("socket needs path= (unix) or host= and port= (tcp)")
            }
            self = .socket(address: address, server: server, wait: server && wait, noDelay: noDelay)
        default:
            throw fail("backend '\(backend)' is not supported (\(Self.supportedBackends))")
        }
        try list.rejectUnknown()
    }

    /// From a `-serial`/`-debugcon` argument; `option` names the flag in errors.
    public init(shorthand text: String, option: String) throws(ConfigError) {
        let fail = { (reason: String) in ConfigError(option: option, value: text, reason: reason) }
        switch text {
        case "stdio": self = .stdio(allowSignals: true); return
        case "null": self = .null; return
        case "none": self = .none; return
        case "pty": self = .pty; return
        case "": throw fail("empty character device")
        default: break
        }
        guard let colon = text.firstIndex(of: ":") else {
            throw fail("unknown character device (stdio, null, none, pty, file:PATH, unix:PATH, tcp:HOST:PORT, chardev:ID)")
        }
        let kind = text[..<colon]
        let rest = String(text[text.index(after: colon)...])
        switch kind {
        case "file":
            try Self.validatePath(rest, fail)
            self = .file(path: rest, append: false)
        case "chardev":
            guard Self.isValidID(rest) else { throw fail("invalid chardev id '\(rest)'") }
            self = .chardev(id: rest)
        case "unix", "tcp":
            let target: String, server: Bool, wait: Bool, noDelay: Bool
            do throws(ConfigError) {
                var list = try OptionList(option: option, text: rest, impliedKey: "target")
                target = list.take("target") ?? ""
                server = try list.takeBool("server") ?? false
                wait = try list.takeBool("wait") ?? true
                noDelay = try list.takeBool("nodelay") ?? false
                if try list.takeBool("telnet") == true { throw fail("telnet=on is not supported") }
                try list.rejectUnknown()
            } catch {
                // Report the whole argument, not just the part after the colon.
                throw fail(error.reason)
            }
            guard !target.isEmpty else { throw fail("missing \(kind) address") }
            let address: CharSocketAddress
            if kind == "unix" {
                address = try Self.unixAddress(target, fail)
            } else {
                guard let split = target.lastIndex(of: ":") else { throw fail("tcp needs HOST:PORT") }
                var host = String(target[..<split])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                address = .tcp(host: try Self.validateHost(host, fail),
                               port: try Self.port(String(target[target.index(after: split)...]), server: server, fail))
            }
            self = .socket(address: address, server: server, wait: server && wait, noDelay: noDelay)
        case "mon":
            throw fail("multiplexing the monitor onto a character device is not supported")
        default:
            throw fail("character device type '\(kind)' is not supported (file, unix, tcp, chardev)")
        }
    }

    // MARK: Validation

    /// QEMU's rule for ids: a letter, then letters, digits, '-', '.', '_'.
    static func isValidID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard let first = bytes.first, bytes.count <= 128, isLetter(first) else { return false }
        return bytes.allSatisfy { isLetter($0) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F }
    }

    private static func isLetter(_ b: UInt8) -> Bool { (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7A }

    private static func validatePath(_ path: String, _ fail: (String) -> ConfigError) throws(ConfigError) {
        guard !path.isEmpty else { throw fail("empty path") }
        guard !path.utf8.contains(0) else { throw fail("path contains a NUL byte") }
        guard path.utf8.count < 4096 else { throw fail("path is too long") }
    }

    private static func unixAddress(_ path: String, _ fail: (String) -> ConfigError) throws(ConfigError) -> CharSocketAddress {
        try validatePath(path, fail)
        guard path.utf8.count < 108 else { throw fail("unix socket path longer than 107 bytes") }
        return .unix(path: path)
    }

    private static func validateHost(_ host: String, _ fail: (String) -> ConfigError) throws(ConfigError) -> String {
        guard host.utf8.count <= 255, !host.utf8.contains(0), !host.contains(",") else { throw fail("invalid host '\(host)'") }
        return host
    }

    private static func port(_ text: String, server: Bool, _ fail: (String) -> ConfigError) throws(ConfigError) -> UInt16 {
        // Port 0 asks the kernel for a free port, which only makes sense when listening.
        guard let value = UInt16(text), value > 0 || server else { throw fail("invalid port '\(text)'") }
        return value
    }
}

/// Creates the backend a spec describes and registers its descriptors with the loop (whose
/// handlers run on the loop thread with the DeviceLock held). `.none` gives a null backend;
/// `.chardev` references must be resolved by the machine first.
public func makeCharBackend(id: String, spec: CharBackendSpec, loop: any CharBackendLoop) throws(CharBackendError) -> any CharBackend {
    switch spec {
    case .null, .none:
        return NullCharBackend(id: id)
    case .stdio(let allowSignals):
        return try StdioCharBackend(id: id, loop: loop, allowSignals: allowSignals)
    case let .file(path, append):
        return try FileCharBackend(id: id, path: path, append: append)
    case .pty:
        return try PtyCharBackend(id: id, loop: loop)
    case let .socket(address, server, wait, noDelay):
        return try SocketCharBackend(id: id, address: address, server: server, wait: wait, noDelay: noDelay, loop: loop)
    case .chardev(let other):
        throw CharBackendError(id: id, reason: "refers to chardev '\(other)', which the machine must resolve")
    }
}
