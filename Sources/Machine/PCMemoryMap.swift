import DMCore
import Devices

/// The guest-physical layout of an i440FX PC: RAM below the PCI hole and above 4 GiB, the
/// firmware at the top of 4 GiB, and the 0xC0000-0xFFFFF window whose decoding the PAM
/// registers choose segment by segment.
public struct PCMemoryLayout: Sendable {
    public let ramSize: UInt64
    public let belowFourGiB: UInt64
    public let aboveFourGiB: UInt64
    public let biosSize: UInt64

    public static let legacyWindow: ClosedRange<UInt64> = 0xC0000...0xFFFFF
    /// The ISA BIOS alias: the last 128 KiB of the firmware (or all of it if smaller).
    public var isaBIOSSize: UInt64 { min(biosSize, 128 << 10) }

    public init(ramSize: UInt64, biosSize: UInt64, maxBelowFourGiB: UInt64? = nil) {
        self.ramSize = ramSize
        self.biosSize = biosSize
        // As QEMU's i440FX: RAM that does not fit below 3.5 GiB moves above 4 GiB, and then
        // the split is at 3 GiB to keep the hole gigabyte-aligned.
        var low: UInt64 = ramSize >= 0xE000_0000 ? 0xC000_0000 : ramSize
        if let limit = maxBelowFourGiB { low = min(low, limit) }
        belowFourGiB = low
        aboveFourGiB = ramSize - low
    }

    /// The memory regions KVM maps directly for the given PAM modes. Segments that decode to
    /// nothing, or whose writes must go elsewhere than their reads, are left to
    /// `LegacyBIOSWindow` on the MMIO bus.
    func regions(ram: HostMemory, bios: HostMemory, pam: [I440FXHostBridge.PAMMode]) -> [PhysicalMemory.Region] {
        var regions: [PhysicalMemory.Region] = []
        func add(_ gpa: UInt64, _ size: UInt64, _ backing: HostMemory, _ offset: UInt64, writable: Bool) {
            // Merge with the previous region when contiguous in both spaces.
            if let last = regions.last, last.guestAddress + last.size == gpa, last.backing === backing,
               UInt64(last.backingOffset) + last.size == offset, last.writable == writable {
                regions[regions.count - 1] = PhysicalMemory.Region(guestAddress: last.guestAddress, size: last.size + size,
                                                                   backing: backing, backingOffset: last.backingOffset,
                                                                   writable: writable)
            } else {
                regions.append(PhysicalMemory.Region(guestAddress: gpa, size: size, backing: backing,
                                                     backingOffset: Int(offset), writable: writable))
            }
        }
        let lowTop = min(belowFourGiB, 0xA0000)
        add(0, lowTop, ram, 0, writable: true)
        if belowFourGiB > 0xC0000 {
            let segments = I440FXHostBridge.pamSegments.enumerated().sorted { $0.element.base < $1.element.base }
            for (index, segment) in segments where segment.base + segment.size <= belowFourGiB {
                switch pam[index] {
                case .readWriteRAM: add(segment.base, segment.size, ram, segment.base, writable: true)
                case .readRAM: add(segment.base, segment.size, ram, segment.base, writable: false)
                case .romOrPCI, .writeRAM:
                    if let offset = isaBIOSOffset(segment.base) {
                        add(segment.base, segment.size, bios, offset, writable: false)
                    }
                }
            }
        }
        if belowFourGiB > 0x100000 { add(0x100000, belowFourGiB - 0x100000, ram, 0x100000, writable: true) }
        if aboveFourGiB > 0 { add(1 << 32, aboveFourGiB, ram, belowFourGiB, writable: true) }
        add((1 << 32) - biosSize, biosSize, bios, 0, writable: false)
        return regions
    }

    /// Offset into the firmware image for a guest address in the ISA BIOS alias, if it is one.
    func isaBIOSOffset(_ address: UInt64) -> UInt64? {
        let start = 0x100000 - isaBIOSSize
        guard address >= start, address < 0x100000 else { return nil }
        return biosSize - isaBIOSSize + (address - start)
    }
}

/// The MMIO side of 0xC0000-0xFFFFF: accesses KVM could not satisfy from a memory slot land
/// here (ROM writes, write-only shadow RAM, unshadowed option ROM space) and are completed
/// as the PAM registers say.
final class LegacyBIOSWindow: BusDevice, @unchecked Sendable {
    let layout: PCMemoryLayout
    let ram: HostMemory
    let bios: HostMemory
    var pam: [I440FXHostBridge.PAMMode]
    private let ramView: PhysicalMemory
    private let biosView: PhysicalMemory

    init(layout: PCMemoryLayout, ram: HostMemory, bios: HostMemory, pam: [I440FXHostBridge.PAMMode]) {
        self.layout = layout
        self.ram = ram
        self.bios = bios
        self.pam = pam
        ramView = PhysicalMemory(regions: [.init(guestAddress: 0, size: 0x100000, backing: ram, backingOffset: 0, writable: true)])
        biosView = PhysicalMemory(regions: [.init(guestAddress: 0, size: layout.biosSize, backing: bios, backingOffset: 0, writable: false)])
    }

    private func mode(_ address: UInt64) -> I440FXHostBridge.PAMMode {
        let index = I440FXHostBridge.pamSegments.firstIndex { address >= $0.base && address < $0.base + $0.size } ?? 0
        return pam[index]
    }

    func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        let address = PCMemoryLayout.legacyWindow.lowerBound + offset
        var value: UInt64 = 0
        for i in 0..<UInt64(size) {
            let a = address + i
            let byte: UInt8
            switch mode(a) {
            case .readRAM, .readWriteRAM: byte = (try? ramView.read(UInt8.self, at: a)) ?? 0xFF
            case .romOrPCI, .writeRAM: byte = layout.isaBIOSOffset(a).flatMap { try? biosView.read(UInt8.self, at: $0) } ?? 0xFF
            }
            value |= UInt64(byte) << (8 * i)
        }
        return value
    }

    func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        let address = PCMemoryLayout.legacyWindow.lowerBound + offset
        for i in 0..<UInt64(size) {
            let a = address + i
            switch mode(a) {
            case .writeRAM, .readWriteRAM: try? ramView.write(UInt8(truncatingIfNeeded: value >> (8 * i)), at: a)
            case .romOrPCI, .readRAM: break  // ROM, or read-only shadow: writes go nowhere
            }
        }
    }
}
