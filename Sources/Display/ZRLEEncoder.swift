/// ZRLE (RFB §7.7.6): 64×64 tiles, each solid, packed-palette, palette-RLE, plain-RLE or raw,
/// whichever is smallest, in compact 3-byte pixels where the format allows, all through one
/// zlib stream per client. Scratch buffers are reused across tiles and updates.
struct ZRLEEncoder {
    private var deflate = DeflateStream()
    private var raw = OutputBuffer()
    private var compressed: [UInt8] = []
    private var palette: [UInt32] = []
    private var tile = [UInt32](repeating: 0, count: 64 * 64)

    static let tileSize = 64
    static let maxPalette = 127

    mutating func append(_ pixels: UnsafeBufferPointer<UInt32>, stride: Int, _ r: Rect, _ converter: PixelConverter,
                         to out: inout OutputBuffer) {
        raw.removeAll()
        let compact = Self.compactSize(converter.format)
        var ty = r.y
        while ty < r.y + r.height {
            let th = min(Self.tileSize, r.y + r.height - ty)
            var tx = r.x
            while tx < r.x + r.width {
                let tw = min(Self.tileSize, r.x + r.width - tx)
                for row in 0..<th {
                    let base = (ty + row) * stride + tx
                    for col in 0..<tw { tile[row * tw + col] = pixels[base + col] }
                }
                appendTile(count: tw * th, width: tw, height: th, converter, compact)
                tx += Self.tileSize
            }
            ty += Self.tileSize
        }
        compressed.removeAll(keepingCapacity: true)
        deflate.compress(raw.bytes, into: &compressed)
        out.append32(UInt32(compressed.count))
        out.append(contentsOf: compressed)
    }

    /// CPIXEL: 3 bytes when a 32-bit, depth ≤ 24 format keeps its colours in the low or the
    /// high three bytes; otherwise a whole pixel.
    private static func compactSize(_ f: RFBPixelFormat) -> (size: Int, dropFirst: Bool) {
        guard f.bitsPerPixel == 32, f.depth <= 24 else { return (f.bytesPerPixel, false) }
        let lowFits = Int(f.redShift) + f.redMax.nonzeroBitCount <= 24 && Int(f.greenShift) + f.greenMax.nonzeroBitCount <= 24
            && Int(f.blueShift) + f.blueMax.nonzeroBitCount <= 24
        let highFits = f.redShift >= 8 && f.greenShift >= 8 && f.blueShift >= 8
        // Which byte is dropped depends on where the unused byte lies in memory.
        if lowFits { return (3, f.bigEndian) }
        if highFits { return (3, !f.bigEndian) }
        return (4, false)
    }

    private mutating func appendCompact(_ pixel: UInt32, _ converter: PixelConverter, _ compact: (size: Int, dropFirst: Bool)) {
        guard compact.size == 3 else {
            converter.append(pixel, to: &raw)
            return
        }
        // The pixel's bytes in memory order, less the unused one.
        let v = converter.value(pixel)
        let memoryOrder = converter.format.bigEndian ? v : v.byteSwapped
        let kept = compact.dropFirst ? memoryOrder << 8 : memoryOrder
        raw.append(UInt8(truncatingIfNeeded: kept >> 24))
        raw.append(UInt8(truncatingIfNeeded: kept >> 16))
        raw.append(UInt8(truncatingIfNeeded: kept >> 8))
    }

    /// By index: iterating the array while appending to `raw` (a mutation of self) would copy
    /// it in unoptimised builds.
    private mutating func appendPalette(_ converter: PixelConverter, _ compact: (size: Int, dropFirst: Bool)) {
        var k = 0
        while k < palette.count {
            appendCompact(palette[k], converter, compact)
            k += 1
        }
    }

    private static func runLengthBytes(_ length: Int) -> Int { (length - 1) / 255 + 1 }

    private mutating func appendRunLength(_ length: Int) {
        var rest = length - 1
        while rest >= 255 {
            raw.append(255)
            rest -= 255
        }
        raw.append(UInt8(rest))
    }

    private func paletteIndex(_ colour: UInt32) -> Int? {
        var i = 0
        while i < palette.count {
            if palette[i] == colour { return i }
            i += 1
        }
        return nil
    }

    private mutating func appendTile(count: Int, width: Int, height: Int, _ converter: PixelConverter,
                                     _ compact: (size: Int, dropFirst: Bool)) {
        let cp = compact.size
        // One pass: the palette (until it overflows) and the cost of both RLE forms.
        palette.removeAll(keepingCapacity: true)
        var paletteFull = false
        var plainRLE = 1
        var paletteRLE = 1
        var i = 0
        while i < count {
            let colour = tile[i]
            var end = i + 1
            while end < count && tile[end] == colour { end += 1 }
            let length = end - i
            plainRLE += cp + Self.runLengthBytes(length)
            paletteRLE += 1 + (length > 1 ? Self.runLengthBytes(length) : 0)
            if !paletteFull && paletteIndex(colour) == nil {
                if palette.count == Self.maxPalette { paletteFull = true } else { palette.append(colour) }
            }
            i = end
        }
        if palette.count == 1 && !paletteFull {
            raw.append(1)
            appendCompact(palette[0], converter, compact)
            return
        }
        let rawSize = 1 + count * cp
        var best = min(rawSize, plainRLE)
        var packedBits = 0
        if !paletteFull {
            paletteRLE += palette.count * cp
            best = min(best, paletteRLE)
            if palette.count <= 16 {
                let bits = palette.count <= 2 ? 1 : (palette.count <= 4 ? 2 : 4)
                // Rows are padded to whole bytes; some decoders (vncdotool) forget the padding,
                // so packed tiles are used only where rows end on a byte boundary anyway.
                if width * bits % 8 == 0 {
                    let packed = 1 + palette.count * cp + height * (width * bits / 8)
                    if packed <= best {
                        best = packed
                        packedBits = bits
                    }
                }
            }
        }
        if packedBits > 0 {
            raw.append(UInt8(palette.count))
            appendPalette(converter, compact)
            var byte = 0
            var filled = 0
            for p in 0..<count {
                byte = byte << packedBits | (paletteIndex(tile[p]) ?? 0)
                filled += packedBits
                if filled == 8 {
                    raw.append(UInt8(truncatingIfNeeded: byte))
                    byte = 0
                    filled = 0
                }
            }
        } else if !paletteFull && best == paletteRLE {
            raw.append(UInt8(128 + palette.count))
            appendPalette(converter, compact)
            var p = 0
            while p < count {
                let colour = tile[p]
                var end = p + 1
                while end < count && tile[end] == colour { end += 1 }
                let index = UInt8(paletteIndex(colour) ?? 0)
                if end - p == 1 {
                    raw.append(index)
                } else {
                    raw.append(index | 0x80)
                    appendRunLength(end - p)
                }
                p = end
            }
        } else if best == plainRLE {
            raw.append(128)
            var p = 0
            while p < count {
                let colour = tile[p]
                var end = p + 1
                while end < count && tile[end] == colour { end += 1 }
                appendCompact(colour, converter, compact)
                appendRunLength(end - p)
                p = end
            }
        } else {
            raw.append(0)
            for p in 0..<count { appendCompact(tile[p], converter, compact) }
        }
    }
}
