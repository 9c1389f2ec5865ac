/// Xen's `struct ioreq` (xen/include/public/hvm/ioreq.h), 32 bytes per vCPU in the shared
/// page. Decoded with explicit shifts and masks from a local copy: C bit-field imports depend on
/// the compiler's bit-field ABI, and the page itself must never be read twice.
///
/// ```
/// +0  u64 addr      +8  u64 data     +16 u32 count    +20 u32 size
/// +24 u32 vp_eport  +28 u16 pad      +30 u8 state:4, data_is_ptr:1, dir:1, df:1, pad:1
/// +31 u8 type
/// ```
public struct Ioreq: Equatable, Sendable {
    public static let slotSize = 32
    static let stateOffset = 30
    static let dataOffset = 8

    public enum State: UInt8, Sendable {
        case none = 0, ready = 1, inProcess = 2, responseReady = 3
    }

    public enum Kind: UInt8, Sendable {
        case pio = 0, copy = 1, pciConfig = 2, timeOffset = 7, invalidate = 8
    }

    public var addr: UInt64
    public var data: UInt64
    public var count: UInt32
    public var size: UInt32
    public var vpEventPort: UInt32
    public var state: UInt8
    public var dataIsPointer: Bool
    /// `dir`: 1 = read (device to guest), 0 = write.
    public var isRead: Bool
    /// Direction flag: addresses step downwards (`rep` with EFLAGS.DF set).
    public var decrementing: Bool
    public var type: UInt8

    public init(addr: UInt64 = 0, data: UInt64 = 0, count: UInt32 = 1, size: UInt32 = 1, vpEventPort: UInt32 = 0,
                state: UInt8 = 0, dataIsPointer: Bool = false, isRead: Bool = false, decrementing: Bool = false,
                type: UInt8 = 0) {
        self.addr = addr
        self.data = data
        self.count = count
        self.size = size
        self.vpEventPort = vpEventPort
        self.state = state
        self.dataIsPointer = dataIsPointer
        self.isRead = isRead
        self.decrementing = decrementing
        self.type = type
    }

    /// Decodes 32 bytes already copied out of the shared page.
    @inline(__always)
    public init(decoding raw: (UInt64, UInt64, UInt64, UInt64)) {
        // The four little-endian 64-bit words of the slot.
        let w2 = UInt64(littleEndian: raw.2), w3 = UInt64(littleEndian: raw.3)
        addr = UInt64(littleEndian: raw.0)
        data = UInt64(littleEndian: raw.1)
        count = UInt32(truncatingIfNeeded: w2)
        size = UInt32(truncatingIfNeeded: w2 >> 32)
        vpEventPort = UInt32(truncatingIfNeeded: w3)
        let flags = UInt8(truncatingIfNeeded: w3 >> 48)
        state = flags & 0x0F
        dataIsPointer = flags & 0x10 != 0
        isRead = flags & 0x20 != 0
        decrementing = flags & 0x40 != 0
        type = UInt8(truncatingIfNeeded: w3 >> 56)
    }

    /// The slot's 32 bytes (for the simulator and tests).
    public var encoded: [UInt8] {
        var flags = state & 0x0F
        if dataIsPointer { flags |= 0x10 }
        if isRead { flags |= 0x20 }
        if decrementing { flags |= 0x40 }
        var bytes: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        put(addr); put(data); put(count); put(size); put(vpEventPort); put(UInt16(0)); put(flags); put(type)
        return bytes
    }
}

/// One entry of the buffered ring (`struct buf_ioreq`, 8 bytes): the first little-endian word
/// holds `type` in bits 0-7, `dir` in bit 9, `size` (log2: 0..3 → 1,2,4,8) in bits 10-11 and a
/// 20-bit `addr` in bits 12-31 (GCC's packing, checked against the Xen 4.17 header); the second
/// word is `data`. An 8-byte write takes two consecutive slots, the high half in the second.
public struct BufferedIoreq: Equatable, Sendable {
    public var type: UInt8
    public var isRead: Bool
    public var sizeLog2: UInt8
    public var addr: UInt32
    public var data: UInt32

    public init(type: UInt8, isRead: Bool = false, sizeLog2: UInt8, addr: UInt32, data: UInt32) {
        self.type = type
        self.isRead = isRead
        self.sizeLog2 = sizeLog2
        self.addr = addr
        self.data = data
    }

    @inline(__always)
    public init(decoding word: UInt64) {
        let w0 = UInt32(truncatingIfNeeded: word)
        type = UInt8(truncatingIfNeeded: w0)
        isRead = (w0 >> 9) & 1 != 0
        sizeLog2 = UInt8(truncatingIfNeeded: (w0 >> 10) & 3)
        addr = w0 >> 12
        data = UInt32(truncatingIfNeeded: word >> 32)
    }

    public var encoded: UInt64 {
        let w0 = UInt32(type) | (isRead ? 1 << 9 : 0) | (UInt32(sizeLog2 & 3) << 10) | ((addr & 0xFFFFF) << 12)
        return UInt64(w0) | (UInt64(data) << 32)
    }
}

/// The buffered page: `read_pointer` (u32 at 0), `write_pointer` (u32 at 4), then 511 slots.
enum BufferedPageLayout {
    static let readPointerOffset = 0
    static let writePointerOffset = 4
    static let slotsOffset = 8
    static let slotCount: UInt32 = 511
    static let size = 4096
}

/// Why a request was refused (logged as a guest error; the vCPU still gets a response).
public enum IoreqRejection: Equatable, Sendable, CustomStringConvertible {
    case unknownType(UInt8)
    case badSize(type: UInt8, size: UInt32)
    case badCount(UInt32)
    case portOutOfRange(addr: UInt64, size: UInt32)
    case pointerNotAllowed
    case badPCIOffset(UInt32, size: UInt32)

    public var description: String {
        switch self {
        case let .unknownType(t): return "unknown ioreq type \(t)"
        case let .badSize(t, s): return "ioreq type \(t) with size \(s)"
        case let .badCount(c): return "ioreq count \(c) outside 1...\(IoreqValidation.maxCount)"
        case let .portOutOfRange(a, s): return "port ioreq at 0x\(String(a, radix: 16)) size \(s) beyond 0xFFFF"
        case .pointerNotAllowed: return "data_is_ptr on a request that cannot carry a pointer"
        case let .badPCIOffset(o, s): return "PCI config offset 0x\(String(o, radix: 16)) size \(s) beyond 4 KiB"
        }
    }
}

public enum IoreqValidation {
    /// The largest `rep` count served per request. Xen splits long string instructions into
    /// chunks of at most a page's worth of items, so anything above this is hostile.
    public static let maxCount: UInt32 = 4096

    /// Checks a request copied out of a shared slot before anything acts on it.
    public static func validate(_ r: Ioreq) -> IoreqRejection? {
        guard let kind = Ioreq.Kind(rawValue: r.type) else { return .unknownType(r.type) }
        switch kind {
        case .pio:
            guard r.size == 1 || r.size == 2 || r.size == 4 else { return .badSize(type: r.type, size: r.size) }
            guard r.addr <= 0xFFFF, r.addr + UInt64(r.size) <= 0x1_0000 else {
                return .portOutOfRange(addr: r.addr, size: r.size)
            }
            guard r.count >= 1, r.count <= maxCount else { return .badCount(r.count) }
        case .copy:
            guard r.size == 1 || r.size == 2 || r.size == 4 || r.size == 8 else {
                return .badSize(type: r.type, size: r.size)
            }
            // count * size ≤ 4096 * 8: the byte range cannot overflow; addresses wrap like QEMU's.
            guard r.count >= 1, r.count <= maxCount else { return .badCount(r.count) }
        case .pciConfig:
            guard r.size == 1 || r.size == 2 || r.size == 4 else { return .badSize(type: r.type, size: r.size) }
            guard r.count == 1 else { return .badCount(r.count) }
            guard !r.dataIsPointer else { return .pointerNotAllowed }
            let offset = UInt32(truncatingIfNeeded: r.addr)
            guard offset < 4096, offset + r.size <= 4096 else { return .badPCIOffset(offset, size: r.size) }
        case .timeOffset, .invalidate:
            break
        }
        return nil
    }
}
