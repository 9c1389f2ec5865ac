import DMCore

public enum StdVGAError: Error, Equatable, CustomStringConvertible {
    case invalidVRAMSize(Int)

    public var description: String {
        switch self {
        case .invalidVRAMSize(let size): return "VGA video memory of \(size) bytes is not a power of two between 1 MiB and 256 MiB"
        }
    }
}

/// QEMU's standard VGA (`-device VGA`, 1234:1111): a `VGACore` behind PCI. BAR0 is the video
/// RAM (the DISPI linear framebuffer), which the platform maps straight into the guest; BAR2 is
/// 4 KiB of MMIO holding the VGA ports (0x400-0x41F for 0x3C0-0x3DF), the DISPI registers as
/// 16-bit words (0x500-0x515) and QEMU's extended registers (0x600: their size, 0x604: the
/// framebuffer byte order); the ROM BAR carries the VGA BIOS (vgabios-stdvga.bin). The legacy
/// windows (ports 0x3B0-0x3DF and 0x1CE-0x1D1, memory 0xA0000-0xBFFFF) are registered by
/// `registerLegacyWindows`, because a PC has exactly one device answering there.
///
/// Video RAM contents are not part of the saved state: under Xen they are guest frames (saved
/// with guest RAM), and the KVM machine saves no guest RAM at all, so VRAM is treated the same.
public final class StdVGA: PCIDevice, DisplaySource, Snapshottable, Resettable, @unchecked Sendable {
    public static let vramBAR = 0, mmioBAR = 2
    public static let legacyPortRegion = 10, dispiPortRegion = 11, legacyMemoryRegion = 12
    public static let mmioSize: UInt64 = 4096
    static let extendedRegistersSize: UInt32 = 8
    static let littleEndianMarker: UInt32 = 0x1E1E_1E1E, bigEndianMarker: UInt32 = 0xBEBE_BEBE

    public let pci: PCIFunction
    public let core: VGACore
    /// QEMU's framebuffer byte-order register: kept for the guest to read back; x86 guests
    /// never set big endian, and drawing stays little endian.
    private var bigEndianFramebuffer = false

    /// The VRAM size for QEMU's `vgamem_mb`: the next power of two, as QEMU rounds it.
    public static func vramSize(megabytes: Int) -> Int {
        var size = 1 << 20
        while size < megabytes << 20 { size <<= 1 }
        return size
    }

    /// `vram` must be a power of two of 1-256 MiB (what `vramSize(megabytes:)` gives); `rom`
    /// is the VGA BIOS for the ROM BAR (empty: no ROM BAR).
    public init(vram: any DeviceRAM, rom: [UInt8]) throws(StdVGAError) {
        guard vram.size.nonzeroBitCount == 1, vram.size >= 1 << 20, vram.size <= 256 << 20 else {
            throw .invalidVRAMSize(vram.size)
        }
        core = VGACore(vram: vram)
        // Revision 2 tells drivers the extended registers exist (QEMU does the same).
        let config = PCIConfigSpace(vendor: 0x1234, device: 0x1111, revision: 2, classCode: 0x03_0000)
        pci = PCIFunction(name: "VGA", config: config,
                          bars: [PCIBARDefinition(kind: .memory32(prefetchable: true), size: UInt64(vram.size)), nil,
                                 PCIBARDefinition(kind: .memory32(prefetchable: false), size: Self.mmioSize)],
                          rom: rom)
        pci.onBARMoved = { [weak self] index, address in
            if index == Self.vramBAR { self?.core.vram.map(at: address) }
        }
    }

    /// Claims the legacy VGA ranges: ports 0x3B0-0x3DF, the DISPI ports 0x1CE-0x1D1 (index,
    /// data, and the data alias at 0x1D0) and the memory window 0xA0000-0xBFFFF.
    public func registerLegacyWindows(ports: Bus, mmio: Bus) throws(BusError) {
        try ports.register(self, base: 0x3B0, length: 0x30, region: Self.legacyPortRegion, name: "vga")
        try ports.register(self, base: 0x1CE, length: 4, region: Self.dispiPortRegion, name: "vbe")
        try mmio.register(self, base: 0xA0000, length: 0x20000, region: Self.legacyMemoryRegion, name: "vga-lowmem")
    }

    // MARK: BusDevice

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case Self.vramBAR: return readVRAM(offset: offset, size: size)
        case Self.mmioBAR: return readMMIO(offset: offset, size: size)
        case PCIFunction.romRegion: return pci.readROM(offset: offset, size: size)
        case Self.legacyPortRegion:
            return bytewise(size) { UInt64(core.readPort(UInt16(0x3B0 + offset + $0))) }
        case Self.dispiPortRegion:
            switch offset {
            case 0: return UInt64(core.readDISPIIndex()) & mask(size)
            case 1, 2: return UInt64(core.readDISPI()) & mask(size)
            default: return mask(size)
            }
        case Self.legacyMemoryRegion:
            return bytewise(size) { UInt64(core.readWindow(Int(offset + $0))) }
        default: return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch region {
        case Self.vramBAR: writeVRAM(offset: offset, size: size, value: value)
        case Self.mmioBAR: writeMMIO(offset: offset, size: size, value: value)
        case Self.legacyPortRegion:
            for i in 0..<UInt64(size) { core.writePort(UInt16(0x3B0 + offset + i), UInt8(truncatingIfNeeded: value >> (8 * i))) }
        case Self.dispiPortRegion:
            switch offset {
            case 0: core.writeDISPIIndex(UInt16(truncatingIfNeeded: value))
            case 1, 2: core.writeDISPI(UInt16(truncatingIfNeeded: value))
            default: break
            }
        case Self.legacyMemoryRegion:
            for i in 0..<UInt64(size) { core.writeWindow(Int(offset + i), UInt8(truncatingIfNeeded: value >> (8 * i))) }
        default: break
        }
    }

    /// Assembles a little-endian value of `size` bytes from `byte(i)`.
    private func bytewise(_ size: Int, _ byte: (UInt64) -> UInt64) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<UInt64(size) { value |= (byte(i) & 0xFF) << (8 * i) }
        return value
    }

    /// BAR0 reached as MMIO: only where the platform could not map the RAM (a BAR placed over
    /// RAM, the test machine). The bus keeps the access inside the BAR, and the BAR is VRAM-sized.
    private func readVRAM(offset: UInt64, size: Int) -> UInt64 {
        let at = Int(offset)
        return core.vram.withBytes { bytes in
            guard at + size <= bytes.count else { return mask(size) }
            return bytewise(size) { UInt64(bytes[at + Int($0)]) }
        }
    }

    private func writeVRAM(offset: UInt64, size: Int, value: UInt64) {
        let at = Int(offset)
        let written = core.vram.withBytes { bytes -> Bool in
            guard at + size <= bytes.count else { return false }
            for i in 0..<size { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            return true
        }
        if written { core.vram.deviceWrote(offset: at, length: size) }
    }

    private func readMMIO(offset: UInt64, size: Int) -> UInt64 {
        switch offset {
        case 0x400..<0x420:
            return bytewise(size) { offset + $0 < 0x420 ? UInt64(core.readPort(UInt16(0x3C0 + offset - 0x400 + $0))) : 0xFF }
        case 0x500..<0x516:
            return bytewise(size) { i in
                let at = offset - 0x500 + i
                return UInt64(core.readDISPI(register: Int(at >> 1))) >> (8 * (at & 1))
            }
        case 0x600..<0x608:
            return bytewise(size) { i in
                let at = offset - 0x600 + i
                let register = at < 4 ? Self.extendedRegistersSize
                                      : (bigEndianFramebuffer ? Self.bigEndianMarker : Self.littleEndianMarker)
                return at < 8 ? UInt64(register >> (8 * UInt32(at & 3))) : 0
            }
        default: return 0
        }
    }

    private func writeMMIO(offset: UInt64, size: Int, value: UInt64) {
        switch offset {
        case 0x400..<0x420:
            for i in 0..<UInt64(size) where offset + i < 0x420 {
                core.writePort(UInt16(0x3C0 + offset - 0x400 + i), UInt8(truncatingIfNeeded: value >> (8 * i)))
            }
        case 0x500..<0x516:
            // 16-bit registers: a byte write lands in its half with the other half zero, a
            // dword write covers two registers.
            var at = offset - 0x500
            var remaining = value << (8 * (at & 1))
            at &= ~1
            var count = max((size + Int(offset & 1) + 1) / 2, 1)
            while count > 0, at < 0x16 {
                core.writeDISPI(register: Int(at >> 1), UInt16(truncatingIfNeeded: remaining))
                remaining >>= 16
                at += 2
                count -= 1
            }
        case 0x604 where size == 4:
            switch UInt32(truncatingIfNeeded: value) {
            case Self.littleEndianMarker: bigEndianFramebuffer = false
            case Self.bigEndianMarker: bigEndianFramebuffer = true
            default: break
            }
        default: break
        }
    }

    // MARK: display, reset, state

    public func refresh(_ framebuffer: Framebuffer) { core.refresh(framebuffer) }

    public func reset() {
        pci.reset()
        core.reset()
        bigEndianFramebuffer = false
    }

    public var stateID: String { "vga" }
    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        core.saveState(to: &w)
        w.put(bigEndianFramebuffer)
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        try core.loadState(from: &r, section: stateID)
        bigEndianFramebuffer = try r.get(Bool.self)
    }
}
