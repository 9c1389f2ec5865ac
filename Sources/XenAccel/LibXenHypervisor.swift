import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The real `XenHypervisor`: an ioreq server created through libxendevicemodel, its pages
/// mapped through libxenforeignmemory, its event channels bound through libxenevtchn, as QEMU's
/// `xen_register_ioreq` does (xen-contract.md §A.5.5, §A.6.1). Not exercised on machines
/// without Xen (the lab runs it); everything above it is tested against the simulator.
public final class LibXenHypervisor: XenHypervisor, @unchecked Sendable {
    static let bufioreqAtomic: Int32 = 2
    static let resourceIoreqServer: UInt32 = 0
    static let hvmParamACPISleepState: UInt32 = 14
    static let slotsPerPage = xenPageSize / Ioreq.slotSize

    public let domid: UInt16
    public let libraries: XenLibraries
    public let serverID: UInt16
    public private(set) var ioreqPage: SharedPage
    public private(set) var bufferedPage: SharedPage?
    public private(set) var vcpuPorts: [UInt32] = []
    public private(set) var bufferedPort: UInt32?
    public var eventChannelFD: Int32? { evtchnFD }

    private let dm: XenLibraries.Handle
    private let fmem: XenLibraries.Handle
    private let evtchn: XenLibraries.Handle
    /// libxenctrl, for the one HVM parameter a device model sets (the ACPI S-state). Opened
    /// with the others, before `-xen-domid-restrict` or `-runas` can take the right away.
    private let control: XenLibraries.Handle
    private let evtchnFD: Int32
    private var resource: XenLibraries.Handle?
    /// Fallback page mappings (Xen without resource mapping): base and page count.
    private var legacyPages: [(UnsafeMutableRawPointer, Int)] = []

    /// Creates the ioreq server for `domid` with one slot per vCPU and, unless `buffered` is
    /// false, an ATOMIC buffered ring; binds every port. The server starts disabled: the machine
    /// registers its ranges and devices, then calls `setIoreqServerEnabled(true)`.
    public init(libraries: XenLibraries, domid: UInt16, vcpus: Int, buffered: Bool = true) throws(XenError) {
        guard vcpus >= 1, vcpus <= Self.slotsPerPage else { throw .invalid("Xen: \(vcpus) vCPUs (1...\(Self.slotsPerPage) supported)") }
        self.libraries = libraries
        self.domid = domid
        dm = try libraries.openDeviceModel()
        guard let fmem = libraries.fmemOpen(nil, 0) else {
            let e = errno
            Self.closeHandles(libraries, dm)
            throw .callFailed(call: "xenforeignmemory_open", errno: e)
        }
        self.fmem = fmem
        guard let evtchn = libraries.evtchnOpen(nil, 0) else {
            let e = errno
            Self.closeHandles(libraries, dm, fmem: fmem)
            throw .callFailed(call: "xenevtchn_open", errno: e)
        }
        self.evtchn = evtchn
        guard let control = libraries.xcInterfaceOpen(nil, nil, 0) else {
            let e = errno
            Self.closeHandles(libraries, dm, fmem: fmem, evtchn: evtchn)
            throw .callFailed(call: "xc_interface_open", errno: e)
        }
        self.control = control
        evtchnFD = libraries.evtchnFD(evtchn)
        // xenevtchn_pending reads the descriptor: non-blocking, it answers "none pending"
        // instead of parking the ioreq thread where `stop` and pauses cannot reach it.
        let flags = fcntl(evtchnFD, F_GETFL)
        guard flags >= 0, fcntl(evtchnFD, F_SETFL, flags | O_NONBLOCK) == 0 else {
            let e = errno
            Self.closeHandles(libraries, dm, fmem: fmem, evtchn: evtchn, control: control)
            throw .callFailed(call: "fcntl(event channel, O_NONBLOCK)", errno: e)
        }
        var id: UInt16 = 0
        guard libraries.createIoreqServer(dm, domid, buffered ? Self.bufioreqAtomic : 0, &id) == 0 else {
            let e = errno
            Self.closeHandles(libraries, dm, fmem: fmem, evtchn: evtchn, control: control)
            throw .callFailed(call: "xendevicemodel_create_ioreq_server(dom \(domid))", errno: e)
        }
        serverID = id
        ioreqPage = SharedPage(base: UnsafeMutableRawPointer(bitPattern: 1)!, length: 0)
        do throws(XenError) {
            try mapPages(buffered: buffered)
            // Xen writes each vCPU's vp_eport into the page only when the server is enabled
            // (its pages come into being with the resource mapping, after the vCPUs were added),
            // so enable it for the binding, as QEMU does, then leave it off until the VM runs.
            try setIoreqServerEnabled(true)
            try bindPorts(vcpus: vcpus, buffered: buffered)
            try setIoreqServerEnabled(false)
        } catch {
            teardown()
            throw error
        }
    }

    deinit { teardown() }

    /// Closes what `init` opened so far, in reverse order (every failure path and teardown).
    private static func closeHandles(_ l: XenLibraries, _ dm: XenLibraries.Handle, fmem: XenLibraries.Handle? = nil,
                                     evtchn: XenLibraries.Handle? = nil, control: XenLibraries.Handle? = nil) {
        if let control { _ = l.xcInterfaceClose(control) }
        if let evtchn { _ = l.evtchnClose(evtchn) }
        if let fmem { _ = l.fmemClose(fmem) }
        _ = l.dmClose(dm)
    }

    /// Resource mapping first (frame 0 = buffered page, frame 1 = the synchronous page), the
    /// gfns from `get_ioreq_server_info` when Xen lacks it, as QEMU's `xen_map_ioreq_server`.
    private func mapPages(buffered: Bool) throws(XenError) {
        var address: UnsafeMutableRawPointer?
        let first: UInt = buffered ? 0 : 1
        let frames: UInt = buffered ? 2 : 1
        if let res = libraries.fmemMapResource(fmem, domid, Self.resourceIoreqServer, UInt32(serverID), first, frames,
                                               &address, PROT_READ | PROT_WRITE, 0), let address {
            resource = res
            if buffered {
                bufferedPage = SharedPage(base: address, length: xenPageSize)
                ioreqPage = SharedPage(base: address + xenPageSize, length: xenPageSize)
            } else {
                ioreqPage = SharedPage(base: address, length: xenPageSize)
            }
            return
        }
        guard errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL else {
            throw .callFailed(call: "xenforeignmemory_map_resource(ioreq server \(serverID))", errno: errno)
        }
        var ioreqGFN: UInt = 0, bufGFN: UInt = 0
        let rc = buffered ? libraries.getIoreqServerInfo(dm, domid, serverID, &ioreqGFN, &bufGFN, nil)
                          : libraries.getIoreqServerInfo(dm, domid, serverID, &ioreqGFN, nil, nil)
        guard rc == 0 else {
            throw .callFailed(call: "xendevicemodel_get_ioreq_server_info", errno: errno)
        }
        ioreqPage = SharedPage(base: try mapLegacy(ioreqGFN), length: xenPageSize)
        if buffered { bufferedPage = SharedPage(base: try mapLegacy(bufGFN), length: xenPageSize) }
    }

    private func mapLegacy(_ gfn: UInt) throws(XenError) -> UnsafeMutableRawPointer {
        var frame = gfn
        var err: Int32 = 0
        guard let p = libraries.fmemMap(fmem, UInt32(domid), PROT_READ | PROT_WRITE, 1, &frame, &err), err == 0 else {
            throw .callFailed(call: "xenforeignmemory_map(ioreq gfn \(hex(gfn)))", errno: err != 0 ? -err : errno)
        }
        legacyPages.append((p, 1))
        return p
    }

    private func bindPorts(vcpus: Int, buffered: Bool) throws(XenError) {
        for vcpu in 0..<vcpus {
            // Xen wrote vp_eport when it created the server; read it once, as everything here.
            var word: UInt32 = 0
            withUnsafeMutableBytes(of: &word) { ioreqPage.copyOnce(from: vcpu * Ioreq.slotSize + 24, count: 4, into: $0.baseAddress!) }
            let local = libraries.evtchnBindInterdomain(evtchn, UInt32(domid), UInt32(littleEndian: word))
            guard local >= 0 else { throw .callFailed(call: "xenevtchn_bind_interdomain(vCPU \(vcpu))", errno: errno) }
            vcpuPorts.append(UInt32(local))
        }
        if buffered {
            var remote: UInt32 = 0
            guard libraries.getIoreqServerInfo(dm, domid, serverID, nil, nil, &remote) == 0 else {
                throw .callFailed(call: "xendevicemodel_get_ioreq_server_info(buffered port)", errno: errno)
            }
            let local = libraries.evtchnBindInterdomain(evtchn, UInt32(domid), remote)
            guard local >= 0 else { throw .callFailed(call: "xenevtchn_bind_interdomain(buffered)", errno: errno) }
            bufferedPort = UInt32(local)
        }
    }

    private var tornDown = false
    private func teardown() {
        guard !tornDown else { return }
        tornDown = true
        for port in vcpuPorts { _ = libraries.evtchnUnbind(evtchn, port) }
        if let bufferedPort { _ = libraries.evtchnUnbind(evtchn, bufferedPort) }
        _ = libraries.destroyIoreqServer(dm, domid, serverID)
        if let resource { _ = libraries.fmemUnmapResource(fmem, resource) }
        for (p, n) in legacyPages { _ = libraries.fmemUnmap(fmem, p, n) }
        Self.closeHandles(libraries, dm, fmem: fmem, evtchn: evtchn, control: control)
    }

    // MARK: events

    public func pendingPort() -> UInt32? {
        let port = libraries.evtchnPending(evtchn)
        return port < 0 ? nil : UInt32(port)
    }
    public func unmask(_ port: UInt32) { _ = libraries.evtchnUnmask(evtchn, port) }
    public func notify(_ port: UInt32) { _ = libraries.evtchnNotify(evtchn, port) }

    // MARK: dm-ops

    @inline(__always)
    private func check(_ rc: Int32, _ call: @autoclosure () -> String) throws(XenError) {
        if rc != 0 { throw .callFailed(call: call(), errno: errno) }
    }

    public func setIoreqServerEnabled(_ enabled: Bool) throws(XenError) {
        try check(libraries.setIoreqServerState(dm, domid, serverID, enabled ? 1 : 0), "xendevicemodel_set_ioreq_server_state")
    }
    public func mapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError) {
        try check(libraries.mapIORangeToIoreqServer(dm, domid, serverID, kind.rawValue, start, end),
                  "xendevicemodel_map_io_range_to_ioreq_server(\(kind), \(hex(start))-\(hex(end)))")
    }
    public func unmapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError) {
        try check(libraries.unmapIORangeFromIoreqServer(dm, domid, serverID, kind.rawValue, start, end),
                  "xendevicemodel_unmap_io_range_from_ioreq_server(\(kind), \(hex(start))-\(hex(end)))")
    }
    public func mapPCIDevice(_ a: PCIAddress) throws(XenError) {
        try check(libraries.mapPCIDevToIoreqServer(dm, domid, serverID, a.segment, a.bus, a.device, a.function),
                  "xendevicemodel_map_pcidev_to_ioreq_server(\(a))")
    }
    public func unmapPCIDevice(_ a: PCIAddress) throws(XenError) {
        try check(libraries.unmapPCIDevFromIoreqServer(dm, domid, serverID, a.segment, a.bus, a.device, a.function),
                  "xendevicemodel_unmap_pcidev_from_ioreq_server(\(a))")
    }
    public func setISAIRQLevel(_ irq: UInt8, level: Bool) throws(XenError) {
        try check(libraries.setISAIRQLevel(dm, domid, irq, level ? 1 : 0), "xendevicemodel_set_isa_irq_level")
    }
    public func setPCIIntxLevel(segment: UInt16, bus: UInt8, device: UInt8, intx: UInt8, level: Bool) throws(XenError) {
        try check(libraries.setPCIIntxLevel(dm, domid, segment, bus, device, intx, level ? 1 : 0), "xendevicemodel_set_pci_intx_level")
    }
    public func setPCILinkRoute(link: UInt8, irq: UInt8) throws(XenError) {
        try check(libraries.setPCILinkRoute(dm, domid, link, irq), "xendevicemodel_set_pci_link_route")
    }
    public func injectMSI(address: UInt64, data: UInt32) throws(XenError) {
        try check(libraries.injectMSI(dm, domid, address, data), "xendevicemodel_inject_msi")
    }
    public func modifiedMemory(firstGFN: UInt64, count: UInt32) throws(XenError) {
        try check(libraries.modifiedMemory(dm, domid, firstGFN, count), "xendevicemodel_modified_memory")
    }
    public func shutdown(_ reason: XenShutdownReason) throws(XenError) {
        try check(libraries.shutdown(dm, domid, reason.rawValue), "xendevicemodel_shutdown(\(reason))")
    }
    public func setACPISleepState(_ state: UInt8) throws(XenError) {
        try check(libraries.xcHVMParamSet(control, UInt32(domid), Self.hvmParamACPISleepState, UInt64(state)),
                  "xc_hvm_param_set(HVM_PARAM_ACPI_S_STATE, \(state))")
    }

    // MARK: device RAM

    public func populatePhysmap(firstGFN: UInt64, count: Int) throws(XenError) {
        guard count > 0 else { return }
        var frames = (0..<count).map { UInt(firstGFN) + UInt($0) }
        try check(libraries.xcPopulatePhysmapExact(control, UInt32(domid), UInt(count), 0, 0, &frames),
                  "xc_domain_populate_physmap_exact(gfn \(hex(firstGFN)), \(count) frames)")
    }
    public func relocateMemory(count: UInt32, from: UInt64, to: UInt64) throws(XenError) {
        try check(libraries.relocateMemory(dm, domid, count, from, to),
                  "xendevicemodel_relocate_memory(\(count) frames, gfn \(hex(from)) -> \(hex(to)))")
    }
    public func pinMemoryCacheattr(first: UInt64, last: UInt64, type: UInt32) throws(XenError) {
        try check(libraries.pinMemoryCacheattr(dm, domid, first, last, type), "xendevicemodel_pin_memory_cacheattr")
    }
    public func trackDirtyVRAM(firstGFN: UInt64, count: UInt32, bitmap: inout [UInt64]) throws(XenError) {
        let words = (Int(count) + 63) / 64
        if bitmap.count < words { bitmap += [UInt64](repeating: 0, count: words - bitmap.count) }
        let rc: Int32
        if count == 0 {
            rc = libraries.trackDirtyVRAM(dm, domid, 0, 0, nil)
        } else {
            // unsigned long is 64 bits on the x86-64 hosts Xen's dom0 runs on.
            rc = bitmap.withUnsafeMutableBytes { bytes in
                libraries.trackDirtyVRAM(dm, domid, firstGFN, count, bytes.baseAddress?.assumingMemoryBound(to: UInt.self))
            }
        }
        try check(rc, "xendevicemodel_track_dirty_vram(gfn \(hex(firstGFN)), \(count))")
    }

    // MARK: foreign memory

    public func mapForeignPages(firstGFN: UInt64, pageCount: Int) throws(XenError) -> ForeignMapping {
        guard pageCount > 0 else { throw .invalid("foreign map of no pages") }
        var frames = (0..<pageCount).map { UInt(firstGFN) + UInt($0) }
        var errs = [Int32](repeating: 0, count: pageCount)
        guard let p = libraries.fmemMap(fmem, UInt32(domid), PROT_READ | PROT_WRITE, pageCount, &frames, &errs) else {
            throw .callFailed(call: "xenforeignmemory_map(gfn \(hex(firstGFN)), \(pageCount) pages)", errno: errno)
        }
        var valid = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        for i in 0..<pageCount where errs[i] == 0 { valid[i >> 6] |= 1 << UInt64(i & 63) }
        return ForeignMapping(base: p, firstGFN: firstGFN, pageCount: pageCount, validPages: valid)
    }

    public func unmapForeignPages(_ mapping: ForeignMapping) {
        _ = libraries.fmemUnmap(fmem, mapping.base, mapping.pageCount)
    }
}
