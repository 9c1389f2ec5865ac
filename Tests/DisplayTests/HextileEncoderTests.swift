import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import Display

/// The encoder alone, against the test's own decoder: random pictures with few or many colours,
/// rectangles of every awkward size and offset, and a check that reusing the encoder (its
/// scratch tile) across rectangles changes nothing.
final class HextileEncoderTests: XCTestCase {
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 11 ^ state << 7
        }
    }

    func testRandomPicturesRoundTrip() throws {
        var random = Generator(state: 42)
        let width = 83, height = 61
        var encoder = RectEncoder()
        for round in 0..<60 {
            let colours = [1, 2, 3, 5, 40, 1 << 24][round % 6]
            let palette = (0..<min(colours, 64)).map { _ in UInt32.random(in: 0...0xFF_FFFF, using: &random) }
            let blockSize = Int.random(in: 1...9, using: &random)
            let pixels = (0..<(width * height)).map { i -> UInt32 in
                let x = i % width / blockSize, y = i / width / blockSize
                if colours > 64 { return UInt32.random(in: 0...0xFF_FFFF, using: &random) }
                return palette[(x * 7 + y * 13 + Int(UInt64(x * y) % 3)) % palette.count]
            }
            let rx = Int.random(in: 0..<width, using: &random), ry = Int.random(in: 0..<height, using: &random)
            let rect = Rect(x: rx, y: ry, width: Int.random(in: 1...(width - rx), using: &random),
                            height: Int.random(in: 1...(height - ry), using: &random))
            for format in [TestPixelFormat.native,
                           TestPixelFormat(bitsPerPixel: 16, bigEndian: true, redMax: 31, greenMax: 63, blueMax: 31,
                                           redShift: 11, greenShift: 5, blueShift: 0)] {
                let serverFormat = RFBPixelFormat(bitsPerPixel: UInt8(format.bitsPerPixel), depth: 24, bigEndian: format.bigEndian,
                                                  redMax: UInt16(format.redMax), greenMax: UInt16(format.greenMax),
                                                  blueMax: UInt16(format.blueMax), redShift: UInt8(format.redShift),
                                                  greenShift: UInt8(format.greenShift), blueShift: UInt8(format.blueShift))
                var out = OutputBuffer()
                pixels.withUnsafeBufferPointer {
                    encoder.appendHextile($0, stride: width, rect, PixelConverter(serverFormat), to: &out)
                }
                let bytes = out.bytes
                var offset = 0
                func read(_ n: Int) throws -> [UInt8] {
                    guard offset + n <= bytes.count else { throw RFBTestClient.Failure("encoding too short") }
                    defer { offset += n }
                    return Array(bytes[offset..<(offset + n)])
                }
                var decoded = [UInt32](repeating: 0xDEAD_BEEF, count: width * height)
                try HextileDecoder.decode(rect.x, rect.y, rect.width, rect.height, format: format, read: read,
                                          into: &decoded, stride: width)
                XCTAssertEqual(offset, bytes.count, "round \(round): every byte consumed")
                for y in 0..<height {
                    for x in 0..<width {
                        let inside = x >= rect.x && x < rect.x + rect.width && y >= rect.y && y < rect.y + rect.height
                        let want = inside ? format.expected(pixels[y * width + x]) : 0xDEAD_BEEF
                        if decoded[y * width + x] != want {
                            return XCTFail("round \(round), \(format.bitsPerPixel) bpp, rect \(rect): pixel (\(x), \(y))")
                        }
                    }
                }
                // Never bigger than raw plus one subencoding byte per tile.
                let tiles = ((rect.width + 15) / 16) * ((rect.height + 15) / 16)
                XCTAssertLessThanOrEqual(bytes.count, rect.width * rect.height * format.bytesPerPixel + tiles)
            }
        }
    }
}

/// Encoding an update (Hextile, Raw, ZRLE) allocates nothing once the client's buffers have grown, when the
/// malloc-counting interposer is preloaded (`fuzz/ioreq/alloc-check.sh <bundle>
/// DisplayTests.EncoderAllocationTests/testEncodingAllocatesNothing`); skips otherwise.
final class EncoderAllocationTests: XCTestCase {
    func testEncodingAllocatesNothing() throws {
        guard let symbol = dlsym(nil, "sdm_alloc_count") else {  // RTLD_DEFAULT is NULL on glibc
            throw XCTSkip("run through fuzz/ioreq/alloc-check.sh to count allocations")
        }
        let allocations = unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
        let width = 320, height = 200
        var pixels = [UInt32](repeating: 0, count: width * height)
        var encoder = RectEncoder()
        var zrle = ZRLEEncoder()
        var out = OutputBuffer()
        let converters = [PixelConverter(.native),
                          PixelConverter(RFBPixelFormat(bitsPerPixel: 16, depth: 16, bigEndian: true, redMax: 31, greenMax: 63,
                                                        blueMax: 31, redShift: 11, greenShift: 5, blueShift: 0))]
        var counted: [UInt64] = []
        for round in 0..<20 {
            for i in pixels.indices {
                pixels[i] = i % 7 == round % 7 ? 0xFF_FFFF : UInt32(truncatingIfNeeded: (i / 40) &* 2_654_435_761) & 0xF0F0F0
            }
            for converter in converters {
                out.removeAll()
                let before = allocations()
                pixels.withUnsafeBufferPointer { p in
                    encoder.appendHextile(p, stride: width, Rect(x: 0, y: 0, width: width, height: height), converter, to: &out)
                    RectEncoder.appendRaw(p, stride: width, Rect(x: 3, y: 5, width: 100, height: 50), converter, to: &out)
                    zrle.append(p, stride: width, Rect(x: 0, y: 0, width: width, height: height), converter, to: &out)
                }
                let after = allocations()
                if round > 0 { counted.append(after - before) }  // round 0 grows the buffer
            }
        }
        XCTAssertEqual(counted.reduce(0, +), 0, "allocations per update: \(counted.prefix(20))")
    }
}
