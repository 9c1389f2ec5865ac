// libFuzzer target: the whole cirrus-vga device as a guest reaches it — VGA and Cirrus ports,
// the 0xA0000 window (banks, write modes 4/5, blitter MMIO, system source), BAR1 (ports and
// blitter registers), BAR0 (VRAM and the BitBLT aperture) — with display refreshes and state
// round trips in between. Invariants: no crash, no access outside VRAM (AddressSanitizer),
// a save/load/save round trip reproduces the same bytes.
//
// Input: 4-byte commands [op][a][b][value]:
//   op % 8 == 0: port 0x3B0 + a % 0x30 := value        1: read that port
//   op % 8 == 2: window offset (a<<8|b) * 2 := value    3: read it
//   op % 8 == 4: BAR1 offset ((a<<8|b) & 0x1ff) := value, size 1/2/4 by op bits 4-5
//   op % 8 == 5: BAR0 offset 16 MiB + b (the aperture) or (a<<12|b<<4) := value
//   op % 8 == 6: refresh the display                   7: state round trip
import DMCore
#if canImport(Glibc)
import Glibc
#endif

final class Harness: @unchecked Sendable {
    let log = GuestErrorLog(burst: 0) { _ in }
    let framebuffer = Framebuffer(width: 64, height: 64)

    func run(_ data: UnsafeRawBufferPointer) {
        let vram: HostDeviceRAM
        let vga: CirrusVGA
        do {
            vram = try HostDeviceRAM(size: 4 << 20)
            vga = try CirrusVGA(vram: vram, rom: [], log: log)
        } catch { fatalError("fuzz harness: \(error)") }
        var i = 0
        while i + 3 < data.count {
            let op = data[i], a = UInt64(data[i + 1]), b = UInt64(data[i + 2]), value = UInt64(data[i + 3])
            i += 4
            let size = [1, 2, 4, 1][Int(op >> 4) & 3]
            let wide = value | value << 8 | value << 16 | value << 24
            switch op % 8 {
            case 0: vga.write(region: CirrusVGA.legacyPortRegion, offset: a % 0x30, size: 1, value: value)
            case 1: _ = vga.read(region: CirrusVGA.legacyPortRegion, offset: a % 0x30, size: 1)
            case 2: vga.write(region: CirrusVGA.legacyMemoryRegion, offset: ((a << 8 | b) * 2) % 0x20000, size: 1, value: value)
            case 3: _ = vga.read(region: CirrusVGA.legacyMemoryRegion, offset: ((a << 8 | b) * 2) % 0x20000, size: 1)
            case 4: vga.write(region: CirrusVGA.mmioBAR, offset: (a << 8 | b) & 0x1FF & ~UInt64(size - 1), size: size, value: wide)
            case 5:
                let offset = op & 0x40 != 0 ? CirrusVGA.blitApertureOffset + b : (a << 12 | b << 4)
                vga.write(region: CirrusVGA.vramBAR, offset: offset, size: size, value: wide)
            case 6: vga.refresh(framebuffer)
            default:
                var first = StateWriter()
                vga.saveState(to: &first)
                let copy: CirrusVGA
                do { copy = try CirrusVGA(vram: vram, rom: [], log: log) } catch { fatalError("\(error)") }
                var reader = StateReader(bytes: first.bytes, section: copy.stateID)
                do { try copy.loadState(from: &reader, version: copy.stateVersion) } catch { fatalError("own state rejected: \(error)") }
                var second = StateWriter()
                copy.saveState(to: &second)
                if first.bytes != second.bytes { fatalError("state round trip differs") }
            }
        }
        vga.refresh(framebuffer)
    }
}
