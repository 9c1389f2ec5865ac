import DMCore

public enum PCIError: Error, Equatable, CustomStringConvertible {
    case slotInUse(slot: Int, function: Int, name: String)
    case invalidAddress(slot: Int, function: Int)
    case noFreeSlot

    public var description: String {
        switch self {
        case let .slotInUse(s, f, n): return "PCI address \(hex(s)).\(f) is already used by \(n)"
        case let .invalidAddress(s, f): return "invalid PCI address \(s).\(f)"
        case .noFreeSlot: return "no free PCI slot"
        }
    }
}

/// PCI bus 0: functions by device/function number, configuration dispatch, and INTx wiring.
public final class PCIBus: @unchecked Sendable {
    public let portBus: Bus
    public let mmioBus: Bus
    public weak var intxRouter: (any PCIINTxRouter)?
    public private(set) var functions = [(any PCIDevice)?](repeating: nil, count: 256)

    public init(portBus: Bus, mmioBus: Bus) {
        self.portBus = portBus
        self.mmioBus = mmioBus
    }

    public func plug(_ device: any PCIDevice, slot: Int, function: Int = 0) throws(PCIError) {
        guard (0..<32).contains(slot), (0..<8).contains(function) else {
            throw .invalidAddress(slot: slot, function: function)
        }
        let devfn = slot << 3 | function
        if let existing = functions[devfn] { throw .slotInUse(slot: slot, function: function, name: existing.pci.name) }
        functions[devfn] = device
        let pci = device.pci
        pci.owner = device
        pci.portBus = portBus
        pci.mmioBus = mmioBus
        let pin = Int(pci.config.interruptPin)
        if (1...4).contains(pin) {
            pci.intx = { [weak self] level in self?.intxRouter?.setINTx(slot: slot, pin: pin - 1, level: level) }
        }
        pci.updateMappings()
    }

    /// The first slot with no function 0, from `start`.
    public func freeSlot(from start: Int = 2) throws(PCIError) -> Int {
        guard let slot = (start..<32).first(where: { functions[$0 << 3] == nil }) else { throw .noFreeSlot }
        return slot
    }

    /// Where `device` is plugged (slot << 3 | function), or nil.
    public func devfn(of device: any PCIDevice) -> Int? {
        functions.firstIndex { $0 === device }
    }

    public func unplug(slot: Int, function: Int = 0) {
        let devfn = slot << 3 | function
        guard let device = functions[devfn] else { return }
        device.pci.unmapAll()
        device.pci.setINTx(false)
        device.pci.owner = nil
        functions[devfn] = nil
    }

    /// A configuration read; absent functions read as all ones. Unaligned accesses are
    /// allowed (as QEMU allows them); one that runs past the end is cut short there.
    public func configRead(devfn: Int, offset: Int, size: Int) -> UInt32 {
        guard let device = functions[devfn & 0xFF], let length = Self.length(offset, size) else {
            return UInt32(truncatingIfNeeded: mask(size))
        }
        return device.configRead(offset: offset, size: length)
    }

    public func configWrite(devfn: Int, offset: Int, size: Int, value: UInt32) {
        guard let device = functions[devfn & 0xFF], let length = Self.length(offset, size) else { return }
        device.configWrite(offset: offset, size: length, value: value & UInt32(truncatingIfNeeded: mask(length)))
    }

    private static func length(_ offset: Int, _ size: Int) -> Int? {
        guard (1...4).contains(size), (0..<PCIConfigSpace.size).contains(offset) else { return nil }
        return min(size, PCIConfigSpace.size - offset)
    }
}

/// Configuration mechanism #1: the address register at 0xCF8 (dword accesses only) and the
/// data window at 0xCFC-0xCFF. Registered as one 8-port window; a byte access at 0xCF9 is the
/// PIIX3 reset control register, which shares the address range on real chipsets.
///
/// As in QEMU, the latch keeps all 32 bits written, and the register offset is the latch's
/// low byte plus the data port's offset, so a misaligned latch or port gives a misaligned
/// config access rather than being rejected.
public final class PCIHostBridgeConfigPorts: BusDevice, @unchecked Sendable {
    public let bus: PCIBus
    public private(set) var address: UInt32 = 0
    /// The byte register at 0xCF9 (reset control), if the chipset has one.
    public var resetControl: (any BusDevice)?

    public init(bus: PCIBus) {
        self.bus = bus
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch (offset, size) {
        case (0, 4): return UInt64(address)
        case (1, 1): return resetControl?.read(region: 0, offset: 0, size: 1) ?? 0xFF
        case (4...7, _):
            guard let (devfn, reg) = target(dataOffset: Int(offset) - 4, size: size) else { return mask(size) }
            return UInt64(bus.configRead(devfn: devfn, offset: reg, size: size))
        default: return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch (offset, size) {
        case (0, 4): address = UInt32(truncatingIfNeeded: value)
        case (1, 1): resetControl?.write(region: 0, offset: 0, size: 1, value: value)
        case (4...7, _):
            guard let (devfn, reg) = target(dataOffset: Int(offset) - 4, size: size) else { return }
            bus.configWrite(devfn: devfn, offset: reg, size: size, value: UInt32(truncatingIfNeeded: value))
        default: break
        }
    }

    /// Decodes the latched address; only bus 0 exists. Bits 30:24 are reserved and ignored.
    private func target(dataOffset: Int, size: Int) -> (Int, Int)? {
        guard address & 0x8000_0000 != 0, (address >> 16) & 0xFF == 0 else { return nil }
        return (Int((address >> 8) & 0xFF), Int(address & 0xFF) + dataOffset)
    }
}

extension PCIHostBridgeConfigPorts: Snapshottable, Resettable {
    public var stateID: String { "pci-config-ports" }
    public var stateVersion: UInt32 { 1 }
    public func saveState(to w: inout StateWriter) { w.put(address) }
    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        address = try r.get(UInt32.self)
    }
    public func reset() { address = 0 }
}
