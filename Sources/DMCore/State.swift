/// Device state save/load. Every device implements it from the start, so save/restore and
/// migration (Xen's `xen-save-devices-state`, later KVM migration) never have to retrofit it.
///
/// A device writes its fields in a fixed order under a version number; `loadState` accepts its
/// own version and any older one it still knows, and rejects anything else with a clear error.
/// Inputs come from a file a user or another host handed us: every read is bounds-checked and
/// every value is validated by the device before it is used.
public protocol Snapshottable: AnyObject {
    /// Unique within a machine, stable across versions ("uart@3f8", "pci-host").
    var stateID: String { get }
    var stateVersion: UInt32 { get }
    func saveState(to writer: inout StateWriter)
    func loadState(from reader: inout StateReader, version: UInt32) throws(StateError)
}

public enum StateError: Error, Equatable, CustomStringConvertible {
    case truncated(section: String)
    case badMagic
    case unsupportedVersion(section: String, version: UInt32)
    case unknownSection(String)
    case missingSection(String)
    case invalidValue(section: String, field: String)
    case trailingBytes(section: String)

    public var description: String {
        switch self {
        case .truncated(let s): return "device state for \(s) is truncated"
        case .badMagic: return "not a SwiftDM device-state stream"
        case let .unsupportedVersion(s, v): return "device state for \(s) has unsupported version \(v)"
        case .unknownSection(let s): return "device state names an unknown device \(s)"
        case .missingSection(let s): return "device state lacks \(s)"
        case let .invalidValue(s, f): return "device state for \(s) has an invalid \(f)"
        case .trailingBytes(let s): return "device state for \(s) has trailing bytes"
        }
    }
}

public struct StateWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    public mutating func put<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
    public mutating func put(_ value: Bool) { put(UInt8(value ? 1 : 0)) }
    public mutating func put(bytes data: some Collection<UInt8>) {
        put(UInt32(data.count))
        bytes.append(contentsOf: data)
    }
    public mutating func put(_ string: String) { put(bytes: Array(string.utf8)) }
    public mutating func put<T: FixedWidthInteger>(array: [T]) {
        put(UInt32(array.count))
        for v in array { put(v) }
    }
}

public struct StateReader {
    public let section: String
    private let bytes: [UInt8]
    private var position: Int

    public init(bytes: [UInt8], section: String) {
        self.bytes = bytes
        self.section = section
        position = 0
    }

    public var isAtEnd: Bool { position == bytes.count }

    public mutating func get<T: FixedWidthInteger>(_: T.Type = T.self) throws(StateError) -> T {
        let size = MemoryLayout<T>.size
        guard bytes.count - position >= size else { throw .truncated(section: section) }
        var value: T = 0
        for i in 0..<size { value |= T(truncatingIfNeeded: bytes[position + i]) << (8 * i) }
        position += size
        return value
    }

    public mutating func get(_: Bool.Type = Bool.self) throws(StateError) -> Bool {
        switch try get(UInt8.self) {
        case 0: return false
        case 1: return true
        default: throw .invalidValue(section: section, field: "boolean")
        }
    }

    /// A length-prefixed byte string of at most `maxCount` bytes.
    public mutating func getBytes(maxCount: Int) throws(StateError) -> [UInt8] {
        let count = Int(try get(UInt32.self))
        guard count <= maxCount else { throw .invalidValue(section: section, field: "length") }
        guard bytes.count - position >= count else { throw .truncated(section: section) }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }

    /// Exactly `count` bytes, length-prefixed (fixed-size register files).
    public mutating func getBytes(exactly count: Int) throws(StateError) -> [UInt8] {
        let data = try getBytes(maxCount: count)
        guard data.count == count else { throw .invalidValue(section: section, field: "length") }
        return data
    }

    public mutating func getString(maxCount: Int = 4096) throws(StateError) -> String {
        String(decoding: try getBytes(maxCount: maxCount), as: UTF8.self)
    }

    public mutating func getArray<T: FixedWidthInteger>(of: T.Type, exactly count: Int) throws(StateError) -> [T] {
        guard Int(try get(UInt32.self)) == count else { throw .invalidValue(section: section, field: "array length") }
        var out: [T] = []
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(try get(T.self)) }
        return out
    }
}

/// The container for a whole machine's device state: a magic, then one section per device
/// (id, version, length, payload). Loading requires a section for every device and rejects
/// sections for devices the machine does not have: restoring half a machine is worse than
/// refusing.
public enum DeviceStateStream {
    static let magic: [UInt8] = Array("SWIFTDM-DEVSTATE".utf8)
    static let formatVersion: UInt32 = 1

    public static func save(_ devices: [any Snapshottable]) -> [UInt8] {
        var w = StateWriter()
        for b in magic { w.put(b) }
        w.put(formatVersion)
        w.put(UInt32(devices.count))
        for d in devices {
            var section = StateWriter()
            d.saveState(to: &section)
            w.put(d.stateID)
            w.put(d.stateVersion)
            w.put(bytes: section.bytes)
        }
        return w.bytes
    }

    public static func load(_ bytes: [UInt8], into devices: [any Snapshottable]) throws(StateError) {
        var r = StateReader(bytes: bytes, section: "stream header")
        for b in magic { guard try r.get(UInt8.self) == b else { throw .badMagic } }
        guard try r.get(UInt32.self) == formatVersion else { throw .badMagic }
        let count = Int(try r.get(UInt32.self))
        var byID: [String: any Snapshottable] = [:]
        for d in devices { byID[d.stateID] = d }
        var seen = Set<String>()
        // Validate the whole stream before touching any device.
        var sections: [(any Snapshottable, UInt32, [UInt8])] = []
        for _ in 0..<min(count, 4096) {
            let id = try r.getString(maxCount: 256)
            let version = try r.get(UInt32.self)
            let payload = try r.getBytes(maxCount: 64 << 20)
            guard let device = byID[id] else { throw .unknownSection(id) }
            guard version <= device.stateVersion else { throw .unsupportedVersion(section: id, version: version) }
            guard seen.insert(id).inserted else { throw .invalidValue(section: id, field: "duplicate section") }
            sections.append((device, version, payload))
        }
        guard count <= 4096, r.isAtEnd else { throw .trailingBytes(section: "stream") }
        if let missing = devices.first(where: { !seen.contains($0.stateID) }) { throw .missingSection(missing.stateID) }
        for (device, version, payload) in sections {
            var reader = StateReader(bytes: payload, section: device.stateID)
            try device.loadState(from: &reader, version: version)
            guard reader.isAtEnd else { throw .trailingBytes(section: device.stateID) }
        }
    }
}

/// A device that returns to its power-on state on a system reset (`system_reset`, a triple
/// fault, the guest writing the reset register).
public protocol Resettable: AnyObject {
    func reset()
}
