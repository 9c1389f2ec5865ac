/// One `-netdev`: QEMU's network backend option (`-netdev tap,id=n0,ifname=vif1.0-emu`).
/// Its form is checked here; the machine opens it.
public struct NetdevOption: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A host tap interface: created/attached by name, or a descriptor our parent opened.
        case tap(TapOptions)
        /// A QEMU backend type SwiftDM does not have yet (user, bridge, socket, ...): accepted
        /// with a warning; NICs on it are not connected, as a QEMU NIC without a peer.
        case notImplemented(type: String)
    }

    public struct TapOptions: Sendable, Equatable {
        public var ifname: String?
        public var fd: Int32?
        public init(ifname: String? = nil, fd: Int32? = nil) {
            self.ifname = ifname
            self.fd = fd
        }
    }

    public var id: String
    public var kind: Kind

    public init(id: String, kind: Kind) {
        self.id = id
        self.kind = kind
    }

    /// QEMU's `-netdev` types; those other than tap are accepted but not implemented.
    static let knownTypes: Set<String> = ["user", "bridge", "socket", "stream", "dgram", "vde", "l2tpv3",
                                          "vhost-user", "vhost-vdpa", "hubport", "netmap", "af-xdp"]

    /// Parses `[type=]TYPE,id=ID[,...]`; `warnings` receives what is accepted but not acted on.
    public static func parse(_ text: String, warnings: inout [String]) throws(ConfigError) -> NetdevOption {
        var list = try OptionList(option: "-netdev", text: text, impliedKey: "type")
        guard let type = list.take("type"), !type.isEmpty else {
            throw ConfigError(option: "-netdev", value: text, reason: "parameter 'type' is missing")
        }
        guard let id = list.take("id") else {
            throw ConfigError(option: "-netdev", value: text, reason: "parameter 'id' is missing")
        }
        guard isValidID(id) else {
            throw ConfigError(option: "-netdev", value: text,
                              reason: "parameter 'id' expects an identifier (letters, digits, '-', '.', '_', starting with a letter)")
        }
        switch type {
        case "tap":
            var tap = TapOptions()
            if let name = list.take("ifname") {
                guard isValidInterfaceName(name) else {
                    throw ConfigError(option: "-netdev", value: text,
                                      reason: "ifname '\(name)' is not a valid interface name (1-15 bytes, no '/', ':', white space)")
                }
                tap.ifname = name
            }
            if let fd = list.take("fd") {
                guard let n = Int32(fd), n >= 0 else {
                    throw ConfigError(option: "-netdev", value: text, reason: "fd '\(fd)' is not a descriptor number")
                }
                tap.fd = n
            }
            if tap.fd != nil && tap.ifname != nil {
                throw ConfigError(option: "-netdev", value: text, reason: "ifname= and fd= are mutually exclusive")
            }
            // QEMU runs /etc/qemu-ifup and -ifdown by default; SwiftDM never runs programs, so
            // anything but "no" (libxl's choice) or an empty script is refused, not ignored.
            for key in ["script", "downscript"] {
                if let script = list.take(key), !["no", ""].contains(script) {
                    throw ConfigError(option: "-netdev", value: text,
                                      reason: "\(key)=\(script): SwiftDM does not run scripts; set up the interface beforehand and pass \(key)=no")
                }
            }
            if let vnet = try list.takeBool("vnet_hdr"), vnet {
                throw ConfigError(option: "-netdev", value: text, reason: "vnet_hdr=on is not supported")
            }
            if try list.takeBool("vhost") == true {
                warnings.append("-netdev \(text): vhost is not supported; frames go through SwiftDM")
            }
            _ = list.take("br")
            _ = list.take("helper")
            _ = list.take("sndbuf")
            _ = list.take("queues")
            try list.rejectUnknown()
            return NetdevOption(id: id, kind: .tap(tap))
        case _ where knownTypes.contains(type):
            warnings.append("-netdev \(text): network backend '\(type)' is not implemented yet; NICs on it are not connected")
            return NetdevOption(id: id, kind: .notImplemented(type: type))
        default:
            throw ConfigError(option: "-netdev", value: text, reason: "unknown network backend type '\(type)'")
        }
    }

    /// QEMU's id syntax: a letter, then letters, digits, '-', '.', '_'.
    public static func isValidID(_ id: String) -> Bool {
        guard let first = id.unicodeScalars.first, first.isASCIILetter else { return false }
        return id.unicodeScalars.allSatisfy { $0.isASCIILetter || ("0"..."9").contains($0) || "-._".unicodeScalars.contains($0) }
    }

    /// What the kernel accepts as a network interface name (dev_valid_name): 1-15 bytes, not
    /// "." or "..", no '/', ':' or white space.
    public static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 15, name != ".", name != ".." else { return false }
        return bytes.allSatisfy { $0 > 0x20 && $0 != 0x7F && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }
    }
}

private extension Unicode.Scalar {
    var isASCIILetter: Bool { ("a"..."z").contains(self) || ("A"..."Z").contains(self) }
}
