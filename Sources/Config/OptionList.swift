/// A command-line error: always names the option and the offending value, as QEMU does, so
/// the one line printed before exit status 1 says exactly what to fix.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public let option: String
    public let value: String
    public let reason: String

    public init(option: String, value: String, reason: String) {
        self.option = option
        self.value = value
        self.reason = reason
    }

    public var description: String {
        value.isEmpty ? "\(option): \(reason)" : "\(option) \(value): \(reason)"
    }
}

/// QEMU's `key=value,key=value` option syntax (QemuOpts): an optional first bare value that
/// belongs to an implied key (`-device e1000,id=n0` means `driver=e1000`), `,,` for a literal
/// comma inside a value, and a bare `key` meaning `key=on`. Keys are consumed with `take`, so
/// whatever is left at the end is an unknown key and can be reported.
public struct OptionList: Equatable, Sendable {
    public let option: String
    public let text: String
    public private(set) var entries: [(key: String, value: String)]

    public static func == (a: OptionList, b: OptionList) -> Bool {
        a.option == b.option && a.text == b.text
    }

    public init(option: String, text: String, impliedKey: String? = nil) throws(ConfigError) {
        self.option = option
        self.text = text
        entries = []
        var index = 0
        for part in Self.split(text) {
            defer { index += 1 }
            if let eq = part.firstIndex(of: "=") {
                let key = String(part[..<eq])
                guard !key.isEmpty else { throw ConfigError(option: option, value: text, reason: "empty parameter name") }
                entries.append((key, String(part[part.index(after: eq)...])))
            } else if index == 0, let impliedKey {
                entries.append((impliedKey, part))
            } else if part.isEmpty {
                if index == 0 { continue }
                throw ConfigError(option: option, value: text, reason: "empty parameter")
            } else if part.hasPrefix("no") && part.count > 2 {
                entries.append((String(part.dropFirst(2)), "off"))
            } else {
                entries.append((part, "on"))
            }
        }
    }

    /// Splits at single commas; `,,` is an escaped comma.
    static func split(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var chars = Array(text)[...]
        while let c = chars.popFirst() {
            if c == "," {
                if chars.first == "," {
                    current.append(",")
                    chars.removeFirst()
                } else {
                    parts.append(current)
                    current = ""
                }
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        return parts
    }

    public func has(_ key: String) -> Bool { entries.contains { $0.key == key } }

    /// The last value given for `key` (QEMU lets later values win), removing every occurrence.
    public mutating func take(_ key: String) -> String? {
        let value = entries.last { $0.key == key }?.value
        entries.removeAll { $0.key == key }
        return value
    }

    public mutating func takeBool(_ key: String) throws(ConfigError) -> Bool? {
        guard let v = take(key) else { return nil }
        switch v {
        case "on", "yes", "true", "y": return true
        case "off", "no", "false", "n": return false
        default: throw ConfigError(option: option, value: text, reason: "parameter '\(key)' expects 'on' or 'off'")
        }
    }

    public mutating func takeUInt(_ key: String, max: UInt64 = .max) throws(ConfigError) -> UInt64? {
        guard let v = take(key) else { return nil }
        guard let n = parseUInt(v), n <= max else {
            throw ConfigError(option: option, value: text, reason: "parameter '\(key)' expects a number up to \(max)")
        }
        return n
    }

    /// A size with QEMU's suffixes (k, M, G, T; bytes if none).
    public mutating func takeSize(_ key: String, defaultUnit: UInt64 = 1) throws(ConfigError) -> UInt64? {
        guard let v = take(key) else { return nil }
        guard let n = parseSize(v, defaultUnit: defaultUnit) else {
            throw ConfigError(option: option, value: text, reason: "parameter '\(key)' expects a size")
        }
        return n
    }

    /// Fails naming the first key nobody took.
    public func rejectUnknown() throws(ConfigError) {
        if let first = entries.first {
            throw ConfigError(option: option, value: text, reason: "invalid parameter '\(first.key)'")
        }
    }
}

/// Decimal, or hexadecimal with 0x.
public func parseUInt(_ text: String) -> UInt64? {
    let lower = text.lowercased()
    if lower.hasPrefix("0x") { return UInt64(lower.dropFirst(2), radix: 16) }
    return UInt64(text)
}

/// `64`, `64M`, `1G`, `512k`, `0x1000`; bare numbers are in `defaultUnit`.
public func parseSize(_ text: String, defaultUnit: UInt64 = 1) -> UInt64? {
    guard let last = text.last else { return nil }
    let units: [Character: UInt64] = ["b": 1, "B": 1, "k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20,
                                      "g": 1 << 30, "G": 1 << 30, "t": 1 << 40, "T": 1 << 40]
    let (digits, unit) = units[last].map { (String(text.dropLast()), $0) } ?? (text, defaultUnit)
    guard let n = parseUInt(digits) else { return nil }
    let (product, overflow) = n.multipliedReportingOverflow(by: unit)
    return overflow ? nil : product
}
