import CLinux
import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs a guest on Linux KVM: one VM, the in-kernel irqchip (PIC, IOAPIC, LAPIC) and PIT,
/// memory slots mirroring the machine's memory map, and one thread per vCPU that turns port
/// and MMIO exits into `IODispatcher` calls.
public final class KVMAccelerator: Accelerator, InterruptSink, @unchecked Sendable {
    /// Where KVM keeps the real-mode TSS and identity page table on Intel; the machine marks
    /// this range reserved in the e820 map (QEMU uses the same place).
    public static let identityMapBase: UInt64 = 0xFEFF_C000
    public static let identityMapSize: UInt64 = 0x4000

    private let system: KVMSystem
    let vmFD: Int32
    private var vcpus: [KVMVCPU] = []
    private let gate: RunGate
    private let slots = Mutex<[SlotEntry]>([])
    /// The in-kernel PICs, IOAPIC and PIT as created, restored on every system reset so no
    /// interrupt routing or timer programming survives a reboot.
    private var powerOnIRQChips: [kvm_irqchip] = []
    private var powerOnPIT = kvm_pit_state2()
    public var interrupts: any InterruptSink { self }

    struct SlotEntry: Equatable {
        var slot: UInt32
        var guestAddress: UInt64
        var size: UInt64
        var host: UInt64
        var readOnly: Bool
        var logsWrites: Bool
    }

    public init(cpuCount: Int, dispatcher: IODispatcher, events: any AcceleratorEvents) throws(KVMError) {
        system = try KVMSystem()
        for (cap, name) in [(KVM_CAP_IRQCHIP, "irqchip"), (KVM_CAP_USER_MEMORY, "user memory"),
                            (KVM_CAP_SET_TSS_ADDR, "TSS address"), (KVM_CAP_PIT2, "PIT2"),
                            (KVM_CAP_READONLY_MEM, "read-only memory"), (KVM_CAP_IMMEDIATE_EXIT, "immediate exit")] {
            guard system.hasExtension(cap) else { throw KVMError(message: "KVM: the host lacks \(name) support") }
        }
        vmFD = sdm_ioctl_int(system.fd, sdm_KVM_CREATE_VM(), 0)
        guard vmFD >= 0 else { throw KVMError("KVM_CREATE_VM") }
        gate = RunGate(paused: true)
        guard sdm_ioctl_int(vmFD, sdm_KVM_SET_TSS_ADDR(), UInt(Self.identityMapBase + 0x1000)) == 0 else {
            throw KVMError("KVM_SET_TSS_ADDR")
        }
        var identity = Self.identityMapBase
        guard kvmIoctl(vmFD, sdm_KVM_SET_IDENTITY_MAP_ADDR(), &identity) == 0 else { throw KVMError("KVM_SET_IDENTITY_MAP_ADDR") }
        guard sdm_ioctl_int(vmFD, sdm_KVM_CREATE_IRQCHIP(), 0) == 0 else { throw KVMError("KVM_CREATE_IRQCHIP") }
        guard sdm_kvm_set_gsi_routing(vmFD, Self.pcRoutes, Int32(Self.pcRoutes.count)) == 0 else {
            throw KVMError("KVM_SET_GSI_ROUTING")
        }
        var pit = kvm_pit_config()
        pit.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        guard kvmIoctl(vmFD, sdm_KVM_CREATE_PIT2(), &pit) == 0 else { throw KVMError("KVM_CREATE_PIT2") }

        for chip in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC] {
            var state = kvm_irqchip()
            state.chip_id = UInt32(chip)
            guard kvmIoctl(vmFD, sdm_KVM_GET_IRQCHIP(), &state) == 0 else { throw KVMError("KVM_GET_IRQCHIP") }
            powerOnIRQChips.append(state)
        }
        guard kvmIoctl(vmFD, sdm_KVM_GET_PIT2(), &powerOnPIT) == 0 else { throw KVMError("KVM_GET_PIT2") }

        let cpuid = try system.supportedCPUID()
        let mmapSize = try system.vcpuMmapSize()
        for id in 0..<cpuCount {
            vcpus.append(try KVMVCPU(id: id, cpuCount: cpuCount, vmFD: vmFD, mmapSize: mmapSize, cpuid: cpuid,
                                     dispatcher: dispatcher, events: events, gate: gate))
        }
    }

    /// The PC's wiring, as QEMU programs it: ISA IRQs 0-15 reach the PICs (except 2, the
    /// cascade) and the IOAPIC pin of the same number, except that IRQ0 (the PIT) is wired to
    /// IOAPIC pin 2 as the ACPI interrupt-source override says; GSIs 16-23 are IOAPIC-only.
    static let pcRoutes: [kvm_irq_routing_entry] = {
        var routes: [kvm_irq_routing_entry] = []
        func route(_ gsi: UInt32, _ chip: Int32, _ pin: UInt32) {
            var entry = kvm_irq_routing_entry()
            entry.gsi = gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip.irqchip = UInt32(chip)
            entry.u.irqchip.pin = pin
            routes.append(entry)
        }
        for irq: UInt32 in 0..<16 where irq != 2 {
            route(irq, irq < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, irq % 8)
        }
        for line: UInt32 in 0..<24 where line != 2 {
            route(line, KVM_IRQCHIP_IOAPIC, line == 0 ? 2 : line)
        }
        return routes
    }()

    /// GSIs above the IOAPIC's carry MSI routes for irqfds (`KVMNotifications`).
    static let firstMSIGSI: UInt32 = 24
    private let msiRoutes = Mutex<[UInt32: MSIMessage]>([:])

    /// Installs the PC routes plus every MSI route (KVM replaces the whole table each time).
    private func installRoutes(_ msi: [UInt32: MSIMessage]) throws(KVMError) {
        var routes = Self.pcRoutes
        for (gsi, message) in msi.sorted(by: { $0.key < $1.key }) {
            var entry = kvm_irq_routing_entry()
            entry.gsi = gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo = UInt32(truncatingIfNeeded: message.address)
            entry.u.msi.address_hi = UInt32(truncatingIfNeeded: message.address >> 32)
            entry.u.msi.data = message.data
            routes.append(entry)
        }
        guard sdm_kvm_set_gsi_routing(vmFD, routes, Int32(routes.count)) == 0 else { throw KVMError("KVM_SET_GSI_ROUTING") }
    }

    /// Points `gsi` (from `firstMSIGSI`) at `message`.
    func routeMSI(gsi: UInt32, to message: MSIMessage) throws(KVMError) {
        let failure: KVMError? = msiRoutes.withLock { routes in
            routes[gsi] = message
            do throws(KVMError) { try installRoutes(routes) } catch {
                routes[gsi] = nil
                return error
            }
            return nil
        }
        if let failure { throw failure }
    }

    deinit {
        stop()
        close(vmFD)
    }

    // MARK: memory

    /// Makes KVM's memory slots match `regions`: unchanged regions keep their slots, changed
    /// ones are deleted and re-created. Read-only regions (ROM, PAM read-only) exit on writes.
    /// KVM logs the guest's writes to the regions `logsWrites` picks (video RAM), for
    /// `collectWrites`.
    public func setMemoryRegions(_ regions: [PhysicalMemory.Region],
                                 logsWrites: (PhysicalMemory.Region) -> Bool = { _ in false }) throws(KVMError) {
        let wanted = regions.map { r in
            SlotEntry(slot: 0, guestAddress: r.guestAddress, size: r.size,
                      host: UInt64(UInt(bitPattern: r.backing.baseAddress)) + UInt64(r.backingOffset),
                      readOnly: !r.writable, logsWrites: logsWrites(r))
        }
        let failure: KVMError? = slots.withLock { current in
            func same(_ a: SlotEntry, _ b: SlotEntry) -> Bool {
                a.guestAddress == b.guestAddress && a.size == b.size && a.host == b.host && a.readOnly == b.readOnly
                    && a.logsWrites == b.logsWrites
            }
            for old in current where !wanted.contains(where: { same($0, old) }) {
                var region = kvm_userspace_memory_region(slot: old.slot, flags: 0, guest_phys_addr: old.guestAddress,
                                                         memory_size: 0, userspace_addr: old.host)
                guard kvmIoctl(vmFD, sdm_KVM_SET_USER_MEMORY_REGION(), &region) == 0 else {
                    return KVMError("delete memory slot at \(hex(old.guestAddress))")
                }
            }
            current.removeAll { old in !wanted.contains(where: { same($0, old) }) }
            for var new in wanted where !current.contains(where: { same($0, new) }) {
                let used = Set(current.map(\.slot))
                new.slot = (0...UInt32.max).first { !used.contains($0) }!
                let flags = (new.readOnly ? UInt32(KVM_MEM_READONLY) : 0) | (new.logsWrites ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0)
                var region = kvm_userspace_memory_region(slot: new.slot, flags: flags,
                                                         guest_phys_addr: new.guestAddress, memory_size: new.size,
                                                         userspace_addr: new.host)
                guard kvmIoctl(vmFD, sdm_KVM_SET_USER_MEMORY_REGION(), &region) == 0 else {
                    return KVMError("memory slot at \(hex(new.guestAddress))+\(hex(new.size))")
                }
                current.append(new)
            }
            return nil
        }
        if let failure { throw failure }
    }

    /// Takes KVM's log of the pages the guest wrote in the write-logged slot at `guestAddress`
    /// since the last call (one bit per 4 KiB page, 64 per word; KVM clears its log) into
    /// `bitmap`, which must hold a bit for every page of the slot. False when there is no such
    /// slot or KVM refused: the caller must then treat every page as written.
    public func collectWrites(guestAddress: UInt64, into bitmap: inout [UInt64]) -> Bool {
        slots.withLock { current in
            guard let entry = current.first(where: { $0.guestAddress == guestAddress && $0.logsWrites }),
                  UInt64(bitmap.count) * 64 >= (entry.size + 4095) / 4096 else { return false }
            return bitmap.withUnsafeMutableBufferPointer { words in
                guard let base = words.baseAddress else { return false }
                return sdm_kvm_get_dirty_log(vmFD, entry.slot, base) == 0
            }
        }
    }

    // MARK: interrupts

    public func setGSI(_ gsi: UInt32, level: Bool) {
        var irq = kvm_irq_level()
        irq.irq = gsi
        irq.level = level ? 1 : 0
        if kvmIoctl(vmFD, sdm_KVM_IRQ_LINE(), &irq) != 0 {
            GuestErrorLog.shared.report("kvm", "KVM_IRQ_LINE \(gsi): \(String(cString: strerror(errno)))")
        }
    }

    public func signalMSI(_ message: MSIMessage) {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: message.address)
        msi.address_hi = UInt32(truncatingIfNeeded: message.address >> 32)
        msi.data = message.data
        if kvmIoctl(vmFD, sdm_KVM_SIGNAL_MSI(), &msi) < 0 {
            GuestErrorLog.shared.report("kvm", "KVM_SIGNAL_MSI: \(String(cString: strerror(errno)))")
        }
    }

    // MARK: running

    public func start(paused: Bool) throws {
        _ = sdm_install_noop_handler(KVMVCPU.kickSignal)
        for vcpu in vcpus { try vcpu.startThread() }
        if !paused { gate.resume() }
    }

    public func pause() {
        gate.pause(count: vcpus.count) { for v in vcpus { v.kick() } }
    }

    public func resume() { gate.resume() }

    /// Each vCPU thread's kernel id (0 until it has started).
    public var vcpuThreadIDs: [Int32] { vcpus.map { $0.threadID.load(ordering: .acquiring) } }

    /// `info registers` for one vCPU. Only while paused: KVM_GET_REGS on a vCPU inside
    /// KVM_RUN waits for its next exit.
    public func registerDump(cpu: Int) -> String? {
        vcpus.indices.contains(cpu) ? vcpus[cpu].registerDump() : nil
    }

    public func requestPause() {
        gate.requestPause { for v in vcpus { v.kick() } }
    }

    /// KVM leaves power-off and reboot to the machine; the guest just stops running meanwhile.
    public func forwardPowerRequest(reboot: Bool) -> Bool {
        requestPause()
        return false
    }

    public func reset() throws {
        for var chip in powerOnIRQChips {
            guard kvmIoctl(vmFD, sdm_KVM_SET_IRQCHIP(), &chip) == 0 else { throw KVMError("KVM_SET_IRQCHIP") }
        }
        var pit = powerOnPIT
        guard kvmIoctl(vmFD, sdm_KVM_SET_PIT2(), &pit) == 0 else { throw KVMError("KVM_SET_PIT2") }
        for vcpu in vcpus { try vcpu.reset() }
    }

    public func stop() {
        gate.stop { for v in vcpus { v.kick() } }
        for v in vcpus { v.join() }
    }
}
