// Counts heap allocations on the VGA's per-access and per-frame paths in an optimised build
// (debug builds allocate in the runtime's unspecialised generics, which says nothing about the
// device): text mode with window writes, reads, retrace polling and redraws, then a DISPI
// 32 bpp mode with VRAM writes and redraws. One warm-up round each (first-use runtime
// metadata), then any allocation fails. Run by fuzz/vga/alloc-check.sh with the counting
// interposer preloaded.
import DMCore
#if canImport(Glibc)
import Glibc
#endif

@main
struct AllocCheck {
    static func main() throws {
        guard let symbol = dlsym(nil, "sdm_alloc_count") else { fatalError("preload alloccount.so") }
        let allocations = unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
        let ports = Bus(name: "io", unassignedValue: .max)
        let mmio = Bus(name: "mmio", unassignedValue: 0)
        let vga = try StdVGA(vram: try HostDeviceRAM(size: 1 << 20), rom: [])
        try vga.registerLegacyWindows(ports: ports, mmio: mmio)
        func out(_ port: UInt64, _ value: Int) { ports.write(port, size: 1, value: UInt64(value)) }
        out(0x3C2, 0x67)
        for (index, value) in [(1, 0), (2, 3), (3, 0), (4, 2)] { out(0x3C4, index); out(0x3C5, value) }
        out(0x3CE, 5); out(0x3CF, 0x10); out(0x3CE, 6); out(0x3CF, 0x0E)
        for (index, value) in [(1, 79), (7, 0x1F), (9, 0x4F), (0x12, 0x8F), (0x13, 40), (0x0A, 0x0E), (0x0B, 0x0F)] {
            out(0x3D4, index); out(0x3D5, value)
        }
        _ = ports.read(0x3DA, size: 1)
        out(0x3C0, 0x20)
        let framebuffer = Framebuffer()
        var failed = false

        func textRound(_ i: Int) {
            mmio.write(0xB8000 + UInt64(i % 2000 * 2), size: 1, value: 0x41)
            _ = mmio.read(0xB8000, size: 1)
            _ = ports.read(0x3DA, size: 1)
            vga.refresh(framebuffer)
        }
        textRound(0)
        var before = allocations()
        for i in 1...200 { textRound(i) }
        var count = allocations() - before
        print("text mode, 200 rounds: \(count) allocations")
        failed = failed || count != 0

        for (index, value) in [(1, 320), (2, 200), (3, 32), (4, 0x41)] {
            ports.write(0x1CE, size: 2, value: UInt64(index))
            ports.write(0x1CF, size: 2, value: UInt64(value))
        }
        func dispiRound(_ i: Int) {
            vga.core.vram.withBytes { $0[i * 4 % 256_000] = 0x7F }
            vga.core.vram.deviceWrote(offset: i * 4 % 256_000, length: 1)
            vga.refresh(framebuffer)
        }
        dispiRound(0)
        before = allocations()
        for i in 1...200 { dispiRound(i) }
        count = allocations() - before
        print("DISPI 320x200x32, 200 rounds: \(count) allocations")
        failed = failed || count != 0
        exit(failed ? 1 : 0)
    }
}
