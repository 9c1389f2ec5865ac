// libFuzzer target: random register writes, blit starts and CPU source bytes driven into the
// Cirrus BitBLT engine on a small VRAM (an exact-size heap buffer, so AddressSanitizer sees any
// byte outside it), plus the engine's state loader fed the raw input.
// Invariants: no crash, no access outside VRAM, every reported written range lies inside VRAM,
// a save/load/save round trip reproduces the same bytes.
//
// Input: [flags] then 2-byte commands [op][value]:
//   op & 0xc0 == 0x00: write GR(op & 0x3f) = value
//   op & 0xc0 == 0x40: write the memory-mapped register at offset value & 0x7f
//   op & 0xc0 == 0x80: send (op & 0x3f) + 1 copies of value as system-source bytes
//   op & 0xc0 == 0xc0: save/load/save round trip
// flags bit 0: load the whole input as a saved state first; bits 1-3: VRAM is 256 << n bytes.
import DMCore
#if canImport(Glibc)
import Glibc
#endif

final class Harness: @unchecked Sendable {
    let log = GuestErrorLog(burst: 0) { _ in }

    func check(_ written: Range<Int>?, _ size: Int) {
        guard let r = written else { return }
        if r.lowerBound < 0 || r.upperBound > size || r.isEmpty {
            fatalError("blit reported \(r) outside VRAM of \(size) bytes")
        }
    }

    func run(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let size = 256 << Int((data[0] >> 1) & 7)
        let blitter = CirrusBlitter(vramSize: size, log: log)
        let vram = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { vram.deallocate() }
        for i in 0..<size { vram[i] = UInt8(truncatingIfNeeded: i &* 31) }

        if data[0] & 1 != 0 {
            var reader = StateReader(bytes: Array(data[1...]), section: "fuzz")
            try? blitter.loadState(from: &reader)
        }
        var i = 1
        while i + 1 < data.count {
            let op = data[i], value = data[i + 1]
            i += 2
            switch op & 0xc0 {
            case 0x00:
                check(blitter.write(register: Int(op & 0x3f), value, vram: vram), size)
            case 0x40:
                if let index = CirrusBlitter.registerIndex(mmioOffset: Int(value & 0x7f)) {
                    check(blitter.write(register: index, value, vram: vram), size)
                }
            case 0x80:
                for _ in 0...Int(op & 0x3f) { check(blitter.writeSystemSource(value, vram: vram), size) }
            default:
                var first = StateWriter()
                blitter.saveState(to: &first)
                let copy = CirrusBlitter(vramSize: size, log: log)
                var reader = StateReader(bytes: first.bytes, section: "fuzz")
                do { try copy.loadState(from: &reader) } catch { fatalError("own state rejected: \(error)") }
                var second = StateWriter()
                copy.saveState(to: &second)
                if first.bytes != second.bytes { fatalError("state round trip differs") }
            }
        }
        // Finish a pending system-source blit the way a driver would.
        var fed = 0
        while blitter.isAwaitingSystemSource && fed < 1 << 16 {
            check(blitter.writeSystemSource(UInt8(truncatingIfNeeded: fed), vram: vram), size)
            fed += 1
        }
    }
}
