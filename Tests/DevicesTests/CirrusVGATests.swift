import DMCore
import XCTest
@testable import Devices

/// The Cirrus GD5446 as a driver programs it: PCI identity, the extension registers, the
/// hidden DAC, banking and write modes 4/5 in the 0xA0000 window, the blitter through its
/// memory-mapped registers and system source, extended-mode pictures and the cursor.
final class CirrusVGATests: XCTestCase {
    final class Rig {
        let pciRig: PCIRig
        let vram: HostDeviceRAM
        let vga: CirrusVGA
        let log = GuestErrorLog(burst: 0) { _ in }
        var ports: Bus { pciRig.ports }
        var mmio: Bus { pciRig.mmio }

        init(vramSize: Int = 4 << 20) throws {
            pciRig = try PCIRig()
            vram = try HostDeviceRAM(size: vramSize)
            vga = try CirrusVGA(vram: vram, rom: [0x55, 0xAA, 0x04], log: log)
            try vga.registerLegacyWindows(ports: pciRig.ports, mmio: pciRig.mmio)
            try pciRig.pci.plug(vga, slot: 2)
            out(0x3C2, 0x67)  // colour decode
        }

        func out(_ port: UInt64, _ value: UInt8) { ports.write(port, size: 1, value: UInt64(value)) }
        func inb(_ port: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: ports.read(port, size: 1)) }
        func sequencer(_ index: UInt8, _ value: UInt8) { out(0x3C4, index); out(0x3C5, value) }
        func sequencer(_ index: UInt8) -> UInt8 { out(0x3C4, index); return inb(0x3C5) }
        func graphics(_ index: UInt8, _ value: UInt8) { out(0x3CE, index); out(0x3CF, value) }
        func graphics(_ index: UInt8) -> UInt8 { out(0x3CE, index); return inb(0x3CF) }
        func crtc(_ index: UInt8, _ value: UInt8) { out(0x3D4, index); out(0x3D5, value) }
        func crtc(_ index: UInt8) -> UInt8 { out(0x3D4, index); return inb(0x3D5) }
        func window(_ offset: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: mmio.read(0xA0000 + offset, size: 1)) }
        func window(_ offset: UInt64, _ value: UInt8) { mmio.write(0xA0000 + offset, size: 1, value: UInt64(value)) }
        func peek(_ offset: Int) -> UInt8 { vram.withBytes { $0[offset] } }
        func poke(_ offset: Int, _ bytes: [UInt8]) {
            vram.withBytes { for (i, b) in bytes.enumerated() { $0[offset + i] = b } }
            vram.deviceWrote(offset: offset, length: bytes.count)
        }

        /// An extended mode of `width`×`height`, `lineBytes` apart, with SR7 `sr7` (depth), the
        /// screen on.
        func extendedMode(width: Int, height: Int, lineBytes: Int, sr7: UInt8) {
            sequencer(0x06, 0x12)
            sequencer(0x07, sr7 | 0x01)
            graphics(0x05, 0x40)
            graphics(0x06, 0x05)
            crtc(0x01, UInt8(width / 8 - 1))
            crtc(0x12, UInt8((height - 1) & 0xFF))
            crtc(0x07, UInt8(((height - 1) >> 8) & 1) << 1 | UInt8(((height - 1) >> 9) & 1) << 6)
            crtc(0x13, UInt8((lineBytes / 8) & 0xFF))
            crtc(0x1B, UInt8(((lineBytes / 8) >> 8) & 1) << 4)
            _ = inb(0x3DA)
            out(0x3C0, 0x20)
        }
    }

    // MARK: PCI and identity

    func testPCIIdentityBARsAndChipID() throws {
        let rig = try Rig()
        let devfn = 2 << 3
        XCTAssertEqual(rig.pciRig.read(devfn, 0x00), 0x00B8_1013)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x08), 0x0300_0000)
        rig.pciRig.write(devfn, 0x10, 0xFFFF_FFFF)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x10), 0xFE00_0008, "32 MiB prefetchable BAR0")
        rig.pciRig.write(devfn, 0x14, 0xFFFF_FFFF)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x14), 0xFFFF_F000, "4 KiB MMIO BAR1")
        rig.pciRig.write(devfn, 0x10, 0xF000_0000)
        rig.pciRig.write(devfn, 0x14, 0xF200_0000)
        rig.pciRig.write(devfn, 0x30, 0xF300_0001)
        rig.pciRig.write(devfn, 0x04, 0x0003, size: 2)
        XCTAssertEqual(rig.vram.mappedAddress, 0xF000_0000)
        XCTAssertEqual(rig.mmio.read(0xF300_0000, size: 2), 0xAA55)
        XCTAssertEqual(rig.crtc(0x27), 0xB8, "GD5446 chip ID")
        // VGA ports through BAR1: 0x3C4/0x3C5 at 4/5.
        rig.mmio.write(0xF200_0004, size: 2, value: 0x1206)
        XCTAssertEqual(rig.sequencer(0x06), 0x12)
        // VRAM through BAR0 as MMIO.
        rig.mmio.write(0xF000_0100, size: 4, value: 0xDEAD_BEEF)
        XCTAssertEqual(rig.vram.withBytes { $0.load(fromByteOffset: 0x100, as: UInt32.self) }, 0xDEAD_BEEF)
        XCTAssertEqual(rig.mmio.read(0xF000_0100, size: 4), 0xDEAD_BEEF)
    }

    func testVRAMSizeRules() throws {
        XCTAssertEqual(CirrusVGA.vramSize(megabytes: 4), 4 << 20)
        XCTAssertEqual(CirrusVGA.vramSize(megabytes: 8), 8 << 20)
        XCTAssertNil(CirrusVGA.vramSize(megabytes: 2))
        XCTAssertNil(CirrusVGA.vramSize(megabytes: 12))
        XCTAssertNil(CirrusVGA.vramSize(megabytes: 32))
        XCTAssertThrowsError(try CirrusVGA(vram: try HostDeviceRAM(size: 2 << 20), rom: []))
    }

    // MARK: extension registers

    func testUnlockKeyAndFixedMemoryConfiguration() throws {
        let rig = try Rig()
        XCTAssertEqual(rig.sequencer(0x06), 0x0F, "locked at power-on")
        rig.sequencer(0x06, 0x12)
        XCTAssertEqual(rig.sequencer(0x06), 0x12)
        rig.sequencer(0x06, 0x55)
        XCTAssertEqual(rig.sequencer(0x06), 0x0F)
        XCTAssertEqual(rig.sequencer(0x0F), 0x98)
        XCTAssertEqual(rig.sequencer(0x15), 0x04, "4 MiB")
        rig.sequencer(0x15, 0)
        XCTAssertEqual(rig.sequencer(0x15), 0x04)
        XCTAssertEqual(rig.sequencer(0x17) & 0x38, 0x20)
        rig.sequencer(0x17, 0xFF)
        XCTAssertEqual(rig.sequencer(0x17), 0xE7, "SR17 bits 3-5 are read-only")
        // Standard registers still reach the VGA core.
        rig.sequencer(0x02, 0x0F)
        XCTAssertEqual(rig.sequencer(0x02), 0x0F)
        XCTAssertEqual(rig.vga.core.sequencer[2], 0x0F)
        XCTAssertEqual(rig.sequencer(0x25), 0xFF, "no such register")
        XCTAssertEqual(rig.graphics(0x18), 0x0F)
    }

    func testGR0AndGR1AreFullBytesForTheBlitterAndFourBitsForTheVGA() throws {
        let rig = try Rig()
        rig.graphics(0x00, 0xA5)
        rig.graphics(0x01, 0x5A)
        XCTAssertEqual(rig.graphics(0x00), 0xA5)
        XCTAssertEqual(rig.graphics(0x01), 0x5A)
        XCTAssertEqual(rig.vga.core.graphics[0], 0x05)
        XCTAssertEqual(rig.vga.core.graphics[1], 0x0A)
        rig.graphics(0x21, 0xFF)
        XCTAssertEqual(rig.graphics(0x21), 0x1F, "blit width high bits")
    }

    func testHiddenDACNeedsFourReads() throws {
        let rig = try Rig()
        for _ in 0..<4 { XCTAssertEqual(rig.inb(0x3C6), 0xFF) }
        rig.out(0x3C6, 0xE1)
        for _ in 0..<4 { _ = rig.inb(0x3C6) }
        XCTAssertEqual(rig.inb(0x3C6), 0xE1, "the fifth read returns the hidden DAC")
        // An access to another DAC port in between restarts the count.
        for _ in 0..<3 { _ = rig.inb(0x3C6) }
        _ = rig.inb(0x3C8)
        rig.out(0x3C6, 0x00)
        for _ in 0..<4 { _ = rig.inb(0x3C6) }
        XCTAssertEqual(rig.inb(0x3C6), 0xE1)
    }

    func testCursorPaletteIsHiddenBehindSR12() throws {
        let rig = try Rig()
        rig.sequencer(0x12, 0x02)
        rig.out(0x3C8, 0x0F)
        for v: UInt8 in [0x3F, 0x20, 0x10] { rig.out(0x3C9, v) }
        rig.sequencer(0x12, 0x00)
        XCTAssertEqual(Array(rig.vga.core.dac[45..<48]), [0, 0, 0], "the normal palette is untouched")
        rig.sequencer(0x12, 0x02)
        rig.out(0x3C7, 0x0F)
        XCTAssertEqual([rig.inb(0x3C9), rig.inb(0x3C9), rig.inb(0x3C9)], [0x3F, 0x20, 0x10])
    }

    // MARK: the 0xA0000 window

    func testBanksInFourAndSixteenKiBUnitsAndDualBanks() throws {
        let rig = try Rig()
        rig.sequencer(0x07, 0x01)
        rig.poke(0x2000, [0x11]); rig.poke(0xA000, [0x22]); rig.poke(0x4000, [0x33]); rig.poke(0x3000, [0x44])
        rig.graphics(0x09, 2)
        XCTAssertEqual(rig.window(0x0000), 0x11, "bank 0 at 2 × 4 KiB")
        XCTAssertEqual(rig.window(0x8000), 0x22, "single bank: the second half follows on")
        rig.graphics(0x0B, 0x20)
        rig.graphics(0x09, 1)
        XCTAssertEqual(rig.window(0x0000), 0x33, "16 KiB units")
        rig.graphics(0x0B, 0x01)
        rig.graphics(0x0A, 3)
        XCTAssertEqual(rig.window(0x8000), 0x44, "dual banks: the second at GRA")
        rig.window(0x8001, 0x99)
        XCTAssertEqual(rig.peek(0x3001), 0x99)
        // A bank past the decoded 4 MiB reads nothing and writes nothing.
        rig.graphics(0x0B, 0x21)
        rig.graphics(0x09, 0xFF)
        XCTAssertEqual(rig.window(0x7FFF), 0xFF)
        rig.window(0x7FFF, 0x12)
        // Back in VGA mode the window is the VGA's again.
        rig.sequencer(0x07, 0x00)
        rig.sequencer(0x02, 0x0F)
        rig.sequencer(0x04, 0x08)
        rig.graphics(0x06, 0x05)
        rig.window(0x10, 0x77)
        XCTAssertEqual(rig.peek(0x10), 0x77)
    }

    func testWriteModes4And5ExpandBitsToPixels() throws {
        let rig = try Rig()
        rig.sequencer(0x07, 0x01)
        rig.graphics(0x0B, 0x04)
        rig.graphics(0x00, 0x22)
        rig.graphics(0x01, 0x11)
        rig.poke(0x100, [UInt8](repeating: 0xEE, count: 8))
        rig.graphics(0x05, 0x04)
        rig.window(0x100, 0b1010_0000)
        XCTAssertEqual(rig.vram.withBytes { Array($0[0x100..<0x108]) }, [0x11, 0xEE, 0x11, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE])
        rig.graphics(0x05, 0x05)
        rig.window(0x100, 0b0000_0001)
        XCTAssertEqual(rig.vram.withBytes { Array($0[0x100..<0x108]) }, [0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x11])
        // 16-bit pixels, address scaled by 16.
        rig.graphics(0x0B, 0x14)
        rig.graphics(0x10, 0x44)
        rig.graphics(0x11, 0x33)
        rig.window(0x20, 0b1000_0000)
        XCTAssertEqual(rig.vram.withBytes { Array($0[0x200..<0x204]) }, [0x11, 0x33, 0x22, 0x44])
    }

    // MARK: the blitter through the device

    func testSolidFillThroughWindowMMIOAndBAR1() throws {
        let rig = try Rig()
        rig.sequencer(0x07, 0x01)
        rig.sequencer(0x17, 0x04)
        func blt(_ offset: UInt64, _ value: UInt8) { rig.window(0x18000 + offset, value) }
        blt(0x04, 0x5A)                // foreground
        blt(0x08, 7); blt(0x09, 0)     // 8 bytes wide
        blt(0x0A, 1); blt(0x0B, 0)     // 2 rows
        blt(0x0C, 16); blt(0x0D, 0)    // 16 bytes apart
        blt(0x18, 0xC0)                // pattern + colour expand
        blt(0x1B, 0x04)                // solid fill
        blt(0x1A, 0x0D)                // ROP: source
        blt(0x10, 0x00); blt(0x11, 0x10); blt(0x12, 0x00)
        XCTAssertEqual(rig.window(0x18000 + 0x04), 0x5A)
        blt(0x40, 0x02)
        XCTAssertEqual(rig.vram.withBytes { Array($0[0x1000..<0x1009]) }, [0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0])
        XCTAssertEqual(rig.peek(0x1010 + 7), 0x5A)
        XCTAssertEqual(rig.window(0x18000 + 0x40) & 0x03, 0, "idle again")

        // The same registers through BAR1 at 0x100; a fill running off the end is refused.
        let devfn = 2 << 3
        rig.pciRig.write(devfn, 0x14, 0xF200_0000)
        rig.pciRig.write(devfn, 0x04, 0x0002, size: 2)
        func bar1(_ offset: UInt64, _ value: UInt8) { rig.mmio.write(0xF200_0100 + offset, size: 1, value: UInt64(value)) }
        bar1(0x10, 0xFC); bar1(0x11, 0xFF); bar1(0x12, 0x3F)   // 4 MiB - 4
        bar1(0x40, 0x02)
        XCTAssertEqual(rig.log.count, 1)
        XCTAssertEqual(rig.vram.withBytes { Array($0[((4 << 20) - 4)...]) }, [0, 0, 0, 0])
    }

    func testSystemSourceBlitFedThroughTheWindowAndAperture() throws {
        let rig = try Rig()
        rig.sequencer(0x07, 0x01)
        rig.graphics(0x20, 3); rig.graphics(0x21, 0)     // 4 bytes
        rig.graphics(0x22, 1); rig.graphics(0x23, 0)     // 2 rows
        rig.graphics(0x24, 8); rig.graphics(0x25, 0)
        rig.graphics(0x30, 0x04)
        rig.graphics(0x32, 0x0D)
        rig.graphics(0x28, 0x00); rig.graphics(0x29, 0x20); rig.graphics(0x2A, 0)
        rig.graphics(0x31, 0x02)
        XCTAssertEqual(rig.graphics(0x31) & 0x01, 0x01, "busy until the data is in")
        rig.mmio.write(0xA0000, size: 4, value: 0x0403_0201)
        // The rest through the BitBLT aperture in BAR0.
        let devfn = 2 << 3
        rig.pciRig.write(devfn, 0x10, 0xF000_0000)
        rig.pciRig.write(devfn, 0x04, 0x0002, size: 2)
        rig.mmio.write(0xF100_0000, size: 4, value: 0x0807_0605)
        XCTAssertEqual(rig.graphics(0x31) & 0x01, 0)
        XCTAssertEqual(rig.vram.withBytes { Array($0[0x2000..<0x200C]) }, [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8])
        rig.window(0x2000, 0x42)
        XCTAssertEqual(rig.peek(0x2000), 0x42, "after the blit the window is VRAM again")
    }

    // MARK: pictures

    func testExtendedModesDrawEveryDepth() throws {
        let rig = try Rig()
        let fb = Framebuffer()
        // 8 bpp through the palette.
        rig.out(0x3C8, 5)
        for v: UInt8 in [0x3F, 0, 0x3F] { rig.out(0x3C9, v) }
        rig.extendedMode(width: 64, height: 8, lineBytes: 64, sr7: 0x00)
        rig.poke(64 * 3 + 10, [5])
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.width, 64)
        XCTAssertEqual(fb.height, 8)
        XCTAssertEqual(fb.pixels[3 * 64 + 10], 0xFF00FF)
        XCTAssertEqual(fb.pixels[3 * 64 + 11], 0)

        // 16 bpp 5-6-5 (hidden DAC 1) and 5-5-5 (hidden DAC 0).
        rig.extendedMode(width: 64, height: 8, lineBytes: 128, sr7: 0x06)
        for _ in 0..<4 { _ = rig.inb(0x3C6) }
        rig.out(0x3C6, 0x01)
        rig.poke(128 * 2 + 4, [0x00, 0xF8, 0xE0, 0x07])
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.pixels[2 * 64 + 2], 0xFF0000)
        XCTAssertEqual(fb.pixels[2 * 64 + 3], 0x00FF00)
        for _ in 0..<4 { _ = rig.inb(0x3C6) }
        rig.out(0x3C6, 0x00)
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.pixels[2 * 64 + 2], 0xF70000, "5-5-5: bit 15 is not red")

        // 24 and 32 bpp, with the start address's high bits in CR1B.
        rig.extendedMode(width: 64, height: 8, lineBytes: 192, sr7: 0x04)
        rig.poke(192 + 3, [0x33, 0x22, 0x11])
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.pixels[64 + 1], 0x112233)
        rig.extendedMode(width: 64, height: 8, lineBytes: 256, sr7: 0x08)
        rig.crtc(0x1B, 0x01)  // start word 0x10000: byte 0x40000 (offset 256 needs no high bit)
        rig.poke(0x40000 + 256 + 8, [0x66, 0x55, 0x44, 0xFF])
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.pixels[64 + 2], 0x445566)
    }

    func testHardwareCursorIsDrawnOverTheScreen() throws {
        let rig = try Rig()
        let fb = Framebuffer()
        rig.extendedMode(width: 64, height: 40, lineBytes: 256, sr7: 0x08)
        rig.vram.withBytes { bytes in for i in stride(from: 0, to: 256 * 40, by: 4) { bytes[i] = 0x10 } }
        rig.vram.deviceWrote(offset: 0, length: 256 * 40)
        // Colours: background entry 0 red, foreground entry 15 blue.
        rig.sequencer(0x12, 0x02)
        rig.out(0x3C8, 0x00); for v: UInt8 in [0x3F, 0, 0] { rig.out(0x3C9, v) }
        rig.out(0x3C8, 0x0F); for v: UInt8 in [0, 0, 0x3F] { rig.out(0x3C9, v) }
        // 32×32 pattern 0 at 4 MiB - 16 KiB: line 0 = invert, background, foreground, clear.
        let pattern = (4 << 20) - 16 * 1024
        rig.poke(pattern, [0b1010_0000])
        rig.poke(pattern + 128, [0b0110_0000])
        // Position (17, 9): SR10 = 17 >> 3 with the low bits in the index's top three.
        rig.sequencer(0x10 | UInt8((17 & 7) << 5), UInt8(17 >> 3))
        rig.sequencer(0x11 | UInt8((9 & 7) << 5), UInt8(9 >> 3))
        rig.sequencer(0x12, 0x01)
        rig.sequencer(0x13, 0x00)
        rig.vga.refresh(fb)
        let row = Array(fb.pixels[(9 * 64 + 16)..<(9 * 64 + 22)])
        XCTAssertEqual(row, [0x10, 0xFFFFEF, 0xFF0000, 0x0000FF, 0x10, 0x10])
        XCTAssertEqual(fb.pixels[10 * 64 + 17], 0x10, "line 1 of the pattern is clear")
        rig.sequencer(0x12, 0x00)
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.pixels[9 * 64 + 17], 0x10, "cursor off")
    }

    // MARK: state and hostile input

    func testStateRoundTrip() throws {
        let rig = try Rig()
        rig.sequencer(0x06, 0x12)
        rig.sequencer(0x07, 0x09)
        rig.sequencer(0x10 | 0x40, 0x21)
        rig.graphics(0x09, 0x12)
        rig.graphics(0x0B, 0x21)
        rig.graphics(0x24, 0x40)
        for _ in 0..<4 { _ = rig.inb(0x3C6) }
        rig.out(0x3C6, 0x01)
        var w = StateWriter()
        rig.vga.saveState(to: &w)

        let other = try Rig()
        var r = StateReader(bytes: w.bytes, section: other.vga.stateID)
        try other.vga.loadState(from: &r, version: other.vga.stateVersion)
        XCTAssertTrue(r.isAtEnd)
        var again = StateWriter()
        other.vga.saveState(to: &again)
        XCTAssertEqual(again.bytes, w.bytes)
        XCTAssertEqual(other.sequencer(0x07), 0x09)
        XCTAssertEqual(other.graphics(0x09), 0x12)
        XCTAssertEqual(other.graphics(0x24), 0x40)
        XCTAssertEqual(other.crtc(0x27), 0xB8)
    }

    /// Random writes to every port, the whole window and BAR1, with refreshes in between:
    /// nothing crashes, nothing outside VRAM is touched (the buffers are exact-size).
    func testRandomRegisterAndWindowTrafficIsHarmless() throws {
        let rig = try Rig()
        let fb = Framebuffer()
        var rng = SystemRandomNumberGenerator()
        let devfn = 2 << 3
        rig.pciRig.write(devfn, 0x14, 0xF200_0000)
        rig.pciRig.write(devfn, 0x10, 0xF000_0000)
        rig.pciRig.write(devfn, 0x04, 0x0002, size: 2)
        for round in 0..<4000 {
            let value = UInt8.random(in: 0...255, using: &rng)
            switch Int.random(in: 0..<6, using: &rng) {
            case 0: rig.out(UInt64.random(in: 0x3B0...0x3DF, using: &rng), value)
            case 1: _ = rig.inb(UInt64.random(in: 0x3B0...0x3DF, using: &rng))
            case 2: rig.window(UInt64.random(in: 0..<0x20000, using: &rng), value)
            case 3: _ = rig.window(UInt64.random(in: 0..<0x20000, using: &rng))
            case 4: rig.mmio.write(0xF200_0000 + UInt64.random(in: 0..<0x1000, using: &rng), size: 1, value: UInt64(value))
            default: rig.graphics(UInt8.random(in: 0x20...0x33, using: &rng), value)
            }
            if round % 500 == 0 {
                rig.graphics(0x31, 0x02)
                rig.vga.refresh(fb)
            }
        }
        rig.out(0x3C2, 0x67)
        rig.sequencer(0x07, 0x09)
        rig.graphics(0x05, 0x40)
        rig.graphics(0x06, 0x05)
        rig.crtc(0x09, 0)
        rig.crtc(0x1A, 0)
        rig.crtc(0x01, 0xFF); rig.crtc(0x12, 0xFF); rig.crtc(0x07, 0x42); rig.crtc(0x13, 0xFF); rig.crtc(0x1B, 0xFF)
        rig.crtc(0x1D, 0x80); rig.crtc(0x0C, 0xFF); rig.crtc(0x0D, 0xFF)
        rig.sequencer(0x12, 0x05); rig.sequencer(0x10, 0xFF); rig.sequencer(0x11, 0xFF)
        rig.vga.refresh(fb)
        XCTAssertEqual(fb.width, 2048)
        XCTAssertEqual(fb.height, 1024)
    }
}
