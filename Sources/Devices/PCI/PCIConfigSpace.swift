import DMCore

/// Where a BAR decodes: I/O ports or memory (32- or 64-bit, optionally prefetchable).
public enum PCIBARKind: Sendable, Equatable {
    case io
    case memory32(prefetchable: Bool)
    case memory64(prefetchable: Bool)
}

public struct PCIBARDefinition: Sendable, Equatable {
    public let kind: PCIBARKind
    /// A power of two (I/O ≥ 4 bytes, memory ≥ 16 bytes).
    public let size: UInt64

    public init(kind: PCIBARKind, size: UInt64) {
        precondition(size.nonzeroBitCount == 1, "BAR size must be a power of two")
        self.kind = kind
        self.size = size
    }
}

/// The 256-byte configuration space of one PCI function with its write masks.
///
/// A guest write changes only the bits the write mask allows, clears the bits the
/// write-1-to-clear mask names, and leaves everything else (IDs, class, read-only status
/// bits) alone — which is what makes BAR size probing and read-only registers work.
public struct PCIConfigSpace: Sendable {
    public static let size = 256
    /// QEMU gives every function this subsystem ID unless a device sets its own, and SeaBIOS
    /// checks for it on 00.0 to know it runs on QEMU's i440FX (and then takes QEMU's paths).
    public static let qemuSubsystemVendor: UInt16 = 0x1AF4
    public static let qemuSubsystem: UInt16 = 0x1100
    public private(set) var bytes = [UInt8](repeating: 0, count: size)
    public var writeMask = [UInt8](repeating: 0, count: size)
    public var writeOneToClearMask = [UInt8](repeating: 0, count: size)

    public init(vendor: UInt16, device: UInt16, revision: UInt8, classCode: UInt32,
                headerType: UInt8 = 0, subsystemVendor: UInt16 = Self.qemuSubsystemVendor,
                subsystem: UInt16 = Self.qemuSubsystem,
                interruptPin: UInt8 = 0, status: UInt16 = 0) {
        set16(0x00, vendor)
        set16(0x02, device)
        bytes[0x08] = revision
        bytes[0x09] = UInt8(classCode & 0xFF)
        bytes[0x0A] = UInt8((classCode >> 8) & 0xFF)
        bytes[0x0B] = UInt8((classCode >> 16) & 0xFF)
        bytes[0x0E] = headerType
        set16(0x2C, subsystemVendor)
        set16(0x2E, subsystem)
        bytes[0x3D] = interruptPin
        set16(0x06, status)
        // Command: I/O, memory, bus master, SERR and INTx disable are writable (QEMU: 0x0507).
        writeMask[0x04] = 0x07
        writeMask[0x05] = 0x05
        // Status: the error bits are write-1-to-clear.
        writeOneToClearMask[0x07] = 0xF9
        writeMask[0x0C] = 0xFF  // cache line size; the latency timer stays 0, as in QEMU
        writeMask[0x3C] = 0xFF  // interrupt line
        // Device-specific registers are writable unless a device says otherwise, as QEMU does.
        for i in 0x40..<Self.size { writeMask[i] = 0xFF }
    }

    public var vendorID: UInt16 { get16(0x00) }
    public var deviceID: UInt16 { get16(0x02) }
    public var command: UInt16 { get16(0x04) }
    public var ioEnabled: Bool { command & 0x1 != 0 }
    public var memoryEnabled: Bool { command & 0x2 != 0 }
    public var busMasterEnabled: Bool { command & 0x4 != 0 }
    public var interruptDisabled: Bool { command & 0x400 != 0 }
    public var interruptPin: UInt8 { bytes[0x3D] }

    public func get8(_ offset: Int) -> UInt8 { bytes[offset] }
    public func get16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
    public func get32(_ offset: Int) -> UInt32 { UInt32(get16(offset)) | UInt32(get16(offset + 2)) << 16 }

    /// Device-side stores, bypassing the guest write masks.
    public mutating func set8(_ offset: Int, _ value: UInt8) { bytes[offset] = value }
    public mutating func set16(_ offset: Int, _ value: UInt16) {
        bytes[offset] = UInt8(value & 0xFF)
        bytes[offset + 1] = UInt8(value >> 8)
    }
    public mutating func set32(_ offset: Int, _ value: UInt32) {
        set16(offset, UInt16(value & 0xFFFF))
        set16(offset + 2, UInt16(value >> 16))
    }

    /// A guest read; `offset` and `size` were validated by the bus.
    public func read(offset: Int, size: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<size { value |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return value
    }

    /// A guest write through the masks.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        for i in 0..<size {
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let at = offset + i
            let wm = writeMask[at], w1c = writeOneToClearMask[at]
            bytes[at] = (bytes[at] & ~wm & ~(byte & w1c)) | (byte & wm)
        }
    }

    public mutating func restore(bytes saved: [UInt8]) {
        precondition(saved.count == Self.size)
        bytes = saved
    }
}
