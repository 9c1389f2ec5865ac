/// RFB encoding numbers the server knows (RFB §7.7, §7.8).
enum RFBEncoding {
    static let raw: Int32 = 0
    static let hextile: Int32 = 5
    static let zrle: Int32 = 16
    static let desktopSize: Int32 = -223
    /// QEMU's extended key events: the client may send XT scan codes with its key events.
    static let qemuExtendedKeyEvent: Int32 = -258
}

/// A rectangle of the framebuffer.
struct Rect: Equatable {
    var x: Int, y: Int, width: Int, height: Int
}

/// Raw and Hextile encoding of framebuffer rectangles into a client's pixel format. One per
/// client; its scratch tile is reused, so encoding allocates nothing per tile.
struct RectEncoder {
    private var tile = [UInt32](repeating: 0, count: 256)

    static func appendRaw(_ pixels: UnsafeBufferPointer<UInt32>, stride: Int, _ r: Rect,
                          _ converter: PixelConverter, to out: inout OutputBuffer) {
        for row in r.y..<(r.y + r.height) {
            let base = row * stride + r.x
            for i in base..<(base + r.width) { converter.append(pixels[i], to: &out) }
        }
    }

    enum Subencoding {
        static let raw: UInt8 = 1
        static let backgroundSpecified: UInt8 = 2
        static let foregroundSpecified: UInt8 = 4
        static let anySubrects: UInt8 = 8
        static let subrectsColoured: UInt8 = 16
    }

    /// Hextile (RFB §7.7.4): 16×16 tiles left to right, top to bottom; each is a solid
    /// background, background plus one-colour subrectangles, background plus coloured
    /// subrectangles, or raw, whichever the tile's content allows in the fewest bytes.
    mutating func appendHextile(_ pixels: UnsafeBufferPointer<UInt32>, stride: Int, _ r: Rect,
                                _ converter: PixelConverter, to out: inout OutputBuffer) {
        var lastBackground: UInt32?
        var ty = r.y
        while ty < r.y + r.height {
            let th = min(16, r.y + r.height - ty)
            var tx = r.x
            while tx < r.x + r.width {
                let tw = min(16, r.x + r.width - tx)
                for row in 0..<th {
                    let base = (ty + row) * stride + tx
                    for col in 0..<tw { tile[row * 16 + col] = pixels[base + col] }
                }
                if let background = appendTile(width: tw, height: th, lastBackground: lastBackground, converter, to: &out) {
                    lastBackground = background
                } else {
                    out.append(Subencoding.raw)
                    Self.appendRaw(pixels, stride: stride, Rect(x: tx, y: ty, width: tw, height: th), converter, to: &out)
                    lastBackground = nil
                }
                tx += 16
            }
            ty += 16
        }
    }

    /// Encodes `tile` (row stride 16) and returns its background, which the next tile may
    /// reuse; nil (with nothing written) when raw is no bigger, and the caller sends it raw.
    private mutating func appendTile(width: Int, height: Int, lastBackground: UInt32?, _ converter: PixelConverter,
                                     to out: inout OutputBuffer) -> UInt32? {
        let background = tile[0]
        var foreground = background
        var colours = 1
        for row in 0..<height {
            for col in 0..<width {
                let p = tile[row * 16 + col]
                if p != background && p != foreground {
                    if colours == 1 { foreground = p }
                    colours += 1
                    if colours > 2 { break }
                }
            }
            if colours > 2 { break }
        }
        let mark = out.endMark
        let bpp = converter.bytesPerPixel
        let rawSize = width * height * bpp
        var flags: UInt8 = 0
        if background != lastBackground { flags |= Subencoding.backgroundSpecified }
        if colours == 1 {
            out.append(flags)
            if flags != 0 { converter.append(background, to: &out) }
            return background
        }
        flags |= Subencoding.anySubrects
        flags |= colours == 2 ? Subencoding.foregroundSpecified : Subencoding.subrectsColoured
        out.append(flags)
        if flags & Subencoding.backgroundSpecified != 0 { converter.append(background, to: &out) }
        if colours == 2 { converter.append(foreground, to: &out) }
        let countMark = out.endMark
        out.append(0)
        var count = 0
        let limit = mark + 1 + rawSize
        for y in 0..<height {
            var x = 0
            while x < width {
                let colour = tile[y * 16 + x]
                if colour == background {
                    x += 1
                    continue
                }
                // Grow right along the row, then down while the whole span matches.
                var w = 1
                while x + w < width && tile[y * 16 + x + w] == colour { w += 1 }
                var h = 1
                growing: while y + h < height {
                    for i in x..<(x + w) where tile[(y + h) * 16 + i] != colour { break growing }
                    h += 1
                }
                for row in y..<(y + h) {
                    for i in x..<(x + w) { tile[row * 16 + i] = background }
                }
                count += 1
                if colours > 2 { converter.append(colour, to: &out) }
                out.append(UInt8(x << 4 | y))
                out.append(UInt8((w - 1) << 4 | (h - 1)))
                if count == 255 || out.endMark >= limit {
                    out.truncate(to: mark)
                    return nil
                }
                x += w
            }
        }
        out.patch8(at: countMark, UInt8(count))
        return background
    }
}
