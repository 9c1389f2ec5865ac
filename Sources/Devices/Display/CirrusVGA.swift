import DMCore

public enum CirrusVGAError: Error, Equatable, CustomStringConvertible {
    case invalidVRAMSize(Int)

    public var description: String {
        switch self {
        case .invalidVRAMSize(let size): return "cirrus-vga video memory of \(size) bytes is not a power of two between 4 MiB and 16 MiB"
        }
    }
}

/// QEMU's `cirrus-vga`: a Cirrus Logic GD5446 (PCI 1013:00B8), libxl's default display for HVM
/// guests. A `VGACore` for everything VGA, plus the Cirrus extensions around it:
///
/// - sequencer SR6-SR1F (SR6 the unlock key, SR7 the extended mode and depth, SR10-SR13 the
///   hardware cursor, SR17 the memory-mapped I/O switch), graphics GR9-GRB (two 32 KiB banks in
///   the 0xA0000 window) and GR10-GR39 (the BitBLT engine, `CirrusBlitter`), CRTC CR1A-CR1D
///   (start address and offset high bits) and CR27 (the chip ID), the hidden DAC register
///   (reached by four reads of 0x3C6) and the hidden cursor palette;
/// - BAR0, 32 MiB: video RAM at 0 (the linear framebuffer, mapped straight into the guest by
///   the platform) and the BitBLT system-source aperture at 16 MiB; BAR1, 4 KiB: the VGA ports
///   0x3C0-0x3DF at 0-0xFF and the blitter registers at 0x100; the ROM BAR: vgabios-cirrus.bin.
///
/// Like QEMU's GD5446 the chip decodes 4 MiB of video RAM (banks, blits, the cursor and the
/// display wrap at it) whatever `vgamem_mb` says; the rest of the RAM is only reachable through
/// the linear framebuffer. Write modes 4/5 and the blit aperture work in the 0xA0000 window and
/// at BAR0+16 MiB; QEMU's remapped linear-framebuffer variants of them (LFB reads in write mode
/// 4/5, MMIO at the top of the LFB) are not provided, the LFB is always plain RAM.
public final class CirrusVGA: PCIDevice, DisplaySource, Snapshottable, Resettable, @unchecked Sendable {
    public static let vramBAR = 0, mmioBAR = 1
    public static let legacyPortRegion = 10, legacyMemoryRegion = 12
    public static let barSize: UInt64 = 32 << 20
    public static let blitApertureOffset: UInt64 = 16 << 20
    public static let blitApertureSize: UInt64 = 4 << 20
    public static let mmioSize: UInt64 = 4096
    /// What the GD5446 decodes (22 address bits).
    public static let decodedVRAM = 4 << 20
    public static let chipID: UInt8 = 0xB8

    public let pci: PCIFunction
    public let core: VGACore
    public let blitter: CirrusBlitter
    private let vramMask = CirrusVGA.decodedVRAM - 1
    private let log: GuestErrorLog

    /// The full 8-bit sequencer index: SR10/SR11 take the cursor position's low bits from its
    /// top three bits. The VGA core sees only its own registers SR0-SR4.
    private var sequencerIndex: UInt8 = 0
    /// SR0-SR1F; entries below 6 are the core's and unused here.
    private var sequencer = [UInt8](repeating: 0, count: 0x20)
    private var graphicsIndex: UInt8 = 0
    /// GR5 with the Cirrus write-mode bit, GR9-GRB, GR18 (the blitter has GR0/GR1, GR10-GR39).
    private var graphics = [UInt8](repeating: 0, count: 0x20)
    private var hiddenDAC: UInt8 = 0
    private var hiddenDACReads = 0
    /// The cursor colours: entries 0 (background) and 15 (foreground), 6 bits per component.
    private var hiddenPalette = [UInt8](repeating: 0, count: 48)
    private var cursorX = 0
    private var cursorY = 0

    // Drawing state (not guest-visible).
    private var rowBuffer = [UInt32](repeating: 0, count: 1024)
    private var dirtyPages: VRAMDirtyPages
    private var lastExtendedMode: ExtendedMode?
    private var lastCursor: Cursor?
    private var lastGeneration = -1
    private var palette = [UInt32](repeating: 0, count: 256)

    /// QEMU's `vgamem_mb` for cirrus-vga: a power of two of 4-16 MiB (QEMU's default 4).
    public static func vramSize(megabytes: Int) -> Int? {
        let size = megabytes << 20
        guard megabytes >= 4, megabytes <= 16, size.nonzeroBitCount == 1 else { return nil }
        return size
    }

    public init(vram: any DeviceRAM, rom: [UInt8], log: GuestErrorLog = .shared) throws(CirrusVGAError) {
        guard vram.size.nonzeroBitCount == 1, vram.size >= Self.decodedVRAM, vram.size <= 16 << 20 else {
            throw .invalidVRAMSize(vram.size)
        }
        core = VGACore(vram: vram)
        self.log = log
        blitter = CirrusBlitter(vramSize: Self.decodedVRAM, log: log)
        dirtyPages = VRAMDirtyPages(vramSize: vram.size)
        let config = PCIConfigSpace(vendor: 0x1013, device: 0x00B8, revision: 0, classCode: 0x03_0000)
        pci = PCIFunction(name: "cirrus-vga", config: config,
                          bars: [PCIBARDefinition(kind: .memory32(prefetchable: true), size: Self.barSize),
                                 PCIBARDefinition(kind: .memory32(prefetchable: false), size: Self.mmioSize)],
                          rom: rom)
        pci.onBARMoved = { [weak self] index, address in
            if index == Self.vramBAR { self?.core.vram.map(at: address) }
        }
        resetExtensions()
    }

    /// Claims ports 0x3B0-0x3DF and the memory window 0xA0000-0xBFFFF (one VGA per PC).
    public func registerLegacyWindows(ports: Bus, mmio: Bus) throws(BusError) {
        try ports.register(self, base: 0x3B0, length: 0x30, region: Self.legacyPortRegion, name: "cirrus-vga")
        try mmio.register(self, base: 0xA0000, length: 0x20000, region: Self.legacyMemoryRegion, name: "cirrus-lowmem")
    }

    public func reset() {
        pci.reset()
        core.reset()
        blitter.reset()
        resetExtensions()
    }

    /// The GD5446's power-on extension registers, as QEMU sets them: locked, 4 MiB of 64-bit
    /// memory (SR0F, SR15), memory-mapped I/O off, PCI bus (SR17).
    private func resetExtensions() {
        sequencerIndex = 0
        graphicsIndex = 0
        for i in sequencer.indices { sequencer[i] = 0 }
        for i in graphics.indices { graphics[i] = 0 }
        sequencer[0x06] = 0x0F
        sequencer[0x0F] = 0x98
        sequencer[0x15] = 0x04
        sequencer[0x17] = 0x20
        sequencer[0x1F] = 0x2D
        graphics[0x18] = 0x0F
        hiddenDAC = 0
        hiddenDACReads = 0
        for i in hiddenPalette.indices { hiddenPalette[i] = 0 }
        cursorX = 0
        cursorY = 0
        lastExtendedMode = nil
        lastCursor = nil
    }

    // MARK: ports

    private var extendedMode: Bool { sequencer[0x07] & 0x01 != 0 }

    /// Whether a CRTC data port is the one the misc output register selects.
    private func isCRTCData(_ port: UInt16) -> Bool {
        port == (core.miscOutput & 1 != 0 ? 0x3D5 : 0x3B5)
    }

    public func readPort(_ port: UInt16) -> UInt8 {
        if (0x3C7...0x3C9).contains(port) { hiddenDACReads = 0 }
        switch port {
        case 0x3C4: return sequencerIndex
        case 0x3C5:
            switch sequencerIndex {
            case 0...5: return core.readPort(port)
            case _ where sequencerIndex & 0x1F == 0x10 || sequencerIndex & 0x1F == 0x11:
                return sequencer[Int(sequencerIndex & 0x1F)]
            case 6..<0x20: return sequencer[Int(sequencerIndex)]
            default: return 0xFF
            }
        case 0x3C6:
            hiddenDACReads += 1
            if hiddenDACReads == 5 {
                hiddenDACReads = 0
                return hiddenDAC
            }
            return core.readPort(port)
        case 0x3C9 where sequencer[0x12] & 0x02 != 0:
            let value = hiddenPalette[Int(core.dacReadIndex & 0x0F) * 3 + Int(core.dacComponent)]
            advanceDAC(read: true)
            return value
        case 0x3CE: return graphicsIndex
        case 0x3CF:
            let index = Int(graphicsIndex)
            if CirrusBlitter.ownsRegister(index) { return blitter.read(register: index) }
            switch index {
            case 0x05: return graphics[0x05]
            case 2...8: return core.readPort(port)
            case 0x09...0x0B, 0x18: return graphics[index]
            default: return 0xFF
            }
        case _ where isCRTCData(port):
            switch core.crtcIndex {
            case 0x24: return core.attributeFlipFlop ? 0x80 : 0
            case 0x26: return core.attributeIndex & 0x3F
            case 0x27: return Self.chipID
            default: return core.readPort(port)
            }
        default: return core.readPort(port)
        }
    }

    public func writePort(_ port: UInt16, _ value: UInt8) {
        if (0x3C7...0x3C9).contains(port) { hiddenDACReads = 0 }
        switch port {
        case 0x3C4:
            sequencerIndex = value
            core.writePort(port, value)
        case 0x3C5:
            writeSequencer(value)
        case 0x3C6:
            if hiddenDACReads == 4 {
                hiddenDAC = value
            } else {
                core.writePort(port, value)
            }
            hiddenDACReads = 0
        case 0x3C9 where sequencer[0x12] & 0x02 != 0:
            hiddenPalette[Int(core.dacWriteIndex & 0x0F) * 3 + Int(core.dacComponent)] = value
            advanceDAC(read: false)
        case 0x3CE:
            graphicsIndex = value
            core.writePort(port, value)
        case 0x3CF:
            writeGraphics(value)
        default:
            core.writePort(port, value)
        }
    }

    /// The DAC's component/index stepping, for hidden-palette accesses the core does not see.
    private func advanceDAC(read: Bool) {
        core.dacComponent += 1
        guard core.dacComponent == 3 else { return }
        core.dacComponent = 0
        if read { core.dacReadIndex &+= 1 } else { core.dacWriteIndex &+= 1 }
    }

    private func writeSequencer(_ value: UInt8) {
        let index = sequencerIndex
        switch index {
        case 0...5:
            core.writePort(0x3C5, value)
        case _ where index & 0x1F == 0x10:
            sequencer[0x10] = value
            cursorX = Int(value) << 3 | Int(index >> 5)
        case _ where index & 0x1F == 0x11:
            sequencer[0x11] = value
            cursorY = Int(value) << 3 | Int(index >> 5)
        case 0x06:
            // Writing the key 0x12 unlocks the extensions; anything else reads back 0x0F.
            sequencer[0x06] = value & 0x17 == 0x12 ? 0x12 : 0x0F
        case 0x0F, 0x15, 0x1F:
            break  // memory configuration: fixed
        case 0x17:
            sequencer[0x17] = (sequencer[0x17] & 0x38) | (value & 0xC7)
        case 0x07...0x1E:
            sequencer[Int(index)] = value
        default:
            log.report("cirrus-vga", "write to unknown sequencer register \(hex(index))")
        }
    }

    private func writeGraphics(_ value: UInt8) {
        let index = Int(graphicsIndex)
        if CirrusBlitter.ownsRegister(index) {
            // GR0/GR1 are also the VGA's set/reset registers (4 bits there).
            if index <= 1 { core.writePort(0x3CF, value) }
            let written = core.vram.withBytes { blitter.write(register: index, value, vram: $0) }
            if let written { core.vram.deviceWrote(offset: written.lowerBound, length: written.count) }
            return
        }
        switch index {
        case 0x05:
            graphics[0x05] = value & 0x7F
            core.writePort(0x3CF, value)
        case 2...8:
            core.writePort(0x3CF, value)
        case 0x09...0x0B:
            graphics[index] = value
        default:
            log.report("cirrus-vga", "write to unknown graphics register \(hex(index))")
        }
    }

    // MARK: the 0xA0000 window

    /// The VRAM address behind window offset `offset` (< 0x10000) in extended mode: two 32 KiB
    /// banks based at GR9/GRA (one bank at GR9 unless GRB bit 0), in 4 or 16 KiB units (GRB
    /// bit 5), scaled for the write-mode-4/5 addressing (GRB bits 1, 2 and 4). Nil past VRAM.
    func bankedAddress(_ offset: Int) -> Int? {
        let bank = offset >> 15
        let dual = graphics[0x0B] & 0x01 != 0
        var base = Int(dual ? graphics[0x09 + bank] : graphics[0x09]) << (graphics[0x0B] & 0x20 != 0 ? 14 : 12)
        if !dual && bank == 1 { base += 0x8000 }
        let address = base + (offset & 0x7FFF)
        guard address < Self.decodedVRAM else { return nil }
        if graphics[0x0B] & 0x14 == 0x14 { return (address << 4) & vramMask }
        if graphics[0x0B] & 0x02 != 0 { return (address << 3) & vramMask }
        return address
    }

    /// Whether the blitter registers appear at 0xB8000 (SR17 bit 2, and bit 6 not moving them
    /// to the top of the linear framebuffer).
    private var windowMMIOEnabled: Bool { sequencer[0x17] & 0x44 == 0x04 }

    func readWindow(_ offset: Int) -> UInt8 {
        guard extendedMode else { return core.readWindow(offset) }
        if offset < 0x10000 {
            guard let address = bankedAddress(offset) else { return 0xFF }
            return core.vram.withBytes { $0[address] }
        }
        if offset >= 0x18000, offset < 0x18100, windowMMIOEnabled {
            return readBlitterMMIO(offset - 0x18000)
        }
        return 0xFF
    }

    func writeWindow(_ offset: Int, _ value: UInt8) {
        guard extendedMode else {
            core.writeWindow(offset, value)
            return
        }
        if offset < 0x10000 {
            if blitter.isAwaitingSystemSource {
                writeSystemSource(value)
                return
            }
            guard let address = bankedAddress(offset) else { return }
            let mode = graphics[0x05] & 7
            guard graphics[0x0B] & 0x04 != 0, mode == 4 || mode == 5 else {
                core.vram.withBytes { $0[address] = value }
                core.vram.deviceWrote(offset: address, length: 1)
                return
            }
            writeExpanded(value, at: address, opaque: mode == 5)
            return
        }
        if offset >= 0x18000, offset < 0x18100, windowMMIOEnabled {
            writeBlitterMMIO(offset - 0x18000, value)
        }
    }

    /// Write modes 4 and 5: each bit of `value` (MSB first) becomes a pixel in the foreground
    /// colour (GR1/GR11); clear bits become background (GR0/GR10) in mode 5 and are skipped in
    /// mode 4. 16-bit pixels when GRB bits 2 and 4 are both set.
    private func writeExpanded(_ value: UInt8, at address: Int, opaque: Bool) {
        let wide = graphics[0x0B] & 0x14 == 0x14
        let pixelBytes = wide ? 2 : 1
        let foreground = [blitter.read(register: 0x01), blitter.read(register: 0x11)]
        let background = [blitter.read(register: 0x00), blitter.read(register: 0x10)]
        let mask = vramMask
        core.vram.withBytes { bytes in
            for x in 0..<8 {
                let set = value & (0x80 >> UInt8(x)) != 0
                guard set || opaque else { continue }
                for i in 0..<pixelBytes {
                    bytes[(address + x * pixelBytes + i) & mask] = set ? foreground[i] : background[i]
                }
            }
        }
        core.vram.deviceWrote(offset: address, length: min(8 * pixelBytes, Self.decodedVRAM - address))
    }

    private func writeSystemSource(_ value: UInt8) {
        let written = core.vram.withBytes { blitter.writeSystemSource(value, vram: $0) }
        if let written { core.vram.deviceWrote(offset: written.lowerBound, length: written.count) }
    }

    // MARK: memory-mapped blitter registers

    private func readBlitterMMIO(_ offset: Int) -> UInt8 {
        guard let index = CirrusBlitter.registerIndex(mmioOffset: offset) else { return 0xFF }
        return blitter.read(register: index)
    }

    private func writeBlitterMMIO(_ offset: Int, _ value: UInt8) {
        guard let index = CirrusBlitter.registerIndex(mmioOffset: offset) else { return }
        let written = core.vram.withBytes { blitter.write(register: index, value, vram: $0) }
        if let written { core.vram.deviceWrote(offset: written.lowerBound, length: written.count) }
    }

    // MARK: BusDevice

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case Self.vramBAR:
            guard offset < UInt64(core.vramSize) else { return mask(size) }
            let at = Int(offset)
            return core.vram.withBytes { bytes in
                bytewise(size) { at + Int($0) < bytes.count ? UInt64(bytes[at + Int($0)]) : 0xFF }
            }
        case Self.mmioBAR:
            return bytewise(size) { i in
                let at = Int(offset + i)
                if at < 0x100 { return UInt64(readPort(UInt16(0x3C0 + at))) }
                if at < 0x200 { return UInt64(readBlitterMMIO(at - 0x100)) }
                return 0xFF
            }
        case PCIFunction.romRegion: return pci.readROM(offset: offset, size: size)
        case Self.legacyPortRegion: return bytewise(size) { UInt64(readPort(UInt16(0x3B0 + offset + $0))) }
        case Self.legacyMemoryRegion: return bytewise(size) { UInt64(readWindow(Int(offset + $0))) }
        default: return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        func byte(_ i: Int) -> UInt8 { UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        switch region {
        case Self.vramBAR:
            if offset >= Self.blitApertureOffset {
                // The BitBLT aperture: CPU data for a system-source blit, ignored otherwise.
                guard offset < Self.blitApertureOffset + Self.blitApertureSize else { return }
                for i in 0..<size where blitter.isAwaitingSystemSource { writeSystemSource(byte(i)) }
                return
            }
            guard offset < UInt64(core.vramSize) else { return }
            let at = Int(offset)
            let written = core.vram.withBytes { bytes -> Bool in
                guard at + size <= bytes.count else { return false }
                for i in 0..<size { bytes[at + i] = byte(i) }
                return true
            }
            if written { core.vram.deviceWrote(offset: at, length: size) }
        case Self.mmioBAR:
            for i in 0..<size {
                let at = Int(offset) + i
                if at < 0x100 {
                    writePort(UInt16(0x3C0 + at), byte(i))
                } else if at < 0x200 {
                    writeBlitterMMIO(at - 0x100, byte(i))
                }
            }
        case Self.legacyPortRegion:
            for i in 0..<size { writePort(UInt16(0x3B0 + Int(offset) + i), byte(i)) }
        case Self.legacyMemoryRegion:
            for i in 0..<size { writeWindow(Int(offset) + i, byte(i)) }
        default: break
        }
    }

    private func bytewise(_ size: Int, _ byte: (UInt64) -> UInt64) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<UInt64(size) { value |= (byte(i) & 0xFF) << (8 * i) }
        return value
    }

    // MARK: drawing

    /// An extended (SR7 bit 0) graphics mode, from the CRTC and SR7/hidden DAC.
    struct ExtendedMode: Equatable {
        var width: Int
        var height: Int
        var bitsPerPixel: Int
        /// Byte offsets into the decoded VRAM.
        var start: Int
        var lineBytes: Int
        /// Each VRAM line shows on this many screen lines (CR9 maximum scan line, double scan).
        var scanRepeat: Int
    }

    struct Cursor: Equatable {
        var x: Int
        var y: Int
        var size: Int
        var pattern: Int
        var colours: [UInt32]
    }

    /// Bits per pixel of the extended mode: SR7 bits 1-3, with 16 bpp split by the hidden DAC
    /// into 5-5-5 and 5-6-5 (QEMU's reading of it).
    var bitsPerPixel: Int {
        switch sequencer[0x07] & 0x0E {
        case 0x02, 0x06: return hiddenDAC & 0x0F == 1 ? 16 : 15
        case 0x04: return 24
        case 0x08: return 32
        default: return 8
        }
    }

    func currentExtendedMode() -> ExtendedMode {
        let cr = core.crtc
        let width = (Int(cr[0x01]) + 1) * 8
        var height = (Int(cr[0x12]) | Int(cr[0x07] & 0x02) << 7 | Int(cr[0x07] & 0x40) << 3) + 1
        if cr[0x1A] & 0x01 != 0 { height *= 2 }  // interlaced: the CRTC counts field lines
        let offset = (Int(cr[0x13]) | Int(cr[0x1B] & 0x10) << 4) << 3
        let startWords = Int(cr[0x0C]) << 8 | Int(cr[0x0D]) | Int(cr[0x1B] & 0x01) << 16
            | Int(cr[0x1B] & 0x0C) << 15 | Int(cr[0x1D] & 0x80) << 12
        return ExtendedMode(width: min(width, Framebuffer.maxDimension), height: min(height, Framebuffer.maxDimension),
                            bitsPerPixel: bitsPerPixel, start: (startWords * 4) & vramMask, lineBytes: offset,
                            scanRepeat: ((Int(cr[0x09]) & 0x1F) + 1) << Int(cr[0x09] >> 7))
    }

    func currentCursor() -> Cursor? {
        guard sequencer[0x12] & 0x01 != 0 else { return nil }
        let large = sequencer[0x12] & 0x04 != 0
        let base = Self.decodedVRAM - 16 * 1024
        let pattern = base + Int(large ? sequencer[0x13] & 0x3C : sequencer[0x13] & 0x3F) * 256
        func colour(_ entry: Int) -> UInt32 {
            VGACore.sixToEight(hiddenPalette[entry * 3]) << 16 | VGACore.sixToEight(hiddenPalette[entry * 3 + 1]) << 8
                | VGACore.sixToEight(hiddenPalette[entry * 3 + 2])
        }
        return Cursor(x: cursorX, y: cursorY, size: large ? 64 : 32, pattern: pattern, colours: [colour(0), colour(15)])
    }

    /// Extended pixels are drawn, as on QEMU, only in graphics mode (GR6 bit 0) with 256-colour
    /// shifting (GR5 bits 5-6); otherwise the VGA core draws text or planar modes.
    private var drawsExtendedMode: Bool {
        extendedMode && core.graphics[6] & 0x01 != 0 && core.graphics[5] & 0x40 != 0
    }

    public func refresh(_ framebuffer: Framebuffer) {
        guard drawsExtendedMode else {
            lastExtendedMode = nil
            core.refresh(framebuffer)
            return
        }
        let known = dirtyPages.collect(from: core.vram)
        let mode = currentExtendedMode()
        let cursor = currentCursor()
        var paletteChanged = false
        for i in 0..<256 {
            let colour = VGACore.sixToEight(core.dac[3 * i]) << 16 | VGACore.sixToEight(core.dac[3 * i + 1]) << 8
                | VGACore.sixToEight(core.dac[3 * i + 2])
            if palette[i] != colour { palette[i] = colour; paletteChanged = true }
        }
        framebuffer.resize(width: mode.width, height: mode.height)
        let full = !known || mode != lastExtendedMode || cursor != lastCursor
            || framebuffer.generation != lastGeneration || (paletteChanged && mode.bitsPerPixel == 8)
        lastExtendedMode = mode
        lastCursor = cursor
        lastGeneration = framebuffer.generation
        if rowBuffer.count < framebuffer.width { rowBuffer = [UInt32](repeating: 0, count: framebuffer.width) }
        let blanked = core.attributeIndex & 0x20 == 0
        let pixelBytes = (mode.bitsPerPixel + 7) / 8
        let rows = min(mode.height, framebuffer.height)
        let columns = min(mode.width, framebuffer.width)
        let m = vramMask
        core.vram.withBytes { bytes in
            rowBuffer.withUnsafeMutableBufferPointer { row in
                for y in 0..<rows {
                    let base = (mode.start + (y / mode.scanRepeat) * mode.lineBytes) & m
                    let onCursor = cursor.map { y >= $0.y && y < $0.y + $0.size } ?? false
                    if !full && !onCursor && !dirtyPages.contains(base, base + columns * pixelBytes) { continue }
                    if blanked {
                        for x in 0..<columns { row[x] = 0 }
                    } else {
                        drawRow(bytes, base: base, columns: columns, bitsPerPixel: mode.bitsPerPixel, into: row)
                        if let cursor, onCursor { drawCursor(cursor, bytes, line: y - cursor.y, columns: columns, into: row) }
                    }
                    framebuffer.storeRow(y, UnsafeBufferPointer(row))
                }
            }
        }
    }

    /// One row of pixels from VRAM at `base`, every byte address wrapped into the decoded VRAM.
    private func drawRow(_ bytes: UnsafeMutableRawBufferPointer, base: Int, columns: Int, bitsPerPixel: Int,
                         into row: UnsafeMutableBufferPointer<UInt32>) {
        let m = vramMask
        @inline(__always) func byte(_ at: Int) -> UInt32 { UInt32(bytes[at & m]) }
        switch bitsPerPixel {
        case 8:
            for x in 0..<columns { row[x] = palette[Int(bytes[(base + x) & m])] }
        case 15, 16:
            for x in 0..<columns {
                row[x] = VGACore.rgb(highColor: byte(base + 2 * x) | byte(base + 2 * x + 1) << 8, bitsPerPixel: bitsPerPixel)
            }
        case 24:
            for x in 0..<columns {
                let p = base + 3 * x
                row[x] = byte(p + 2) << 16 | byte(p + 1) << 8 | byte(p)
            }
        default:
            for x in 0..<columns {
                let p = base + 4 * x
                row[x] = byte(p + 2) << 16 | byte(p + 1) << 8 | byte(p)
            }
        }
    }

    /// One line of the hardware cursor over `row`: plane 0 and plane 1 bits per pixel give
    /// transparent (0,0), inverted (1,0), background (0,1) and foreground (1,1). A 32×32 cursor
    /// keeps 4 bytes a line with plane 1 128 bytes on; a 64×64 one 16 bytes a line, plane 1
    /// in the second 8.
    private func drawCursor(_ cursor: Cursor, _ bytes: UnsafeMutableRawBufferPointer, line: Int, columns: Int,
                            into row: UnsafeMutableBufferPointer<UInt32>) {
        let m = vramMask
        let plane0 = cursor.size == 64 ? cursor.pattern + line * 16 : cursor.pattern + line * 4
        let plane1 = cursor.size == 64 ? plane0 + 8 : plane0 + 128
        for i in 0..<cursor.size {
            let x = cursor.x + i
            guard x < columns else { break }
            let bit = UInt8(0x80) >> UInt8(i & 7)
            let p0 = bytes[(plane0 + i / 8) & m] & bit != 0
            let p1 = bytes[(plane1 + i / 8) & m] & bit != 0
            switch (p0, p1) {
            case (true, false): row[x] ^= 0xFF_FFFF
            case (false, true): row[x] = cursor.colours[0]
            case (true, true): row[x] = cursor.colours[1]
            default: break
            }
        }
    }

    // MARK: state

    public var stateID: String { "cirrus-vga" }
    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        core.saveState(to: &w)
        blitter.saveState(to: &w)
        w.put(sequencerIndex); w.put(bytes: sequencer)
        w.put(graphicsIndex); w.put(bytes: graphics)
        w.put(hiddenDAC); w.put(UInt8(hiddenDACReads)); w.put(bytes: hiddenPalette)
        w.put(UInt16(cursorX)); w.put(UInt16(cursorY))
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        try core.loadState(from: &r, section: stateID)
        try blitter.loadState(from: &r)
        let seqIndex = try r.get(UInt8.self), seq = try r.getBytes(exactly: 0x20)
        let grIndex = try r.get(UInt8.self), gr = try r.getBytes(exactly: 0x20)
        let dac = try r.get(UInt8.self), reads = try r.get(UInt8.self), hidden = try r.getBytes(exactly: 48)
        let x = Int(try r.get(UInt16.self)), y = Int(try r.get(UInt16.self))
        guard reads <= 4 else { throw .invalidValue(section: stateID, field: "hidden DAC read count") }
        // SR10/SR11 hold the high bits; the low three came with the index.
        guard x >> 3 == Int(seq[0x10]), y >> 3 == Int(seq[0x11]) else {
            throw .invalidValue(section: stateID, field: "cursor position")
        }
        resetExtensions()
        sequencerIndex = seqIndex
        // Read-only registers keep their power-on values; the others are plain bytes.
        for i in 0x07..<0x20 where ![0x0F, 0x15, 0x1F].contains(i) { sequencer[i] = seq[i] }
        sequencer[0x06] = seq[0x06] == 0x12 ? 0x12 : 0x0F
        sequencer[0x17] = (sequencer[0x17] & 0x38) | (seq[0x17] & 0xC7)
        cursorX = x
        cursorY = y
        graphicsIndex = grIndex
        graphics[0x05] = gr[0x05] & 0x7F
        for i in 0x09...0x0B { graphics[i] = gr[i] }
        hiddenDAC = dac
        hiddenDACReads = Int(reads)
        hiddenPalette = hidden
    }
}
