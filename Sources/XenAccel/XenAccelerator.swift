import DMCore
import Synchronization

/// The Xen accelerator: Xen runs the vCPUs; we serve their ioreqs. It owns the ioreq server,
/// the mapcache (the machine's `GuestMemory`) and the interrupt sink, and claims from Xen exactly
/// the port and MMIO ranges and the PCI functions the machine's devices decode (QEMU's
/// `xen_register_ioreq` plus its memory, I/O and device listeners, xen-contract.md §A.6.1).
///
/// Run state maps onto the ioreq server as QEMU maps it: the server is enabled while the VM
/// runs and disabled while it is stopped (QMP `stop`, `-S`, `-incoming`), so a stopped VM's
/// accesses never reach a device. A guest's power-off or reboot is forwarded to Xen
/// (`xendevicemodel_shutdown`); the toolstack then destroys or rebuilds the domain.
public final class XenAccelerator: Accelerator, @unchecked Sendable {
    public let hypervisor: any XenHypervisor
    public let mapCache: XenMapCache
    public let sink: XenInterruptSink
    public var interrupts: any InterruptSink { sink }
    private let server: IoreqServer
    private let errors: GuestErrorLog
    private let vcpuCount: Int
    /// Whether Xen currently forwards accesses to us; guards against redundant dm-ops.
    private let enabled = Mutex<Bool>(false)

    public init(hypervisor: any XenHypervisor, dispatcher: IODispatcher, events: any AcceleratorEvents,
                vcpus: Int, errors: GuestErrorLog = .shared,
                pciConfig: @escaping IoreqServer.PCIConfigHandler) throws(XenError) {
        self.hypervisor = hypervisor
        self.errors = errors
        vcpuCount = vcpus
        let mapCache = XenMapCache(hypervisor: hypervisor, errors: errors)
        self.mapCache = mapCache
        sink = XenInterruptSink(hypervisor: hypervisor, errors: errors)
        server = try IoreqServer(hypervisor: hypervisor, dispatcher: dispatcher, memory: mapCache, events: events,
                                 errors: errors, pciConfig: pciConfig,
                                 invalidateMapCache: { mapCache.invalidate() })
    }

    // MARK: claiming what the devices decode

    /// Claims `range` of `kind` for this server, less the parts Xen emulates itself.
    public func claim(_ kind: XenIORangeKind, _ range: ClosedRange<UInt64>) throws(XenError) {
        for piece in XenOwnedRanges.subtracting(kind, from: range) {
            try hypervisor.mapIORange(kind, start: piece.lowerBound, end: piece.upperBound)
        }
    }

    /// Gives `range` back (a BAR moved or was disabled). Failures are logged: Xen forgets the
    /// range with the server anyway.
    public func release(_ kind: XenIORangeKind, _ range: ClosedRange<UInt64>) {
        for piece in XenOwnedRanges.subtracting(kind, from: range) {
            do throws(XenError) {
                try hypervisor.unmapIORange(kind, start: piece.lowerBound, end: piece.upperBound)
            } catch {
                errors.report("xen", "unmap \(kind) range \(hex(piece.lowerBound))-\(hex(piece.upperBound)): \(error)")
            }
        }
    }

    public func claimPCIFunction(_ address: PCIAddress) throws(XenError) {
        try hypervisor.mapPCIDevice(address)
    }

    // MARK: Accelerator

    public func start(paused: Bool) throws {
        try server.start()
        if !paused { setServing(true) }
    }

    public func pause() {
        server.whileIdle { setServing(false) }
    }

    public func resume() {
        setServing(true)
    }

    /// From the ioreq thread itself (a device ending the VM): Xen stops forwarding at once; the
    /// request being served still gets its response.
    public func requestPause() {
        setServing(false)
    }

    /// Nothing to do: a Xen domain is reset by the toolstack rebuilding it, which
    /// `forwardPowerRequest(reboot: true)` asks for.
    public func reset() throws {}

    public func stop() {
        server.stop()
        setServing(false)
    }

    public var vcpuThreadIDs: [Int32] { [Int32](repeating: 0, count: vcpuCount) }

    public func registerDump(cpu: Int) -> String? { nil }

    public func forwardPowerRequest(reboot: Bool) -> Bool {
        server.shutdownDomain(reboot ? .reboot : .poweroff)
        return true
    }

    /// Xen suspends the domain itself (pauses and resets its vCPUs, and its own timers and
    /// interrupt controllers); the ioreq server stays enabled for the resume.
    public func suspend() throws {
        try hypervisor.setACPISleepState(3)
    }

    /// As QEMU's wakeup notifier. (`xl trigger DOMAIN s3resume` sets the same parameter
    /// without us.)
    public func wake() throws {
        try hypervisor.setACPISleepState(0)
    }

    /// `xen-set-global-dirty-log`: while on, every write the device model makes to guest RAM
    /// is reported to Xen (live migration).
    public var globalDirtyLogging: Bool {
        get { mapCache.globalDirtyLogging }
        set { mapCache.globalDirtyLogging = newValue }
    }

    public var ioreqCounters: IoreqServer.Counters { server.counters }

    private func setServing(_ on: Bool) {
        enabled.withLock { current in
            guard current != on else { return }
            do throws(XenError) {
                try hypervisor.setIoreqServerEnabled(on)
                current = on
            } catch {
                errors.report("xen", "\(on ? "enable" : "disable") ioreq server: \(error)")
            }
        }
    }
}

/// What Xen emulates itself on x86 HVM and a device model must not claim (xen-contract.md
/// §A.5.5): the PICs, PIT, speaker port, ELCR, the ACPI PM1a event and timer blocks hvmloader
/// places at 0x1F40, and the HPET, IOAPIC and LAPIC windows. The RTC ports are claimed, as
/// QEMU claims them: Xen's RTC serves CMOS indexes 0x00-0x0D and forwards the rest (the CMOS
/// RAM hvmloader and SeaBIOS use) to the device model. 0xCF8-0xCFF is claimed too: Xen records
/// 0xCF8 writes but passes reads through; PM1a control stays ours.
public enum XenOwnedRanges {
    public static let ports: [ClosedRange<UInt64>] = [
        0x20...0x21, 0x40...0x43, 0x61...0x61, 0xA0...0xA1, 0x4D0...0x4D1,
        0x1F40...0x1F43, 0x1F48...0x1F4B,
    ]
    public static let mmio: [ClosedRange<UInt64>] = [
        0xFEC0_0000...0xFEC0_0FFF, 0xFED0_0000...0xFED0_03FF, 0xFEE0_0000...0xFEEF_FFFF,
    ]

    /// `range` minus every owned range of `kind`, as the pieces that remain (in order).
    public static func subtracting(_ kind: XenIORangeKind, from range: ClosedRange<UInt64>) -> [ClosedRange<UInt64>] {
        var pieces = [range]
        for owned in kind == .port ? ports : mmio {
            pieces = pieces.flatMap { piece -> [ClosedRange<UInt64>] in
                guard piece.overlaps(owned) else { return [piece] }
                var rest: [ClosedRange<UInt64>] = []
                if piece.lowerBound < owned.lowerBound { rest.append(piece.lowerBound...owned.lowerBound - 1) }
                if piece.upperBound > owned.upperBound { rest.append(owned.upperBound + 1...piece.upperBound) }
                return rest
            }
        }
        return pieces
    }
}
