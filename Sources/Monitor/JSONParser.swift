/// A strict JSON parser for one QMP message, with QEMU's extensions and limits: single-quoted
/// strings (QEMU's lexer accepts them from clients too), at most `maxNesting` levels, no
/// duplicate keys, no `\u0000`, valid UTF-8 only. Input is hostile: every failure is a
/// `JSONParseError`, never a trap, and recursion is bounded by the nesting limit.
public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public let offset: Int
    /// QEMU's wording: "JSON parse error, <reason>".
    public var description: String { "JSON parse error, \(reason)" }
}

public struct JSONParser {
    /// QEMU's MAX_NESTING (qobject/json-streamer.c).
    public static let maxNesting = 1024

    private let bytes: [UInt8]
    private var position = 0
    private let maxNesting: Int

    /// Parses exactly one value from `bytes` (surrounding whitespace allowed).
    public static func parse(_ bytes: [UInt8], maxNesting: Int = JSONParser.maxNesting) throws(JSONParseError) -> JSONValue {
        var parser = JSONParser(bytes: bytes, maxNesting: maxNesting)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.position == bytes.count else { throw parser.error("unexpected data after the value") }
        return value
    }

    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue { try parse(Array(text.utf8)) }

    private init(bytes: [UInt8], maxNesting: Int) {
        self.bytes = bytes
        self.maxNesting = maxNesting
    }

    private func error(_ reason: String) -> JSONParseError { JSONParseError(reason: reason, offset: position) }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipWhitespace() {
        while let b = current, b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D { position += 1 }
    }

    private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard let b = current else { throw error("expecting value") }
        switch b {
        case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""), UInt8(ascii: "'"): return .string(try parseString())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default:
            let start = position
            while let c = current, isWordByte(c) { position += 1 }
            let word = String(decoding: bytes[start..<position], as: UTF8.self)
            switch word {
            case "true": return .bool(true)
            case "false": return .bool(false)
            case "null": return .null
            case "": throw error("stray '\(Self.printable(b))'")
            default: throw error("invalid keyword '\(word.prefix(64))'")
            }
        }
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth <= maxNesting else { throw error("nesting depth limit exceeded") }
        position += 1
        var members: [(key: String, value: JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            position += 1
            return .object(JSONObject())
        }
        while true {
            skipWhitespace()
            guard let b = current, b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") else {
                throw error("key is not a string in object")
            }
            let key = try parseString()
            guard seen.insert(key).inserted else { throw error("duplicate key") }
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw error("missing : in object pair") }
            position += 1
            skipWhitespace()
            members.append((key, try parseValue(depth: depth)))
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "}"):
                position += 1
                return .object(JSONObject(members))
            default: throw error("expected separator in dict")
            }
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth <= maxNesting else { throw error("nesting depth limit exceeded") }
        position += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            position += 1
            return .array([])
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue(depth: depth))
            skipWhitespace()
            switch current {
            case UInt8(ascii: ","): position += 1
            case UInt8(ascii: "]"):
                position += 1
                return .array(elements)
            default: throw error("expected separator in list")
            }
        }
    }

    private mutating func parseString() throws(JSONParseError) -> String {
        let quote = bytes[position]
        position += 1
        var out: [UInt8] = []
        while true {
            guard let b = current else { throw error("missing end of string") }
            position += 1
            if b == quote { break }
            if b < 0x20 { throw error("control character in string") }
            guard b == UInt8(ascii: "\\") else {
                out.append(b)
                continue
            }
            guard let e = current else { throw error("missing end of string") }
            position += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try parseHex4()
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    // A high surrogate must be followed by an escaped low one.
                    guard current == UInt8(ascii: "\\"), position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u") else {
                        throw error("missing low surrogate")
                    }
                    position += 2
                    let low = try parseHex4()
                    guard low >= 0xDC00 && low < 0xE000 else { throw error("invalid low surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if scalar >= 0xDC00 && scalar < 0xE000 {
                    throw error("stray low surrogate")
                }
                guard scalar != 0 else { throw error("\\u0000 is not supported") }
                guard let unicode = Unicode.Scalar(scalar) else { throw error("invalid escape") }
                out += Array(String(Character(unicode)).utf8)
            default:
                throw error("invalid escape sequence in string")
            }
        }
        guard let string = String(validating: out, as: UTF8.self) else { throw error("invalid UTF-8 sequence in string") }
        return string
    }

    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        guard bytes.count - position >= 4 else { throw error("invalid hex escape sequence in string") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[position]
            let digit: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
            default: throw error("invalid hex escape sequence in string")
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    private mutating func parseNumber() throws(JSONParseError) -> JSONNumber {
        let start = position
        func digits(_ p: inout JSONParser) -> Int {
            let s = p.position
            while let c = p.current, c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") { p.position += 1 }
            return p.position - s
        }
        if current == UInt8(ascii: "-") { position += 1 }
        if current == UInt8(ascii: "0") {
            position += 1
        } else if digits(&self) == 0 {
            throw error("invalid number")
        }
        if current == UInt8(ascii: ".") {
            position += 1
            guard digits(&self) > 0 else { throw error("invalid number") }
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            position += 1
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { position += 1 }
            guard digits(&self) > 0 else { throw error("invalid number") }
        }
        if let c = current, isWordByte(c) { throw error("invalid number") }
        return JSONNumber(literal: String(decoding: bytes[start..<position], as: UTF8.self))
    }

    private func isWordByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "+") || b == UInt8(ascii: "-")
            || b == UInt8(ascii: ".")
    }

    private static func printable(_ b: UInt8) -> String {
        b >= 0x20 && b < 0x7F ? String(UnicodeScalar(b)) : "\\x" + String(b, radix: 16)
    }
}
