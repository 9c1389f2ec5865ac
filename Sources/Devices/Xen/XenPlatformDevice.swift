import DMCore

/// Xen's platform PCI device (5853:0001), which Xen-aware guests look for to find their PV
/// drivers' way in, and whose port-0x10 protocol lets those drivers unplug the emulated disks
/// and NICs they replace (Xen's docs/misc/hvm-emulated-unplug.pandoc; xen-contract.md §A.6.4).
///
/// Windows: BAR0, 256 bytes of I/O (old drivers' flag, unplug and log registers); BAR1, 16 MiB
/// of prefetchable memory that guests use as room to map grant tables and shared-info pages
/// (reads return 0); and the fixed ports 0x10-0x1F (`fixedPortBase`), which the machine
/// registers on the port bus as region `fixedPortRegion`.
///
/// Fixed ports: word read at 0x10 gives the magic 0x49D2, byte read at 0x10 the flags, byte
/// read at 0x12 the protocol version 1; word write at 0x10 is the unplug mask (bit 0 every
/// IDE/SCSI disk, bit 1 every NIC, bit 2 IDE disks but the primary master, bit 3 NVMe), word
/// write at 0x12 the driver's product number, dword write at 0x10 its build number, byte write
/// at 0x10 the flags, byte write at 0x12 one byte of the driver's log.
public final class XenPlatformDevice: PCIDevice, Snapshottable, Resettable, @unchecked Sendable {
    public static let fixedPortBase: UInt64 = 0x10
    public static let fixedPortLength: UInt64 = 16
    public static let fixedPortRegion = 2
    static let magic: UInt64 = 0x49D2
    static let protocolVersion: UInt64 = 1
    static let logLimit = 4096

    public struct UnplugRequest: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let allDisks = UnplugRequest(rawValue: 1 << 0)
        public static let nics = UnplugRequest(rawValue: 1 << 1)
        public static let auxDisks = UnplugRequest(rawValue: 1 << 2)
        public static let nvme = UnplugRequest(rawValue: 1 << 3)
    }

    public let pci: PCIFunction
    /// Called with the device lock held when the guest asks to unplug emulated devices. The
    /// machine removes the disks (`keepPrimaryMaster` for the "aux disks" bit) and NICs.
    public var onUnplug: ((UnplugRequest) -> Void)?
    /// Where the guest driver's log lines go (the device model's log).
    public var logSink: (String) -> Void
    /// Bit 0 (ROM_LOCK) asks for 0xC0000-0xFFFFF to become read-only. Recorded and saved, not
    /// enforced: Xen's p2m type change needs a dm-op the machine does not issue yet.
    public private(set) var flags: UInt8 = 0
    public private(set) var productNumber: UInt16 = 0
    private var logLine: [UInt8] = []

    public init(logSink: @escaping (String) -> Void = { GuestErrorLog.stderrSink("xen-platform: \($0)") }) {
        self.logSink = logSink
        let config = PCIConfigSpace(vendor: 0x5853, device: 0x0001, revision: 1, classCode: 0xFF_8000,
                                    subsystemVendor: 0x5853, subsystem: 0x0001, interruptPin: 1)
        pci = PCIFunction(name: "xen-platform", config: config,
                          bars: [PCIBARDefinition(kind: .io, size: 0x100),
                                 PCIBARDefinition(kind: .memory32(prefetchable: true), size: 16 << 20)])
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case 0:  // BAR0: only the flags byte reads back.
            return offset == 0 && size == 1 ? UInt64(flags) : mask(size)
        case 1:
            return 0
        case Self.fixedPortRegion:
            switch (offset, size) {
            case (0, 2): return Self.magic
            case (0, 1): return UInt64(flags)
            case (2, 1): return Self.protocolVersion
            default: return mask(size)
            }
        default:
            return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch region {
        case 0:
            writeLegacyRegisters(offset: offset, size: size, value: value)
        case Self.fixedPortRegion:
            switch (offset, size) {
            case (0, 2): unplug(UnplugRequest(rawValue: UInt16(truncatingIfNeeded: value)))
            case (2, 2): productNumber = UInt16(truncatingIfNeeded: value)
            case (0, 4): break  // the driver's build number: nothing depends on it
            case (0, 1): flags = UInt8(truncatingIfNeeded: value)
            case (2, 1): log(UInt8(truncatingIfNeeded: value))
            default: GuestErrorLog.shared.report("xen-platform", "write of \(size) bytes at port \(hex(Self.fixedPortBase + offset)) ignored")
            }
        default:
            break
        }
    }

    /// BAR0 as drivers older than the port-0x10 protocol use it.
    private func writeLegacyRegisters(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0 where size == 1:
            flags = byte
        case 4 where byte == 1:  // old SUSE drivers: unplug everything
            unplug([.allDisks, .nics])
        case 8:
            switch byte {  // old VMDP drivers: 1 disks, 2 NICs; anything else is a log byte
            case 1: unplug(.allDisks)
            case 2: unplug(.nics)
            default: log(byte)
            }
        default:
            break
        }
    }

    private func unplug(_ request: UnplugRequest) {
        var effective = request
        // "All disks" includes the primary master, so the narrower request adds nothing.
        if effective.contains(.allDisks) { effective.remove(.auxDisks) }
        guard !effective.isEmpty else { return }
        onUnplug?(effective)
    }

    private func log(_ byte: UInt8) {
        if byte == 0x0A || logLine.count >= Self.logLimit {
            logSink(String(decoding: logLine, as: UTF8.self))
            logLine.removeAll(keepingCapacity: true)
            if byte == 0x0A { return }
        }
        logLine.append(byte)
    }

    // MARK: state

    public var stateID: String { "xen-platform" }
    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(flags)
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        try pci.loadState(from: &r)
        flags = try r.get(UInt8.self)
    }

    public func reset() {
        pci.reset()
        flags = 0
        productNumber = 0
        logLine.removeAll()
    }
}
