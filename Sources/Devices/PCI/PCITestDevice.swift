import DMCore

/// QEMU's `pci-testdev` (1b36:0005), so the same test guests exercise MMIO and PCI I/O BAR
/// dispatch under SwiftDM and under QEMU. BAR0 is 4 KiB of memory, BAR1 256 bytes of I/O.
/// Each BAR starts with the header of the selected test — test index, access width, the
/// offset to write, the data to write, a hit counter and a name — and a byte write of the
/// data at the offset bumps the counter. Writing n (0-2) at offset 0 of a BAR selects that
/// BAR's test n; any other value deselects. One test is selected at a time, across both BARs.
public final class PCITestDevice: PCIDevice, Snapshottable, Resettable, @unchecked Sendable {
    static let tests: [(name: String, data: UInt8)] = [
        ("mmio-no-eventfd", 0xFA), ("mmio-wildcard-eventfd", 0xCE), ("mmio-datamatch-eventfd", 0xFA),
        ("portio-no-eventfd", 0xFA), ("portio-wildcard-eventfd", 0xCE), ("portio-datamatch-eventfd", 0xFA),
    ]
    static let memorySize: UInt64 = 4096
    static let ioSize: UInt64 = 256

    public let pci: PCIFunction
    private var current: Int?
    private var counts = [UInt32](repeating: 0, count: 6)

    public init() {
        let config = PCIConfigSpace(vendor: 0x1B36, device: 0x0005, revision: 0, classCode: 0x00_FF00)
        pci = PCIFunction(name: "pci-testdev", config: config,
                          bars: [PCIBARDefinition(kind: .memory32(prefetchable: false), size: Self.memorySize),
                                 PCIBARDefinition(kind: .io, size: Self.ioSize)])
    }

    /// Where test `index`'s trigger byte sits within its BAR: the BAR's second half, plus the index.
    static func triggerOffset(_ index: Int) -> UInt64 {
        (index < 3 ? memorySize : ioSize) / 2 + UInt64(index)
    }

    private func headerByte(_ index: Int, _ offset: UInt64) -> UInt8 {
        let test = Self.tests[index]
        switch offset {
        case 0: return UInt8(index)
        case 1: return 1
        case 4..<8: return UInt8(truncatingIfNeeded: Self.triggerOffset(index) >> (8 * (offset - 4)))
        case 8: return test.data
        case 12..<16: return UInt8(truncatingIfNeeded: counts[index] >> (8 * UInt32(offset - 12)))
        case 16...:
            let at = Int(offset - 16)
            let name = test.name.utf8
            return at < name.count ? name[name.index(name.startIndex, offsetBy: at)] : 0
        default: return 0
        }
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        guard region < 2, let index = current else { return 0 }
        let headerSize = UInt64(16 + Self.tests[index].name.utf8.count + 1)
        guard offset + UInt64(size) < headerSize else { return 0 }
        var value: UInt64 = 0
        for i in 0..<UInt64(size) { value |= UInt64(headerByte(index, offset + i)) << (8 * i) }
        return value
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard region < 2 else { return }
        if offset == 0 {
            current = value < 3 ? region * 3 + Int(value) : nil
            return
        }
        guard let index = current, index / 3 == region, offset == Self.triggerOffset(index),
              size == 1, UInt8(truncatingIfNeeded: value) == Self.tests[index].data else { return }
        counts[index] &+= 1
    }

    public var stateID: String { "pci-testdev" }
    public var stateVersion: UInt32 { 1 }
    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(Int8(current ?? -1))
        w.put(array: counts)
    }
    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        let selected = try r.get(Int8.self)
        guard (-1..<6).contains(selected) else { throw .invalidValue(section: stateID, field: "current test") }
        current = selected < 0 ? nil : Int(selected)
        counts = try r.getArray(of: UInt32.self, exactly: 6)
    }
    public func reset() {
        pci.reset()
        current = nil
        counts = [UInt32](repeating: 0, count: 6)
    }
}
