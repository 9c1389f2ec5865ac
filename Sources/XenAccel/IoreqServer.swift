import CXen
import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The device model's half of Xen's ioreq protocol (xen-contract.md §A.5.2-A.5.3): it takes
/// requests from the per-vCPU slots of the shared ioreq page and from the buffered ring, checks
/// them, hands them to the devices through `IODispatcher` (ports, MMIO) or the PCI-config hook,
/// and posts the responses.
///
/// Everything in the shared pages is hostile. A slot is copied out exactly once and only the
/// copy is decoded and validated; the only later accesses to the page are the state byte (to
/// advance it, never backwards) and the `data` field (to store the result). A request that
/// fails validation is logged (rate-limited) and answered with all ones for reads, so the vCPU
/// is released and the device model keeps running. A slot whose state moves while we serve it
/// is a fatal error for that domain (QEMU destroys it): reported through
/// `AcceleratorEvents.fatalError`, after which this server serves nothing more.
///
/// Threading: `run` loops on its own thread (`start`), like a KVM vCPU thread, because the
/// dispatcher takes the `DeviceLock` per access and `EventLoop` readers already hold it. All
/// requests are served on that one thread, as QEMU serves them from its main loop. The
/// synchronous entry points (`handlePendingEvents`, `handlePort`, `drainBufferedRing`) are for
/// tests and for callers that own the thread; they must not run concurrently with each other.
///
/// The request path allocates nothing: the slot is copied into a stack tuple, the dispatcher,
/// memory and hooks are called through non-escaping closures, and strings are built only when
/// an error is actually logged.
public final class IoreqServer: @unchecked Sendable {
    /// `(function, offset, size, isWrite, value) -> value read` for PCI_CONFIG requests. Called
    /// on the ioreq thread with the `DeviceLock` held; the machine routes it to its PCI bus.
    public typealias PCIConfigHandler = (_ address: PCIAddress, _ offset: UInt32, _ size: Int,
                                         _ isWrite: Bool, _ value: UInt32) -> UInt32

    private let hypervisor: any XenHypervisor
    private let dispatcher: IODispatcher
    private let memory: any GuestMemory
    private let events: any AcceleratorEvents
    private let errors: GuestErrorLog
    private let pciConfig: PCIConfigHandler
    private let invalidateMapCache: () -> Void
    // The seam's pages and ports, read once: the hot path touches no protocol getters.
    private let ioreqPage: SharedPage
    private let bufferedPage: SharedPage?
    private let vcpuPorts: [UInt32]
    private let bufferedPort: UInt32?

    private let failed = Atomic<Bool>(false)
    /// A shutdown or reboot a device asked for, acted on before the next response is posted
    /// (so the toolstack sees it before the guest resumes): 0 = none, else reason + 1.
    private let pendingShutdown = Atomic<UInt32>(0)
    private let stopping = Atomic<Bool>(false)
    /// Held while the thread serves a batch of events, so `whileIdle` callers (the machine
    /// pausing or ending the domain from its main loop) never act in the middle of a request.
    private let serving = Mutex<Void>(())
    /// `pthread_self()` of the serving thread, 0 before it runs.
    private let servingThread = Atomic<UInt>(0)
    private var thread: pthread_t?
    private var wakeFD: Int32 = -1

    /// Statistics for tests and `info`: requests served, refused, buffered entries handled.
    public struct Counters: Sendable, Equatable {
        public var served = 0
        public var refused = 0
        public var buffered = 0
        public var skippedSlots = 0
        public var ringResyncs = 0
    }
    private var countersStorage = Counters()
    private let countersLock = Mutex<Void>(())
    public var counters: Counters { countersLock.withLock { _ in countersStorage } }

    public init(hypervisor: any XenHypervisor, dispatcher: IODispatcher, memory: any GuestMemory,
                events: any AcceleratorEvents, errors: GuestErrorLog = .shared,
                pciConfig: @escaping PCIConfigHandler = { _, _, size, _, _ in UInt32(truncatingIfNeeded: mask(size)) },
                invalidateMapCache: @escaping () -> Void = {}) throws(XenError) {
        self.hypervisor = hypervisor
        self.dispatcher = dispatcher
        self.memory = memory
        self.events = events
        self.errors = errors
        self.pciConfig = pciConfig
        self.invalidateMapCache = invalidateMapCache
        ioreqPage = hypervisor.ioreqPage
        bufferedPage = hypervisor.bufferedPage
        vcpuPorts = hypervisor.vcpuPorts
        bufferedPort = hypervisor.bufferedPort
        guard !vcpuPorts.isEmpty, vcpuPorts.count * Ioreq.slotSize <= ioreqPage.length else {
            throw .invalid("ioreq page of \(ioreqPage.length) bytes cannot hold \(vcpuPorts.count) vCPU slots")
        }
        if let bufferedPage, bufferedPage.length < BufferedPageLayout.size {
            throw .invalid("buffered ioreq page of \(bufferedPage.length) bytes is too small")
        }
    }

    deinit { stop() }

    /// True once a fatal protocol violation stopped this server.
    public var hasFailed: Bool { failed.load(ordering: .acquiring) }

    /// Asks Xen to end the domain (guest power-off or reboot). Thread-safe; when called while a
    /// request is being served (a device handling a port write) it takes effect before that
    /// request's response is posted, as QEMU does, otherwise at the next event.
    public func requestShutdown(_ reason: XenShutdownReason) {
        pendingShutdown.store(reason.rawValue + 1, ordering: .releasing)
    }

    /// Ends the domain now: from inside a request (a device on the ioreq thread) the dm-op goes
    /// out before that request's response; from any other thread it goes out at once, between
    /// two batches of requests.
    public func shutdownDomain(_ reason: XenShutdownReason) {
        requestShutdown(reason)
        guard servingThread.load(ordering: .acquiring) != UInt(pthread_self()) else { return }
        whileIdle { actOnPendingShutdown() }
    }

    /// Runs `body` while the serving thread is between batches of requests.
    public func whileIdle<R>(_ body: () -> R) -> R {
        serving.withLock { _ in body() }
    }

    // MARK: events

    /// Serves up to `limit` pending ports (each one a vCPU's request or the buffered ring).
    public func handlePendingEvents(limit: Int = 256) {
        var handled = 0
        while handled < limit, !hasFailed, let port = hypervisor.pendingPort() {
            handlePort(port)
            handled += 1
        }
        actOnPendingShutdown()
    }

    /// Serves one pending port.
    public func handlePort(_ port: UInt32) {
        guard !hasFailed else { return }
        if let bufferedPort, port == bufferedPort {
            drainBufferedRing()
            hypervisor.unmask(port)
            return
        }
        var vcpu = -1
        for i in vcpuPorts.indices where vcpuPorts[i] == port {
            vcpu = i
            break
        }
        guard vcpu >= 0 else {
            errors.report("xen-ioreq", "event on port \(port), which belongs to no vCPU")
            return
        }
        hypervisor.unmask(port)
        serveSlot(vcpu: vcpu, port: port)
    }

    private func serveSlot(vcpu: Int, port: UInt32) {
        let slot = vcpu * Ioreq.slotSize
        let stateOffset = slot + Ioreq.stateOffset
        let flags = ioreqPage.loadAcquireByte(at: stateOffset)
        guard flags & 0x0F == Ioreq.State.ready.rawValue else {
            // Spurious or hostile: never touch a slot that is not READY (and never move a
            // state backwards).
            bump(\.skippedSlots)
            errors.report("xen-ioreq", "vCPU \(vcpu) notified with its slot in state \(flags & 0x0F), not READY; skipped")
            return
        }
        cxen_rmb()
        let inProcess = (flags & 0xF0) | Ioreq.State.inProcess.rawValue
        guard ioreqPage.compareExchangeByte(at: stateOffset, expected: flags, desired: inProcess) else {
            bump(\.skippedSlots)
            errors.report("xen-ioreq", "vCPU \(vcpu) slot changed while being claimed; skipped")
            return
        }
        // The one and only read of the request.
        var raw: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &raw) { ioreqPage.copyOnce(from: slot, count: Ioreq.slotSize, into: $0.baseAddress!) }
        var request = Ioreq(decoding: raw)

        drainBufferedRing()
        request.data = execute(request, vcpu: vcpu)
        ioreqPage.storeUInt64(request.data, at: slot + Ioreq.dataOffset)

        let now = ioreqPage.loadAcquireByte(at: stateOffset)
        guard now & 0x0F == Ioreq.State.inProcess.rawValue else {
            fail("vCPU \(vcpu)'s ioreq slot moved to state \(now & 0x0F) while in process: the domain broke the ioreq protocol")
            return
        }
        cxen_wmb()
        actOnPendingShutdown()
        let response = (now & 0xF0) | Ioreq.State.responseReady.rawValue
        guard ioreqPage.compareExchangeByte(at: stateOffset, expected: now, desired: response) else {
            fail("vCPU \(vcpu)'s ioreq slot changed while its response was posted: the domain broke the ioreq protocol")
            return
        }
        hypervisor.notify(port)
    }

    private func fail(_ message: String) {
        guard !failed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        errors.report("xen-ioreq", message)
        events.fatalError(message)
    }

    private func actOnPendingShutdown() {
        let pending = pendingShutdown.exchange(0, ordering: .acquiringAndReleasing)
        guard pending != 0, let reason = XenShutdownReason(rawValue: pending - 1) else { return }
        do throws(XenError) {
            try hypervisor.shutdown(reason)
        } catch {
            events.fatalError("cannot ask Xen to \(reason) the domain: \(error)")
        }
    }

    // MARK: executing one request

    /// Validates and performs a request copied out of a slot; returns the `data` to post back.
    private func execute(_ request: Ioreq, vcpu: Int) -> UInt64 {
        if let rejection = IoreqValidation.validate(request) {
            bump(\.refused)
            errors.report("xen-ioreq", "vCPU \(vcpu): \(rejection); refused")
            return request.isRead ? UInt64.max : request.data
        }
        bump(\.served)
        let size = Int(request.size)
        // Writes carry only `size` bytes of data; the rest of the field is the guest's noise.
        let value = request.isRead || request.dataIsPointer ? request.data : request.data & mask(size)
        switch Ioreq.Kind(rawValue: request.type) {
        case .pio:
            return portIO(request, size: size, value: value)
        case .copy:
            return mmioIO(request, size: size, value: value)
        case .pciConfig:
            let function = PCIAddress(sbdf: UInt32(truncatingIfNeeded: request.addr >> 32))
            let offset = UInt32(truncatingIfNeeded: request.addr)
            let result = dispatcher.lock.withLock {
                pciConfig(function, offset, size, !request.isRead, UInt32(truncatingIfNeeded: value))
            }
            return request.isRead ? UInt64(result) & mask(size) : value
        case .invalidate:
            invalidateMapCache()
            return value
        case .timeOffset, .none:
            // Xen tells us the guest moved its RTC; QEMU ignores it and so do we.
            return value
        }
    }

    /// The address of item `i` of a `rep` access: `base ± i*size`, wrapping like QEMU's
    /// unsigned arithmetic (the memory side still goes through `GuestMemory`'s checks).
    @inline(__always)
    private func itemAddress(_ base: UInt64, _ i: Int, size: Int, decrementing: Bool) -> UInt64 {
        let step = UInt64(i) &* UInt64(size)
        return decrementing ? base &- step : base &+ step
    }

    private func portIO(_ r: Ioreq, size: Int, value: UInt64) -> UInt64 {
        let port = UInt16(truncatingIfNeeded: r.addr)
        if !r.dataIsPointer {
            var data = value
            // Int ranges, not UInt32 ones: those iterate through an unspecialised generic
            // iterator (a heap allocation per step) in debug builds.
            for _ in 0..<Int(r.count) {
                if r.isRead {
                    data = UInt64(dispatcher.portRead(port, size: size))
                } else {
                    dispatcher.portWrite(port, size: size, value: UInt32(truncatingIfNeeded: value))
                }
            }
            return data
        }
        // rep ins/outs: items move between the port and guest memory at data ± i*size.
        for i in 0..<Int(r.count) {
            let address = itemAddress(r.data, i, size: size, decrementing: r.decrementing)
            if r.isRead {
                let item = UInt64(dispatcher.portRead(port, size: size))
                guard storeGuest(item, at: address, size: size) else { break }
            } else {
                guard let item = loadGuest(at: address, size: size) else { break }
                dispatcher.portWrite(port, size: size, value: UInt32(truncatingIfNeeded: item))
            }
        }
        return r.data
    }

    private func mmioIO(_ r: Ioreq, size: Int, value: UInt64) -> UInt64 {
        if !r.dataIsPointer {
            var data = value
            for i in 0..<Int(r.count) {
                let address = itemAddress(r.addr, i, size: size, decrementing: r.decrementing)
                if r.isRead {
                    data = dispatcher.mmioRead(address, size: size)
                } else {
                    dispatcher.mmioWrite(address, size: size, value: value)
                }
            }
            return data
        }
        // Memory <-> MMIO moves (rep movs): both sides step in the same direction.
        for i in 0..<Int(r.count) {
            let device = itemAddress(r.addr, i, size: size, decrementing: r.decrementing)
            let guest = itemAddress(r.data, i, size: size, decrementing: r.decrementing)
            if r.isRead {
                let item = dispatcher.mmioRead(device, size: size)
                guard storeGuest(item, at: guest, size: size) else { break }
            } else {
                guard let item = loadGuest(at: guest, size: size) else { break }
                dispatcher.mmioWrite(device, size: size, value: item)
            }
        }
        return r.data
    }

    private func loadGuest(at address: UInt64, size: Int) -> UInt64? {
        do throws(GuestMemoryError) {
            return try memory.withBytes(at: address, length: size, forWriting: false) { bytes in
                var v: UInt64 = 0
                for i in 0..<size { v |= UInt64(bytes[i]) << (8 * UInt64(i)) }
                return v
            }
        } catch {
            bump(\.refused)
            errors.report("xen-ioreq", "data pointer: \(error); rest of the request refused")
            return nil
        }
    }

    private func storeGuest(_ value: UInt64, at address: UInt64, size: Int) -> Bool {
        do throws(GuestMemoryError) {
            try memory.withBytes(at: address, length: size, forWriting: true) { bytes in
                for i in 0..<size { bytes[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
            }
            return true
        } catch {
            bump(\.refused)
            errors.report("xen-ioreq", "data pointer: \(error); rest of the request refused")
            return false
        }
    }

    @inline(__always)
    private func bump(_ counter: WritableKeyPath<Counters, Int>, by n: Int = 1) {
        countersLock.withLock { _ in countersStorage[keyPath: counter] += n }
    }

    // MARK: the buffered ring

    /// Serves what Xen queued in the buffered ring (ATOMIC mode): at most one ring's worth per
    /// call, so a hostile writer cannot keep us here.
    public func drainBufferedRing() {
        guard let page = bufferedPage else { return }
        var budget = Int(BufferedPageLayout.slotCount)
        while budget > 0 {
            guard let (read, pending) = ringPointers(page) else { return }
            if pending == 0 { return }
            if pending > BufferedPageLayout.slotCount {
                resyncRing(page, skipping: pending, reason: "write pointer \(pending) entries ahead of the read pointer")
                return
            }
            var word: UInt64 = 0
            withUnsafeMutableBytes(of: &word) {
                page.copyOnce(from: slotOffset(read), count: 8, into: $0.baseAddress!)
            }
            let entry = BufferedIoreq(decoding: UInt64(littleEndian: word))
            let quadWord = entry.sizeLog2 == 3
            var data = UInt64(entry.data)
            if quadWord {
                guard pending >= 2 else {
                    resyncRing(page, skipping: pending, reason: "8-byte entry without its second half")
                    return
                }
                var high: UInt64 = 0
                withUnsafeMutableBytes(of: &high) {
                    page.copyOnce(from: slotOffset(read &+ 1), count: 8, into: $0.baseAddress!)
                }
                data |= UInt64(BufferedIoreq(decoding: UInt64(littleEndian: high)).data) << 32
            }
            serveBuffered(entry, data: data)
            cxen_mb()
            let consumed: UInt32 = quadWord ? 2 : 1
            page.fetchAddUInt32(consumed, at: BufferedPageLayout.readPointerOffset)
            budget -= Int(consumed)
        }
    }

    @inline(__always)
    private func slotOffset(_ pointer: UInt32) -> Int {
        BufferedPageLayout.slotsOffset + Int(pointer % BufferedPageLayout.slotCount) * 8
    }

    /// A consistent (read pointer, entries pending) pair. Xen rebases both pointers together
    /// with a 64-bit cmpxchg, so the write pointer is read before and after the read pointer;
    /// if it moved, try again (a few times: a writer cannot keep it moving for long).
    private func ringPointers(_ page: SharedPage) -> (UInt32, UInt32)? {
        for _ in 0..<4 {
            let write = page.loadAcquireUInt32(at: BufferedPageLayout.writePointerOffset)
            cxen_rmb()
            let read = page.loadAcquireUInt32(at: BufferedPageLayout.readPointerOffset)
            cxen_rmb()
            if page.loadAcquireUInt32(at: BufferedPageLayout.writePointerOffset) == write {
                return (read, write &- read)
            }
        }
        return nil
    }

    /// Drops a hostile or torn ring's contents by moving the read pointer up to the write
    /// pointer (an atomic add, so it composes with Xen's rebasing).
    private func resyncRing(_ page: SharedPage, skipping pending: UInt32, reason: @autoclosure () -> String) {
        bump(\.ringResyncs)
        errors.report("xen-ioreq", "buffered ring: \(reason()); \(pending) entries dropped")
        page.fetchAddUInt32(pending, at: BufferedPageLayout.readPointerOffset)
    }

    /// Xen only queues single direct writes (VGA memory, and the TIMEOFFSET broadcast); anything
    /// else in the ring is refused. Accepted entries take the same validated path as slots.
    private func serveBuffered(_ entry: BufferedIoreq, data: UInt64) {
        bump(\.buffered)
        guard !entry.isRead else {
            bump(\.refused)
            errors.report("xen-ioreq", "buffered ring: read request (type \(entry.type)) refused")
            return
        }
        switch Ioreq.Kind(rawValue: entry.type) {
        case .pio, .copy, .timeOffset:
            let request = Ioreq(addr: UInt64(entry.addr), data: data, count: 1, size: 1 << UInt32(entry.sizeLog2),
                                type: entry.type)
            _ = execute(request, vcpu: -1)
        default:
            bump(\.refused)
            errors.report("xen-ioreq", "buffered ring: type \(entry.type) refused")
        }
    }

    // MARK: the ioreq thread

    /// Serves events on a thread of its own until `stop`. Needs `hypervisor.eventChannelFD`.
    public func start() throws(XenError) {
        guard thread == nil else { return }
        guard hypervisor.eventChannelFD != nil else { throw .invalid("the hypervisor has no event-channel descriptor to poll") }
        wakeFD = cxen_eventfd()
        guard wakeFD >= 0 else { throw .callFailed(call: "eventfd", errno: errno) }
        stopping.store(false, ordering: .releasing)
        var tid = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let server = Unmanaged<IoreqServer>.fromOpaque(arg!).takeRetainedValue()
            server.run()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<IoreqServer>.fromOpaque(context).release()
            throw .callFailed(call: "pthread_create", errno: rc)
        }
        thread = tid
    }

    /// Ends the ioreq thread and waits for it (not from the ioreq thread itself).
    public func stop() {
        guard let thread else { return }
        stopping.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
        pthread_join(thread, nil)
        self.thread = nil
        close(wakeFD)
        wakeFD = -1
    }

    private func run() {
        servingThread.store(UInt(pthread_self()), ordering: .releasing)
        guard let fd = hypervisor.eventChannelFD else { return }
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        while !stopping.load(ordering: .acquiring) && !hasFailed {
            let n = poll(&fds, 2, -1)
            if n < 0 {
                if errno == EINTR { continue }
                events.fatalError("xen-ioreq: poll: \(String(cString: strerror(errno)))")
                return
            }
            if fds[0].revents != 0 { serving.withLock { _ in handlePendingEvents() } }
        }
    }
}
