import XCTest
@testable import DMCore
@testable import Devices

/// A blitter on a small VRAM, programmed register by register as a driver does.
private final class BlitRig {
    let log = GuestErrorLog(burst: 1000) { _ in }
    let blitter: CirrusBlitter
    var vram: [UInt8]

    init(vramSize: Int = 64 * 1024) {
        blitter = CirrusBlitter(vramSize: vramSize, log: log)
        vram = [UInt8](repeating: 0, count: vramSize)
    }

    @discardableResult
    func set(_ index: Int, _ value: UInt8) -> Range<Int>? {
        vram.withUnsafeMutableBytes { blitter.write(register: index, value, vram: $0) }
    }

    func set16(_ index: Int, _ value: Int) {
        set(index, UInt8(value & 0xff))
        set(index + 1, UInt8((value >> 8) & 0xff))
    }

    func set24(_ index: Int, _ value: Int) {
        set16(index, value)
        set(index + 2, UInt8((value >> 16) & 0xff))
    }

    /// Programs a blit; `width` in bytes, pitches in bytes.
    func program(width: Int, height: Int, destination: Int, destinationPitch: Int,
                 source: Int = 0, sourcePitch: Int = 0, mode: CirrusBlitter.Mode = [],
                 modeExt: CirrusBlitter.ModeExtension = [], rop: CirrusBlitter.RasterOp = .source) {
        set16(0x20, width - 1)
        set16(0x22, height - 1)
        set16(0x24, destinationPitch)
        set16(0x26, sourcePitch)
        set24(0x2c, source)
        set(0x30, mode.rawValue)
        set(0x32, rop.rawValue)
        set(0x33, modeExt.rawValue)
        set24(0x28, destination)
    }

    @discardableResult
    func start() -> Range<Int>? { set(0x31, CirrusBlitter.Status.start.rawValue) }

    func colours(foreground: UInt32, background: UInt32) {
        for (i, index) in [0x01, 0x11, 0x13, 0x15].enumerated() { set(index, UInt8(truncatingIfNeeded: foreground >> (8 * i))) }
        for (i, index) in [0x00, 0x10, 0x12, 0x14].enumerated() { set(index, UInt8(truncatingIfNeeded: background >> (8 * i))) }
    }

    func feed(_ bytes: [UInt8]) -> [Range<Int>] {
        var written: [Range<Int>] = []
        for b in bytes {
            if let r = vram.withUnsafeMutableBytes({ blitter.writeSystemSource(b, vram: $0) }) { written.append(r) }
        }
        return written
    }

    var status: CirrusBlitter.Status { CirrusBlitter.Status(rawValue: blitter.read(register: 0x31)) }

    func fill(_ range: Range<Int>, _ f: (Int) -> UInt8) { for i in range { vram[i] = f(i) } }
}

final class CirrusBlitterTests: XCTestCase {
    // MARK: Raster operations

    func testEveryRasterOpOnOneByte() {
        let d: UInt8 = 0b1100_1010, s: UInt8 = 0b1010_0110
        let expected: [CirrusBlitter.RasterOp: UInt8] = [
            .zero: 0, .sourceAndDestination: s & d, .noOp: d, .sourceAndNotDestination: s & ~d,
            .notDestination: ~d, .source: s, .one: 0xff, .notSourceAndDestination: ~s & d,
            .sourceXorDestination: s ^ d, .sourceOrDestination: s | d, .notSourceOrNotDestination: ~s | ~d,
            .sourceXnorDestination: ~(s ^ d), .sourceOrNotDestination: s | ~d, .notSource: ~s,
            .notSourceOrDestination: ~s | d, .notSourceAndNotDestination: ~s & ~d,
        ]
        XCTAssertEqual(expected.count, 16)
        for (rop, result) in expected {
            let rig = BlitRig()
            rig.vram[0] = s
            rig.vram[100] = d
            rig.program(width: 1, height: 1, destination: 100, destinationPitch: 1, source: 0, sourcePitch: 1, rop: rop)
            XCTAssertEqual(rig.start(), 100..<101, "\(rop)")
            XCTAssertEqual(rig.vram[100], result, "\(rop)")
        }
    }

    func testUndocumentedRopLeavesDestination() {
        let rig = BlitRig()
        rig.vram[0] = 0x55
        rig.vram[10] = 0xaa
        rig.program(width: 1, height: 1, destination: 10, destinationPitch: 1)
        rig.set(0x32, 0x42)
        rig.start()
        XCTAssertEqual(rig.vram[10], 0xaa)
    }

    // MARK: Copies

    func testForwardCopyMovesOnlyTheRectangle() {
        let rig = BlitRig()
        rig.fill(0..<4096) { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        let before = rig.vram
        rig.program(width: 10, height: 4, destination: 8192, destinationPitch: 100, source: 0, sourcePitch: 64)
        XCTAssertEqual(rig.start(), 8192..<(8192 + 3 * 100 + 10))
        for i in 8192..<9000 {
            let row = (i - 8192) / 100, col = (i - 8192) % 100
            let expected = row < 4 && col < 10 ? before[row * 64 + col] : 0
            XCTAssertEqual(rig.vram[i], expected, "byte \(i)")
        }
        XCTAssertEqual(Array(rig.vram[0..<4096]), Array(before[0..<4096]))
        XCTAssertTrue(rig.status.isEmpty)
        XCTAssertEqual(rig.log.count, 0)
    }

    /// Scrolling a window down by one row with overlap: the backwards copy starts at the last
    /// byte of both rectangles and must not smear.
    func testBackwardsOverlappingScroll() {
        let rig = BlitRig()
        let pitch = 32, width = 20, height = 6
        rig.fill(0..<(pitch * 8)) { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let before = rig.vram
        // Source rows 0..<6, destination rows 1..<7, addresses of the last byte.
        let sourceLast = (height - 1) * pitch + width - 1
        rig.program(width: width, height: height, destination: sourceLast + pitch, destinationPitch: pitch,
                    source: sourceLast, sourcePitch: pitch, mode: .backwards)
        XCTAssertEqual(rig.start(), pitch..<(sourceLast + pitch + 1))
        for row in 1...height {
            for col in 0..<width {
                XCTAssertEqual(rig.vram[row * pitch + col], before[(row - 1) * pitch + col], "row \(row) col \(col)")
            }
            XCTAssertEqual(rig.vram[row * pitch + width], before[row * pitch + width])
        }
        XCTAssertEqual(Array(rig.vram[0..<pitch]), Array(before[0..<pitch]))
    }

    func testForwardOverlappingCopyIsSequential() {
        let rig = BlitRig()
        rig.vram[0] = 9
        // Copying 0..<8 to 1..<9 byte by byte propagates the first byte.
        rig.program(width: 8, height: 1, destination: 1, destinationPitch: 8, source: 0, sourcePitch: 8)
        rig.start()
        XCTAssertEqual(Array(rig.vram[0..<10]), [9, 9, 9, 9, 9, 9, 9, 9, 9, 0])
    }

    func testTransparentCopy8And16() {
        let rig = BlitRig()
        rig.vram.replaceSubrange(0..<4, with: [1, 7, 2, 7])
        rig.fill(100..<104) { _ in 0xee }
        rig.program(width: 4, height: 1, destination: 100, destinationPitch: 4, source: 0, sourcePitch: 4,
                    mode: .transparent)
        rig.set(0x34, 7)
        rig.start()
        XCTAssertEqual(Array(rig.vram[100..<104]), [1, 0xee, 2, 0xee])

        // 16 bpp: key 0x1234, with mask ignoring the low nibble.
        rig.vram.replaceSubrange(0..<6, with: [0x35, 0x12, 0x78, 0x56, 0x30, 0x12])
        rig.fill(200..<206) { _ in 0xee }
        rig.program(width: 6, height: 1, destination: 200, destinationPitch: 6, source: 0, sourcePitch: 6,
                    mode: [.transparent, .pixelBytes(2)])
        rig.set(0x34, 0x34)
        rig.set(0x35, 0x12)
        rig.set(0x38, 0x0f)
        rig.start()
        XCTAssertEqual(Array(rig.vram[200..<206]), [0xee, 0xee, 0x78, 0x56, 0xee, 0xee])
        XCTAssertEqual(rig.log.count, 0)
    }

    func testBackwardsTransparent16() {
        let rig = BlitRig()
        rig.vram.replaceSubrange(0..<4, with: [0x11, 0x22, 0x34, 0x12])
        rig.program(width: 4, height: 1, destination: 103, destinationPitch: 4, source: 3, sourcePitch: 4,
                    mode: [.transparent, .backwards, .pixelBytes(2)])
        rig.set(0x34, 0x34)
        rig.set(0x35, 0x12)
        XCTAssertEqual(rig.start(), 100..<104)
        XCTAssertEqual(Array(rig.vram[100..<104]), [0x11, 0x22, 0, 0])
    }

    // MARK: Colour expansion

    func testColourExpandEveryDepth() {
        for pb in 1...4 {
            let rig = BlitRig()
            rig.vram[0] = 0b1010_0000
            rig.vram[1] = 0b1100_0000
            let fg: UInt32 = 0x4433_2211, bg: UInt32 = 0x8877_6655
            rig.colours(foreground: fg, background: bg)
            // 4 pixels a row, two rows, one source byte per row.
            rig.program(width: 4 * pb, height: 2, destination: 1000, destinationPitch: 64, source: 0,
                        mode: [.colourExpand, .pixelBytes(pb)])
            XCTAssertEqual(rig.start(), 1000..<(1064 + 4 * pb))
            func pixel(_ row: Int, _ x: Int) -> UInt32 {
                var v: UInt32 = 0
                for i in 0..<pb { v |= UInt32(rig.vram[1000 + row * 64 + x * pb + i]) << (8 * i) }
                return v
            }
            let m: UInt32 = pb == 4 ? .max : (1 << (8 * pb)) - 1
            XCTAssertEqual((0..<4).map { pixel(0, $0) }, [fg, bg, fg, bg].map { $0 & m }, "bpp \(pb)")
            XCTAssertEqual((0..<4).map { pixel(1, $0) }, [fg, fg, bg, bg].map { $0 & m }, "bpp \(pb)")
        }
    }

    func testTransparentColourExpandAndInversionAndClipping() {
        let rig = BlitRig()
        rig.vram[0] = 0b1010_1010
        rig.colours(foreground: 0x11, background: 0x22)
        rig.fill(100..<108) { _ in 0xee }
        rig.program(width: 8, height: 1, destination: 100, destinationPitch: 8, mode: [.colourExpand, .transparent])
        rig.start()
        XCTAssertEqual(Array(rig.vram[100..<108]), [0x11, 0xee, 0x11, 0xee, 0x11, 0xee, 0x11, 0xee])

        rig.fill(100..<108) { _ in 0xee }
        rig.program(width: 8, height: 1, destination: 100, destinationPitch: 8, mode: [.colourExpand, .transparent],
                    modeExt: .invertExpansion)
        rig.start()
        XCTAssertEqual(Array(rig.vram[100..<108]), [0xee, 0x22, 0xee, 0x22, 0xee, 0x22, 0xee, 0x22])

        // Left clip of 3 pixels: destination starts 3 in, source bits too.
        rig.fill(100..<108) { _ in 0xee }
        rig.program(width: 8, height: 1, destination: 100, destinationPitch: 8, mode: .colourExpand)
        rig.set(0x2f, 3)
        XCTAssertEqual(rig.start(), 103..<108)
        XCTAssertEqual(Array(rig.vram[100..<108]), [0xee, 0xee, 0xee, 0x22, 0x11, 0x22, 0x11, 0x22])
    }

    // MARK: Patterns and fills

    func testPatternFillEveryDepthTiles8x8() {
        for pb in 1...4 {
            let rig = BlitRig()
            let rowBytes = pb == 3 ? 32 : 8 * pb
            // Pattern at 512 (aligned for every depth); each pixel's bytes encode (row, column).
            for r in 0..<8 { for c in 0..<8 { for i in 0..<pb { rig.vram[512 + r * rowBytes + c * pb + i] = UInt8(truncatingIfNeeded: r * 16 + c + i * 128) } } }
            rig.program(width: 16 * pb, height: 10, destination: 4096, destinationPitch: 256, source: 512 + 5,
                        mode: [.patternCopy, .pixelBytes(pb)])
            rig.start()
            for y in 0..<10 {
                for x in 0..<16 {
                    for i in 0..<pb {
                        XCTAssertEqual(rig.vram[4096 + y * 256 + x * pb + i], UInt8(truncatingIfNeeded: (y % 8) * 16 + x % 8 + i * 128),
                                       "bpp \(pb) y \(y) x \(x)")
                    }
                }
            }
            XCTAssertEqual(rig.vram[4096 + 16 * pb], 0)
        }
    }

    func testPatternExpandAndSolidFill() {
        let rig = BlitRig()
        for r in 0..<8 { rig.vram[64 + r] = UInt8(0x80 >> r) }     // a diagonal
        rig.colours(foreground: 0xaa, background: 0x55)
        rig.program(width: 8, height: 8, destination: 1024, destinationPitch: 8, source: 64,
                    mode: [.patternCopy, .colourExpand])
        rig.start()
        for y in 0..<8 { for x in 0..<8 { XCTAssertEqual(rig.vram[1024 + y * 8 + x], x == y ? 0xaa : 0x55) } }

        rig.colours(foreground: 0x0102_0304, background: 0)
        rig.program(width: 12, height: 3, destination: 2048, destinationPitch: 16,
                    mode: [.patternCopy, .colourExpand, .pixelBytes(4)], modeExt: .solidFill)
        XCTAssertEqual(rig.start(), 2048..<(2048 + 32 + 12))
        for y in 0..<3 {
            XCTAssertEqual(Array(rig.vram[(2048 + y * 16)..<(2048 + y * 16 + 12)]), [4, 3, 2, 1, 4, 3, 2, 1, 4, 3, 2, 1])
            XCTAssertEqual(rig.vram[2048 + y * 16 + 12], 0)
        }
    }

    /// QEMU's rules, kept so pictures match it: 16/32-bit pixels land at addresses rounded down
    /// to their size, and a monochrome source byte is read once for its 8 pixels even when the
    /// expansion overwrites it on the way.
    func testPixelRoundingAndSourceByteReadOnce() {
        let rig = BlitRig()
        rig.colours(foreground: 0x2211, background: 0)
        rig.program(width: 4, height: 1, destination: 101, destinationPitch: 4,
                    mode: [.patternCopy, .colourExpand, .pixelBytes(2)], modeExt: .solidFill)
        XCTAssertEqual(rig.start(), 100..<105)
        XCTAssertEqual(Array(rig.vram[99..<106]), [0, 0x11, 0x22, 0x11, 0x22, 0, 0])

        // The source byte sits under the first destination pixels: all 8 bits still come from
        // its value before the blit.
        rig.vram[200] = 0b1111_0000
        rig.colours(foreground: 0x00, background: 0x0F)
        rig.program(width: 8, height: 1, destination: 200, destinationPitch: 8, source: 200, mode: .colourExpand)
        rig.start()
        XCTAssertEqual(Array(rig.vram[200..<208]), [0, 0, 0, 0, 0x0F, 0x0F, 0x0F, 0x0F])
    }

    // MARK: System source

    func testSystemSourceCopyLineByLine() {
        let rig = BlitRig()
        // 6 bytes a row arrive padded to 8.
        rig.program(width: 6, height: 2, destination: 300, destinationPitch: 10, mode: .systemSource)
        rig.start()
        XCTAssertTrue(rig.blitter.isAwaitingSystemSource)
        XCTAssertTrue(rig.status.contains(.busy))
        XCTAssertEqual(rig.feed([1, 2, 3, 4, 5, 6, 0, 0]), [300..<306])
        XCTAssertTrue(rig.status.contains(.busy))
        XCTAssertEqual(rig.feed([7, 8, 9, 10, 11, 12, 0, 0]), [310..<316])
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource)
        XCTAssertFalse(rig.status.contains(.busy))
        XCTAssertEqual(Array(rig.vram[300..<316]), [1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 7, 8, 9, 10, 11, 12])
        XCTAssertEqual(rig.feed([99]), [], "no blit pending: bytes are not the blitter's")
    }

    func testSystemSourceColourExpandDwordGranularity() {
        let rig = BlitRig()
        rig.colours(foreground: 0xff, background: 0x00)
        // 10 pixels a row: 2 bytes of bits, padded to 4 with dword granularity.
        rig.program(width: 10, height: 2, destination: 0, destinationPitch: 16, mode: [.systemSource, .colourExpand],
                    modeExt: .dwordGranularity)
        rig.start()
        XCTAssertEqual(rig.feed([0b1000_0000, 0b0100_0000, 0xde]), [])
        XCTAssertEqual(rig.feed([0xad]), [0..<10])
        XCTAssertEqual(Array(rig.vram[0..<10]), [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xff])
        XCTAssertEqual(rig.feed([0xff, 0xff, 0, 0]), [16..<26])
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource)
    }

    func testSystemSourcePattern() {
        let rig = BlitRig()
        rig.program(width: 8, height: 2, destination: 0, destinationPitch: 8, source: 3,
                    mode: [.systemSource, .patternCopy])
        rig.start()
        var pattern = [UInt8](repeating: 0, count: 64)
        for r in 0..<8 { for c in 0..<8 { pattern[r * 8 + c] = UInt8(r * 10 + c) } }
        XCTAssertEqual(rig.feed(pattern), [0..<16])
        // Source address low bits pick the first pattern row.
        XCTAssertEqual(Array(rig.vram[0..<8]), (0..<8).map { UInt8(30 + $0) })
        XCTAssertEqual(Array(rig.vram[8..<16]), (0..<8).map { UInt8(40 + $0) })
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource)
    }

    func testResetBitAbortsPendingBlit() {
        let rig = BlitRig()
        rig.program(width: 4, height: 4, destination: 0, destinationPitch: 4, mode: .systemSource)
        rig.start()
        rig.set(0x31, CirrusBlitter.Status.reset.rawValue)
        rig.set(0x31, 0)
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource)
        XCTAssertTrue(rig.status.isEmpty)
        XCTAssertEqual(rig.feed([1, 2, 3, 4]), [])
    }

    func testAutoStartOnDestinationHighByte() {
        let rig = BlitRig()
        rig.vram[0] = 0x42
        rig.set(0x31, CirrusBlitter.Status.autoStart.rawValue)
        rig.program(width: 1, height: 1, destination: 50, destinationPitch: 1, source: 0, sourcePitch: 1)
        XCTAssertEqual(rig.vram[50], 0x42)
    }

    func testMMIORegisterMap() {
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x00), 0x00)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x03), 0x14)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x04), 0x01)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x07), 0x15)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x08), 0x20)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x12), 0x2a)
        XCTAssertNil(CirrusBlitter.registerIndex(mmioOffset: 0x13))
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x16), 0x2e)
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x18), 0x30)
        XCTAssertNil(CirrusBlitter.registerIndex(mmioOffset: 0x19))
        XCTAssertEqual(CirrusBlitter.registerIndex(mmioOffset: 0x40), 0x31)
        XCTAssertNil(CirrusBlitter.registerIndex(mmioOffset: 0x41))
        XCTAssertNil(CirrusBlitter.registerIndex(mmioOffset: -1))
    }

    func testRegisterWriteMasks() {
        let rig = BlitRig()
        for (index, mask) in [(0x21, 0x1f), (0x23, 0x07), (0x25, 0x1f), (0x27, 0x1f), (0x2e, 0x3f)] {
            rig.set(index, 0xff)
            XCTAssertEqual(Int(rig.blitter.read(register: index)), mask)
        }
        rig.set(0x36, 0xff)
        XCTAssertEqual(rig.blitter.read(register: 0x36), 0)
        rig.set(0x31, CirrusBlitter.Status.busy.rawValue)
        XCTAssertFalse(rig.status.contains(.busy), "the guest cannot set busy")
    }

    // MARK: Hostile registers

    private func assertRefused(_ rig: BlitRig, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        let before = rig.vram
        let errors = rig.log.count
        XCTAssertNil(rig.start(), message, file: file, line: line)
        XCTAssertEqual(rig.vram, before, message, file: file, line: line)
        XCTAssertEqual(rig.log.count, errors + 1, message, file: file, line: line)
        XCTAssertTrue(rig.status.isEmpty, message, file: file, line: line)
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource, message, file: file, line: line)
    }

    func testBlitsLeavingVRAMAreRefusedWhole() {
        let size = 64 * 1024
        let rig = BlitRig(vramSize: size)
        rig.fill(0..<size) { UInt8(truncatingIfNeeded: $0) }
        // The last row would run one byte past the end.
        rig.program(width: 16, height: 2, destination: size - 16 - 100, destinationPitch: 101, source: 0, sourcePitch: 16)
        assertRefused(rig, "destination past end")
        // Maximum width × height from address 0 covers 8192 × 2048 bytes.
        rig.program(width: 8192, height: 2048, destination: 0, destinationPitch: 8191, source: 0, sourcePitch: 8191)
        assertRefused(rig, "huge")
        // Backwards from near the start: rows go below address 0 (CVE-2016-9921's shape).
        rig.program(width: 16, height: 4, destination: 100, destinationPitch: 64, source: 8000, sourcePitch: 64,
                    mode: .backwards)
        assertRefused(rig, "backwards underflow")
        rig.program(width: 200, height: 1, destination: 8000, destinationPitch: 64, source: 100, sourcePitch: 64,
                    mode: .backwards)
        assertRefused(rig, "backwards source underflow")
        // Source rows leave VRAM (CVE-2017-2615's shape: a source beyond the end).
        rig.program(width: 64, height: 100, destination: 0, destinationPitch: 64, source: size - 64 * 50, sourcePitch: 64)
        assertRefused(rig, "source past end")
        // A 32-bpp fill whose last pixel straddles the end although the byte width fits.
        rig.program(width: 5, height: 1, destination: size - 5, destinationPitch: 0,
                    mode: [.patternCopy, .colourExpand, .pixelBytes(4)], modeExt: .solidFill)
        assertRefused(rig, "pixel tail")
        // Colour expansion reading its monochrome source past the end.
        rig.program(width: 64, height: 64, destination: 0, destinationPitch: 64, source: size - 8, mode: .colourExpand)
        assertRefused(rig, "mono source past end")
        // Modes the engine does not do.
        rig.program(width: 4, height: 1, destination: 0, destinationPitch: 4, mode: .systemDestination)
        assertRefused(rig, "system destination")
        rig.program(width: 4, height: 1, destination: 100, destinationPitch: 4, mode: [.systemSource, .backwards])
        assertRefused(rig, "backwards system source")
        rig.program(width: 6, height: 1, destination: 0, destinationPitch: 6, source: 100, sourcePitch: 6,
                    mode: [.transparent, .pixelBytes(3)])
        assertRefused(rig, "transparent 24bpp")
        rig.program(width: 8, height: 1, destination: 0, destinationPitch: 8, mode: [.transparent, .patternCopy])
        assertRefused(rig, "transparent pattern")
    }

    func testAddressesBeyondVRAMWrapLikeTheDecoder() {
        // Register addresses hold 22 bits; a 64 KiB VRAM keeps the low 16.
        let rig = BlitRig(vramSize: 64 * 1024)
        rig.vram[0x10] = 0x77
        rig.program(width: 1, height: 1, destination: 0x3f_0020, destinationPitch: 1, source: 0x12_0010, sourcePitch: 1)
        XCTAssertEqual(rig.start(), 0x20..<0x21)
        XCTAssertEqual(rig.vram[0x20], 0x77)
    }

    func testVRAMBufferSmallerThanDeclaredIsRefused() {
        let log = GuestErrorLog(burst: 10) { _ in }
        let blitter = CirrusBlitter(vramSize: 4096, log: log)
        var small = [UInt8](repeating: 0, count: 100)
        _ = small.withUnsafeMutableBytes { vram in
            blitter.write(register: 0x31, CirrusBlitter.Status.start.rawValue, vram: vram)
        }
        XCTAssertEqual(log.count, 1)
        XCTAssertEqual(small, [UInt8](repeating: 0, count: 100))
    }

    /// Random register files on a VRAM with guard bytes around it: nothing outside VRAM is ever
    /// touched, refused blits change nothing, accepted ones only the range they report.
    func testRandomRegistersNeverEscape() {
        let size = 4096, guardBytes = 4096
        var rng = SystemRandomNumberGenerator()
        let log = GuestErrorLog(burst: 0) { _ in }
        let blitter = CirrusBlitter(vramSize: size, log: log)
        var memory = [UInt8](repeating: 0xc5, count: size + 2 * guardBytes)
        var roundsThatDrew = 0
        for round in 0..<2000 {
            for i in guardBytes..<(guardBytes + size) { memory[i] = UInt8.random(in: 0...255, using: &rng) }
            let before = memory
            var writes: [Range<Int>] = []
            let refusedBefore = log.count
            memory.withUnsafeMutableBytes { all in
                let vram = UnsafeMutableRawBufferPointer(rebasing: all[guardBytes..<(guardBytes + size)])
                // Small values most of the time so many blits are accepted.
                for index in 0..<0x40 where CirrusBlitter.ownsRegister(index) && index != 0x31 && index != 0x2a {
                    let big = Bool.random(using: &rng) && Bool.random(using: &rng)
                    let plausible: UInt8
                    switch index {
                    case 0x20: plausible = .random(in: 0...63, using: &rng)
                    case 0x22: plausible = .random(in: 0...15, using: &rng)
                    case 0x24, 0x26: plausible = .random(in: 0...127, using: &rng)
                    case 0x29, 0x2d: plausible = .random(in: 0...15, using: &rng)
                    case 0x21, 0x23, 0x25, 0x27, 0x2e: plausible = 0
                    default: plausible = .random(in: 0...255, using: &rng)
                    }
                    let value: UInt8 = big ? .random(in: 0...255, using: &rng) : plausible
                    blitter.write(register: index, value, vram: vram)
                }
                blitter.write(register: 0x2a, .random(in: 0...3, using: &rng), vram: vram)
                if let r = blitter.write(register: 0x31, CirrusBlitter.Status.start.rawValue, vram: vram) { writes.append(r) }
                var fed = 0
                while blitter.isAwaitingSystemSource && fed < 20000 {
                    if let r = blitter.writeSystemSource(.random(in: 0...255, using: &rng), vram: vram) { writes.append(r) }
                    fed += 1
                }
                blitter.write(register: 0x31, CirrusBlitter.Status.reset.rawValue, vram: vram)
                blitter.write(register: 0x31, 0, vram: vram)
            }
            XCTAssertEqual(Array(memory[0..<guardBytes]), Array(before[0..<guardBytes]), "round \(round)")
            XCTAssertEqual(Array(memory[(guardBytes + size)...]), Array(before[(guardBytes + size)...]), "round \(round)")
            for r in writes { XCTAssertTrue(r.lowerBound >= 0 && r.upperBound <= size, "round \(round): \(r)") }
            let escaped = (0..<size).first { i in
                memory[guardBytes + i] != before[guardBytes + i] && !writes.contains { $0.contains(i) }
            }
            XCTAssertNil(escaped, "round \(round): a byte changed outside the reported ranges")
            if log.count > refusedBefore { XCTAssertTrue(writes.isEmpty, "round \(round): refused but wrote") }
            if !writes.isEmpty { roundsThatDrew += 1 }
        }
        XCTAssertGreaterThan(roundsThatDrew, 200, "the random registers should mostly describe blits that run")
        XCTAssertGreaterThan(log.count, 200, "and many that are refused")
    }

    // MARK: Save/restore

    func testPendingSystemSourceBlitSurvivesSaveRestore() throws {
        let rig = BlitRig()
        rig.program(width: 4, height: 3, destination: 40, destinationPitch: 4, mode: .systemSource)
        rig.start()
        _ = rig.feed([1, 2, 3, 4, 5, 6])
        var w = StateWriter()
        rig.blitter.saveState(to: &w)

        let other = BlitRig()
        var r = StateReader(bytes: w.bytes, section: "cirrus")
        try other.blitter.loadState(from: &r)
        XCTAssertTrue(r.isAtEnd)
        XCTAssertTrue(other.blitter.isAwaitingSystemSource)
        XCTAssertTrue(other.status.contains(.busy))
        // The guest reprogramming registers after the start does not change the running blit.
        other.set24(0x28, 9999)
        XCTAssertEqual(other.feed([7, 8, 9, 10, 11, 12]), [44..<48, 48..<52])
        XCTAssertEqual(Array(other.vram[40..<52]), [0, 0, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12])
        XCTAssertFalse(other.blitter.isAwaitingSystemSource)
    }

    func testHostileStateIsRejected() {
        let rig = BlitRig()
        // A "pending" blit whose registers describe a blit leaving VRAM.
        var gr = [UInt8](repeating: 0, count: 0x40)
        gr[0x20] = 0xff; gr[0x21] = 0x1f; gr[0x22] = 0xff; gr[0x23] = 0x07; gr[0x24] = 0xff; gr[0x25] = 0x1f
        gr[0x30] = CirrusBlitter.Mode.systemSource.rawValue
        var w = StateWriter()
        w.put(bytes: [UInt8](repeating: 0, count: 0x40))
        w.put(true)
        w.put(bytes: gr)
        w.put(UInt32(0))
        w.put(bytes: [UInt8]())
        var r = StateReader(bytes: w.bytes, section: "cirrus")
        XCTAssertThrowsError(try rig.blitter.loadState(from: &r))

        // A valid pending blit with too many rows done or too many buffered bytes.
        var ok = [UInt8](repeating: 0, count: 0x40)
        ok[0x20] = 3; ok[0x22] = 1; ok[0x24] = 4; ok[0x30] = CirrusBlitter.Mode.systemSource.rawValue
        for (rows, buffered) in [(2, 0), (0, 4)] {
            var w = StateWriter()
            w.put(bytes: [UInt8](repeating: 0, count: 0x40))
            w.put(true)
            w.put(bytes: ok)
            w.put(UInt32(rows))
            w.put(bytes: [UInt8](repeating: 1, count: buffered))
            var r = StateReader(bytes: w.bytes, section: "cirrus")
            XCTAssertThrowsError(try rig.blitter.loadState(from: &r), "rows \(rows) buffered \(buffered)")
        }
        XCTAssertFalse(rig.blitter.isAwaitingSystemSource)
    }
}
