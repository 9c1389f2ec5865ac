import DMCore

/// The BitBLT engine of the Cirrus Logic GD5446: rectangle copies, 8×8 pattern fills, colour
/// expansion of monochrome data, solid fills, each through one of 16 raster operations, with
/// the source in video RAM or written by the CPU ("system source").
///
/// This is the code QEMU's Cirrus had its guest-escape bugs in (CVE-2014-8106, CVE-2016-9921,
/// CVE-2017-2615, -2620, -7980): every register combination a guest can write is checked here
/// before a single byte moves. A blit is planned first (`Plan`): the exact byte ranges it reads
/// and writes are computed from the registers and must lie inside VRAM without wrapping, or
/// the blit is refused as a whole (reported to `GuestErrorLog`, the engine returns to idle).
/// Then every access is additionally masked to the VRAM size, so even a planning mistake
/// could only misdraw, never reach outside the buffer.
///
/// Registers are the graphics controller's GR0/GR1 (full 8 bits, where the VGA core keeps
/// only 4), GR10–GR15 (colour bytes 1–3) and GR20–GR39. The device owns the VRAM and passes it
/// to every call that may draw; calls return the byte range they wrote, for dirty tracking.
public final class CirrusBlitter {
    /// Bytes of CPU-written source the engine buffers: one scan line of an 8192-byte-wide
    /// blit, or a whole 8×8 pattern.
    public static let systemSourceCapacity = 8192
    static let registerCount = 0x40

    /// GR30.
    public struct Mode: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let backwards = Mode(rawValue: 0x01)
        public static let systemDestination = Mode(rawValue: 0x02)
        public static let systemSource = Mode(rawValue: 0x04)
        public static let transparent = Mode(rawValue: 0x08)
        public static let patternCopy = Mode(rawValue: 0x40)
        public static let colourExpand = Mode(rawValue: 0x80)
        /// Pixel width is bits 4–5: 0 = 8 bpp, 1 = 16, 2 = 24, 3 = 32.
        public static func pixelBytes(_ count: Int) -> Mode { Mode(rawValue: UInt8((count - 1) & 3) << 4) }
    }

    /// GR33.
    public struct ModeExtension: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let dwordGranularity = ModeExtension(rawValue: 0x01)
        public static let invertExpansion = ModeExtension(rawValue: 0x02)
        public static let solidFill = ModeExtension(rawValue: 0x04)
    }

    /// GR31.
    public struct Status: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let busy = Status(rawValue: 0x01)
        public static let start = Status(rawValue: 0x02)
        public static let reset = Status(rawValue: 0x04)
        public static let fifoUsed = Status(rawValue: 0x10)
        public static let autoStart = Status(rawValue: 0x80)
    }

    /// GR32: the raster operations the GD5446 documents; any other code leaves the destination
    /// alone, as QEMU does.
    public enum RasterOp: UInt8, CaseIterable, Sendable {
        case zero = 0x00, sourceAndDestination = 0x05, noOp = 0x06, sourceAndNotDestination = 0x09
        case notDestination = 0x0b, source = 0x0d, one = 0x0e, notSourceAndDestination = 0x50
        case sourceXorDestination = 0x59, sourceOrDestination = 0x6d, notSourceOrNotDestination = 0x90
        case sourceXnorDestination = 0x95, sourceOrNotDestination = 0xad, notSource = 0xd0
        case notSourceOrDestination = 0xd6, notSourceAndNotDestination = 0xda

        @inline(__always)
        func apply(_ d: UInt8, _ s: UInt8) -> UInt8 {
            switch self {
            case .zero: 0
            case .sourceAndDestination: s & d
            case .noOp: d
            case .sourceAndNotDestination: s & ~d
            case .notDestination: ~d
            case .source: s
            case .one: 0xff
            case .notSourceAndDestination: ~s & d
            case .sourceXorDestination: s ^ d
            case .sourceOrDestination: s | d
            case .notSourceOrNotDestination: ~s | ~d
            case .sourceXnorDestination: ~(s ^ d)
            case .sourceOrNotDestination: s | ~d
            case .notSource: ~s
            case .notSourceOrDestination: ~s | d
            case .notSourceAndNotDestination: ~s & ~d
            }
        }
    }

    /// Why a blit was not executed.
    enum Refusal: Error, Equatable, CustomStringConvertible {
        case systemDestination
        case backwardsSystemSource
        case transparentPattern
        case transparentWidePixels(Int)
        case destinationOutsideVRAM(Range<Int>)
        case sourceOutsideVRAM(Range<Int>)
        case vramSmallerThanDeclared

        var description: String {
            switch self {
            case .systemDestination: "video-to-system blits are not supported"
            case .backwardsSystemSource: "backwards blit from system source"
            case .transparentPattern: "transparent pattern fill without colour expansion"
            case .transparentWidePixels(let n): "transparent copy with \(n)-byte pixels (only 1 and 2)"
            case .destinationOutsideVRAM(let r): "destination \(r.lowerBound)..<\(r.upperBound) leaves VRAM"
            case .sourceOutsideVRAM(let r): "source \(r.lowerBound)..<\(r.upperBound) leaves VRAM"
            case .vramSmallerThanDeclared: "VRAM buffer smaller than the blitter's VRAM size"
            }
        }
    }

    enum Operation: Equatable {
        case copy, transparentCopy, colourExpand, transparentColourExpand
        case patternFill, patternExpand, transparentPatternExpand, solidFill

        var isPattern: Bool { self == .patternFill || self == .patternExpand || self == .transparentPatternExpand }
    }

    /// One blit, decoded from the registers and checked against VRAM.
    struct Plan: Equatable {
        var operation: Operation
        var rop: RasterOp
        var pixelBytes: Int
        /// Bytes per destination row, rows.
        var width: Int
        var height: Int
        var destination: Int
        /// Magnitude; rows go down in memory when `backwards`.
        var destinationPitch: Int
        var backwards: Bool
        var source: Int
        /// Distance between source rows (bytes; a monochrome row's bytes for colour expansion).
        var sourceStride: Int
        var systemSource: Bool
        /// CPU bytes per engine step: one row, or the whole pattern.
        var systemSourceStep: Int
        /// Left clipping (GR2F): destination bytes and source bits (or pattern pixels) skipped.
        var destinationSkip: Int
        var sourceSkip: Int
        var foreground: UInt32
        var background: UInt32
        var invertBits: UInt8
        var transparentKey: UInt32
        /// Key bits that take part in the comparison (GR38/39 bits set are "don't care").
        var transparentCare: UInt32
        var patternRowBytes: Int
        var firstPatternRow: Int
        /// Bytes a destination row touches, relative to its address (forward rows); a backwards
        /// row at `r` touches `(r + 1 - upper)..<(r + 1 - lower)`.
        var rowSpan: Range<Int>
        /// 16- and 32-bit pixels are read and written at addresses rounded down to their size
        /// (what QEMU does, so pictures match it); 1 where nothing is rounded.
        var pixelAlignment: Int

        func rowAddress(_ y: Int) -> Int {
            backwards ? destination - y * destinationPitch : destination + y * destinationPitch
        }

        /// The destination bytes rows `rows` touch (empty when a row touches none).
        func destinationRange(rows: Range<Int>) -> Range<Int> {
            guard !rowSpan.isEmpty, !rows.isEmpty else { return 0..<0 }
            return rounded(CirrusBlitter.touched(start: rowAddress(rows.lowerBound), pitch: destinationPitch,
                                                 rows: rows.count, span: rowSpan, backwards: backwards))
        }

        /// `range` (from `touched`) after pixel addresses are rounded down: forwards the first
        /// pixel may start lower; backwards each pixel starts at the rounded address reached,
        /// so the first may end higher and the last start higher.
        func rounded(_ range: Range<Int>) -> Range<Int> {
            let a = pixelAlignment
            guard a > 1 else { return range }
            if backwards { return ((range.lowerBound + a - 1) & ~(a - 1))..<(((range.upperBound - 1) & ~(a - 1)) + a) }
            return (range.lowerBound & ~(a - 1))..<range.upperBound
        }
    }

    public let vramSize: Int
    private let vramMask: Int
    private let log: GuestErrorLog
    private var registers = [UInt8](repeating: 0, count: registerCount)
    /// A system-source blit waiting for CPU data, the registers it was started with (for
    /// save/restore), the rows done, and the bytes received for the current step.
    private var pending: Plan?
    private var pendingRegisters = [UInt8](repeating: 0, count: registerCount)
    private var rowsDone = 0
    private var systemSource = [UInt8](repeating: 0, count: systemSourceCapacity)
    private var systemSourceFill = 0

    /// `vramSize` is rounded down to a power of two (the GD5446's address decoding wraps at it).
    public init(vramSize: Int, log: GuestErrorLog = .shared) {
        let size = max(vramSize, 1)
        let usable = 1 << (Int.bitWidth - 1 - size.leadingZeroBitCount)
        self.vramSize = usable
        vramMask = usable - 1
        self.log = log
    }

    public func reset() {
        for i in registers.indices { registers[i] = 0 }
        finish()
    }

    /// Whether GR`index` is one of the blitter's registers.
    public static func ownsRegister(_ index: Int) -> Bool {
        switch index {
        case 0x00, 0x01, 0x10...0x15, 0x20...0x35, 0x38, 0x39: true
        default: false
        }
    }

    /// The GR index behind a byte of the memory-mapped blitter registers (BAR1 offset 0x100,
    /// or 0xB8000 when SR17 maps them there), nil for reserved offsets.
    public static func registerIndex(mmioOffset offset: Int) -> Int? {
        switch offset {
        case 0x00: 0x00
        case 0x01: 0x10
        case 0x02: 0x12
        case 0x03: 0x14
        case 0x04: 0x01
        case 0x05: 0x11
        case 0x06: 0x13
        case 0x07: 0x15
        case 0x08...0x12: 0x20 + (offset - 0x08)
        case 0x14...0x16: 0x2c + (offset - 0x14)
        case 0x17: 0x2f
        case 0x18: 0x30
        case 0x1a: 0x32
        case 0x1b: 0x33
        case 0x1c: 0x34
        case 0x1d: 0x35
        case 0x20: 0x38
        case 0x21: 0x39
        case 0x40: 0x31
        default: nil
        }
    }

    public func read(register index: Int) -> UInt8 {
        guard Self.ownsRegister(index) else { return 0 }
        return registers[index]
    }

    /// Writes GR`index`; starting a blit (GR31, or GR2A with auto-start) runs it. Returns the
    /// VRAM bytes written, if any.
    @discardableResult
    public func write(register index: Int, _ value: UInt8, vram: UnsafeMutableRawBufferPointer) -> Range<Int>? {
        guard Self.ownsRegister(index) else { return nil }
        switch index {
        case 0x21, 0x25, 0x27: registers[index] = value & 0x1f
        case 0x23: registers[index] = value & 0x07
        case 0x2e: registers[index] = value & 0x3f
        case 0x2a:
            registers[index] = value & 0x3f
            if Status(rawValue: registers[0x31]).contains(.autoStart) { return start(vram: vram) }
        case 0x31: return writeStatus(value, vram: vram)
        default: registers[index] = value
        }
        return nil
    }

    /// True while a system-source blit waits for CPU data: the device then sends writes to
    /// its memory window here instead of to VRAM.
    public var isAwaitingSystemSource: Bool { pending != nil }

    /// One byte of CPU-written source. Returns the VRAM bytes written when it completed a step.
    @discardableResult
    public func writeSystemSource(_ byte: UInt8, vram: UnsafeMutableRawBufferPointer) -> Range<Int>? {
        guard let plan = pending else { return nil }
        systemSource[systemSourceFill] = byte
        systemSourceFill += 1
        guard systemSourceFill >= plan.systemSourceStep else { return nil }
        systemSourceFill = 0
        guard vram.count >= vramSize else {
            refuse(.vramSmallerThanDeclared)
            return nil
        }
        let rows = plan.operation.isPattern ? 0..<plan.height : rowsDone..<rowsDone + 1
        systemSource.withUnsafeBytes { buffer in
            run(plan, rows: rows, vram: vram,
                source: ByteSource(bytes: buffer, mask: Self.systemSourceCapacity - 1))
        }
        rowsDone = rows.upperBound
        if rowsDone >= plan.height { finish() }
        let written = plan.destinationRange(rows: rows)
        return written.isEmpty ? nil : written
    }

    private func writeStatus(_ value: UInt8, vram: UnsafeMutableRawBufferPointer) -> Range<Int>? {
        let old = Status(rawValue: registers[0x31])
        let new = Status(rawValue: value)
        // Busy is the engine's to say, not the guest's.
        registers[0x31] = (value & ~Status.busy.rawValue) | (old.rawValue & Status.busy.rawValue)
        if old.contains(.reset) && !new.contains(.reset) {
            finish()
        } else if !old.contains(.start) && new.contains(.start) {
            return start(vram: vram)
        }
        return nil
    }

    private func start(vram: UnsafeMutableRawBufferPointer) -> Range<Int>? {
        registers[0x31] |= Status.busy.rawValue
        pending = nil
        let plan: Plan
        switch Self.plan(registers, vramSize: vramSize) {
        case .failure(let refusal):
            refuse(refusal)
            return nil
        case .success(let p): plan = p
        }
        if plan.systemSource {
            pending = plan
            pendingRegisters = registers
            rowsDone = 0
            systemSourceFill = 0
            return nil
        }
        guard vram.count >= vramSize else {
            refuse(.vramSmallerThanDeclared)
            return nil
        }
        run(plan, rows: 0..<plan.height, vram: vram, source: ByteSource(bytes: UnsafeRawBufferPointer(vram), mask: vramMask))
        finish()
        let written = plan.destinationRange(rows: 0..<plan.height)
        return written.isEmpty ? nil : written
    }

    private func refuse(_ refusal: Refusal) {
        log.report("cirrus-vga", "blit refused: \(refusal)")
        finish()
    }

    /// Back to idle: start, busy and FIFO bits clear, no system-source data expected.
    private func finish() {
        registers[0x31] &= ~(Status.start.rawValue | Status.busy.rawValue | Status.fifoUsed.rawValue)
        pending = nil
        rowsDone = 0
        systemSourceFill = 0
    }

    // MARK: Planning

    /// The bytes `rows` rows of `span` each touch, `pitch` apart, going up or down from `start`.
    static func touched(start: Int, pitch: Int, rows: Int, span: Range<Int>, backwards: Bool) -> Range<Int> {
        if backwards {
            return (start - (rows - 1) * pitch + 1 - span.upperBound)..<(start + 1 - span.lowerBound)
        }
        return (start + span.lowerBound)..<(start + (rows - 1) * pitch + span.upperBound)
    }

    /// Pixels drawn in a row of `width` bytes starting `skip` bytes in.
    private static func pixelCount(width: Int, skip: Int, pixelBytes: Int) -> Int {
        skip < width ? (width - skip + pixelBytes - 1) / pixelBytes : 0
    }

    /// Decodes the registers into a blit and checks everything it will touch lies in VRAM.
    static func plan(_ gr: [UInt8], vramSize: Int) -> Result<Plan, Refusal> {
        let mask = vramSize - 1
        let mode = Mode(rawValue: gr[0x30])
        let modeExt = ModeExtension(rawValue: gr[0x33])
        let pixelBytes = Int((gr[0x30] >> 4) & 3) + 1
        let width = (Int(gr[0x20]) | Int(gr[0x21] & 0x1f) << 8) + 1
        let height = (Int(gr[0x22]) | Int(gr[0x23] & 0x07) << 8) + 1
        let destinationPitch = Int(gr[0x24]) | Int(gr[0x25] & 0x1f) << 8
        let sourcePitch = Int(gr[0x26]) | Int(gr[0x27] & 0x1f) << 8
        let destination = (Int(gr[0x28]) | Int(gr[0x29]) << 8 | Int(gr[0x2a] & 0x3f) << 16) & mask
        let sourceRegister = (Int(gr[0x2c]) | Int(gr[0x2d]) << 8 | Int(gr[0x2e] & 0x3f) << 16) & mask
        func colour(_ indices: [Int]) -> UInt32 {
            var value: UInt32 = 0
            for (i, index) in indices.enumerated() where i < pixelBytes { value |= UInt32(gr[index]) << (8 * i) }
            return value
        }

        let operation: Operation
        let fillModes: Mode = [.systemDestination, .transparent, .patternCopy, .colourExpand]
        if modeExt.contains(.solidFill) && mode.intersection(fillModes) == [.patternCopy, .colourExpand] {
            operation = .solidFill
        } else if mode.contains(.systemDestination) {
            return .failure(.systemDestination)
        } else if mode.contains(.patternCopy) {
            if mode.contains(.colourExpand) {
                operation = mode.contains(.transparent) ? .transparentPatternExpand : .patternExpand
            } else {
                guard !mode.contains(.transparent) else { return .failure(.transparentPattern) }
                operation = .patternFill
            }
        } else if mode.contains(.colourExpand) {
            operation = mode.contains(.transparent) ? .transparentColourExpand : .colourExpand
        } else if mode.contains(.transparent) {
            guard pixelBytes <= 2 else { return .failure(.transparentWidePixels(pixelBytes)) }
            operation = .transparentCopy
        } else {
            operation = .copy
        }
        let isCopy = operation == .copy || operation == .transparentCopy
        let backwards = isCopy && mode.contains(.backwards)
        let systemSource = operation != .solidFill && mode.contains(.systemSource)
        if backwards && systemSource { return .failure(.backwardsSystemSource) }

        // Left clipping: GR2F counts pixels (3 bits); in 24 bpp the transparent expansions and
        // pattern fills count bytes (5 bits) instead, as QEMU does.
        let destinationSkip: Int
        let sourceSkip: Int
        switch operation {
        case _ where pixelBytes == 3
            && [.transparentColourExpand, .transparentPatternExpand, .patternFill].contains(operation):
            destinationSkip = Int(gr[0x2f] & 0x1f)
            sourceSkip = destinationSkip / 3
        case .colourExpand, .transparentColourExpand, .patternFill, .patternExpand, .transparentPatternExpand:
            sourceSkip = Int(gr[0x2f] & 0x07)
            destinationSkip = sourceSkip * pixelBytes
        default:
            destinationSkip = 0
            sourceSkip = 0
        }
        let pixels = pixelCount(width: width, skip: destinationSkip, pixelBytes: pixelBytes)
        let rowSpan: Range<Int> = operation == .copy
            ? 0..<width
            : destinationSkip..<(destinationSkip + pixels * pixelBytes)
        let rounds = pixelBytes == 2 || pixelBytes == 4
        let pixelAlignment = rounds && operation != .copy ? pixelBytes : 1
        let patternRowBytes = operation == .patternFill ? (pixelBytes == 3 ? 32 : 8 * pixelBytes) : 1
        let patternSize = 8 * patternRowBytes

        var source = sourceRegister
        var sourceStride = 0
        var systemSourceStep = 0
        var firstPatternRow = 0
        var sourceRange: Range<Int>?
        switch operation {
        case .copy, .transparentCopy:
            sourceStride = sourcePitch
            systemSourceStep = (width + 3) & ~3
            if !systemSource {
                sourceRange = touched(start: source, pitch: sourcePitch, rows: height,
                                      span: 0..<rowSpan.upperBound, backwards: backwards)
            }
        case .colourExpand, .transparentColourExpand:
            let bits = sourceSkip + pixels
            sourceStride = max(1, (bits + 7) / 8)
            let rowPixels = width / pixelBytes
            systemSourceStep = modeExt.contains(.dwordGranularity) ? (rowPixels + 31) / 32 * 4 : (rowPixels + 7) / 8
            systemSourceStep = max(systemSourceStep, 1)
            if !systemSource { sourceRange = source..<(source + height * sourceStride) }
        case .patternFill, .patternExpand, .transparentPatternExpand:
            systemSourceStep = patternSize
            if systemSource {
                firstPatternRow = sourceRegister & 7
            } else {
                source = sourceRegister & ~(patternSize - 1)
                sourceRange = source..<(source + patternSize)
            }
        case .solidFill:
            break
        }
        // CPU data always starts at the beginning of the buffer.
        if systemSource { source = 0 }

        let plan = Plan(
            operation: operation, rop: RasterOp(rawValue: gr[0x32]) ?? .noOp, pixelBytes: pixelBytes,
            width: width, height: height, destination: destination, destinationPitch: destinationPitch,
            backwards: backwards, source: source, sourceStride: sourceStride, systemSource: systemSource,
            systemSourceStep: systemSourceStep, destinationSkip: destinationSkip, sourceSkip: sourceSkip,
            foreground: colour([0x01, 0x11, 0x13, 0x15]), background: colour([0x00, 0x10, 0x12, 0x14]),
            // Inversion swaps which bits are transparent; opaque expansion ignores it.
            invertBits: (modeExt.contains(.invertExpansion)
                && (operation == .transparentColourExpand || operation == .transparentPatternExpand)) ? 0xff : 0,
            transparentKey: UInt32(gr[0x34]) | UInt32(gr[0x35]) << 8,
            transparentCare: ~(UInt32(gr[0x38]) | UInt32(gr[0x39]) << 8) & (pixelBytes == 1 ? 0xff : 0xffff),
            patternRowBytes: patternRowBytes, firstPatternRow: firstPatternRow, rowSpan: rowSpan,
            pixelAlignment: pixelAlignment)

        let written = plan.destinationRange(rows: 0..<height)
        if !written.isEmpty && (written.lowerBound < 0 || written.upperBound > vramSize) {
            return .failure(.destinationOutsideVRAM(written))
        }
        if let read = sourceRange.map(plan.rounded), !read.isEmpty, read.lowerBound < 0 || read.upperBound > vramSize {
            return .failure(.sourceOutsideVRAM(read))
        }
        return .success(plan)
    }

    // MARK: Execution

    /// Source bytes, every offset masked into the buffer.
    private struct ByteSource {
        let bytes: UnsafeRawBufferPointer
        let mask: Int
        @inline(__always) subscript(_ offset: Int) -> UInt8 { bytes[offset & mask] }
    }

    @inline(__always)
    private func put(_ colour: UInt32, at address: Int, _ plan: Plan, _ vram: UnsafeMutableRawBufferPointer) {
        let pixel = address & ~(plan.pixelAlignment - 1)
        for i in 0..<plan.pixelBytes {
            let a = (pixel + i) & vramMask
            vram[a] = plan.rop.apply(vram[a], UInt8(truncatingIfNeeded: colour >> (8 * i)))
        }
    }

    private func run(_ plan: Plan, rows: Range<Int>, vram: UnsafeMutableRawBufferPointer, source: ByteSource) {
        let m = vramMask
        let pb = plan.pixelBytes
        for y in rows {
            let row = plan.rowAddress(y)
            let sourceRow: Int
            if plan.systemSource {
                sourceRow = 0
            } else if plan.backwards {
                sourceRow = plan.source - y * plan.sourceStride
            } else {
                sourceRow = plan.source + y * plan.sourceStride
            }
            switch plan.operation {
            case .copy:
                if plan.backwards {
                    for x in 0..<plan.width {
                        let d = (row - x) & m
                        vram[d] = plan.rop.apply(vram[d], source[sourceRow - x])
                    }
                } else {
                    for x in 0..<plan.width {
                        let d = (row + x) & m
                        vram[d] = plan.rop.apply(vram[d], source[sourceRow + x])
                    }
                }
            case .transparentCopy:
                var x = 0
                while x < plan.width {
                    // Pixels sit at the (rounded) address the row has reached, going either way.
                    let align = ~(plan.pixelAlignment - 1)
                    let d = (plan.backwards ? row - x : row + x) & align
                    let s = (plan.backwards ? sourceRow - x : sourceRow + x) & align
                    var value: UInt32 = 0
                    for i in 0..<pb { value |= UInt32(plan.rop.apply(vram[(d + i) & m], source[s + i])) << (8 * i) }
                    if (value ^ plan.transparentKey) & plan.transparentCare != 0 {
                        for i in 0..<pb { vram[(d + i) & m] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
                    }
                    x += pb
                }
            case .colourExpand, .transparentColourExpand:
                let opaque = plan.operation == .colourExpand
                var bit = plan.sourceSkip
                var x = plan.destinationSkip
                // A source byte is read once for its 8 pixels (it may overlap the destination).
                var byteIndex = -1
                var byte: UInt8 = 0
                while x < plan.width {
                    if bit >> 3 != byteIndex {
                        byteIndex = bit >> 3
                        byte = source[sourceRow + byteIndex] ^ plan.invertBits
                    }
                    let set = byte & (0x80 >> UInt8(bit & 7)) != 0
                    if opaque {
                        put(set ? plan.foreground : plan.background, at: row + x, plan, vram)
                    } else if set {
                        put(plan.invertBits == 0 ? plan.foreground : plan.background, at: row + x, plan, vram)
                    }
                    bit += 1
                    x += pb
                }
            case .patternFill:
                let patternRow = plan.source + ((plan.firstPatternRow + y) & 7) * plan.patternRowBytes
                var column = plan.destinationSkip / pb
                var x = plan.destinationSkip
                while x < plan.width {
                    var colour: UInt32 = 0
                    for i in 0..<pb { colour |= UInt32(source[patternRow + (column & 7) * pb + i]) << (8 * i) }
                    put(colour, at: row + x, plan, vram)
                    column += 1
                    x += pb
                }
            case .patternExpand, .transparentPatternExpand:
                let opaque = plan.operation == .patternExpand
                let bits = source[plan.source + ((plan.firstPatternRow + y) & 7)] ^ plan.invertBits
                var column = plan.sourceSkip
                var x = plan.destinationSkip
                while x < plan.width {
                    let set = bits & (0x80 >> UInt8(column & 7)) != 0
                    if opaque {
                        put(set ? plan.foreground : plan.background, at: row + x, plan, vram)
                    } else if set {
                        put(plan.invertBits == 0 ? plan.foreground : plan.background, at: row + x, plan, vram)
                    }
                    column += 1
                    x += pb
                }
            case .solidFill:
                var x = 0
                while x < plan.width {
                    put(plan.foreground, at: row + x, plan, vram)
                    x += pb
                }
            }
        }
    }

    // MARK: Save/restore (a section of the owning device's state)

    public func saveState(to writer: inout StateWriter) {
        writer.put(bytes: registers)
        writer.put(pending != nil)
        guard pending != nil else { return }
        writer.put(bytes: pendingRegisters)
        writer.put(UInt32(rowsDone))
        writer.put(bytes: systemSource[0..<systemSourceFill])
    }

    public func loadState(from reader: inout StateReader) throws(StateError) {
        var loaded = try reader.getBytes(exactly: Self.registerCount)
        Self.applyWriteMasks(&loaded)
        var plan: Plan?
        var latched = [UInt8](repeating: 0, count: Self.registerCount)
        var rows = 0
        var data: [UInt8] = []
        if try reader.get(Bool.self) {
            latched = try reader.getBytes(exactly: Self.registerCount)
            Self.applyWriteMasks(&latched)
            guard case .success(let p) = Self.plan(latched, vramSize: vramSize), p.systemSource else {
                throw .invalidValue(section: reader.section, field: "pending blit")
            }
            rows = Int(try reader.get(UInt32.self))
            guard rows < p.height, !p.operation.isPattern || rows == 0 else {
                throw .invalidValue(section: reader.section, field: "blit rows done")
            }
            data = try reader.getBytes(maxCount: p.systemSourceStep - 1)
            plan = p
        }
        registers = loaded
        pending = plan
        pendingRegisters = latched
        rowsDone = rows
        systemSourceFill = data.count
        for (i, byte) in data.enumerated() { systemSource[i] = byte }
        if plan == nil { registers[0x31] &= ~Status.busy.rawValue } else { registers[0x31] |= Status.busy.rawValue }
    }

    private static func applyWriteMasks(_ gr: inout [UInt8]) {
        for i in gr.indices where !ownsRegister(i) { gr[i] = 0 }
        gr[0x21] &= 0x1f
        gr[0x23] &= 0x07
        gr[0x25] &= 0x1f
        gr[0x27] &= 0x1f
        gr[0x2a] &= 0x3f
        gr[0x2e] &= 0x3f
    }
}
