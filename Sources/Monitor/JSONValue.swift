/// A JSON value as QMP carries it. Objects keep their members in order (replies read like
/// QEMU's), and numbers keep the text they were written with, so an `id` is echoed exactly as
/// the client sent it whatever its size or precision.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public static func int<T: BinaryInteger>(_ value: T) -> JSONValue { .number(JSONNumber(value)) }

    /// The JSON type's name as QEMU's input visitor says it in errors ("expected: string").
    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var int64Value: Int64? { if case .number(let n) = self { return n.int64 } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o } else { return nil } }
}

/// A JSON number, stored as its (validated) literal text.
public struct JSONNumber: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let text: String

    /// `text` must already be a valid JSON number literal (the parser guarantees it).
    init(literal text: String) { self.text = text }
    public init<T: BinaryInteger>(_ value: T) { text = String(value) }
    public init(_ value: Double) {
        // JSON has no NaN or infinities; QEMU never produces them either.
        text = value.isFinite ? String(value) : "0"
    }

    public var int64: Int64? { Int64(text) }
    public var uint64: UInt64? { UInt64(text) }
    public var double: Double? { Double(text) }
    public var isInteger: Bool { !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) }
    public var description: String { text }
}

/// A JSON object: members in order, keys unique (the parser rejects duplicates, as QEMU's does).
public struct JSONObject: Equatable, Sendable {
    public private(set) var members: [(key: String, value: JSONValue)]

    public init(_ members: [(key: String, value: JSONValue)] = []) { self.members = members }

    public subscript(key: String) -> JSONValue? {
        get { members.first { $0.key == key }?.value }
        set {
            if let index = members.firstIndex(where: { $0.key == key }) {
                if let newValue { members[index].value = newValue } else { members.remove(at: index) }
            } else if let newValue {
                members.append((key, newValue))
            }
        }
    }

    public var keys: [String] { members.map(\.key) }
    public var isEmpty: Bool { members.isEmpty }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count
            && zip(a.members, b.members).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

// MARK: Literals (for building replies)

extension JSONValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
                     ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral {
    public init(nilLiteral: ()) { self = .null }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements.map { (key: $0.0, value: $0.1) }))
    }
}

// MARK: Serialisation

extension JSONValue {
    /// QEMU's compact form (`{"return": {}, "id": 1}`): ", " and ": " separators, ASCII only,
    /// everything else as \uXXXX escapes, so any client's decoder reads it.
    public var serialized: String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out += "null".utf8
        case .bool(let b): out += (b ? "true" : "false").utf8
        case .number(let n): out += n.text.utf8
        case .string(let s): Self.writeString(s, to: &out)
        case .array(let elements):
            out.append(UInt8(ascii: "["))
            for (i, element) in elements.enumerated() {
                if i > 0 { out += ", ".utf8 }
                element.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            out.append(UInt8(ascii: "{"))
            for (i, member) in object.members.enumerated() {
                if i > 0 { out += ", ".utf8 }
                Self.writeString(member.key, to: &out)
                out += ": ".utf8
                member.value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\"".utf8
            case "\\": out += "\\\\".utf8
            case "\u{08}": out += "\\b".utf8
            case "\u{0C}": out += "\\f".utf8
            case "\n": out += "\\n".utf8
            case "\r": out += "\\r".utf8
            case "\t": out += "\\t".utf8
            default:
                let v = scalar.value
                if v >= 0x20 && v < 0x7F {
                    out.append(UInt8(v))
                } else if v > 0xFFFF {
                    let u = v - 0x10000
                    appendEscape(0xD800 + (u >> 10), to: &out)
                    appendEscape(0xDC00 + (u & 0x3FF), to: &out)
                } else {
                    appendEscape(v, to: &out)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    private static func appendEscape(_ unit: UInt32, to out: inout [UInt8]) {
        let digits = Array("0123456789ABCDEF".utf8)
        out += "\\u".utf8
        for shift in stride(from: 12, through: 0, by: -4) { out.append(digits[Int((unit >> UInt32(shift)) & 0xF)]) }
    }
}
