import DMCore

/// An MSI-X table and pending-bit array (PCI 3.0 §6.8.2) for a function with `count` vectors,
/// plus the capability's two control bits. The device maps the table and PBA into a BAR and
/// forwards accesses; it calls `signal` for each interrupt. A masked vector (its own mask bit or
/// the function mask) records a pending bit instead, delivered when the guest unmasks it.
public struct MSIXTable {
    public static let entrySize = 16
    public let count: Int
    /// Table bytes as the guest wrote them: address (8), data (4), vector control (4).
    private var entries: [UInt8]
    private var pending: UInt64 = 0
    public private(set) var enabled = false
    public private(set) var functionMasked = false
    private let vectors: [any MSIVector]

    public init(count: Int, notifications: any NotificationProvider) {
        precondition((1...64).contains(count), "MSI-X vectors: 1 to 64 here")
        self.count = count
        entries = [UInt8](repeating: 0, count: count * Self.entrySize)
        // Every vector starts masked (the spec's reset value of vector control).
        for i in 0..<count { entries[i * Self.entrySize + 12] = 1 }
        vectors = (0..<count).map { _ in notifications.makeMSIVector() }
    }

    public var tableSize: Int { count * Self.entrySize }

    // MARK: capability

    /// Message control's writable bits: enable (15) and function mask (14).
    public mutating func setControl(enable: Bool, functionMask: Bool) {
        enabled = enable
        functionMasked = functionMask
        deliverPending()
    }

    public var control: UInt16 {
        UInt16(count - 1) | (functionMasked ? 0x4000 : 0) | (enabled ? 0x8000 : 0)
    }

    // MARK: BAR accesses

    public func readTable(offset: Int, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size where offset + i < entries.count {
            value |= UInt64(entries[offset + i]) << (8 * UInt64(i))
        }
        return value
    }

    public mutating func writeTable(offset: Int, size: Int, value: UInt64) {
        for i in 0..<size where offset + i < entries.count {
            var byte = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
            // Only the mask bit of vector control is defined; the rest reads as zero.
            if (offset + i) % Self.entrySize >= 12 { byte = (offset + i) % Self.entrySize == 12 ? byte & 1 : 0 }
            entries[offset + i] = byte
        }
        deliverPending()
    }

    /// The pending-bit array is read-only to the guest.
    public func readPBA(offset: Int, size: Int) -> UInt64 {
        guard offset < 8 else { return 0 }
        return (pending >> (8 * UInt64(offset))) & mask(size)
    }

    // MARK: signalling

    public func isMasked(_ vector: Int) -> Bool {
        functionMasked || entries[vector * Self.entrySize + 12] & 1 != 0
    }

    public func message(_ vector: Int) -> MSIMessage {
        let base = vector * Self.entrySize
        var address: UInt64 = 0
        for i in 0..<8 { address |= UInt64(entries[base + i]) << (8 * UInt64(i)) }
        var data: UInt32 = 0
        for i in 0..<4 { data |= UInt32(entries[base + 8 + i]) << (8 * UInt32(i)) }
        return MSIMessage(address: address, data: data)
    }

    /// Raises `vector` (ignored when out of range: the guest chose the number).
    public mutating func signal(_ vector: Int) {
        guard enabled, vector >= 0, vector < count else { return }
        if isMasked(vector) {
            pending |= 1 << UInt64(vector)
        } else {
            vectors[vector].fire(message(vector))
        }
    }

    private mutating func deliverPending() {
        guard enabled, pending != 0 else { return }
        for vector in 0..<count where pending & (1 << UInt64(vector)) != 0 && !isMasked(vector) {
            pending &= ~(1 << UInt64(vector))
            vectors[vector].fire(message(vector))
        }
    }

    public mutating func reset() {
        for i in 0..<entries.count { entries[i] = i % Self.entrySize == 12 ? 1 : 0 }
        pending = 0
        enabled = false
        functionMasked = false
    }

    public func saveState(to w: inout StateWriter) {
        w.put(bytes: entries)
        w.put(pending)
        w.put(enabled)
        w.put(functionMasked)
    }

    public mutating func loadState(from r: inout StateReader) throws(StateError) {
        let table = try r.getBytes(exactly: entries.count)
        // Vector control holds only the mask bit, as guest writes leave it.
        for i in 0..<count where table[i * Self.entrySize + 12] > 1 || table[i * Self.entrySize + 13..<(i + 1) * Self.entrySize].contains(where: { $0 != 0 }) {
            throw .invalidValue(section: r.section, field: "MSI-X vector control \(i)")
        }
        let bits = try r.get(UInt64.self)
        guard count == 64 || bits >> UInt64(count) == 0 else { throw .invalidValue(section: r.section, field: "MSI-X PBA") }
        entries = table
        pending = bits
        enabled = try r.get(Bool.self)
        functionMasked = try r.get(Bool.self)
    }
}
