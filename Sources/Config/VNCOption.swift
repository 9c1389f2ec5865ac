/// `-vnc`, in QEMU's grammar: `none`, `[host]:display` (TCP port 5900+display; an IPv6 host in
/// brackets) or `unix:PATH`, then options: `to=N` (try displays up to N when the port is
/// taken), `password[=on|off]`, `share=`, `ipv4`/`ipv6`, `id=`, and options accepted without
/// effect (`lossy`, `non-adaptive`, `websocket`, with a warning for the last).
public struct VNCOption: Sendable, Equatable {
    public enum Address: Sendable, Equatable {
        /// An empty host means every address (QEMU listens on all of them).
        case tcp(host: String, display: Int)
        case unix(path: String)
    }

    /// QEMU's `share=` policies for ClientInit's shared flag.
    public enum SharePolicy: String, Sendable, Equatable {
        /// A client asking for exclusive access disconnects the others (the default).
        case allowExclusive = "allow-exclusive"
        /// Every client shares, whatever it asks.
        case forceShared = "force-shared"
        /// The flag is ignored: clients always share (QEMU's "ignore").
        case ignore
    }

    public static let basePort = 5900
    /// QEMU's limit: display numbers map to ports up to 65535.
    public static let maxDisplay = 65535 - basePort

    public var address: Address
    /// The last display `to=` allows trying.
    public var toDisplay: Int?
    public var password = false
    public var share = SharePolicy.allowExclusive
    public var ipv4Only = false
    public var ipv6Only = false
    public var id = "default"
    /// Warnings for options accepted without effect.
    public var warnings: [String] = []

    public init(address: Address) { self.address = address }

    /// Parses `-vnc TEXT`; nil for `none`.
    public static func parse(_ text: String) throws(ConfigError) -> VNCOption? {
        func fail(_ reason: String) -> ConfigError { ConfigError(option: "-vnc", value: text, reason: reason) }
        var list = try OptionList(option: "-vnc", text: text, impliedKey: "vnc")
        guard let target = list.take("vnc"), !target.isEmpty else { throw fail("expects [host]:display, unix:PATH or none") }
        if target == "none" {
            // QEMU accepts options after none and ignores them.
            return nil
        }
        var option: VNCOption
        if target.hasPrefix("unix:") {
            let path = String(target.dropFirst(5))
            guard !path.isEmpty else { throw fail("unix: expects a socket path") }
            option = VNCOption(address: .unix(path: path))
        } else {
            guard let colon = target.lastIndex(of: ":") else { throw fail("expects [host]:display (a colon and a display number)") }
            var host = String(target[..<colon])
            let displayText = target[target.index(after: colon)...]
            guard let display = Int(displayText), display >= 0, display <= maxDisplay else {
                throw fail("display '\(displayText)' is not a number from 0 to \(maxDisplay)")
            }
            if host.hasPrefix("[") {
                guard host.hasSuffix("]"), host.count > 2 else { throw fail("unterminated IPv6 address '\(host)'") }
                host = String(host.dropFirst().dropLast())
            } else if host.contains(":") {
                throw fail("an IPv6 host must be in brackets ([::1]:0)")
            }
            option = VNCOption(address: .tcp(host: host, display: display))
        }
        if let to = try list.takeUInt("to", max: UInt64(maxDisplay)) {
            guard case .tcp(_, let display) = option.address else { throw fail("to= applies only to TCP displays") }
            guard Int(to) >= display else { throw fail("to=\(to) is below the display number \(display)") }
            option.toDisplay = Int(to)
        }
        option.password = try list.takeBool("password") ?? false
        if let share = list.take("share") {
            guard let policy = SharePolicy(rawValue: share) else {
                throw fail("share= expects allow-exclusive, force-shared or ignore")
            }
            option.share = policy
        }
        option.ipv4Only = try list.takeBool("ipv4") ?? false
        option.ipv6Only = try list.takeBool("ipv6") ?? false
        if option.ipv4Only && option.ipv6Only { throw fail("ipv4 and ipv6 exclude each other") }
        if let id = list.take("id") {
            guard !id.isEmpty else { throw fail("empty id") }
            option.id = id
        }
        _ = try list.takeBool("lossy")
        _ = try list.takeBool("non-adaptive")
        // A bare "non-adaptive" reads as "n-adaptive=off" in the option-list grammar (QEMU
        // knows the name and keeps it whole).
        _ = list.take("n-adaptive")
        if list.take("websocket") != nil {
            option.warnings.append("-vnc \(text): websocket is not supported; only plain RFB clients can connect")
        }
        for unsupported in ["tls-creds", "x509", "x509verify", "tls-authz", "sasl", "sasl-authz", "acl"] where list.has(unsupported) {
            throw fail("\(unsupported) is not supported (no TLS or SASL authentication)")
        }
        try list.rejectUnknown()
        return option
    }
}
