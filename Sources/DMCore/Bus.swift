/// A device's register window as seen by one bus: the bus hands it the offset into the window
/// it registered, the access width in bytes (1, 2, 4 or 8) and, for writes, the value in the low
/// bytes. `region` tells the device which of its windows was hit when it registered several.
///
/// Calls arrive with the machine's `DeviceLock` held.
public protocol BusDevice: AnyObject {
    func read(region: Int, offset: UInt64, size: Int) -> UInt64
    func write(region: Int, offset: UInt64, size: Int, value: UInt64)
}

public enum BusError: Error, Equatable, CustomStringConvertible {
    case overlap(name: String, base: UInt64, length: UInt64, existing: String)
    case invalidRange(name: String, base: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case let .overlap(name, base, length, existing):
            return "\(name) at \(hex(base))+\(hex(length)) overlaps \(existing)"
        case let .invalidRange(name, base, length):
            return "\(name): invalid range \(hex(base))+\(hex(length))"
        }
    }
}

/// An address space of register windows: the port space or the MMIO space.
///
/// Registration rejects overlaps so two devices can never silently shadow each other. Lookup
/// is a binary search over a sorted array: no allocation per access. All state is guarded by
/// the machine's `DeviceLock` (see there), so the bus has no lock of its own.
public final class Bus: @unchecked Sendable {
    public struct Mapping {
        public let base: UInt64
        public let length: UInt64
        public let region: Int
        public let name: String
        public let device: any BusDevice
        public var last: UInt64 { base &+ (length - 1) }
    }

    public let name: String
    /// What a read of an address no device claims returns (ports: all ones, as on a PC).
    public let unassignedValue: UInt64
    public private(set) var mappings: [Mapping] = [] {
        didSet {
            starts = mappings.map(\.base)
            lasts = mappings.map(\.last)
        }
    }
    /// The windows' bounds on their own, so the per-access search touches plain integers and
    /// no reference counts.
    private var starts: [UInt64] = []
    private var lasts: [UInt64] = []
    /// Called for accesses no device claims; the machine logs them as guest errors.
    public var onUnassigned: ((_ address: UInt64, _ size: Int, _ write: Bool, _ value: UInt64) -> Void)?
    /// Called after a window appears (`added`) or goes away, e.g. when the guest moves a PCI
    /// BAR. Under Xen the machine forwards it to the ioreq server, which must claim exactly the
    /// ranges the devices decode (QEMU's memory and I/O listeners).
    public var onMappingChange: ((_ mapping: Mapping, _ added: Bool) -> Void)?

    public init(name: String, unassignedValue: UInt64) {
        self.name = name
        self.unassignedValue = unassignedValue
    }

    public func register(_ device: any BusDevice, base: UInt64, length: UInt64, region: Int = 0,
                         name: String) throws(BusError) {
        guard length > 0, base <= UInt64.max - (length - 1) else {
            throw .invalidRange(name: name, base: base, length: length)
        }
        let new = Mapping(base: base, length: length, region: region, name: name, device: device)
        let index = insertionIndex(for: base)
        if index > 0, mappings[index - 1].last >= base {
            throw .overlap(name: name, base: base, length: length, existing: mappings[index - 1].name)
        }
        if index < mappings.count, mappings[index].base <= new.last {
            throw .overlap(name: name, base: base, length: length, existing: mappings[index].name)
        }
        mappings.insert(new, at: index)
        onMappingChange?(new, true)
    }

    /// Removes the window `device` registered as `region`; a no-op if it has none.
    public func unregister(_ device: any BusDevice, region: Int = 0) {
        while let index = mappings.firstIndex(where: { $0.device === device && $0.region == region }) {
            let removed = mappings.remove(at: index)
            onMappingChange?(removed, false)
        }
    }

    public func mapping(containing address: UInt64) -> Mapping? {
        index(containing: address).map { mappings[$0] }
    }

    @inline(__always)
    private func index(containing address: UInt64) -> Int? {
        var low = 0, high = starts.count
        while low < high {
            let mid = (low + high) / 2
            if address < starts[mid] { high = mid } else if address > lasts[mid] { low = mid + 1 } else { return mid }
        }
        return nil
    }

    /// The window that holds all of [address, address + size), if one does.
    @inline(__always)
    private func index(holding address: UInt64, size: Int) -> Int? {
        guard let i = index(containing: address), UInt64(size) - 1 <= lasts[i] - address else { return nil }
        return i
    }

    /// Reads `size` bytes at `address`. An access that straddles a window's edge is split into
    /// byte accesses, so no device ever sees an offset outside the window it registered.
    public func read(_ address: UInt64, size: Int) -> UInt64 {
        if let i = index(holding: address, size: size) {
            return mappings[i].device.read(region: mappings[i].region, offset: address - starts[i], size: size)
        }
        if size == 1 || !intersectsAny(address, size) {
            onUnassigned?(address, size, false, 0)
            return unassignedValue & mask(size)
        }
        var value: UInt64 = 0
        for i in 0..<size {
            value |= (read(address &+ UInt64(i), size: 1) & 0xFF) << (8 * UInt64(i))
        }
        return value
    }

    public func write(_ address: UInt64, size: Int, value: UInt64) {
        if let i = index(holding: address, size: size) {
            mappings[i].device.write(region: mappings[i].region, offset: address - starts[i], size: size,
                                     value: value & mask(size))
            return
        }
        if size == 1 || !intersectsAny(address, size) {
            onUnassigned?(address, size, true, value)
            return
        }
        for i in 0..<size {
            write(address &+ UInt64(i), size: 1, value: (value >> (8 * UInt64(i))) & 0xFF)
        }
    }

    private func intersectsAny(_ address: UInt64, _ size: Int) -> Bool {
        for i in 0..<size where index(containing: address &+ UInt64(i)) != nil { return true }
        return false
    }

    private func insertionIndex(for base: UInt64) -> Int {
        var low = 0, high = mappings.count
        while low < high {
            let mid = (low + high) / 2
            if mappings[mid].base < base { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

/// The value mask for an access of `size` bytes (1...8).
@inline(__always)
public func mask(_ size: Int) -> UInt64 {
    size >= 8 ? UInt64.max : (UInt64(1) << (8 * UInt64(size))) - 1
}

public func hex<T: BinaryInteger>(_ value: T) -> String {
    "0x" + String(value, radix: 16)
}
