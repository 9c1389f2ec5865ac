import DMCore

/// The i440FX PCI and memory controller (8086:1237) at 00.0. Besides its identity it owns the
/// PAM registers (0x59-0x5F), which decide whether 0xC0000-0xFFFFF reads and writes go to RAM
/// or to the BIOS ROM / PCI — SeaBIOS shadows itself into RAM through them — and SMRAM (0x72).
public final class I440FXHostBridge: PCIDevice, Snapshottable, Resettable, @unchecked Sendable {
    /// How one PAM segment decodes (the two bits per segment of a PAM register).
    public enum PAMMode: UInt8, Sendable {
        case romOrPCI = 0, readRAM = 1, writeRAM = 2, readWriteRAM = 3
    }

    /// The 13 PAM segments: 0xF0000 (64 KiB), then 0xC0000-0xEFFFF in 16 KiB steps.
    public static let pamSegments: [(base: UInt64, size: UInt64)] =
        [(0xF0000, 0x10000)] + (0..<12).map { (0xC0000 + UInt64($0) * 0x4000, 0x4000) }

    public let pci: PCIFunction
    /// Told whenever the PAM or SMRAM registers change, with the mode of every segment.
    public var onMemoryMapChange: (([PAMMode]) -> Void)?

    public init() {
        var config = PCIConfigSpace(vendor: 0x8086, device: 0x1237, revision: 0x02, classCode: 0x06_0000)
        config.set8(0x72, 0x02)  // SMRAM: C_BASE_SEG = 010 (0xA0000), closed
        config.writeMask[0x72] = 0x78  // D_OPEN, D_CLS, D_LCK, G_SMRAME; the base is fixed
        pci = PCIFunction(name: "i440FX", config: config)
    }

    public var pamModes: [PAMMode] {
        Self.pamSegments.indices.map { i in
            // Segment 0 is PAM0's high nibble; then each register holds two segments.
            let (register, shift): (Int, UInt8) = i == 0 ? (0x59, 4) : (0x5A + (i - 1) / 2, (i - 1) % 2 == 0 ? 0 : 4)
            return PAMMode(rawValue: (pci.config.get8(register) >> shift) & 0x3)!
        }
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        let before = (pci.config.get32(0x58), pci.config.get32(0x5C), pci.config.get8(0x72))
        pci.write(offset: offset, size: size, value: value)
        if before != (pci.config.get32(0x58), pci.config.get32(0x5C), pci.config.get8(0x72)) {
            onMemoryMapChange?(pamModes)
        }
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 { mask(size) }
    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {}

    public var stateID: String { "i440fx" }
    public var stateVersion: UInt32 { 1 }
    public func saveState(to w: inout StateWriter) { pci.saveState(to: &w) }
    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        onMemoryMapChange?(pamModes)
    }
    public func reset() {
        pci.reset()
        onMemoryMapChange?(pamModes)
    }
}
