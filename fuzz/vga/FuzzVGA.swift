// libFuzzer target: the standard VGA driven by a guest program of port, DISPI, memory-window,
// BAR2 MMIO and VRAM writes, interleaved with redraws, as one hostile guest could drive it.
// Invariants checked on every input: no crash and no access outside VRAM (ASan watches the
// mapping), the picture never exceeds the framebuffer's limits, and the saved state loads into
// a fresh device and saves back to the same bytes.
//
// Input: a sequence of 4-byte operations [op][a][b][c]; op % 9 selects:
//   0 port write 0x3B0 + a % 48 = b    1 port read 0x3B0 + a % 48
//   2 DISPI index = a | b << 8         3 DISPI data = a | b << 8
//   4 window write (a | b << 8 | (c & 1) << 16) = c
//   5 window read at the same offset   6 BAR2 write at (a | b << 8) & 0xFFF, size 1 << (c % 3), value c * 0x01010101
//   7 VRAM write at a page the input picks   8 redraw (at most 6 per input)
import DMCore
#if canImport(Glibc)
import Glibc
#endif

let vramSize = 1 << 20
let mmioBase: UInt64 = 0xE100_0000

final class Harness: @unchecked Sendable {
    let ports = Bus(name: "io", unassignedValue: .max)
    let mmio = Bus(name: "mmio", unassignedValue: 0)
    let framebuffer = Framebuffer()

    func makeVGA() -> StdVGA {
        do {
            let vga = try StdVGA(vram: try HostDeviceRAM(size: vramSize), rom: [0x55, 0xAA, 0x01])
            return vga
        } catch {
            fatalError("fuzz harness: \(error)")
        }
    }

    func run(_ data: UnsafeRawBufferPointer) {
        let vga = makeVGA()
        do {
            try vga.registerLegacyWindows(ports: ports, mmio: mmio)
        } catch {
            fatalError("fuzz harness: \(error)")
        }
        let pci = PCIBus(portBus: ports, mmioBus: mmio)
        do { try pci.plug(vga, slot: 2) } catch { fatalError("fuzz harness: \(error)") }
        defer {
            pci.unplug(slot: 2)
            ports.unregister(vga, region: StdVGA.legacyPortRegion)
            ports.unregister(vga, region: StdVGA.dispiPortRegion)
            mmio.unregister(vga, region: StdVGA.legacyMemoryRegion)
        }
        vga.configWrite(offset: 0x18, size: 4, value: UInt32(mmioBase))
        vga.configWrite(offset: 0x04, size: 2, value: 0x0003)

        var redraws = 0
        var at = 0
        while at + 4 <= data.count {
            let op = data[at], a = UInt64(data[at + 1]), b = UInt64(data[at + 2]), c = UInt64(data[at + 3])
            at += 4
            switch op % 9 {
            case 0: ports.write(0x3B0 + a % 48, size: 1, value: b)
            case 1: _ = ports.read(0x3B0 + a % 48, size: 1)
            case 2: ports.write(0x1CE, size: 2, value: a | b << 8)
            case 3: ports.write(0x1CF, size: 2, value: a | b << 8)
            case 4: mmio.write(0xA0000 + (a | b << 8 | (c & 1) << 16), size: 1, value: c)
            case 5: _ = mmio.read(0xA0000 + (a | b << 8 | (c & 1) << 16), size: 1)
            case 6: mmio.write(mmioBase + ((a | b << 8) & 0xFFF), size: 1 << Int(c % 3), value: c * 0x0101_0101)
            case 7:
                let offset = Int(a | b << 8) * 16 % vramSize
                vga.core.vram.withBytes { $0[offset] = UInt8(c) }
                vga.core.vram.deviceWrote(offset: offset, length: 1)
            default:
                guard redraws < 6 else { continue }
                redraws += 1
                vga.refresh(framebuffer)
                precondition(framebuffer.width <= Framebuffer.maxDimension && framebuffer.height <= Framebuffer.maxDimension)
                precondition(framebuffer.pixels.count == framebuffer.width * framebuffer.height)
            }
        }

        var saved = StateWriter()
        vga.saveState(to: &saved)
        let copy = makeVGA()
        var reader = StateReader(bytes: saved.bytes, section: "vga")
        do { try copy.loadState(from: &reader, version: 1) } catch { fatalError("own state refused: \(error)") }
        var again = StateWriter()
        copy.saveState(to: &again)
        precondition(again.bytes == saved.bytes, "state changed across save/load")
        // Arbitrary bytes as state: refused or accepted, never a crash, and drawable after.
        var hostile = StateReader(bytes: Array(UnsafeRawBufferPointer(rebasing: data[0..<min(data.count, 2048)])) + saved.bytes,
                                  section: "vga")
        if (try? copy.loadState(from: &hostile, version: 1)) != nil { copy.refresh(framebuffer) }
    }
}

let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVGA(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    harness.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
