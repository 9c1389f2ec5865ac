import XCTest
@testable import Display

/// RFC 1951 inflation of what the encoder emits (fixed-Huffman and stored blocks), written
/// from the RFC for the test.
struct TestInflater {
    struct Failure: Error {}
    let input: [UInt8]
    var position = 0
    var bitBuffer = 0
    var bitCount = 0
    var output: [UInt8] = []

    mutating func bit() throws -> Int {
        if bitCount == 0 {
            guard position < input.count else { throw Failure() }
            bitBuffer = Int(input[position])
            position += 1
            bitCount = 8
        }
        let b = bitBuffer & 1
        bitBuffer >>= 1
        bitCount -= 1
        return b
    }
    mutating func bits(_ n: Int) throws -> Int {
        var v = 0
        for i in 0..<n { v |= try bit() << i }
        return v
    }
    mutating func code(_ n: Int) throws -> Int {
        var v = 0
        for _ in 0..<n { v = v << 1 | (try bit()) }
        return v
    }
    mutating func symbol() throws -> Int {
        var c = try code(7)
        if c <= 23 { return 256 + c }
        c = c << 1 | (try bit())
        if (0x30...0xBF).contains(c) { return c - 0x30 }
        if (0xC0...0xC7).contains(c) { return 280 + c - 0xC0 }
        c = c << 1 | (try bit())
        guard (0x190...0x1FF).contains(c) else { throw Failure() }
        return 144 + c - 0x190
    }
    static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
                               4097, 6145, 8193, 12289, 16385, 24577]

    /// Inflates every block in the input (which ends at a sync flush).
    mutating func run() throws {
        while position < input.count {
            _ = try bit()  // BFINAL
            switch try bits(2) {
            case 0:
                bitCount = 0
                guard position + 4 <= input.count else { throw Failure() }
                let length = Int(input[position]) | Int(input[position + 1]) << 8
                guard length ^ (Int(input[position + 2]) | Int(input[position + 3]) << 8) == 0xFFFF else { throw Failure() }
                position += 4
                output += input[position..<(position + length)]
                position += length
            case 1:
                while true {
                    let s = try symbol()
                    if s < 256 { output.append(UInt8(s)); continue }
                    if s == 256 { break }
                    let l = s - 257
                    let extra = l < 8 || l == 28 ? 0 : (l - 4) / 4
                    let length = Self.lengthBase[l] + (try bits(extra))
                    let d = try code(5)
                    let distance = Self.distanceBase[d] + (try bits(d < 4 ? 0 : (d - 2) / 2))
                    guard distance <= output.count else { throw Failure() }
                    for _ in 0..<length { output.append(output[output.count - distance]) }
                }
            default:
                throw Failure()
            }
        }
    }
}

/// ZRLE's tile formats, decoded from the specification (RFB §7.7.6), packed rows padded.
enum ZRLEDecoder {
    static func decode(_ data: [UInt8], _ r: Rect, cpixel: Int, format: TestPixelFormat,
                       into pixels: inout [UInt32], stride: Int) throws {
        var at = 0
        func byte() throws -> Int {
            guard at < data.count else { throw TestInflater.Failure() }
            defer { at += 1 }
            return Int(data[at])
        }
        func pixel() throws -> UInt32 {
            var bytes: [UInt8] = []
            for _ in 0..<cpixel { bytes.append(UInt8(try byte())) }
            if cpixel == 3 { bytes.append(0) }  // the formats tested keep colours in the low bytes, little-endian
            return format.decode(bytes, at: 0)
        }
        func runLength() throws -> Int {
            var length = 1
            while true {
                let b = try byte()
                length += b
                if b != 255 { return length }
            }
        }
        var ty = r.y
        while ty < r.y + r.height {
            let th = min(64, r.y + r.height - ty)
            var tx = r.x
            while tx < r.x + r.width {
                let tw = min(64, r.x + r.width - tx)
                var tile: [UInt32] = []
                let sub = try byte()
                switch sub {
                case 0:
                    for _ in 0..<(tw * th) { tile.append(try pixel()) }
                case 1:
                    tile = [UInt32](repeating: try pixel(), count: tw * th)
                case 2...16:
                    var palette: [UInt32] = []
                    for _ in 0..<sub { palette.append(try pixel()) }
                    let bits = sub == 2 ? 1 : (sub <= 4 ? 2 : 4)
                    for _ in 0..<th {
                        var b = 0, left = 0
                        for _ in 0..<tw {
                            if left == 0 { b = try byte(); left = 8 }
                            left -= bits
                            tile.append(palette[(b >> left) & ((1 << bits) - 1)])
                        }
                    }
                case 128:
                    while tile.count < tw * th {
                        let p = try pixel()
                        tile += [UInt32](repeating: p, count: try runLength())
                    }
                case 130...255:
                    var palette: [UInt32] = []
                    for _ in 0..<(sub - 128) { palette.append(try pixel()) }
                    while tile.count < tw * th {
                        let index = try byte()
                        let length = index & 0x80 != 0 ? try runLength() : 1
                        tile += [UInt32](repeating: palette[index & 0x7F], count: length)
                    }
                default:
                    throw TestInflater.Failure()
                }
                guard tile.count == tw * th else { throw TestInflater.Failure() }
                for y in 0..<th { for x in 0..<tw { pixels[(ty + y) * stride + tx + x] = tile[y * tw + x] } }
                tx += 64
            }
            ty += 64
        }
        guard at == data.count else { throw TestInflater.Failure() }
    }
}

final class ZRLEEncoderTests: XCTestCase {
    func testRandomPicturesRoundTripThroughOneStream() throws {
        var random = HextileEncoderTests.Generator(state: 7)
        let width = 150, height = 97
        var encoder = ZRLEEncoder()
        var firstRect = true
        let formats: [(TestPixelFormat, Int)] = [
            (.native, 3),
            (TestPixelFormat(bitsPerPixel: 16, bigEndian: false, redMax: 31, greenMax: 63, blueMax: 31,
                             redShift: 11, greenShift: 5, blueShift: 0), 2),
        ]
        for round in 0..<40 {
            let colours = [1, 2, 3, 4, 9, 16, 17, 100, 200, 1 << 24][round % 10]
            let palette = (0..<min(colours, 256)).map { _ in UInt32.random(in: 0...0xFF_FFFF, using: &random) }
            let runLength = Int.random(in: 1...40, using: &random)
            let pixels = (0..<(width * height)).map { i -> UInt32 in
                if colours > 256 { return UInt32.random(in: 0...0xFF_FFFF, using: &random) }
                return palette[(i / runLength * 7 + i / width) % palette.count]
            }
            let rx = Int.random(in: 0..<width, using: &random), ry = Int.random(in: 0..<height, using: &random)
            let rect = Rect(x: rx, y: ry, width: Int.random(in: 1...(width - rx), using: &random),
                            height: Int.random(in: 1...(height - ry), using: &random))
            let (format, cpixel) = formats[round % 2]
            let serverFormat = RFBPixelFormat(bitsPerPixel: UInt8(format.bitsPerPixel), depth: 24, bigEndian: false,
                                              redMax: UInt16(format.redMax), greenMax: UInt16(format.greenMax),
                                              blueMax: UInt16(format.blueMax), redShift: UInt8(format.redShift),
                                              greenShift: UInt8(format.greenShift), blueShift: UInt8(format.blueShift))
            var out = OutputBuffer()
            pixels.withUnsafeBufferPointer { encoder.append($0, stride: width, rect, PixelConverter(serverFormat), to: &out) }
            let bytes = out.bytes
            let length = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
            XCTAssertEqual(length, bytes.count - 4)
            var stream = Array(bytes[4...])
            if firstRect {
                XCTAssertEqual(Array(stream.prefix(2)), [0x78, 0x01], "zlib header once, at the stream's start")
                stream.removeFirst(2)
                firstRect = false
            }
            var inflater = TestInflater(input: stream)
            try inflater.run()
            var decoded = [UInt32](repeating: 0xDEAD_BEEF, count: width * height)
            try ZRLEDecoder.decode(inflater.output, rect, cpixel: cpixel, format: format, into: &decoded, stride: width)
            for y in rect.y..<(rect.y + rect.height) {
                for x in rect.x..<(rect.x + rect.width) where decoded[y * width + x] != format.expected(pixels[y * width + x]) {
                    return XCTFail("round \(round) (\(colours) colours), rect \(rect): pixel (\(x), \(y))")
                }
            }
        }
    }
}
