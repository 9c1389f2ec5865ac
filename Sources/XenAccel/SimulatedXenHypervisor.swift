import CXen
import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Plays Xen's side of the device-model protocol in one process, for unit tests, the fuzzer
/// and dry runs in the lab: it owns the ioreq and buffered pages, writes requests into slots
/// and marks them READY, queues buffered entries, keeps a list of pending ports, records every
/// dm-op, and backs "guest RAM" with a memfd that foreign mappings map shared, so the device
/// model's view and the guest's view are the same bytes, as under Xen.
///
/// It can also misbehave: tests write arbitrary bytes into slots and ring pointers, flip a
/// slot's state while a device runs (`onDispatch` hooks in test devices), make mappings fail
/// and punch holes in guest RAM.
public final class SimulatedXenHypervisor: XenHypervisor, @unchecked Sendable {
    public enum DMOp: Equatable, Sendable {
        case serverEnabled(Bool)
        case mapRange(XenIORangeKind, UInt64, UInt64)
        case unmapRange(XenIORangeKind, UInt64, UInt64)
        case mapPCI(PCIAddress)
        case unmapPCI(PCIAddress)
        case isaIRQ(UInt8, Bool)
        case pciIntx(segment: UInt16, bus: UInt8, device: UInt8, intx: UInt8, level: Bool)
        case linkRoute(link: UInt8, irq: UInt8)
        case msi(UInt64, UInt32)
        case modifiedMemory(UInt64, UInt32)
        case shutdown(XenShutdownReason)
        case acpiSleepState(UInt8)
        case populate(UInt64, Int)
        case relocate(count: UInt32, from: UInt64, to: UInt64)
        case pinCacheattr(UInt64, UInt64, UInt32)
        case trackDirtyVRAM(UInt64, UInt32)
    }

    public let domid: UInt16 = 1
    public let ioreqPage: SharedPage
    public let bufferedPage: SharedPage?
    public let vcpuPorts: [UInt32]
    public let bufferedPort: UInt32?
    public var eventChannelFD: Int32? { signalFD }

    private let pagesBacking: HostMemory
    private let signalFD: Int32
    private let ramFD: Int32
    public let ramSize: Int
    private let ramView: UnsafeMutableRawPointer

    private struct State {
        var pending: [UInt32] = []
        var notified: [UInt32] = []
        var unmasked: [UInt32] = []
        var dmOps: [DMOp] = []
        var holes: Set<UInt64> = []
        var failMaps = false
        var liveMappings = 0
        var maps = 0
        var failDMOps = false
        /// Frames the "guest" wrote since the last `trackDirtyVRAM` (see `guestWroteFrame`).
        var dirtyFrames: Set<UInt64> = []
    }
    private let state = Mutex(State())

    /// `vcpus` slots, an optional buffered ring, and `ramSize` bytes of guest RAM from gfn 0.
    public init(vcpus: Int = 1, buffered: Bool = true, ramSize: Int = 4 << 20) throws(XenError) {
        guard vcpus >= 1, vcpus <= 128, ramSize > 0, ramSize % xenPageSize == 0 else {
            throw .invalid("simulator: bad geometry")
        }
        do {
            pagesBacking = try HostMemory(size: 2 * xenPageSize)
        } catch {
            throw .invalid("simulator: \(error)")
        }
        // Shared mappings of zero-filled pages: HostMemory's are private, which is fine here.
        ioreqPage = SharedPage(base: pagesBacking.baseAddress, length: xenPageSize)
        bufferedPage = buffered ? SharedPage(base: pagesBacking.baseAddress + xenPageSize, length: xenPageSize) : nil
        vcpuPorts = (0..<vcpus).map { UInt32(10 + $0) }
        bufferedPort = buffered ? 5 : nil
        signalFD = cxen_eventfd()
        guard signalFD >= 0 else { throw .callFailed(call: "eventfd", errno: errno) }
        ramFD = cxen_memfd("swiftdm-sim-ram")
        guard ramFD >= 0 else { throw .callFailed(call: "memfd_create", errno: errno) }
        guard ftruncate(ramFD, off_t(ramSize)) == 0 else { throw .callFailed(call: "ftruncate", errno: errno) }
        self.ramSize = ramSize
        let view = mmap(nil, ramSize, PROT_READ | PROT_WRITE, MAP_SHARED, ramFD, 0)
        guard let view, view != MAP_FAILED else { throw .callFailed(call: "mmap", errno: errno) }
        ramView = view
        for (i, port) in vcpuPorts.enumerated() {
            var slot = Ioreq()
            slot.vpEventPort = port
            ioreqPage.storeBytes(slot.encoded, at: i * Ioreq.slotSize)
        }
    }

    deinit {
        munmap(ramView, ramSize)
        close(ramFD)
        close(signalFD)
    }

    // MARK: XenHypervisor: events

    public func pendingPort() -> UInt32? {
        state.withLock { s -> UInt32? in
            guard !s.pending.isEmpty else {
                var value: UInt64 = 0
                _ = read(signalFD, &value, 8)
                return nil
            }
            // Oldest first; swapping the tail in keeps this allocation-free for the
            // allocation-counting test (order among several pending ports does not matter).
            let port = s.pending[0]
            s.pending[0] = s.pending[s.pending.count - 1]
            s.pending.removeLast()
            return port
        }
    }

    public func unmask(_ port: UInt32) { state.withLock { $0.unmasked.append(port) } }
    public func notify(_ port: UInt32) { state.withLock { $0.notified.append(port) } }

    // MARK: XenHypervisor: dm-ops

    private func record(_ op: DMOp) throws(XenError) {
        let fail = state.withLock { s -> Bool in
            if s.failDMOps { return true }
            s.dmOps.append(op)
            return false
        }
        if fail { throw .callFailed(call: "simulated dm-op", errno: EIO) }
    }

    public func setIoreqServerEnabled(_ enabled: Bool) throws(XenError) { try record(.serverEnabled(enabled)) }
    public func mapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError) {
        try record(.mapRange(kind, start, end))
    }
    public func unmapIORange(_ kind: XenIORangeKind, start: UInt64, end: UInt64) throws(XenError) {
        try record(.unmapRange(kind, start, end))
    }
    public func mapPCIDevice(_ address: PCIAddress) throws(XenError) { try record(.mapPCI(address)) }
    public func unmapPCIDevice(_ address: PCIAddress) throws(XenError) { try record(.unmapPCI(address)) }
    public func setISAIRQLevel(_ irq: UInt8, level: Bool) throws(XenError) { try record(.isaIRQ(irq, level)) }
    public func setPCIIntxLevel(segment: UInt16, bus: UInt8, device: UInt8, intx: UInt8, level: Bool) throws(XenError) {
        try record(.pciIntx(segment: segment, bus: bus, device: device, intx: intx, level: level))
    }
    public func setPCILinkRoute(link: UInt8, irq: UInt8) throws(XenError) { try record(.linkRoute(link: link, irq: irq)) }
    public func injectMSI(address: UInt64, data: UInt32) throws(XenError) { try record(.msi(address, data)) }
    public func modifiedMemory(firstGFN: UInt64, count: UInt32) throws(XenError) {
        try record(.modifiedMemory(firstGFN, count))
    }
    public func shutdown(_ reason: XenShutdownReason) throws(XenError) { try record(.shutdown(reason)) }
    public func setACPISleepState(_ state: UInt8) throws(XenError) { try record(.acpiSleepState(state)) }

    // MARK: XenHypervisor: device RAM

    public func populatePhysmap(firstGFN: UInt64, count: Int) throws(XenError) {
        try record(.populate(firstGFN, count))
        let pages = UInt64(ramSize / xenPageSize)
        guard count >= 0, firstGFN <= pages, UInt64(count) <= pages - firstGFN else {
            throw .callFailed(call: "xc_domain_populate_physmap_exact (simulated)", errno: ENOMEM)
        }
        state.withLock { s in for i in 0..<UInt64(count) { s.holes.remove(firstGFN + i) } }
    }

    /// Moves the bytes as Xen moves the frames: the source becomes a hole.
    public func relocateMemory(count: UInt32, from: UInt64, to: UInt64) throws(XenError) {
        try record(.relocate(count: count, from: from, to: to))
        let pages = UInt64(ramSize / xenPageSize)
        guard from <= pages, to <= pages, UInt64(count) <= pages - from, UInt64(count) <= pages - to else {
            throw .callFailed(call: "xendevicemodel_relocate_memory (simulated)", errno: EINVAL)
        }
        let length = Int(count) * xenPageSize
        memmove(ramView + Int(to) * xenPageSize, ramView + Int(from) * xenPageSize, length)
        state.withLock { s in
            for i in 0..<UInt64(count) { s.holes.insert(from + i) }
            for i in 0..<UInt64(count) { s.holes.remove(to + i) }
        }
    }

    public func pinMemoryCacheattr(first: UInt64, last: UInt64, type: UInt32) throws(XenError) {
        try record(.pinCacheattr(first, last, type))
    }

    public func trackDirtyVRAM(firstGFN: UInt64, count: UInt32, bitmap: inout [UInt64]) throws(XenError) {
        try record(.trackDirtyVRAM(firstGFN, count))
        let words = (Int(count) + 63) / 64
        if bitmap.count < words { bitmap += [UInt64](repeating: 0, count: words - bitmap.count) }
        for i in 0..<words { bitmap[i] = 0 }
        state.withLock { s in
            for gfn in s.dirtyFrames where gfn >= firstGFN && gfn - firstGFN < UInt64(count) {
                let page = Int(gfn - firstGFN)
                bitmap[page / 64] |= 1 << UInt64(page % 64)
            }
            s.dirtyFrames.removeAll()
        }
    }

    // MARK: XenHypervisor: foreign memory

    public func mapForeignPages(firstGFN: UInt64, pageCount: Int) throws(XenError) -> ForeignMapping {
        let (fail, holes) = state.withLock { ($0.failMaps, $0.holes) }
        if fail { throw .callFailed(call: "xenforeignmemory_map (simulated)", errno: EFAULT) }
        let ramPages = UInt64(ramSize / xenPageSize)
        guard pageCount > 0, firstGFN < ramPages else { throw .callFailed(call: "xenforeignmemory_map (simulated)", errno: EINVAL) }
        var valid = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        for p in 0..<pageCount {
            let gfn = firstGFN + UInt64(p)
            if gfn < ramPages && !holes.contains(gfn) { valid[p >> 6] |= 1 << UInt64(p & 63) }
        }
        // MAP_SHARED of the RAM file: pages past its end are mapped but never valid, so they
        // are never touched (they would raise SIGBUS, which is exactly what Xen's refused frames
        // would do).
        let p = mmap(nil, pageCount * xenPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, ramFD, off_t(firstGFN) * off_t(xenPageSize))
        guard let p, p != MAP_FAILED else { throw .callFailed(call: "mmap (simulated foreign map)", errno: errno) }
        state.withLock {
            $0.liveMappings += 1
            $0.maps += 1
        }
        return ForeignMapping(base: p, firstGFN: firstGFN, pageCount: pageCount, validPages: valid)
    }

    public func unmapForeignPages(_ mapping: ForeignMapping) {
        munmap(mapping.base, mapping.pageCount * xenPageSize)
        state.withLock { $0.liveMappings -= 1 }
    }

    // MARK: Xen's side, for tests

    /// Writes `request` into `vcpu`'s slot (state NONE), then marks it READY and makes its port
    /// pending, as `ioreq_send` does.
    public func send(_ request: Ioreq, vcpu: Int = 0) {
        var r = request
        r.state = Ioreq.State.none.rawValue
        r.vpEventPort = vcpuPorts[vcpu]
        let offset = vcpu * Ioreq.slotSize
        ioreqPage.storeBytes(r.encoded, at: offset)
        let flags = ioreqPage.loadBytes(at: offset + Ioreq.stateOffset, count: 1)[0]
        _ = ioreqPage.compareExchangeByte(at: offset + Ioreq.stateOffset, expected: flags,
                                          desired: (flags & 0xF0) | Ioreq.State.ready.rawValue)
        raise(vcpuPorts[vcpu])
    }

    /// Makes `port` pending (and the event-channel descriptor readable).
    public func raise(_ port: UInt32) {
        state.withLock { $0.pending.append(port) }
        var one: UInt64 = 1
        _ = write(signalFD, &one, 8)
    }

    /// The slot as it is now (state and data included).
    public func slot(_ vcpu: Int = 0) -> Ioreq {
        let bytes = ioreqPage.loadBytes(at: vcpu * Ioreq.slotSize, count: Ioreq.slotSize)
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyBytes(from: bytes) }
        return Ioreq(decoding: words)
    }

    /// Completes a response as `wait_for_io` does: IORESP_READY → NONE, returning `data`;
    /// nil if the device model has not responded.
    public func takeResponse(_ vcpu: Int = 0) -> UInt64? {
        let offset = vcpu * Ioreq.slotSize + Ioreq.stateOffset
        let flags = ioreqPage.loadBytes(at: offset, count: 1)[0]
        guard flags & 0x0F == Ioreq.State.responseReady.rawValue else { return nil }
        _ = ioreqPage.compareExchangeByte(at: offset, expected: flags, desired: flags & 0xF0)
        return slot(vcpu).data
    }

    /// Overwrites the state nibble of a slot (a hostile guest or a confused Xen).
    public func setSlotState(_ vcpu: Int, _ newState: UInt8) {
        let offset = vcpu * Ioreq.slotSize + Ioreq.stateOffset
        let flags = ioreqPage.loadBytes(at: offset, count: 1)[0]
        ioreqPage.storeBytes([(flags & 0xF0) | (newState & 0x0F)], at: offset)
    }

    /// Raw bytes into a slot, for fuzzing: the state byte included.
    public func writeRawSlot(_ bytes: [UInt8], vcpu: Int = 0) {
        ioreqPage.storeBytes(Array(bytes.prefix(Ioreq.slotSize)), at: vcpu * Ioreq.slotSize)
    }

    /// Queues a buffered write as `ioreq_send_buffered` does: the entry (two slots for 8 bytes)
    /// at the write pointer, then the write pointer advanced, then the buffered port raised.
    public func sendBuffered(type: Ioreq.Kind, addr: UInt32, size: Int, data: UInt64) {
        guard let page = bufferedPage, let port = bufferedPort else { return }
        rebaseRing(page)
        let log2: UInt8 = size == 8 ? 3 : size == 4 ? 2 : size == 2 ? 1 : 0
        let write = page.loadAcquireUInt32(at: BufferedPageLayout.writePointerOffset)
        let first = BufferedIoreq(type: type.rawValue, sizeLog2: log2, addr: addr, data: UInt32(truncatingIfNeeded: data))
        storeRingSlot(first.encoded, index: write)
        var advance: UInt32 = 1
        if size == 8 {
            let second = BufferedIoreq(type: type.rawValue, sizeLog2: log2, addr: addr, data: UInt32(truncatingIfNeeded: data >> 32))
            storeRingSlot(second.encoded, index: write &+ 1)
            advance = 2
        }
        page.storeReleaseUInt32(write &+ advance, at: BufferedPageLayout.writePointerOffset)
        raise(port)
    }

    /// Xen's canonicalisation in ATOMIC mode (`ioreq_send_buffered`): once the read pointer
    /// passes a lap, subtract whole laps from both pointers with one 64-bit cmpxchg.
    private func rebaseRing(_ page: SharedPage) {
        for _ in 0..<Int(BufferedPageLayout.slotCount) {
            let old = cxen_load_u64(page.base)
            let read = UInt32(truncatingIfNeeded: old), write = UInt32(truncatingIfNeeded: old >> 32)
            guard read >= BufferedPageLayout.slotCount else { return }
            let laps = (read / BufferedPageLayout.slotCount) * BufferedPageLayout.slotCount
            let new = UInt64(read - laps) | UInt64(write &- laps) << 32
            if cxen_cas_u64(page.base, old, new) != 0 { return }
        }
    }

    public func storeRingSlot(_ word: UInt64, index: UInt32) {
        guard let page = bufferedPage else { return }
        withUnsafeBytes(of: word.littleEndian) {
            page.storeBytes(Array($0), at: BufferedPageLayout.slotsOffset + Int(index % BufferedPageLayout.slotCount) * 8)
        }
    }

    /// Sets both ring pointers (rebasing, or a hostile guest scribbling).
    public func setRingPointers(read: UInt32, write: UInt32) {
        guard let page = bufferedPage else { return }
        page.storeReleaseUInt32(read, at: BufferedPageLayout.readPointerOffset)
        page.storeReleaseUInt32(write, at: BufferedPageLayout.writePointerOffset)
    }

    public var ringPointers: (read: UInt32, write: UInt32) {
        guard let page = bufferedPage else { return (0, 0) }
        return (page.loadAcquireUInt32(at: BufferedPageLayout.readPointerOffset),
                page.loadAcquireUInt32(at: BufferedPageLayout.writePointerOffset))
    }

    // MARK: observation and misbehaviour knobs

    public var notified: [UInt32] { state.withLock { $0.notified } }
    public var unmasked: [UInt32] { state.withLock { $0.unmasked } }
    public var dmOps: [DMOp] { state.withLock { $0.dmOps } }
    public var liveMappings: Int { state.withLock { $0.liveMappings } }
    public var mapCalls: Int { state.withLock { $0.maps } }
    public func clearRecords() {
        state.withLock {
            // Keeping capacity lets allocation-counting tests exclude the simulator's bookkeeping.
            $0.notified.removeAll(keepingCapacity: true)
            $0.unmasked.removeAll(keepingCapacity: true)
            $0.dmOps.removeAll(keepingCapacity: true)
        }
    }
    public func setFailMaps(_ fail: Bool) { state.withLock { $0.failMaps = fail } }
    public func setFailDMOps(_ fail: Bool) { state.withLock { $0.failDMOps = fail } }
    public func punchHole(gfn: UInt64) { state.withLock { _ = $0.holes.insert(gfn) } }
    /// What Xen's dirty-VRAM tracking would see after a guest write to `gfn`.
    public func guestWroteFrame(_ gfn: UInt64) { state.withLock { _ = $0.dirtyFrames.insert(gfn) } }

    /// The guest's own view of its RAM.
    public func guestRead(at address: Int, count: Int) -> [UInt8] {
        precondition(address >= 0 && count >= 0 && address <= ramSize - count)
        return Array(UnsafeRawBufferPointer(start: ramView + address, count: count))
    }

    public func guestWrite(_ bytes: [UInt8], at address: Int) {
        precondition(address >= 0 && address <= ramSize - bytes.count)
        UnsafeMutableRawBufferPointer(start: ramView + address, count: bytes.count).copyBytes(from: bytes)
    }
}
