/// What the device model asks of Xen, as one seam: the ioreq server's shared pages and event
/// channels, the dm-ops, and foreign-memory mapping. `LibXenHypervisor` implements it over the
/// dlopen'ed libraries; `SimulatedXenHypervisor` plays Xen's side in tests, the fuzzer and the
/// lab's dry runs.
///
/// The pages are raw shared memory: the hypervisor and a hostile guest may change them at any
/// time. `IoreqServer` is the only reader and copies each slot once.
public protocol XenHypervisor: AnyObject, Sendable {
    var domid: UInt16 { get }

    // MARK: ioreq server pages and event channels (set up when the server is created)

    /// The synchronous ioreq page: one 32-byte `ioreq` slot per vCPU.
    var ioreqPage: SharedPage { get }
    /// The buffered ring page, or nil when the server runs without one (Arm, or Xen refused).
    var bufferedPage: SharedPage? { get }
    /// Local event-channel port of each vCPU's ioreq channel, indexed by vCPU id.
    var vcpuPorts: [UInt32] { get }
    /// Local port of the buffered ring's channel.
    var bufferedPort: UInt32? { get }
    /// The file descriptor that becomes readable when a port is pending (nil in simulations
    /// driven synchronously).
    var eventChannelFD: Int32? { get }

    /// The next pending port (`xenevtchn_pending`), nil when none is pending.
    func pendingPort() -> UInt32?
    func unmask(_ port: UInt32)
    func notify(_ port: UInt32)

    // MARK: what the ioreq server receives

    func setIoreqServerEnabled(_ enabled: Bool) throws(XenError)
    /// `end` is inclusive, as in the dm-op.
    func mapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError)
    func unmapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError)
    func mapPCIDevice(_ address: PCIAddress) throws(XenError)
    func unmapPCIDevice(_ address: PCIAddress) throws(XenError)

    // MARK: interrupts

    func setISAIRQLevel(_ irq: UInt8, level: Bool) throws(XenError)
    func setPCIIntxLevel(segment: UInt16, bus: UInt8, device: UInt8, intx: UInt8, level: Bool) throws(XenError)
    func setPCILinkRoute(link: UInt8, irq: UInt8) throws(XenError)
    func injectMSI(address: UInt64, data: UInt32) throws(XenError)

    // MARK: memory and lifecycle

    /// Maps `pageCount` guest frames starting at `firstGFN` read-write into our address space.
    /// Frames Xen refuses (holes, MMIO, ballooned-out pages) are reported per page in
    /// `ForeignMapping.validPages`; the call fails only when nothing could be mapped at all.
    func mapForeignPages(firstGFN: UInt64, pageCount: Int) throws(XenError) -> ForeignMapping
    func unmapForeignPages(_ mapping: ForeignMapping)
    /// Reports frames the device model wrote while log-dirty mode is on (migration).
    func modifiedMemory(firstGFN: UInt64, count: UInt32) throws(XenError)
    func shutdown(_ reason: XenShutdownReason) throws(XenError)

    // MARK: device RAM (VRAM): QEMU's xen_ram_alloc and physmap

    /// Gives the domain new frames at `count` gfns from `firstGFN` (counted in its maxmem).
    func populatePhysmap(firstGFN: UInt64, count: Int) throws(XenError)
    /// Moves `count` frames from `from` to `to` in the guest's physical address space.
    func relocateMemory(count: UInt32, from: UInt64, to: UInt64) throws(XenError)
    /// Pins the cache attribute of gfns `first...last` (`XEN_DOMCTL_MEM_CACHEATTR_*`).
    func pinMemoryCacheattr(first: UInt64, last: UInt64, type: UInt32) throws(XenError)
    /// Starts or continues dirty tracking of `count` frames from `firstGFN` and returns, in
    /// `bitmap` (one bit per frame), those written since the last call; `count` 0 stops it.
    /// Fails with `ENODATA` while Xen cannot tell (the caller then redraws everything).
    func trackDirtyVRAM(firstGFN: UInt64, count: UInt32, bitmap: inout [UInt64]) throws(XenError)
    /// Sets `HVM_PARAM_ACPI_S_STATE`: 3 makes Xen suspend the domain to RAM (vCPUs paused and
    /// reset), 0 resumes it.
    func setACPISleepState(_ state: UInt8) throws(XenError)
}

public enum XenIORangeKind: Int32, Sendable {
    case port = 0, mmio = 1
}

/// A PCI function as Xen names it in dm-ops and in PCI_CONFIG ioreqs.
public struct PCIAddress: Hashable, Sendable, CustomStringConvertible {
    public var segment: UInt16
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8

    public init(segment: UInt16 = 0, bus: UInt8 = 0, device: UInt8, function: UInt8 = 0) {
        self.segment = segment
        self.bus = bus
        self.device = device & 0x1F
        self.function = function & 0x7
    }

    /// From the upper half of a PCI_CONFIG `addr`: SEGMENT[31:16] BUS[15:8] DEV[7:3] FN[2:0].
    public init(sbdf: UInt32) {
        segment = UInt16(truncatingIfNeeded: sbdf >> 16)
        bus = UInt8(truncatingIfNeeded: sbdf >> 8)
        device = UInt8(truncatingIfNeeded: (sbdf >> 3) & 0x1F)
        function = UInt8(truncatingIfNeeded: sbdf & 0x7)
    }

    public var sbdf: UInt32 {
        UInt32(segment) << 16 | UInt32(bus) << 8 | UInt32(device & 0x1F) << 3 | UInt32(function & 0x7)
    }

    public var description: String {
        func h(_ v: some BinaryInteger, _ w: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(h(segment, 4)):\(h(bus, 2)):\(h(device, 2)).\(function)"
    }
}

/// `SHUTDOWN_*` from xen/include/public/sched.h.
public enum XenShutdownReason: UInt32, Sendable {
    case poweroff = 0, reboot = 1, suspend = 2, crash = 3
}

/// A range of guest frames mapped into our address space. `validPages` has one bit per page;
/// a clear bit means Xen refused that frame and it must not be touched.
public struct ForeignMapping: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let firstGFN: UInt64
    public let pageCount: Int
    public let validPages: [UInt64]

    public init(base: UnsafeMutableRawPointer, firstGFN: UInt64, pageCount: Int, validPages: [UInt64]) {
        self.base = base
        self.firstGFN = firstGFN
        self.pageCount = pageCount
        self.validPages = validPages
    }

    @inline(__always)
    public func isValid(page: Int) -> Bool {
        page >= 0 && page < pageCount && validPages[page >> 6] & (1 << UInt64(page & 63)) != 0
    }

    /// A bitmap with the first `count` pages valid.
    public static func allValid(_ count: Int) -> [UInt64] {
        var bits = [UInt64](repeating: 0, count: (count + 63) / 64)
        for p in 0..<count { bits[p >> 6] |= 1 << UInt64(p & 63) }
        return bits
    }
}

public let xenPageShift: UInt64 = 12
public let xenPageSize = 4096
