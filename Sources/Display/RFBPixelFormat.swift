/// An RFB pixel format (RFB §7.4): how a client wants pixels. Only true-colour formats are
/// served; colour maps would need SetColourMapEntries, which no modern client requires.
struct RFBPixelFormat: Equatable {
    var bitsPerPixel: UInt8
    var depth: UInt8
    var bigEndian: Bool
    var redMax: UInt16
    var greenMax: UInt16
    var blueMax: UInt16
    var redShift: UInt8
    var greenShift: UInt8
    var blueShift: UInt8

    /// What the server offers in ServerInit: the framebuffer's own 0x00RRGGBB, little-endian.
    static let native = RFBPixelFormat(bitsPerPixel: 32, depth: 24, bigEndian: false, redMax: 255, greenMax: 255,
                                       blueMax: 255, redShift: 16, greenShift: 8, blueShift: 0)

    enum Invalid: Error, Equatable {
        case colourMap
        case bitsPerPixel(UInt8)
        case channel(String)
    }

    /// Parses the 16 bytes of a PIXEL_FORMAT and checks that it is something we can produce.
    init(bytes b: ArraySlice<UInt8>) throws(Invalid) {
        let base = b.startIndex
        func u16(_ i: Int) -> UInt16 { UInt16(b[base + i]) << 8 | UInt16(b[base + i + 1]) }
        bitsPerPixel = b[base]
        depth = b[base + 1]
        bigEndian = b[base + 2] != 0
        guard b[base + 3] != 0 else { throw .colourMap }
        redMax = u16(4)
        greenMax = u16(6)
        blueMax = u16(8)
        redShift = b[base + 10]
        greenShift = b[base + 11]
        blueShift = b[base + 12]
        guard [8, 16, 32].contains(bitsPerPixel) else { throw .bitsPerPixel(bitsPerPixel) }
        for (name, max, shift) in [("red", redMax, redShift), ("green", greenMax, greenShift), ("blue", blueMax, blueShift)] {
            // A channel is 1 to 8 bits wide (a max of 2^n-1) and lies inside the pixel.
            guard max != 0, max & (max &+ 1) == 0, max <= 255,
                  Int(shift) + max.nonzeroBitCount <= Int(bitsPerPixel) else { throw .channel(name) }
        }
    }

    init(bitsPerPixel: UInt8, depth: UInt8, bigEndian: Bool, redMax: UInt16, greenMax: UInt16, blueMax: UInt16,
         redShift: UInt8, greenShift: UInt8, blueShift: UInt8) {
        self.bitsPerPixel = bitsPerPixel
        self.depth = depth
        self.bigEndian = bigEndian
        self.redMax = redMax
        self.greenMax = greenMax
        self.blueMax = blueMax
        self.redShift = redShift
        self.greenShift = greenShift
        self.blueShift = blueShift
    }

    var bytes: [UInt8] {
        [bitsPerPixel, depth, bigEndian ? 1 : 0, 1,
         UInt8(redMax >> 8), UInt8(truncatingIfNeeded: redMax), UInt8(greenMax >> 8), UInt8(truncatingIfNeeded: greenMax),
         UInt8(blueMax >> 8), UInt8(truncatingIfNeeded: blueMax), redShift, greenShift, blueShift, 0, 0, 0]
    }

    var bytesPerPixel: Int { Int(bitsPerPixel) / 8 }
}

/// Turns framebuffer pixels (0x00RRGGBB) into a client's format, with the shifts worked out
/// once per SetPixelFormat.
struct PixelConverter {
    let format: RFBPixelFormat
    let bytesPerPixel: Int
    private let isNative: Bool
    private let redDrop: UInt32, greenDrop: UInt32, blueDrop: UInt32
    private let redShift: UInt32, greenShift: UInt32, blueShift: UInt32

    init(_ format: RFBPixelFormat) {
        self.format = format
        bytesPerPixel = format.bytesPerPixel
        isNative = format == .native || (format.bitsPerPixel == 32 && !format.bigEndian && format.redMax == 255
            && format.greenMax == 255 && format.blueMax == 255 && format.redShift == 16 && format.greenShift == 8
            && format.blueShift == 0)
        redDrop = UInt32(8 - format.redMax.nonzeroBitCount)
        greenDrop = UInt32(8 - format.greenMax.nonzeroBitCount)
        blueDrop = UInt32(8 - format.blueMax.nonzeroBitCount)
        redShift = UInt32(format.redShift)
        greenShift = UInt32(format.greenShift)
        blueShift = UInt32(format.blueShift)
    }

    @inline(__always)
    func value(_ pixel: UInt32) -> UInt32 {
        if isNative { return pixel & 0x00FF_FFFF }
        let r = (pixel >> 16 & 0xFF) >> redDrop
        let g = (pixel >> 8 & 0xFF) >> greenDrop
        let b = (pixel & 0xFF) >> blueDrop
        return r << redShift | g << greenShift | b << blueShift
    }

    @inline(__always)
    func append(_ pixel: UInt32, to out: inout OutputBuffer) {
        let v = value(pixel)
        switch bytesPerPixel {
        case 1:
            out.append(UInt8(truncatingIfNeeded: v))
        case 2:
            if format.bigEndian {
                out.append(UInt8(truncatingIfNeeded: v >> 8))
                out.append(UInt8(truncatingIfNeeded: v))
            } else {
                out.append(UInt8(truncatingIfNeeded: v))
                out.append(UInt8(truncatingIfNeeded: v >> 8))
            }
        default:
            if format.bigEndian {
                out.append32(v)
            } else {
                out.append(UInt8(truncatingIfNeeded: v))
                out.append(UInt8(truncatingIfNeeded: v >> 8))
                out.append(UInt8(truncatingIfNeeded: v >> 16))
                out.append(UInt8(truncatingIfNeeded: v >> 24))
            }
        }
    }
}
