import DMCore

/// The VGA proper, shared by every VGA-compatible card: the register files behind ports
/// 0x3B0-0x3DF, the 0xA0000-0xBFFFF memory window with its planar access paths, the Bochs
/// DISPI (VBE) extension at 0x1CE/0x1CF, and the drawing of text, 16- and 256-colour and
/// DISPI modes into a `Framebuffer`.
///
/// Video memory uses QEMU's layout, because the VGA BIOSes and QEMU's own tests are written
/// against it: planar address A is the 32-bit word at byte 4·A, plane p its byte p. So chain-4
/// (mode 13h) and DISPI modes see VRAM as plain linear bytes, and text mode keeps characters in
/// plane 0, attributes in plane 1 and the font in plane 2.
///
/// Every register value the guest writes is kept as written (masked to the bits the hardware
/// has); everything derived from them is clamped where it is used, so no combination reaches
/// outside VRAM.
public final class VGACore: @unchecked Sendable {
    /// The smallest VRAM the core works with: one 64 Ki-word plane set (256 KiB), what a VGA has.
    public static let minimumVRAMSize = 256 << 10
    static let planeWords = 0x10000

    public let vram: any DeviceRAM
    public let vramSize: Int

    // MARK: VGA registers

    var miscOutput: UInt8 = 0
    var featureControl: UInt8 = 0
    /// Input status 1: the retrace bits toggle on every read, so polling loops finish.
    var inputStatus1: UInt8 = 0
    var sequencerIndex: UInt8 = 0
    var sequencer = [UInt8](repeating: 0, count: 8)
    var graphicsIndex: UInt8 = 0
    var graphics = [UInt8](repeating: 0, count: 16)
    /// Bits 0-4 the register, bit 5 the palette address source (0: the screen is blanked).
    var attributeIndex: UInt8 = 0
    var attribute = [UInt8](repeating: 0, count: 21)
    /// false: the next 0x3C0 write is an index; true: it is data. Reading input status 1 clears it.
    var attributeFlipFlop = false
    var crtcIndex: UInt8 = 0
    var crtc = [UInt8](repeating: 0, count: 256)
    /// 0x3C7 reads back 3 after a read-index write, 0 after a write-index write.
    var dacState: UInt8 = 0
    var dacReadIndex: UInt8 = 0
    var dacWriteIndex: UInt8 = 0
    var dacComponent: UInt8 = 0
    var dacPending = [UInt8](repeating: 0, count: 3)
    /// 256 entries of red, green, blue, 6 bits each (8 with the DISPI 8-bit DAC flag).
    var dac = [UInt8](repeating: 0, count: 768)
    var latch: UInt32 = 0

    static let sequencerMasks: [UInt8] = [0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF]
    static let graphicsMasks: [UInt8] = [0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF, 0, 0, 0, 0, 0, 0, 0]

    // MARK: DISPI registers

    public enum DISPI {
        public static let id = 0, xres = 1, yres = 2, bpp = 3, enable = 4, bank = 5
        public static let virtWidth = 6, virtHeight = 7, xOffset = 8, yOffset = 9, videoMemory64K = 10
        public static let count = 11
        public static let enabled: UInt16 = 0x01, getCaps: UInt16 = 0x02, dac8Bit: UInt16 = 0x20
        public static let lfbEnabled: UInt16 = 0x40, noClearMem: UInt16 = 0x80
        public static let maxXRes: UInt16 = 16000, maxYRes: UInt16 = 12000, maxBPP: UInt16 = 32
        public static let ids: ClosedRange<UInt16> = 0xB0C0...0xB0C5
    }
    var dispiIndex: UInt16 = 0
    var dispi = [UInt16](repeating: 0, count: DISPI.count)
    /// Derived by `fixDISPI`: bytes per virtual line and the byte offset of the visible origin.
    private(set) var dispiLineBytes = 0
    private(set) var dispiStart = 0
    /// Where the 64 KiB window at 0xA0000 points in VRAM (the DISPI bank).
    private(set) var bankOffset = 0

    // MARK: drawing state (not guest-visible)

    private var rowBuffer = [UInt32](repeating: 0, count: 1024)
    private var dirtyPages: VRAMDirtyPages
    private var palette16 = [UInt32](repeating: 0, count: 16)
    private var palette256 = [UInt32](repeating: 0, count: 256)
    private var lastMode: DisplayMode?
    private var lastGeneration = -1
    private var refreshCount = 0

    public init(vram: any DeviceRAM) {
        precondition(vram.size >= Self.minimumVRAMSize, "VGA needs at least 256 KiB of VRAM")
        self.vram = vram
        vramSize = vram.size
        dirtyPages = VRAMDirtyPages(vramSize: vram.size)
        reset()
    }

    /// Power-on: every register zero, DISPI off and announcing the newest interface.
    public func reset() {
        miscOutput = 0; featureControl = 0; inputStatus1 = 0
        sequencerIndex = 0; graphicsIndex = 0; attributeIndex = 0; crtcIndex = 0
        for i in sequencer.indices { sequencer[i] = 0 }
        for i in graphics.indices { graphics[i] = 0 }
        for i in attribute.indices { attribute[i] = 0 }
        for i in crtc.indices { crtc[i] = 0 }
        for i in dac.indices { dac[i] = 0 }
        attributeFlipFlop = false
        dacState = 0; dacReadIndex = 0; dacWriteIndex = 0; dacComponent = 0
        dacPending = [0, 0, 0]
        latch = 0
        dispiIndex = 0
        for i in dispi.indices { dispi[i] = 0 }
        dispi[DISPI.id] = DISPI.ids.upperBound
        dispiLineBytes = 0; dispiStart = 0; bankOffset = 0
        lastMode = nil
    }

    // MARK: ports 0x3B0-0x3DF

    /// Ports of the decode the misc output register does not select (mono 0x3Bx while colour,
    /// colour 0x3Dx while mono) are not there.
    private func decodes(_ port: UInt16) -> Bool {
        if miscOutput & 1 != 0 { return !(0x3B0...0x3BF).contains(port) }
        return !(0x3D0...0x3DF).contains(port)
    }

    public func readPort(_ port: UInt16) -> UInt8 {
        guard decodes(port) else { return 0xFF }
        switch port {
        case 0x3C0: return attributeFlipFlop ? 0 : attributeIndex
        case 0x3C1:
            let index = Int(attributeIndex & 0x1F)
            return index < attribute.count ? attribute[index] : 0
        case 0x3C2: return 0  // input status 0: no switch sense, no vertical interrupt
        case 0x3C4: return sequencerIndex
        case 0x3C5: return sequencer[Int(sequencerIndex)]
        case 0x3C6: return 0xFF  // PEL mask: everything passes
        case 0x3C7: return dacState
        case 0x3C8: return dacWriteIndex
        case 0x3C9:
            let value = dac[Int(dacReadIndex) * 3 + Int(dacComponent)]
            dacComponent += 1
            if dacComponent == 3 { dacComponent = 0; dacReadIndex &+= 1 }
            return value
        case 0x3CA: return featureControl
        case 0x3CC: return miscOutput
        case 0x3CE: return graphicsIndex
        case 0x3CF: return graphics[Int(graphicsIndex)]
        case 0x3B4, 0x3D4: return crtcIndex
        case 0x3B5, 0x3D5: return crtc[Int(crtcIndex)]
        case 0x3BA, 0x3DA:
            attributeFlipFlop = false
            inputStatus1 ^= 0x09  // vertical retrace and display enable
            return inputStatus1
        default: return 0xFF
        }
    }

    public func writePort(_ port: UInt16, _ value: UInt8) {
        guard decodes(port) else { return }
        switch port {
        case 0x3C0:
            if !attributeFlipFlop {
                attributeIndex = value & 0x3F
            } else {
                let index = Int(attributeIndex & 0x1F)
                switch index {
                case 0x00...0x0F: attribute[index] = value & 0x3F
                case 0x10: attribute[index] = value & ~0x10
                case 0x11: attribute[index] = value
                case 0x12: attribute[index] = value & 0x3F
                case 0x13, 0x14: attribute[index] = value & 0x0F
                default: break
                }
            }
            attributeFlipFlop.toggle()
        case 0x3C2: miscOutput = value & ~0x10
        case 0x3C4: sequencerIndex = value & 7
        case 0x3C5: sequencer[Int(sequencerIndex)] = value & Self.sequencerMasks[Int(sequencerIndex)]
        case 0x3C7:
            dacReadIndex = value; dacComponent = 0; dacState = 3
        case 0x3C8:
            dacWriteIndex = value; dacComponent = 0; dacState = 0
        case 0x3C9:
            dacPending[Int(dacComponent)] = value
            dacComponent += 1
            if dacComponent == 3 {
                let base = Int(dacWriteIndex) * 3
                dac[base] = dacPending[0]; dac[base + 1] = dacPending[1]; dac[base + 2] = dacPending[2]
                dacComponent = 0
                dacWriteIndex &+= 1
            }
        case 0x3CE: graphicsIndex = value & 0x0F
        case 0x3CF: graphics[Int(graphicsIndex)] = value & Self.graphicsMasks[Int(graphicsIndex)]
        case 0x3B4, 0x3D4: crtcIndex = value
        case 0x3B5, 0x3D5:
            // CR11 bit 7 write-protects CR0-CR7, except CR7's line-compare bit.
            if crtc[0x11] & 0x80 != 0, crtcIndex <= 7 {
                if crtcIndex == 7 { crtc[7] = (crtc[7] & ~0x10) | (value & 0x10) }
                return
            }
            crtc[Int(crtcIndex)] = value
        case 0x3BA, 0x3DA: featureControl = value & 0x10
        default: break
        }
    }

    // MARK: DISPI

    public var dispiEnabled: Bool { dispi[DISPI.enable] & DISPI.enabled != 0 }
    var dac8Bit: Bool { dispi[DISPI.enable] & DISPI.dac8Bit != 0 }

    public func readDISPIIndex() -> UInt16 { dispiIndex }
    public func writeDISPIIndex(_ value: UInt16) { dispiIndex = value }

    public func readDISPI() -> UInt16 { readDISPI(register: Int(dispiIndex)) }
    public func writeDISPI(_ value: UInt16) { writeDISPI(register: Int(dispiIndex), value) }

    public func readDISPI(register: Int) -> UInt16 {
        guard register >= 0, register < DISPI.count else { return 0 }
        if dispi[DISPI.enable] & DISPI.getCaps != 0 {
            switch register {
            case DISPI.xres: return DISPI.maxXRes
            case DISPI.yres: return DISPI.maxYRes
            case DISPI.bpp: return DISPI.maxBPP
            default: break
            }
        }
        if register == DISPI.videoMemory64K { return UInt16(clamping: vramSize >> 16) }
        return dispi[register]
    }

    public func writeDISPI(register: Int, _ value: UInt16) {
        switch register {
        case DISPI.id:
            if DISPI.ids.contains(value) { dispi[DISPI.id] = value }
        case DISPI.xres, DISPI.yres, DISPI.bpp, DISPI.virtWidth, DISPI.xOffset, DISPI.yOffset:
            dispi[register] = value
            fixDISPI()
        case DISPI.bank:
            let bank = Int(value) % max(vramSize >> 16, 1)
            dispi[DISPI.bank] = UInt16(truncatingIfNeeded: bank)
            bankOffset = bank << 16
        case DISPI.enable:
            if value & DISPI.enabled != 0 && !dispiEnabled {
                dispi[DISPI.virtWidth] = 0
                dispi[DISPI.xOffset] = 0
                dispi[DISPI.yOffset] = 0
                dispi[DISPI.enable] |= DISPI.enabled
                fixDISPI()
                if value & DISPI.noClearMem == 0 {
                    let length = min(Int(dispi[DISPI.yres]) * dispiLineBytes, vramSize)
                    vram.withBytes { bytes in
                        if let base = bytes.baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0, count: length) }
                    }
                    vram.deviceWrote(offset: 0, length: length)
                }
            } else if value & DISPI.enabled == 0 {
                bankOffset = 0
            }
            dispi[DISPI.enable] = value
        default:
            break  // VIRT_HEIGHT and VIDEO_MEMORY_64K are computed; unknown indices do nothing
        }
    }

    /// Brings the DISPI registers back to a mode that fits VRAM, as QEMU does after every
    /// write while DISPI is on: an unknown depth becomes 8 bpp, widths are multiples of 8 and
    /// at most 16000, the visible height fits in VRAM, and offsets that would show memory past
    /// the end are dropped.
    /// `updatingVGA` false: only the DISPI side (restoring state, whose VGA registers are
    /// already what the guest left).
    func fixDISPI(updatingVGA: Bool = true) {
        guard dispiEnabled else { return }
        switch dispi[DISPI.bpp] {
        case 8, 15, 16, 24, 32: break
        default: dispi[DISPI.bpp] = 8
        }
        let bits = Int(dispi[DISPI.bpp])
        var xres = Int(dispi[DISPI.xres]) & ~7
        if xres == 0 { xres = 8 }
        xres = min(xres, Int(DISPI.maxXRes))
        var virtWidth = min(Int(dispi[DISPI.virtWidth]) & ~7, Int(DISPI.maxXRes))
        virtWidth = max(virtWidth, xres)
        let lineBytes = virtWidth * ((bits + 7) / 8)
        let maxY = vramSize / lineBytes
        var yres = max(Int(dispi[DISPI.yres]), 1)
        yres = min(yres, Int(DISPI.maxYRes), maxY)
        var xOffset = min(Int(dispi[DISPI.xOffset]), Int(DISPI.maxXRes))
        var yOffset = min(Int(dispi[DISPI.yOffset]), Int(DISPI.maxYRes))
        var start = xOffset * ((bits + 7) / 8) + yOffset * lineBytes
        if start + yres * lineBytes > vramSize {
            yOffset = 0
            start = xOffset * ((bits + 7) / 8)
            if start + yres * lineBytes > vramSize {
                xOffset = 0
                start = 0
            }
        }
        dispi[DISPI.xres] = UInt16(xres)
        dispi[DISPI.yres] = UInt16(yres)
        dispi[DISPI.virtWidth] = UInt16(virtWidth)
        dispi[DISPI.virtHeight] = UInt16(clamping: maxY)
        dispi[DISPI.xOffset] = UInt16(xOffset)
        dispi[DISPI.yOffset] = UInt16(yOffset)
        dispiLineBytes = lineBytes
        dispiStart = start
        guard updatingVGA else { return }
        // The VGA side follows, as on QEMU: a 64 KiB graphics window at 0xA0000 (the bank),
        // chain 4 on all planes and 256-colour shifting, so banked access from real mode works.
        graphics[6] = (graphics[6] & ~0x0C) | 0x05
        graphics[5] = (graphics[5] & ~0x60) | 0x40
        sequencer[4] |= 0x08
        sequencer[2] = 0x0F
    }

    // MARK: the memory window 0xA0000-0xBFFFF

    /// A 15-bit (x1r5g5b5) or 16-bit (r5g6b5) pixel as 0x00RRGGBB. Components widen by repeating
    /// their top bits (0x1F becomes 0xFF), as QEMU's pixman conversion does, so screendumps match.
    @inline(__always)
    static func rgb(highColor v: UInt32, bitsPerPixel: Int) -> UInt32 {
        @inline(__always) func five(_ c: UInt32) -> UInt32 { c << 3 | c >> 2 }
        if bitsPerPixel == 16 {
            let green = (v >> 5) & 0x3F
            return five((v >> 11) & 0x1F) << 16 | (green << 2 | green >> 4) << 8 | five(v & 0x1F)
        }
        return five((v >> 10) & 0x1F) << 16 | five((v >> 5) & 0x1F) << 8 | five(v & 0x1F)
    }

    /// Expands a 4-bit plane mask to one byte per plane.
    @inline(__always)
    static func expand(_ planes: UInt8) -> UInt32 {
        var value: UInt32 = 0
        for plane in 0..<4 where planes & (1 << plane) != 0 { value |= 0xFF << (8 * UInt32(plane)) }
        return value
    }

    /// The window offset (0-0x1FFFF from 0xA0000) as an address in the mapped range, per the
    /// graphics controller's memory map select; nil where nothing is mapped.
    @inline(__always)
    private func windowAddress(_ offset: Int) -> Int? {
        switch (graphics[6] >> 2) & 3 {
        case 0: return offset
        case 1: return offset < 0x10000 ? offset + bankOffset : nil
        case 2: return (0x10000..<0x18000).contains(offset) ? offset - 0x10000 : nil
        default: return offset >= 0x18000 && offset < 0x20000 ? offset - 0x18000 : nil
        }
    }

    public func readWindow(_ offset: Int) -> UInt8 {
        guard let address = windowAddress(offset) else { return 0xFF }
        let size = vramSize
        return vram.withBytes { bytes -> UInt8 in
            if sequencer[4] & 0x08 != 0 {  // chain 4
                return address < size ? bytes[address] : 0xFF
            }
            if graphics[5] & 0x10 != 0 {  // odd/even
                let plane = Int(graphics[4] & 2) | (address & 1)
                let index = ((address & ~1) << 1) | plane
                return index < size ? bytes[index] : 0xFF
            }
            guard address < Self.planeWords * 2, address * 4 + 3 < size else { return 0xFF }
            latch = bytes.load(fromByteOffset: address * 4, as: UInt32.self)
            if graphics[5] & 0x08 == 0 {  // read mode 0: one plane
                return UInt8(truncatingIfNeeded: latch >> (8 * UInt32(graphics[4] & 3)))
            }
            // Read mode 1: a bit is set where all planes the compare mask selects match the colour.
            var differs = (latch ^ Self.expand(graphics[2])) & Self.expand(graphics[7])
            differs |= differs >> 16
            differs |= differs >> 8
            return ~UInt8(truncatingIfNeeded: differs)
        }
    }

    public func writeWindow(_ offset: Int, _ value: UInt8) {
        guard let address = windowAddress(offset) else { return }
        let size = vramSize
        let planeMask = sequencer[2] & 0x0F
        if sequencer[4] & 0x08 != 0 {  // chain 4: the low address bits pick the plane
            guard address < size, planeMask & (1 << (address & 3)) != 0 else { return }
            vram.withBytes { $0[address] = value }
            vram.deviceWrote(offset: address, length: 1)
            return
        }
        if sequencer[4] & 0x04 == 0 {  // odd/even
            let plane = Int(graphics[4] & 2) | (address & 1)
            let index = ((address & ~1) << 1) | plane
            guard index < size, planeMask & (1 << plane) != 0 else { return }
            vram.withBytes { $0[index] = value }
            vram.deviceWrote(offset: index, length: 1)
            return
        }
        guard address < Self.planeWords * 2, address * 4 + 3 < size else { return }
        let rotate = UInt8(graphics[3] & 7)
        let rotated = rotate == 0 ? value : (value >> rotate) | (value << (8 - rotate))
        var data: UInt32
        var bitMask = graphics[8]
        switch graphics[5] & 3 {
        case 0:
            data = UInt32(rotated) * 0x0101_0101
            let setResetEnable = Self.expand(graphics[1])
            data = (data & ~setResetEnable) | (Self.expand(graphics[0]) & setResetEnable)
        case 1:
            data = latch
        case 2:
            data = Self.expand(value & 0x0F)
        default:
            bitMask &= rotated
            data = Self.expand(graphics[0])
        }
        if graphics[5] & 3 != 1 {
            switch graphics[3] >> 3 {
            case 1: data &= latch
            case 2: data |= latch
            case 3: data ^= latch
            default: break
            }
            let mask32 = UInt32(bitMask) * 0x0101_0101
            data = (data & mask32) | (latch & ~mask32)
        }
        let writeMask = Self.expand(planeMask)
        vram.withBytes { bytes in
            let old = bytes.load(fromByteOffset: address * 4, as: UInt32.self)
            bytes.storeBytes(of: (old & ~writeMask) | (data & writeMask), toByteOffset: address * 4, as: UInt32.self)
        }
        vram.deviceWrote(offset: address * 4, length: 4)
    }

    // MARK: drawing

    /// What the registers say the screen shows; a change means a full redraw.
    enum DisplayMode: Equatable {
        case blank
        case text(columns: Int, rows: Int, cellWidth: Int, cellHeight: Int, doubleWidth: Bool, start: Int, lineWords: Int,
                  cursor: Int?, cursorLines: ClosedRange<Int>?, blinkOn: Bool, fontA: Int, fontB: Int, attrMode: UInt8)
        case planar(width: Int, height: Int, start: Int, lineWords: Int, planes: UInt8)
        case chain4(width: Int, height: Int, start: Int, lineWords: Int)
        case dispi(width: Int, height: Int, bpp: Int, start: Int, lineBytes: Int)

        var size: (width: Int, height: Int) {
            switch self {
            case .blank: return (0, 0)
            case let .text(columns, rows, cellWidth, cellHeight, doubleWidth, _, _, _, _, _, _, _, _):
                return (columns * cellWidth * (doubleWidth ? 2 : 1), rows * cellHeight)
            case let .planar(width, height, _, _, _), let .chain4(width, height, _, _),
                 let .dispi(width, height, _, _, _):
                return (width, height)
            }
        }
    }

    func currentMode() -> DisplayMode {
        if dispiEnabled {
            return .dispi(width: Int(dispi[DISPI.xres]), height: Int(dispi[DISPI.yres]), bpp: Int(dispi[DISPI.bpp]),
                          start: dispiStart, lineBytes: dispiLineBytes)
        }
        guard attributeIndex & 0x20 != 0 else { return .blank }
        let columns = Int(crtc[1]) + 1
        let verticalEnd = Int(crtc[0x12]) | Int(crtc[7] & 0x02) << 7 | Int(crtc[7] & 0x40) << 3
        let lines = verticalEnd + 1
        let start = Int(crtc[0x0C]) << 8 | Int(crtc[0x0D])
        let lineWords = Int(crtc[0x13]) * 2
        if graphics[6] & 1 == 0 {
            let cellHeight = Int(crtc[9] & 0x1F) + 1
            let rows = lines / cellHeight
            let cursorStart = Int(crtc[0x0A] & 0x1F)
            let cursorEnd = min(Int(crtc[0x0B] & 0x1F), cellHeight - 1)
            let cursorShown = crtc[0x0A] & 0x20 == 0 && cursorStart <= cursorEnd
            let map = Int(sequencer[3])
            let fontB = ((map >> 4) & 1 | (map << 1) & 6) * 0x2000
            let fontA = ((map >> 5) & 1 | (map >> 1) & 6) * 0x2000
            return .text(columns: columns, rows: max(rows, 1), cellWidth: sequencer[1] & 1 != 0 ? 8 : 9,
                         cellHeight: cellHeight, doubleWidth: sequencer[1] & 0x08 != 0, start: start,
                         lineWords: lineWords, cursor: cursorShown ? Int(crtc[0x0E]) << 8 | Int(crtc[0x0F]) : nil,
                         cursorLines: cursorShown ? cursorStart...cursorEnd : nil, blinkOn: (refreshCount / 16) % 2 == 0,
                         fontA: fontA, fontB: fontB, attrMode: attribute[0x10])
        }
        let lineRepeat = (Int(crtc[9] & 0x1F) + 1) * (crtc[9] & 0x80 != 0 ? 2 : 1)
        let height = max(lines / lineRepeat, 1)
        if graphics[5] & 0x40 != 0 {
            return .chain4(width: columns * 4, height: height, start: start, lineWords: lineWords)
        }
        return .planar(width: columns * 8, height: height, start: start, lineWords: lineWords,
                       planes: attribute[0x12] & 0x0F)
    }

    @inline(__always)
    static func sixToEight(_ value: UInt8) -> UInt32 {
        let v = UInt32(value & 0x3F)
        return v << 2 | (v & 1) << 1 | (v & 1)
    }

    /// Recomputes both palettes; returns whether either changed.
    private func updatePalettes() -> Bool {
        var changed = false
        let eightBit = dac8Bit
        for i in 0..<256 {
            let r = dac[3 * i], g = dac[3 * i + 1], b = dac[3 * i + 2]
            let colour = eightBit ? UInt32(r) << 16 | UInt32(g) << 8 | UInt32(b)
                                  : Self.sixToEight(r) << 16 | Self.sixToEight(g) << 8 | Self.sixToEight(b)
            if palette256[i] != colour { palette256[i] = colour; changed = true }
        }
        for i in 0..<16 {
            var index = Int(attribute[i])
            if attribute[0x10] & 0x80 != 0 {
                index = Int(attribute[0x14] & 0x0F) << 4 | index & 0x0F
            } else {
                index = Int(attribute[0x14] & 0x0C) << 4 | index & 0x3F
            }
            let colour = palette256[index]
            if palette16[i] != colour { palette16[i] = colour; changed = true }
        }
        return changed
    }

    /// Redraws what may have changed since the last call: everything after a mode, palette or
    /// size change, or when the platform cannot tell which VRAM pages the guest wrote;
    /// otherwise only rows over written pages. `storeRow` then keeps only real changes.
    public func refresh(_ framebuffer: Framebuffer) {
        refreshCount &+= 1
        let known = dirtyPages.collect(from: vram)
        let mode = currentMode()
        let paletteChanged = updatePalettes()
        if mode != .blank {
            let size = mode.size
            framebuffer.resize(width: size.width, height: size.height)
        }
        let full = !known || paletteChanged || mode != lastMode || framebuffer.generation != lastGeneration
        lastMode = mode
        lastGeneration = framebuffer.generation
        if rowBuffer.count < framebuffer.width { rowBuffer = [UInt32](repeating: 0, count: framebuffer.width) }
        switch mode {
        case .blank:
            guard full else { return }
            rowBuffer.withUnsafeMutableBufferPointer { row in
                for x in 0..<framebuffer.width { row[x] = 0 }
                for y in 0..<framebuffer.height { framebuffer.storeRow(y, UnsafeBufferPointer(row)) }
            }
        case .text:
            guard full || dirtyPages.contains(0, min(vramSize, Self.planeWords * 4)) else { return }
            drawText(mode, framebuffer)
        case let .planar(width, height, start, lineWords, planes):
            drawGraphics(framebuffer, full: full, width: width, height: height) { y in
                (((start + y * lineWords) & (Self.planeWords - 1)) * 4, width / 2)
            } draw: { bytes, y, row in
                let word = (start + y * lineWords)
                for cell in 0..<(width / 8) {
                    let at = ((word + cell) & (Self.planeWords - 1)) * 4
                    let planesWord = bytes.load(fromByteOffset: at, as: UInt32.self)
                    for bit in 0..<8 {
                        let shift = UInt32(7 - bit)
                        var index = (planesWord >> shift) & 1
                        index |= ((planesWord >> (8 + shift)) & 1) << 1
                        index |= ((planesWord >> (16 + shift)) & 1) << 2
                        index |= ((planesWord >> (24 + shift)) & 1) << 3
                        row[cell * 8 + bit] = palette16[Int(index & UInt32(planes))]
                    }
                }
            }
        case let .chain4(width, height, start, lineWords):
            drawGraphics(framebuffer, full: full, width: width, height: height) { y in
                (((start + y * lineWords) & (Self.planeWords - 1)) * 4, width)
            } draw: { bytes, y, row in
                let base = ((start + y * lineWords) & (Self.planeWords - 1)) * 4
                for x in 0..<width { row[x] = palette256[Int(bytes[(base + x) & (Self.planeWords * 4 - 1)])] }
            }
        case let .dispi(width, height, bpp, start, lineBytes):
            let pixelBytes = (bpp + 7) / 8
            drawGraphics(framebuffer, full: full, width: width, height: height) { y in
                (start + y * lineBytes, width * pixelBytes)
            } draw: { bytes, y, row in
                let base = start + y * lineBytes
                guard base >= 0, base + width * pixelBytes <= bytes.count else { return }
                switch bpp {
                case 8:
                    for x in 0..<width { row[x] = palette256[Int(bytes[base + x])] }
                case 15, 16:
                    for x in 0..<width {
                        let v = UInt32(bytes.loadUnaligned(fromByteOffset: base + 2 * x, as: UInt16.self))
                        row[x] = Self.rgb(highColor: v, bitsPerPixel: bpp)
                    }
                case 24:
                    for x in 0..<width {
                        let p = base + 3 * x
                        row[x] = UInt32(bytes[p + 2]) << 16 | UInt32(bytes[p + 1]) << 8 | UInt32(bytes[p])
                    }
                default:
                    for x in 0..<width {
                        row[x] = bytes.loadUnaligned(fromByteOffset: base + 4 * x, as: UInt32.self) & 0xFF_FFFF
                    }
                }
            }
        }
    }

    /// Draws rows `0..<height` of a graphics mode: `span(y)` says which VRAM bytes (start,
    /// count) row y shows, so clean rows are skipped unless `full`.
    private func drawGraphics(_ framebuffer: Framebuffer, full: Bool, width: Int, height: Int,
                              span: (Int) -> (Int, Int),
                              draw: (UnsafeMutableRawBufferPointer, Int, UnsafeMutableBufferPointer<UInt32>) -> Void) {
        let rows = min(height, framebuffer.height)
        let columns = min(width, framebuffer.width)
        vram.withBytes { bytes in
            rowBuffer.withUnsafeMutableBufferPointer { row in
                for y in 0..<rows {
                    if !full {
                        let (start, count) = span(y)
                        guard dirtyPages.contains(start, start + count) else { continue }
                    }
                    // Rows wider than the framebuffer (a hostile mode) are cut at its edge.
                    if columns == width {
                        draw(bytes, y, row)
                    } else {
                        for x in 0..<row.count { row[x] = 0 }
                    }
                    framebuffer.storeRow(y, UnsafeBufferPointer(row))
                }
            }
        }
    }

    private func drawText(_ mode: DisplayMode, _ framebuffer: Framebuffer) {
        guard case let .text(columns, rows, cellWidth, cellHeight, doubleWidth, start, lineWords, cursor, cursorLines,
                             blinkOn, fontA, fontB, attrMode) = mode else { return }
        let blinkEnabled = attrMode & 0x08 != 0
        let lineGraphics = attrMode & 0x04 != 0
        let scale = doubleWidth ? 2 : 1
        let wordMask = Self.planeWords - 1
        let cursorCell = cursor.map { $0 & wordMask }
        let width = min(columns * cellWidth * scale, framebuffer.width)
        guard width == columns * cellWidth * scale else { return }
        vram.withBytes { bytes in
            rowBuffer.withUnsafeMutableBufferPointer { row in
                for textRow in 0..<rows {
                    for line in 0..<cellHeight {
                        let y = textRow * cellHeight + line
                        guard y < framebuffer.height else { return }
                        var x = 0
                        for column in 0..<columns {
                            let cell = (start + textRow * lineWords + column) & wordMask
                            let character = Int(bytes[cell * 4])
                            let attr = bytes[cell * 4 + 1]
                            var foreground = palette16[Int(attr & 0x0F)]
                            let background = palette16[Int(blinkEnabled ? (attr >> 4) & 7 : attr >> 4)]
                            if blinkEnabled && attr & 0x80 != 0 && !blinkOn { foreground = background }
                            let font = attr & 0x08 != 0 ? fontA : fontB
                            let glyph = bytes[((font + character * 32 + line) & wordMask) * 4 + 2]
                            // The cursor covers its lines across the whole cell, ninth dot included.
                            let cursorLine = cell == cursorCell && blinkOn && cursorLines?.contains(line) == true
                            for bit in 0..<cellWidth {
                                let on: Bool
                                if cursorLine {
                                    on = true
                                } else if bit < 8 {
                                    on = glyph & (0x80 >> UInt8(bit)) != 0
                                } else {
                                    on = lineGraphics && (0xC0...0xDF).contains(character) && glyph & 1 != 0
                                }
                                let colour = on ? foreground : background
                                row[x] = colour
                                if scale == 2 { row[x + 1] = colour }
                                x += scale
                            }
                        }
                        framebuffer.storeRow(y, UnsafeBufferPointer(row))
                    }
                }
            }
        }
    }

    // MARK: state

    public func saveState(to w: inout StateWriter) {
        w.put(miscOutput); w.put(featureControl); w.put(inputStatus1)
        w.put(sequencerIndex); w.put(bytes: sequencer)
        w.put(graphicsIndex); w.put(bytes: graphics)
        w.put(attributeIndex); w.put(bytes: attribute); w.put(attributeFlipFlop)
        w.put(crtcIndex); w.put(bytes: crtc)
        w.put(dacState); w.put(dacReadIndex); w.put(dacWriteIndex); w.put(dacComponent)
        w.put(bytes: dacPending); w.put(bytes: dac)
        w.put(latch)
        w.put(dispiIndex); w.put(array: dispi)
    }

    public func loadState(from r: inout StateReader, section: String) throws(StateError) {
        let misc = try r.get(UInt8.self), feature = try r.get(UInt8.self), status = try r.get(UInt8.self)
        let seqIndex = try r.get(UInt8.self), seq = try r.getBytes(exactly: 8)
        let grIndex = try r.get(UInt8.self), gr = try r.getBytes(exactly: 16)
        let arIndex = try r.get(UInt8.self), ar = try r.getBytes(exactly: 21), flipFlop = try r.get(Bool.self)
        let crIndex = try r.get(UInt8.self), cr = try r.getBytes(exactly: 256)
        let state = try r.get(UInt8.self), readIndex = try r.get(UInt8.self), writeIndex = try r.get(UInt8.self)
        let component = try r.get(UInt8.self)
        let pending = try r.getBytes(exactly: 3), palette = try r.getBytes(exactly: 768)
        let savedLatch = try r.get(UInt32.self)
        let savedDISPIIndex = try r.get(UInt16.self), savedDISPI = try r.getArray(of: UInt16.self, exactly: DISPI.count)
        guard seqIndex < 8, grIndex < 16, arIndex < 0x40, component < 3, state == 0 || state == 3 else {
            throw .invalidValue(section: section, field: "VGA register index")
        }
        miscOutput = misc; featureControl = feature; inputStatus1 = status
        sequencerIndex = seqIndex
        for i in 0..<8 { sequencer[i] = seq[i] & Self.sequencerMasks[i] }
        graphicsIndex = grIndex
        for i in 0..<16 { graphics[i] = gr[i] & Self.graphicsMasks[i] }
        attributeIndex = arIndex; attribute = ar; attributeFlipFlop = flipFlop
        crtcIndex = crIndex; crtc = cr
        dacState = state; dacReadIndex = readIndex; dacWriteIndex = writeIndex; dacComponent = component
        dacPending = pending; dac = palette
        latch = savedLatch
        dispiIndex = savedDISPIIndex
        dispi = savedDISPI
        if !DISPI.ids.contains(dispi[DISPI.id]) { dispi[DISPI.id] = DISPI.ids.upperBound }
        // The derived values come from the registers, clamped exactly as a guest write would be.
        fixDISPI(updatingVGA: false)
        let bank = dispi[DISPI.bank]
        writeDISPI(register: DISPI.bank, bank)
        if !dispiEnabled { dispiLineBytes = 0; dispiStart = 0 }
        lastMode = nil
    }
}
