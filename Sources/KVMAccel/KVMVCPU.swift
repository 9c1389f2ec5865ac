import CLinux
import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One virtual CPU: its KVM file descriptor, the shared `kvm_run` page and the thread that
/// enters the guest and dispatches exits.
final class KVMVCPU: @unchecked Sendable {
    static let kickSignal = SIGUSR1

    let id: Int
    private let fd: Int32
    private let run: UnsafeMutablePointer<kvm_run>
    private let mmapSize: Int
    private let dispatcher: IODispatcher
    private let events: any AcceleratorEvents
    private let gate: RunGate
    private var thread: pthread_t?
    /// The vCPU thread's kernel id once it runs (QMP's query-cpus-fast reports it).
    let threadID = Atomic<Int32>(0)
    /// The power-on state KVM gave the vCPU at creation, reapplied on every reset.
    private var powerOnRegs = kvm_regs()
    private var powerOnSregs = kvm_sregs()
    private var powerOnLAPIC = kvm_lapic_state()

    init(id: Int, cpuCount: Int, vmFD: Int32, mmapSize: Int, cpuid: [kvm_cpuid_entry2],
         dispatcher: IODispatcher, events: any AcceleratorEvents, gate: RunGate) throws(KVMError) {
        self.id = id
        self.mmapSize = mmapSize
        self.dispatcher = dispatcher
        self.events = events
        self.gate = gate
        fd = sdm_ioctl_int(vmFD, sdm_KVM_CREATE_VCPU(), UInt(id))
        guard fd >= 0 else { throw KVMError("KVM_CREATE_VCPU \(id)") }
        let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw KVMError("mmap kvm_run") }
        run = p.bindMemory(to: kvm_run.self, capacity: 1)
        var entries = Self.cpuid(cpuid, apicID: UInt32(id), cpuCount: UInt32(cpuCount))
        guard sdm_kvm_set_cpuid(fd, &entries, Int32(entries.count)) == 0 else { throw KVMError("KVM_SET_CPUID2") }
        guard kvmIoctl(fd, sdm_KVM_GET_REGS(), &powerOnRegs) == 0,
              kvmIoctl(fd, sdm_KVM_GET_SREGS(), &powerOnSregs) == 0,
              kvmIoctl(fd, sdm_KVM_GET_LAPIC(), &powerOnLAPIC) == 0 else { throw KVMError("reading vCPU \(id) state") }
    }

    deinit {
        munmap(run, mmapSize)
        close(fd)
    }

    /// KVM's supported CPUID, personalised: this vCPU's APIC ID, the package's logical CPU
    /// count, and the hypervisor bit.
    static func cpuid(_ supported: [kvm_cpuid_entry2], apicID: UInt32, cpuCount: UInt32) -> [kvm_cpuid_entry2] {
        supported.map { entry in
            var e = entry
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x0000_FFFF) | (min(cpuCount, 255) << 16) | (apicID << 24)
                e.ecx |= 1 << 31
                if cpuCount > 1 { e.edx |= 1 << 28 }
            case 0xB, 0x1F:
                e.edx = apicID
            default:
                break
            }
            return e
        }
    }

    // MARK: thread

    /// gettid(2), which does not import into Swift (neither the wrapper nor the variadic
    /// syscall): /proc/thread-self links to "PID/task/TID". Once per vCPU thread.
    static func currentThreadID() -> Int32 {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/thread-self", &buffer, buffer.count - 1)
        guard n > 0 else { return 0 }
        let text = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: "/").last.flatMap { Int32($0) } ?? 0
    }

    func startThread() throws(KVMError) {
        var tid = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let vcpu = Unmanaged<KVMVCPU>.fromOpaque(arg!).takeRetainedValue()
            vcpu.runLoop()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<KVMVCPU>.fromOpaque(context).release()
            throw KVMError("pthread_create", errno: rc)
        }
        thread = tid
    }

    /// Makes the vCPU leave the guest promptly: KVM checks `immediate_exit` on entry and the
    /// signal interrupts a vCPU already inside.
    func kick() {
        run.pointee.immediate_exit = 1
        if let thread { pthread_kill(thread, Self.kickSignal) }
    }

    func join() {
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    private func runLoop() {
        threadID.store(Self.currentThreadID(), ordering: .releasing)
        let signals = [Self.kickSignal]
        _ = sdm_sigmask(SIG_UNBLOCK, signals, 1)
        var kicked = true
        while gate.checkpoint(kicked: kicked, clearKick: { run.pointee.immediate_exit = 0 }) {
            kicked = false
            if sdm_ioctl_int(fd, sdm_KVM_RUN(), 0) < 0 {
                let error = errno
                if error == EINTR || error == EAGAIN {
                    kicked = true
                    continue
                }
                fail("KVM_RUN failed: \(String(cString: strerror(error)))")
                continue
            }
            handleExit()
        }
    }

    private func handleExit() {
        switch Int32(run.pointee.exit_reason) {
        case KVM_EXIT_IO: handlePortIO()
        case KVM_EXIT_MMIO: handleMMIO()
        case KVM_EXIT_INTR: break
        case KVM_EXIT_SHUTDOWN:
            // A triple fault: the CPU resets, and so does a PC.
            gate.pauseSelf()
            events.resetRequested(cause: .guestReset)
        case KVM_EXIT_SYSTEM_EVENT:
            gate.pauseSelf()
            switch Int32(sdm_run_system_event_type(run)) {
            case KVM_SYSTEM_EVENT_RESET: events.resetRequested(cause: .guestReset)
            default: events.shutdownRequested(cause: .guestShutdown)
            }
        case KVM_EXIT_FAIL_ENTRY:
            fail("KVM entry failed, hardware error \(hex(sdm_run_fail_entry_reason(run)))")
        case KVM_EXIT_INTERNAL_ERROR:
            fail("KVM internal error, suberror \(sdm_run_internal_suberror(run))")
        case let reason:
            fail("unexpected KVM exit reason \(reason)")
        }
    }

    private func handlePortIO() {
        var io = sdm_io_exit()
        sdm_run_io(run, &io)
        let size = Int(io.size)
        let total = Int(io.count) * size
        // KVM is trusted, but a bad exit must never make us read outside the shared page.
        guard size == 1 || size == 2 || size == 4, io.count >= 1,
              io.data_offset >= UInt64(MemoryLayout<kvm_run>.size),
              io.data_offset <= UInt64(mmapSize - total) else {
            fail("malformed port I/O exit")
            return
        }
        let data = UnsafeMutableRawPointer(run).advanced(by: Int(io.data_offset))
        for i in 0..<Int(io.count) {
            let p = data.advanced(by: i * size)
            if io.direction == UInt8(KVM_EXIT_IO_OUT) {
                let value: UInt32
                switch size {
                case 1: value = UInt32(p.load(as: UInt8.self))
                case 2: value = UInt32(p.loadUnaligned(as: UInt16.self))
                default: value = p.loadUnaligned(as: UInt32.self)
                }
                dispatcher.portWrite(io.port, size: size, value: value)
            } else {
                let value = dispatcher.portRead(io.port, size: size)
                switch size {
                case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
                case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
                default: p.storeBytes(of: value, as: UInt32.self)
                }
            }
        }
    }

    private func handleMMIO() {
        var mmio = sdm_mmio_exit()
        sdm_run_mmio(run, &mmio)
        let size = Int(mmio.len)
        guard (1...8).contains(size), let data = mmio.data else {
            fail("malformed MMIO exit")
            return
        }
        if mmio.is_write != 0 {
            var value: UInt64 = 0
            for i in 0..<size { value |= UInt64(data[i]) << (8 * UInt64(i)) }
            dispatcher.mmioWrite(mmio.phys_addr, size: size, value: value)
        } else {
            let value = dispatcher.mmioRead(mmio.phys_addr, size: size)
            for i in 0..<size { data[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        }
    }

    private func fail(_ reason: String) {
        gate.pauseSelf()
        events.fatalError("vCPU \(id): \(reason)\n\(registerDump())")
    }

    func registerDump() -> String {
        var regs = kvm_regs()
        var sregs = kvm_sregs()
        guard kvmIoctl(fd, sdm_KVM_GET_REGS(), &regs) == 0, kvmIoctl(fd, sdm_KVM_GET_SREGS(), &sregs) == 0 else {
            return "(registers unavailable)"
        }
        func h(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, 16 - s.count)) + s
        }
        return """
            RAX=\(h(regs.rax)) RBX=\(h(regs.rbx)) RCX=\(h(regs.rcx)) RDX=\(h(regs.rdx))
            RSI=\(h(regs.rsi)) RDI=\(h(regs.rdi)) RBP=\(h(regs.rbp)) RSP=\(h(regs.rsp))
            RIP=\(h(regs.rip)) RFL=\(h(regs.rflags)) CS=\(hex(sregs.cs.selector)) base \(hex(sregs.cs.base))
            CR0=\(h(sregs.cr0)) CR3=\(h(sregs.cr3)) CR4=\(h(sregs.cr4)) EFER=\(h(sregs.efer))
            """
    }

    /// The power-on state: registers, segments, FPU and local APIC as at creation; only the
    /// bootstrap processor is runnable, the others wait for INIT/SIPI.
    func reset() throws(KVMError) {
        var regs = powerOnRegs, sregs = powerOnSregs, lapic = powerOnLAPIC
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        var mp = kvm_mp_state(mp_state: UInt32(id == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_UNINITIALIZED))
        guard kvmIoctl(fd, sdm_KVM_SET_SREGS(), &sregs) == 0, kvmIoctl(fd, sdm_KVM_SET_REGS(), &regs) == 0,
              kvmIoctl(fd, sdm_KVM_SET_FPU(), &fpu) == 0, kvmIoctl(fd, sdm_KVM_SET_LAPIC(), &lapic) == 0,
              kvmIoctl(fd, sdm_KVM_SET_MP_STATE(), &mp) == 0 else { throw KVMError("resetting vCPU \(id)") }
    }

    /// For `info registers`.
    func registers() -> String { registerDump() }
}
