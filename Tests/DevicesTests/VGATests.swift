import DMCore
import XCTest
@testable import Devices

/// The standard VGA as a guest drives it: PCI identity and BARs through config cycles, the VGA
/// registers and the planar window through the port and MMIO buses, DISPI mode sets, and the
/// pictures it draws.
final class VGATests: XCTestCase {
    final class Rig {
        let pciRig: PCIRig
        let vram: HostDeviceRAM
        let vga: StdVGA
        var ports: Bus { pciRig.ports }
        var mmio: Bus { pciRig.mmio }
        var core: VGACore { vga.core }

        init(vramSize: Int = 1 << 20, rom: [UInt8] = [0x55, 0xAA, 0x04]) throws {
            pciRig = try PCIRig()
            vram = try HostDeviceRAM(size: vramSize)
            vga = try StdVGA(vram: vram, rom: rom)
            try vga.registerLegacyWindows(ports: pciRig.ports, mmio: pciRig.mmio)
            try pciRig.pci.plug(vga, slot: 2)
        }

        func out(_ port: UInt64, _ value: UInt8) { ports.write(port, size: 1, value: UInt64(value)) }
        func inb(_ port: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: ports.read(port, size: 1)) }
        func sequencer(_ index: UInt8, _ value: UInt8) { out(0x3C4, index); out(0x3C5, value) }
        func graphics(_ index: UInt8, _ value: UInt8) { out(0x3CE, index); out(0x3CF, value) }
        func crtc(_ index: UInt8, _ value: UInt8) { out(0x3D4, index); out(0x3D5, value) }
        func attribute(_ index: UInt8, _ value: UInt8) {
            _ = inb(0x3DA)
            out(0x3C0, index); out(0x3C0, value)
        }
        func dispi(_ index: UInt16, _ value: UInt16) {
            ports.write(0x1CE, size: 2, value: UInt64(index))
            ports.write(0x1CF, size: 2, value: UInt64(value))
        }
        func dispi(_ index: UInt16) -> UInt16 {
            ports.write(0x1CE, size: 2, value: UInt64(index))
            return UInt16(truncatingIfNeeded: ports.read(0x1CF, size: 2))
        }
        func window(_ offset: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: mmio.read(0xA0000 + offset, size: 1)) }
        func window(_ offset: UInt64, _ value: UInt8) { mmio.write(0xA0000 + offset, size: 1, value: UInt64(value)) }
        func planes(_ address: Int) -> [UInt8] { vram.withBytes { Array($0[address * 4..<address * 4 + 4]) } }
        func poke(_ offset: Int, _ value: UInt8) {
            vram.withBytes { $0[offset] = value }
            vram.deviceWrote(offset: offset, length: 1)
        }

        /// Planar graphics access: no chain 4, no odd/even, all planes, 128 KiB at 0xA0000.
        func planar() {
            out(0x3C2, 0x67)
            sequencer(2, 0x0F); sequencer(4, 0x06)
            graphics(5, 0x00); graphics(6, 0x01); graphics(8, 0xFF)
        }

        /// Mode 3 as the VGA BIOS leaves it: 80×25, 9×16 cells, the usual attribute palette,
        /// DAC entries 0 (black) and 7 (light grey).
        func textMode() {
            out(0x3C2, 0x67)
            sequencer(1, 0x00); sequencer(2, 0x03); sequencer(3, 0x00); sequencer(4, 0x02)
            graphics(5, 0x10); graphics(6, 0x0E)
            crtc(0x01, 79); crtc(0x07, 0x1F); crtc(0x09, 0x4F); crtc(0x12, 0x8F); crtc(0x13, 40)
            crtc(0x0A, 0x20); crtc(0x0C, 0); crtc(0x0D, 0)
            for i: UInt8 in 0..<16 { attribute(i, i < 8 ? i : 0x38 + i - 8) }
            attribute(0x10, 0x0C); attribute(0x12, 0x0F); attribute(0x14, 0)
            _ = inb(0x3DA)
            out(0x3C0, 0x20)  // palette address source: the screen is on
            out(0x3C8, 7); out(0x3C9, 0x2A); out(0x3C9, 0x2A); out(0x3C9, 0x2A)
        }
    }

    // MARK: PCI

    func testPCIIdentityBARsROMAndMMIORegisters() throws {
        let rig = try Rig()
        let devfn = 2 << 3
        XCTAssertEqual(rig.pciRig.read(devfn, 0x00), 0x1111_1234)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x08), 0x0300_0002, "VGA class, revision 2")
        XCTAssertEqual(rig.pciRig.read(devfn, 0x2C), 0x1100_1AF4)
        rig.pciRig.write(devfn, 0x10, 0xFFFF_FFFF)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x10), 0xFFF0_0008, "1 MiB prefetchable VRAM")
        rig.pciRig.write(devfn, 0x18, 0xFFFF_FFFF)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x18), 0xFFFF_F000, "4 KiB MMIO")
        rig.pciRig.write(devfn, 0x30, 0xFFFF_FFFF)
        XCTAssertEqual(rig.pciRig.read(devfn, 0x30), 0xFFFF_F801, "2 KiB ROM")

        rig.pciRig.write(devfn, 0x10, 0xE000_0000)
        rig.pciRig.write(devfn, 0x18, 0xE100_0000)
        rig.pciRig.write(devfn, 0x30, 0xE200_0001)
        XCTAssertNil(rig.vram.mappedAddress, "memory decoding still off")
        rig.pciRig.write(devfn, 0x04, 0x0003, size: 2)
        XCTAssertEqual(rig.vram.mappedAddress, 0xE000_0000, "the VRAM follows BAR0")
        XCTAssertEqual(rig.mmio.read(0xE200_0000, size: 2), 0xAA55, "the VGA BIOS in the ROM BAR")
        XCTAssertEqual(rig.mmio.read(0xE100_0500, size: 2), 0xB0C5, "DISPI ID through BAR2")
        XCTAssertEqual(rig.mmio.read(0xE100_0514, size: 2), 16, "VRAM in 64 KiB units")
        XCTAssertEqual(rig.mmio.read(0xE100_0600, size: 4), 8)
        XCTAssertEqual(rig.mmio.read(0xE100_0604, size: 4), 0x1E1E_1E1E)
        rig.mmio.write(0xE100_0604, size: 4, value: 0xBEBE_BEBE)
        XCTAssertEqual(rig.mmio.read(0xE100_0604, size: 4), 0xBEBE_BEBE)
        // VGA ports through BAR2: a word write sets index and data at once.
        rig.mmio.write(0xE100_0404, size: 2, value: 0x0F02)
        XCTAssertEqual(rig.inb(0x3C5), 0x0F)
        rig.mmio.write(0xE100_0502, size: 2, value: 640)
        XCTAssertEqual(rig.mmio.read(0xE100_0502, size: 2), 640, "XRES through BAR2")
        // VRAM through BAR0 as MMIO (what a guest sees where the platform cannot map it).
        rig.mmio.write(0xE000_1000, size: 4, value: 0x1234_5678)
        XCTAssertEqual(rig.vram.withBytes { $0.load(fromByteOffset: 0x1000, as: UInt32.self) }, 0x1234_5678)
        rig.pciRig.write(devfn, 0x04, 0, size: 2)
        XCTAssertNil(rig.vram.mappedAddress, "decoding off: the guest mapping goes")
    }

    func testVRAMSizeRules() throws {
        XCTAssertEqual(StdVGA.vramSize(megabytes: 1), 1 << 20)
        XCTAssertEqual(StdVGA.vramSize(megabytes: 9), 16 << 20)
        XCTAssertEqual(StdVGA.vramSize(megabytes: 256), 256 << 20)
        XCTAssertThrowsError(try StdVGA(vram: try HostDeviceRAM(size: 3 << 20), rom: [])) {
            XCTAssertEqual($0 as? StdVGAError, .invalidVRAMSize(3 << 20))
        }
        XCTAssertThrowsError(try StdVGA(vram: try HostDeviceRAM(size: 512 << 10), rom: []))
    }

    // MARK: registers

    func testPortDecodeFollowsMiscOutputAndIndexedRegisters() throws {
        let rig = try Rig()
        // Power-on: monochrome decode; the colour CRTC ports are not there.
        rig.out(0x3B4, 0x0E)
        XCTAssertEqual(rig.inb(0x3B4), 0x0E)
        XCTAssertEqual(rig.inb(0x3D4), 0xFF)
        rig.out(0x3C2, 0x67)
        XCTAssertEqual(rig.inb(0x3CC), 0x67)
        XCTAssertEqual(rig.inb(0x3B4), 0xFF)
        XCTAssertEqual(rig.inb(0x3D4), 0x0E, "the same CRTC, now at 0x3D4")

        rig.sequencer(0x0C, 0xFF)  // index 4 (masked to 3 bits): only its hardware bits stick
        XCTAssertEqual(rig.inb(0x3C4), 4)
        XCTAssertEqual(rig.inb(0x3C5), 0x0E)
        rig.graphics(5, 0xFF)
        XCTAssertEqual(rig.inb(0x3CF), 0x7B)

        // CRTC protect: CR0-CR7 are read-only while CR11 bit 7 is set, except CR7 bit 4.
        rig.crtc(0x01, 79)
        rig.crtc(0x11, 0x80)
        rig.crtc(0x01, 39)
        XCTAssertEqual(rig.inb(0x3D5), 79)
        rig.crtc(0x07, 0xFF)
        XCTAssertEqual(rig.inb(0x3D5), 0x10)
        rig.crtc(0x11, 0x00)
        rig.crtc(0x01, 39)
        XCTAssertEqual(rig.inb(0x3D5), 39)

        // Attribute controller: index, then data; reading input status 1 resets the flip-flop.
        _ = rig.inb(0x3DA)
        rig.out(0x3C0, 0x10)
        XCTAssertEqual(rig.inb(0x3C0), 0, "reads 0 while the flip-flop expects data (as QEMU)")
        rig.out(0x3C0, 0xFF)
        XCTAssertEqual(rig.inb(0x3C0), 0x10, "the index, once the flip-flop expects an index")
        XCTAssertEqual(rig.inb(0x3C1), 0xEF, "bit 4 of the mode control does not exist")
        rig.out(0x3C0, 0x05)  // the flip-flop wants an index again
        rig.out(0x3C0, 0x3F)
        XCTAssertEqual(rig.inb(0x3C1), 0x3F)
        rig.out(0x3C0, 0x12)
        _ = rig.inb(0x3DA)
        rig.out(0x3C0, 0x13)  // an index again after the reset
        rig.out(0x3C0, 0xFF)
        XCTAssertEqual(rig.inb(0x3C1), 0x0F)
        let first = rig.inb(0x3DA), second = rig.inb(0x3DA)
        XCTAssertEqual(first ^ second, 0x09, "the retrace bits toggle so polling loops finish")

        // DAC: three components per entry, auto-increment, separate read and write indexes.
        rig.out(0x3C8, 5)
        XCTAssertEqual(rig.inb(0x3C7), 0)
        for v: UInt8 in [1, 2, 3, 4, 5, 6] { rig.out(0x3C9, v) }
        XCTAssertEqual(rig.inb(0x3C8), 7)
        rig.out(0x3C7, 5)
        XCTAssertEqual(rig.inb(0x3C7), 3)
        XCTAssertEqual((0..<6).map { _ in rig.inb(0x3C9) }, [1, 2, 3, 4, 5, 6])
        rig.out(0x3C7, 255)
        XCTAssertEqual((0..<4).map { _ in rig.inb(0x3C9) }, [0, 0, 0, 0], "the read index wraps to entry 0")

        rig.out(0x3DA, 0xFF)
        XCTAssertEqual(rig.inb(0x3CA), 0x10, "feature control")
    }

    // MARK: the memory window

    func testPlanarWriteModesReadModesAndLatches() throws {
        let rig = try Rig()
        rig.planar()
        // Write mode 0 with set/reset on all planes: colour 5 → planes 0 and 2.
        rig.graphics(1, 0x0F); rig.graphics(0, 0x05)
        rig.window(0, 0x00)
        XCTAssertEqual(rig.planes(0), [0xFF, 0, 0xFF, 0])
        // Read mode 0 returns the selected plane and loads the latches.
        rig.graphics(4, 2)
        XCTAssertEqual(rig.window(0), 0xFF)
        rig.graphics(4, 1)
        XCTAssertEqual(rig.window(0), 0x00)
        // Write mode 1 copies the latches.
        rig.graphics(5, 0x01)
        rig.window(1, 0x12)
        XCTAssertEqual(rig.planes(1), [0xFF, 0, 0xFF, 0])
        // Logical op XOR with the latches, bit mask on the low nibble only.
        rig.graphics(5, 0x00); rig.graphics(1, 0x00); rig.graphics(3, 0x18); rig.graphics(8, 0x0F)
        _ = rig.window(0)
        rig.window(0, 0xFF)
        XCTAssertEqual(rig.planes(0), [0xF0, 0x0F, 0xF0, 0x0F])
        // Write mode 2: the value's low nibble is the colour, under the bit mask.
        rig.graphics(3, 0x00); rig.graphics(5, 0x02); rig.graphics(8, 0xF0)
        _ = rig.window(2)
        rig.window(2, 0x0A)
        XCTAssertEqual(rig.planes(2), [0x00, 0xF0, 0x00, 0xF0])
        // Write mode 3: the set/reset colour under (rotated value AND bit mask).
        rig.graphics(5, 0x03); rig.graphics(0, 0x0F); rig.graphics(8, 0xFF)
        _ = rig.window(3)
        rig.window(3, 0x3C)
        XCTAssertEqual(rig.planes(3), [0x3C, 0x3C, 0x3C, 0x3C])
        // Rotate in write mode 0.
        rig.graphics(5, 0x00); rig.graphics(3, 0x01)
        rig.window(4, 0x01)
        XCTAssertEqual(rig.planes(4), [0x80, 0x80, 0x80, 0x80])
        // The sequencer's map mask limits the planes written.
        rig.graphics(3, 0x00)
        rig.sequencer(2, 0x02)
        rig.window(4, 0x11)
        XCTAssertEqual(rig.planes(4), [0x80, 0x11, 0x80, 0x80])
        // Read mode 1: bits where every compared plane matches the colour compare register.
        rig.graphics(5, 0x08); rig.graphics(2, 0x0F); rig.graphics(7, 0x0F)
        XCTAssertEqual(rig.window(3), 0x3C)
        rig.graphics(7, 0x00)
        XCTAssertEqual(rig.window(3), 0xFF, "no plane compared: everything matches")
    }

    func testChain4OddEvenAndMemoryMapSelect() throws {
        let rig = try Rig()
        rig.out(0x3C2, 0x67)
        rig.sequencer(2, 0x0F); rig.sequencer(4, 0x0E)
        rig.graphics(5, 0x40); rig.graphics(6, 0x05)
        rig.window(5, 0x77)
        XCTAssertEqual(rig.vram.withBytes { $0[5] }, 0x77, "chain 4 writes bytes linearly")
        XCTAssertEqual(rig.window(5), 0x77)
        XCTAssertEqual(rig.window(0x10000), 0xFF, "map 1 covers only 0xA0000-0xAFFFF")
        rig.sequencer(2, 0x0E)
        rig.window(4, 0x55)
        XCTAssertEqual(rig.vram.withBytes { $0[4] }, 0, "plane 0 is masked off")

        // Text mode: odd/even at 0xB8000, characters to plane 0, attributes to plane 1.
        rig.sequencer(2, 0x03); rig.sequencer(4, 0x02)
        rig.graphics(5, 0x10); rig.graphics(6, 0x0E); rig.graphics(4, 0)
        rig.window(0x18000, 0x41)
        rig.window(0x18001, 0x1F)
        rig.window(0x18002, 0x42)
        XCTAssertEqual(rig.planes(0), [0x41, 0x1F, 0, 0])
        XCTAssertEqual(rig.planes(1)[0], 0x42)
        XCTAssertEqual(rig.window(0x18001), 0x1F)
        XCTAssertEqual(rig.window(0x0000), 0xFF, "0xA0000 is not mapped in map 3")
    }

    // MARK: drawing

    func testTextModeDrawsAGlyphWithTheNinthDotAndTheCursor() throws {
        let rig = try Rig()
        rig.textMode()
        // A glyph for 'A' in plane 2, and the line-drawing character 0xC4 (a bar on line 8).
        let glyph: [UInt8] = [0, 0, 0x10, 0x38, 0x6C, 0xC6, 0xC6, 0xFE, 0xC6, 0xC6, 0xC6, 0xC6, 0, 0, 0, 0]
        for (line, bits) in glyph.enumerated() { rig.poke((0x41 * 32 + line) * 4 + 2, bits) }
        rig.poke((0xC4 * 32 + 8) * 4 + 2, 0xFF)
        rig.window(0x18000, 0x41); rig.window(0x18001, 0x07)
        rig.window(0x18002, 0xC4); rig.window(0x18003, 0x07)
        let framebuffer = Framebuffer()
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.width, 720)
        XCTAssertEqual(framebuffer.height, 400)
        let grey: UInt32 = 0xA8A8A8
        for (line, bits) in glyph.enumerated() {
            for x in 0..<9 {
                let lit = x < 8 && bits & (0x80 >> UInt8(x)) != 0
                XCTAssertEqual(framebuffer.pixels[line * 720 + x], lit ? grey : 0, "line \(line) dot \(x)")
            }
        }
        XCTAssertEqual(framebuffer.pixels[8 * 720 + 9 + 8], grey, "0xC4 extends into the ninth dot")
        XCTAssertEqual(framebuffer.pixels[8 * 720 + 9 + 9], 0, "the next cell is empty")

        // Nothing changed: no tile is dirty. A character written later dirties its tile only.
        framebuffer.clearDirty()
        rig.vga.refresh(framebuffer)
        XCTAssertFalse(framebuffer.hasDirtyTiles)
        rig.window(0x18000 + 2 * 79, 0x41); rig.window(0x18000 + 2 * 79 + 1, 0x07)
        rig.vga.refresh(framebuffer)
        XCTAssertTrue(framebuffer.dirtyTiles[framebuffer.tilesAcross - 1])
        XCTAssertFalse(framebuffer.dirtyTiles[0])

        // The cursor: lines 14-15 of its cell, across all nine dots.
        rig.crtc(0x0A, 14); rig.crtc(0x0B, 15); rig.crtc(0x0E, 0); rig.crtc(0x0F, 1)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual((9..<18).map { framebuffer.pixels[15 * 720 + $0] }, [UInt32](repeating: grey, count: 9))
        XCTAssertEqual(framebuffer.pixels[13 * 720 + 9], 0)

        // 8-dot cells and a blanked screen (palette address source off).
        rig.sequencer(1, 0x01)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.width, 640)
        _ = rig.inb(0x3DA); rig.out(0x3C0, 0x00)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.pixels.max(), 0)
    }

    func testMode12hPlanarAndMode13hChain4Drawing() throws {
        let rig = try Rig()
        rig.planar()
        rig.crtc(0x01, 79); rig.crtc(0x07, 0x3E); rig.crtc(0x09, 0x40); rig.crtc(0x12, 0xDF); rig.crtc(0x13, 40)
        for i: UInt8 in 0..<16 { rig.attribute(i, i) }
        rig.attribute(0x10, 0x01); rig.attribute(0x12, 0x0F)
        _ = rig.inb(0x3DA); rig.out(0x3C0, 0x20)
        rig.out(0x3C8, 9); rig.out(0x3C9, 0x3F); rig.out(0x3C9, 0); rig.out(0x3C9, 0)
        // Colour 9 (planes 0 and 3) in the leftmost pixel of line 1.
        rig.graphics(1, 0x0F); rig.graphics(0, 0x09); rig.graphics(8, 0x80)
        _ = rig.window(80)
        rig.window(80, 0)
        let framebuffer = Framebuffer()
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.width, 640)
        XCTAssertEqual(framebuffer.height, 480)
        XCTAssertEqual(framebuffer.pixels[640], 0xFF0000)
        XCTAssertEqual(framebuffer.pixels[641], 0)

        // Mode 13h: 320×200, one byte per pixel through the DAC.
        rig.sequencer(4, 0x0E)
        rig.graphics(5, 0x40); rig.graphics(6, 0x05)
        rig.crtc(0x09, 0x41); rig.crtc(0x12, 0x8F); rig.crtc(0x07, 0x1F)
        rig.out(0x3C8, 200); rig.out(0x3C9, 0); rig.out(0x3C9, 0x3F); rig.out(0x3C9, 0)
        rig.window(320 * 2 + 3, 200)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.width, 320)
        XCTAssertEqual(framebuffer.height, 200)
        XCTAssertEqual(framebuffer.pixels[2 * 320 + 3], 0x00FF00)
    }

    func testDISPIModeSetLinearFramebufferAndBanks() throws {
        let rig = try Rig()
        XCTAssertEqual(rig.dispi(0), 0xB0C5)
        rig.dispi(0, 0xB0C0)
        XCTAssertEqual(rig.dispi(0), 0xB0C0)
        rig.dispi(0, 0x1234)
        XCTAssertEqual(rig.dispi(0), 0xB0C0, "unknown IDs are ignored")
        XCTAssertEqual(rig.dispi(0x0A), 16, "VRAM size in 64 KiB units")
        rig.dispi(4, 0x02)
        XCTAssertEqual([rig.dispi(1), rig.dispi(2), rig.dispi(3)], [16000, 12000, 32], "GETCAPS")

        rig.poke(0, 0xAB)
        rig.dispi(1, 64); rig.dispi(2, 32); rig.dispi(3, 32)
        rig.dispi(4, 0x41)  // enabled, LFB
        XCTAssertEqual(rig.vram.withBytes { $0[0] }, 0, "enabling clears the visible memory")
        XCTAssertEqual(rig.dispi(6), 64)
        XCTAssertEqual(rig.dispi(7), UInt16((1 << 20) / (64 * 4)), "virtual height: what VRAM holds")
        rig.vram.withBytes { $0.storeBytes(of: UInt32(0x00FF_8000), toByteOffset: (2 * 64 + 3) * 4, as: UInt32.self) }
        rig.vram.deviceWrote(offset: (2 * 64 + 3) * 4, length: 4)
        let framebuffer = Framebuffer()
        rig.vga.refresh(framebuffer)
        XCTAssertEqual([framebuffer.width, framebuffer.height], [64, 32])
        XCTAssertEqual(framebuffer.pixels[2 * 64 + 3], 0xFF8000)

        // Panning: the visible origin moves by the offsets.
        rig.dispi(8, 3); rig.dispi(9, 2)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.pixels[0], 0xFF8000)

        // 16 bpp, not clearing memory: 5-6-5 red.
        rig.dispi(4, 0)
        rig.poke(0, 0x00); rig.poke(1, 0xF8)
        rig.dispi(3, 16)
        rig.dispi(4, 0xC1)
        XCTAssertEqual(rig.vram.withBytes { $0[1] }, 0xF8, "NOCLEARMEM keeps VRAM")
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.pixels[0], 0xFF0000, "r5g6b5 red 0x1F widens to 0xFF, as QEMU shows it")

        // 8 bpp through the DAC, 8-bit DAC entries when asked.
        rig.dispi(4, 0)
        rig.dispi(3, 8)
        rig.dispi(4, 0xE1)
        rig.out(0x3C8, 1); rig.out(0x3C9, 0x80); rig.out(0x3C9, 0x40); rig.out(0x3C9, 0x20)
        rig.poke(0, 1)
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.pixels[0], 0x804020)

        // The banked window: bank 1 shows VRAM from 64 KiB at 0xA0000.
        rig.dispi(5, 1)
        rig.window(0x10, 0x5A)
        XCTAssertEqual(rig.vram.withBytes { $0[0x10010] }, 0x5A)
        XCTAssertEqual(rig.window(0x10), 0x5A)
        rig.dispi(5, 0xFFFF)
        XCTAssertEqual(rig.dispi(5), 15, "banks wrap within VRAM")
    }

    func testHostileDISPIValuesAreClampedAndNeverReachOutsideVRAM() throws {
        let rig = try Rig()
        for index: UInt16 in [1, 2, 3, 6, 8, 9] { rig.dispi(index, 0xFFFF) }
        rig.dispi(4, 0x41)
        let xres = Int(rig.dispi(1)), yres = Int(rig.dispi(2)), bpp = Int(rig.dispi(3))
        let virtualWidth = Int(rig.dispi(6))
        XCTAssertEqual(bpp, 8, "an impossible depth becomes 8 bpp")
        XCTAssertEqual(xres, 16000)
        XCTAssertGreaterThanOrEqual(virtualWidth, xres)
        XCTAssertLessThanOrEqual(Int(rig.dispi(9)) * virtualWidth + Int(rig.dispi(8)) + yres * virtualWidth, 1 << 20)
        let framebuffer = Framebuffer()
        rig.vga.refresh(framebuffer)
        XCTAssertLessThanOrEqual(framebuffer.width, Framebuffer.maxDimension)

        // Every register, every value class, then a redraw: nothing escapes VRAM.
        for depth: UInt16 in [32, 24, 16, 15, 8, 4, 0, 33] {
            for value: UInt16 in [0, 1, 7, 8, 0x7FFF, 0xFFFF] {
                for index: UInt16 in 0...12 {
                    rig.dispi(3, depth)
                    rig.dispi(index, value)
                    rig.vga.refresh(framebuffer)
                }
                rig.dispi(4, 0x41)
            }
        }
        rig.dispi(4, 0x41)
        rig.dispi(3, 32); rig.dispi(1, 0xFFFF); rig.dispi(2, 0xFFFF)
        XCTAssertEqual(rig.dispi(1), 16000)
        XCTAssertEqual(rig.dispi(2), UInt16((1 << 20) / (16000 * 4)), "the height fits in VRAM")
        rig.vga.refresh(framebuffer)
        XCTAssertEqual(framebuffer.width, 8192, "a width past the framebuffer's limit is cut there")
        // Out-of-range indexes read as zero and write nothing.
        XCTAssertEqual(rig.dispi(0x0B), 0)
        XCTAssertEqual(rig.dispi(0xFFFF), 0)
    }

    func testTextModeWithHostileCRTCValuesStaysInBounds() throws {
        let rig = try Rig()
        rig.textMode()
        let framebuffer = Framebuffer()
        for value: UInt8 in [0, 1, 0x7F, 0xFF] {
            for index: UInt8 in [0x01, 0x07, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x12, 0x13] {
                rig.crtc(index, value)
                rig.vga.refresh(framebuffer)
                rig.graphics(6, 0x0F)
                rig.vga.refresh(framebuffer)
                rig.graphics(5, 0x40)
                rig.vga.refresh(framebuffer)
                rig.graphics(6, 0x0E); rig.graphics(5, 0x10)
            }
        }
        XCTAssertLessThanOrEqual(framebuffer.width * framebuffer.height, Framebuffer.maxDimension * Framebuffer.maxDimension)
    }

    // MARK: state

    func testStateRoundTripAndRejectsBadState() throws {
        let rig = try Rig()
        rig.textMode()
        rig.crtc(0x0E, 0x12); rig.crtc(0x0F, 0x34)
        rig.out(0x3C7, 7)
        _ = rig.inb(0x3C9)
        rig.dispi(1, 800); rig.dispi(2, 600); rig.dispi(3, 32); rig.dispi(4, 0xC1); rig.dispi(5, 3)
        rig.dispi(0x0003)
        var writer = StateWriter()
        rig.vga.saveState(to: &writer)

        let other = try Rig()
        var reader = StateReader(bytes: writer.bytes, section: "vga")
        try other.vga.loadState(from: &reader, version: 1)
        XCTAssertTrue(reader.isAtEnd)
        var again = StateWriter()
        other.vga.saveState(to: &again)
        XCTAssertEqual(again.bytes, writer.bytes)
        XCTAssertEqual(other.inb(0x3CC), 0x67)
        XCTAssertEqual(other.dispi(1), 800)
        other.window(0, 0x99)
        XCTAssertEqual(other.vram.withBytes { $0[3 << 16] }, 0x99, "the bank came back")
        XCTAssertEqual(other.inb(0x3C9), 0x2A, "the DAC read position came back")

        // A sequencer index past the register file is refused, not used.
        var bad = writer.bytes
        bad[PCIConfigSpace.size + 4 + 1 + 3] = 9
        var badReader = StateReader(bytes: bad, section: "vga")
        XCTAssertThrowsError(try other.vga.loadState(from: &badReader, version: 1))
        // Truncated state is refused.
        var short = StateReader(bytes: Array(writer.bytes.prefix(300)), section: "vga")
        XCTAssertThrowsError(try other.vga.loadState(from: &short, version: 1))
    }

    func testResetReturnsToPowerOn() throws {
        let rig = try Rig()
        rig.textMode()
        rig.dispi(4, 0x41)
        rig.vga.reset()
        XCTAssertEqual(rig.inb(0x3CC), 0, "misc output back to 0")
        XCTAssertEqual(rig.inb(0x3D4), 0xFF, "the colour ports are gone again")
        XCTAssertEqual(rig.inb(0x3BA) & 0xF6, 0)
        XCTAssertEqual(rig.dispi(4), 0)
        XCTAssertEqual(rig.dispi(0), 0xB0C5)
    }
}
