import DMCore

/// What a PCI function device is: a register window device (its BARs arrive as bus regions
/// 0-5, its expansion ROM as region `PCIFunction.romRegion`) with a configuration space.
/// Config accesses default to the standard behaviour; devices with registers of their own
/// override `configWrite` and call `pci.write` for the standard part.
public protocol PCIDevice: BusDevice {
    var pci: PCIFunction { get }
    func configRead(offset: Int, size: Int) -> UInt32
    func configWrite(offset: Int, size: Int, value: UInt32)
}

extension PCIDevice {
    public func configRead(offset: Int, size: Int) -> UInt32 { pci.config.read(offset: offset, size: size) }
    public func configWrite(offset: Int, size: Int, value: UInt32) { pci.write(offset: offset, size: size, value: value) }
}

/// Routes a function's INTx pin to an interrupt: PIIX3's PIRQ links on a PC, dm-ops on Xen.
public protocol PCIINTxRouter: AnyObject {
    func setINTx(slot: Int, pin: Int, level: Bool)
}

/// One function's configuration space, BARs and expansion ROM, and the bookkeeping that maps
/// BARs onto the port and MMIO buses whenever the guest moves them or toggles decoding.
public final class PCIFunction: @unchecked Sendable {
    public static let romRegion = 6
    public var config: PCIConfigSpace
    private let powerOnConfig: PCIConfigSpace
    public let bars: [PCIBARDefinition?]
    public let rom: [UInt8]
    public let name: String
    public private(set) var mapped = [UInt64?](repeating: nil, count: 7)

    weak var owner: (any PCIDevice)?
    var portBus: Bus?
    var mmioBus: Bus?
    var intx: ((Bool) -> Void)?
    private var intxLevel = false
    /// Told after a BAR (index 0-5, or `romRegion`) starts decoding at an address or stops
    /// (nil): a device whose BAR is RAM the guest maps directly (VRAM) moves that mapping.
    public var onBARMoved: ((_ index: Int, _ address: UInt64?) -> Void)?

    /// `rom`, if any, is padded to a power of two of at least 2 KiB.
    public init(name: String, config: PCIConfigSpace, bars: [PCIBARDefinition?] = [], rom: [UInt8] = []) {
        precondition(bars.count <= 6)
        let all = bars + [PCIBARDefinition?](repeating: nil, count: 6 - bars.count)
        for (i, bar) in all.enumerated() {
            if case .memory64? = bar?.kind { precondition(i < 5 && all[i + 1] == nil, "64-bit BAR needs two slots") }
        }
        var padded = rom
        if !rom.isEmpty {
            var size = 2048
            while size < rom.count { size *= 2 }
            padded += [UInt8](repeating: 0, count: size - rom.count)
        }
        var initial = config
        Self.initialiseBARs(&initial, bars: all, romSize: padded.count)
        self.name = name
        self.bars = all
        self.rom = padded
        self.config = initial
        powerOnConfig = initial
    }

    private static func initialiseBARs(_ config: inout PCIConfigSpace, bars: [PCIBARDefinition?], romSize: Int) {
        func setMask32(_ offset: Int, _ mask: UInt32) {
            for i in 0..<4 { config.writeMask[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(i))) }
        }
        for (i, bar) in bars.enumerated() {
            guard let bar else { continue }
            let offset = 0x10 + 4 * i
            let sizeMask = ~(bar.size - 1)
            switch bar.kind {
            case .io:
                config.set32(offset, 0x1)
                setMask32(offset, UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFFC)
            case .memory32(let prefetchable):
                config.set32(offset, prefetchable ? 0x8 : 0)
                setMask32(offset, UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFF0)
            case .memory64(let prefetchable):
                config.set32(offset, 0x4 | (prefetchable ? 0x8 : 0))
                setMask32(offset, UInt32(truncatingIfNeeded: sizeMask) & 0xFFFF_FFF0)
                setMask32(offset + 4, UInt32(truncatingIfNeeded: sizeMask >> 32))
            }
        }
        if romSize > 0 {
            setMask32(0x30, (UInt32(truncatingIfNeeded: ~(UInt64(romSize) - 1)) & 0xFFFF_F800) | 1)
        }
    }

    /// A guest config write through the masks; remaps BARs when the command register, a BAR or
    /// the ROM BAR changed.
    public func write(offset: Int, size: Int, value: UInt32) {
        let oldCommand = config.command
        config.write(offset: offset, size: size, value: value)
        let end = offset + size
        if (offset < 0x06 && end > 0x04) || (offset < 0x28 && end > 0x10) || (offset < 0x34 && end > 0x30) {
            updateMappings()
        }
        if (oldCommand ^ config.command) & 0x400 != 0 { deliverINTx() }
    }

    /// The guest address a BAR decodes at now, or nil when it does not decode.
    public func decodedAddress(bar index: Int) -> UInt64? {
        if index == Self.romRegion {
            let raw = config.get32(0x30)
            guard !rom.isEmpty, config.memoryEnabled, raw & 1 != 0 else { return nil }
            return validWindow(UInt64(raw & 0xFFFF_F800), size: UInt64(rom.count), limit: 1 << 32)
        }
        guard let bar = bars[index] else { return nil }
        let low = config.get32(0x10 + 4 * index)
        switch bar.kind {
        case .io:
            guard config.ioEnabled else { return nil }
            return validWindow(UInt64(low & 0xFFFF_FFFC), size: bar.size, limit: 1 << 16)
        case .memory32:
            guard config.memoryEnabled else { return nil }
            return validWindow(UInt64(low & 0xFFFF_FFF0), size: bar.size, limit: 1 << 32)
        case .memory64:
            guard config.memoryEnabled else { return nil }
            let high = UInt64(config.get32(0x14 + 4 * index))
            return validWindow(high << 32 | UInt64(low & 0xFFFF_FFF0), size: bar.size, limit: 1 << 52)
        }
    }

    /// Zero and windows past the end of the address space do not decode (what a guest leaves
    /// behind while sizing a BAR with all ones).
    private func validWindow(_ base: UInt64, size: UInt64, limit: UInt64) -> UInt64? {
        guard base != 0, base < limit, size <= limit - base else { return nil }
        return base
    }

    func updateMappings() {
        guard let owner else { return }
        for index in 0..<7 {
            let want = decodedAddress(bar: index)
            guard want != mapped[index] else { continue }
            let isIO = index < 6 && bars[index]?.kind == .io
            guard let bus = isIO ? portBus : mmioBus else { continue }
            let was = mapped[index]
            if was != nil { bus.unregister(owner, region: index) }
            mapped[index] = nil
            if let base = want {
                let size = index == Self.romRegion ? UInt64(rom.count) : bars[index]!.size
                do {
                    try bus.register(owner, base: base, length: size, region: index, name: "\(name) BAR\(index)")
                    mapped[index] = base
                } catch {
                    GuestErrorLog.shared.report(name, "BAR \(index) at \(hex(base)) not mapped: \(error)")
                }
            }
            if mapped[index] != was { onBARMoved?(index, mapped[index]) }
        }
    }

    /// Unmaps everything (device reset or unplug).
    func unmapAll() {
        guard let owner else { return }
        for index in 0..<7 where mapped[index] != nil {
            let isIO = index < 6 && bars[index]?.kind == .io
            (isIO ? portBus : mmioBus)?.unregister(owner, region: index)
            mapped[index] = nil
            onBARMoved?(index, nil)
        }
    }

    /// Reads the expansion ROM (region `romRegion`).
    public func readROM(offset: UInt64, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size where offset + UInt64(i) < UInt64(rom.count) {
            value |= UInt64(rom[Int(offset) + i]) << (8 * UInt64(i))
        }
        return value
    }

    /// Sets the function's INTx level; the interrupt status bit follows it and the command
    /// register's INTx-disable bit masks it, as the PCI spec requires.
    public func setINTx(_ level: Bool) {
        intxLevel = level
        var status = config.get8(0x06)
        status = level ? status | 0x08 : status & ~0x08
        config.set8(0x06, status)
        deliverINTx()
    }

    private func deliverINTx() {
        intx?(intxLevel && !config.interruptDisabled)
    }

    /// Returns config space and BARs to power-on values.
    public func reset() {
        unmapAll()
        intxLevel = false
        deliverINTx()
        config = powerOnConfig
    }

    public func saveState(to w: inout StateWriter) {
        w.put(bytes: config.bytes)
        w.put(intxLevel)
    }

    public func loadState(from r: inout StateReader) throws(StateError) {
        let bytes = try r.getBytes(exactly: PCIConfigSpace.size)
        let level = try r.get(Bool.self)
        // Identity registers come from the device we are, never from the stream.
        guard bytes[0] == config.bytes[0], bytes[1] == config.bytes[1], bytes[2] == config.bytes[2],
              bytes[3] == config.bytes[3] else { throw .invalidValue(section: name, field: "PCI ID") }
        config.restore(bytes: bytes)
        intxLevel = level
        updateMappings()
        deliverINTx()
    }
}
