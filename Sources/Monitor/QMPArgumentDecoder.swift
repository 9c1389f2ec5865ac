/// Decodes a command's `arguments` object into its `Decodable` argument type without
/// Foundation (the standard library's Codable protocols are enough), reporting failures in
/// QEMU's words so clients that match on them keep working:
/// "Parameter 'filename' is missing", "Invalid parameter type for 'live', expected: boolean".
public enum QMPArgumentError: Error, Equatable, CustomStringConvertible {
    case missing(String)
    case invalidType(String, expected: String)
    case unexpected(String)
    case outOfRange(String, expected: String)
    case invalidValue(String, value: String)

    public var description: String {
        switch self {
        case .missing(let name): return "Parameter '\(name)' is missing"
        case let .invalidType(name, expected): return "Invalid parameter type for '\(name)', expected: \(expected)"
        case .unexpected(let name): return "Parameter '\(name)' is unexpected"
        case let .outOfRange(name, expected): return "Parameter '\(name)' expects \(expected)"
        case let .invalidValue(name, value): return "Parameter '\(name)' does not accept value '\(value)'"
        }
    }
}

/// A coding key for array elements and decoded paths.
struct IndexKey: CodingKey {
    let intValue: Int?
    let stringValue: String
    init(_ index: Int) {
        intValue = index
        stringValue = String(index)
    }
    init?(stringValue: String) { return nil }
    init?(intValue: Int) { self.init(intValue) }
}

/// QEMU's `full_name`: `props.core-id`, `enable[0]`.
func parameterName(_ path: [any CodingKey]) -> String {
    var name = ""
    for key in path {
        if let index = key.intValue, key is IndexKey {
            name += "[\(index)]"
        } else {
            name += name.isEmpty ? key.stringValue : "." + key.stringValue
        }
    }
    return name.isEmpty ? "null" : name
}

public struct QMPArgumentDecoder: Decoder {
    public let value: JSONValue
    public let codingPath: [any CodingKey]
    public var userInfo: [CodingUserInfoKey: Any] { [:] }

    public init(value: JSONValue, codingPath: [any CodingKey] = []) {
        self.value = value
        self.codingPath = codingPath
    }

    /// Decodes `T` from `value`, turning every failure into a `QMPArgumentError`.
    public static func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws(QMPArgumentError) -> T {
        do {
            return try T(from: QMPArgumentDecoder(value: value))
        } catch let error as QMPArgumentError {
            throw error
        } catch {
            throw .invalidType("null", expected: "\(T.self)")
        }
    }

    public func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let object) = value else {
            throw QMPArgumentError.invalidType(parameterName(codingPath), expected: "object")
        }
        return KeyedDecodingContainer(KeyedContainer<Key>(object: object, codingPath: codingPath))
    }

    public func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = value else {
            throw QMPArgumentError.invalidType(parameterName(codingPath), expected: "array")
        }
        return UnkeyedContainer(elements: elements, codingPath: codingPath)
    }

    public func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValue(value: value, codingPath: codingPath)
    }
}

// MARK: Scalars

/// The switches below pick a branch by `T`; this turns the proven type back into `T` without `!`.
private func cast<T>(_ value: Any, _ name: String) throws -> T {
    guard let typed = value as? T else { throw QMPArgumentError.invalidType(name, expected: "\(T.self)") }
    return typed
}

private func decodeScalar<T>(_ value: JSONValue, _ path: [any CodingKey], as type: T.Type) throws -> T {
    let name = parameterName(path)
    switch type {
    case is Bool.Type:
        guard case .bool(let b) = value else { throw QMPArgumentError.invalidType(name, expected: "boolean") }
        return try cast(b, name)
    case is String.Type:
        guard case .string(let s) = value else { throw QMPArgumentError.invalidType(name, expected: "string") }
        return try cast(s, name)
    case is Double.Type, is Float.Type:
        guard case .number(let n) = value, let d = n.double else { throw QMPArgumentError.invalidType(name, expected: "number") }
        return try cast(type is Float.Type ? Float(d) as Any : d as Any, name)
    default:
        throw QMPArgumentError.invalidType(name, expected: "\(type)")
    }
}

private func decodeInteger<T: FixedWidthInteger>(_ value: JSONValue, _ path: [any CodingKey], as type: T.Type) throws -> T {
    let name = parameterName(path)
    guard case .number(let n) = value, n.isInteger else { throw QMPArgumentError.invalidType(name, expected: "integer") }
    if let v = n.int64, let result = T(exactly: v) { return result }
    if let v = n.uint64, let result = T(exactly: v) { return result }
    throw QMPArgumentError.outOfRange(name, expected: "\(T.isSigned ? "int" : "uint")\(T.bitWidth)")
}

private func decodeAny<T: Decodable>(_ value: JSONValue, _ path: [any CodingKey], as type: T.Type) throws -> T {
    switch type {
    case is Bool.Type, is String.Type, is Double.Type, is Float.Type: return try decodeScalar(value, path, as: type)
    case is Int.Type: return try cast(decodeInteger(value, path, as: Int.self), parameterName(path))
    case is Int64.Type: return try cast(decodeInteger(value, path, as: Int64.self), parameterName(path))
    case is UInt64.Type: return try cast(decodeInteger(value, path, as: UInt64.self), parameterName(path))
    case is Int32.Type: return try cast(decodeInteger(value, path, as: Int32.self), parameterName(path))
    case is UInt32.Type: return try cast(decodeInteger(value, path, as: UInt32.self), parameterName(path))
    case is JSONValue.Type: return try cast(value, parameterName(path))
    default: return try T(from: QMPArgumentDecoder(value: value, codingPath: path))
    }
}

// MARK: Containers

private struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: JSONObject
    let codingPath: [any CodingKey]

    var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }
    func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

    private func value(_ key: Key) throws -> JSONValue {
        guard let value = object[key.stringValue] else {
            throw QMPArgumentError.missing(parameterName(codingPath + [key]))
        }
        return value
    }

    func decodeNil(forKey key: Key) throws -> Bool { object[key.stringValue] == .null }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decodeScalar(value(key), codingPath + [key], as: type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try decodeScalar(value(key), codingPath + [key], as: type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decodeScalar(value(key), codingPath + [key], as: type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decodeScalar(value(key), codingPath + [key], as: type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decodeInteger(value(key), codingPath + [key], as: type) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decodeAny(value(key), codingPath + [key], as: type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try QMPArgumentDecoder(value: value(key), codingPath: codingPath + [key]).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try QMPArgumentDecoder(value: value(key), codingPath: codingPath + [key]).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { QMPArgumentDecoder(value: .object(object), codingPath: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        QMPArgumentDecoder(value: object[key.stringValue] ?? .null, codingPath: codingPath + [key])
    }
}

private struct UnkeyedContainer: UnkeyedDecodingContainer {
    let elements: [JSONValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0

    init(elements: [JSONValue], codingPath: [any CodingKey]) {
        self.elements = elements
        self.codingPath = codingPath
    }

    var count: Int? { elements.count }
    var isAtEnd: Bool { currentIndex >= elements.count }

    private mutating func next() throws -> (JSONValue, [any CodingKey]) {
        let path = codingPath + [IndexKey(currentIndex)]
        guard currentIndex < elements.count else { throw QMPArgumentError.missing(parameterName(path)) }
        defer { currentIndex += 1 }
        return (elements[currentIndex], path)
    }

    mutating func decodeNil() throws -> Bool {
        guard currentIndex < elements.count, elements[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode(_ type: Bool.Type) throws -> Bool { let (v, p) = try next(); return try decodeScalar(v, p, as: type) }
    mutating func decode(_ type: String.Type) throws -> String { let (v, p) = try next(); return try decodeScalar(v, p, as: type) }
    mutating func decode(_ type: Double.Type) throws -> Double { let (v, p) = try next(); return try decodeScalar(v, p, as: type) }
    mutating func decode(_ type: Float.Type) throws -> Float { let (v, p) = try next(); return try decodeScalar(v, p, as: type) }
    mutating func decode(_ type: Int.Type) throws -> Int { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { let (v, p) = try next(); return try decodeInteger(v, p, as: type) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { let (v, p) = try next(); return try decodeAny(v, p, as: type) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (v, p) = try next()
        return try QMPArgumentDecoder(value: v, codingPath: p).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (v, p) = try next()
        return try QMPArgumentDecoder(value: v, codingPath: p).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        let (v, p) = try next()
        return QMPArgumentDecoder(value: v, codingPath: p)
    }
}

private struct SingleValue: SingleValueDecodingContainer {
    let value: JSONValue
    let codingPath: [any CodingKey]

    func decodeNil() -> Bool { value == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try decodeScalar(value, codingPath, as: type) }
    func decode(_ type: String.Type) throws -> String { try decodeScalar(value, codingPath, as: type) }
    func decode(_ type: Double.Type) throws -> Double { try decodeScalar(value, codingPath, as: type) }
    func decode(_ type: Float.Type) throws -> Float { try decodeScalar(value, codingPath, as: type) }
    func decode(_ type: Int.Type) throws -> Int { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: UInt.Type) throws -> UInt { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try decodeInteger(value, codingPath, as: type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try decodeInteger(value, codingPath, as: type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeAny(value, codingPath, as: type) }
}

extension JSONValue: Decodable {
    /// Lets an argument type keep a member as raw JSON (`device_add`'s free-form properties).
    public init(from decoder: any Decoder) throws {
        guard let ours = decoder as? QMPArgumentDecoder else {
            throw QMPArgumentError.invalidType(parameterName(decoder.codingPath), expected: "JSON")
        }
        self = ours.value
    }
}
