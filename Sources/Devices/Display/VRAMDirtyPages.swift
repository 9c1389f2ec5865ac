import DMCore

/// Which 4 KiB pages of video RAM were written since the last redraw, as the platform reports
/// them (`DeviceRAM.collectDirtyPages`): what a display device's refresh reads to skip clean rows.
/// Sized once for the VRAM, so taking the report allocates nothing.
struct VRAMDirtyPages {
    private var bits: [UInt64]

    init(vramSize: Int) {
        bits = [UInt64](repeating: 0, count: (vramSize / 4096 + 63) / 64)
    }

    /// Forgets the last report and takes the pages written since; false when the platform
    /// cannot tell (every page must then count as written).
    mutating func collect(from vram: any DeviceRAM) -> Bool {
        for i in bits.indices { bits[i] = 0 }
        return vram.collectDirtyPages(into: &bits)
    }

    /// Whether any page of VRAM bytes [start, end) was written.
    @inline(__always)
    func contains(_ start: Int, _ end: Int) -> Bool {
        guard end > start else { return false }
        var page = start / 4096
        while page <= (end - 1) / 4096 {
            if page / 64 < bits.count, bits[page / 64] & (1 << UInt64(page % 64)) != 0 { return true }
            page += 1
        }
        return false
    }
}
