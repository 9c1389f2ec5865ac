import Backends
import Config
import DMCore
import Devices
import KVMAccel
import XenAccel
import Display
import Monitor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The i440FX/PIIX3 PC, assembled from the command line: chipset, legacy ISA devices,
/// firmware and fw_cfg, then whatever `-device` adds. It runs on KVM (`pc`), or as the device
/// model of a Xen HVM domain (`xenfv`, `pc,accel=xen`), where Xen runs the vCPUs, keeps the
/// PICs, PIT, RTC and PM timer, and forwards the rest to us as ioreqs. `none` is the empty
/// machine libxl's capability probe starts. The machine owns the run state and turns guest and
/// host requests (reset, power-off, debug exit, signals) into QEMU's behaviour and exit
/// statuses.
public final class PCMachine: @unchecked Sendable {
    public enum RunState: String, Sendable {
        case prelaunch, running, paused, shutdown
        /// ACPI S3: the guest's CPUs are stopped, its RAM and devices kept, until `system_wakeup`.
        case suspended
        /// `-incoming`: waiting for the device state.
        case inmigrate
        case internalError = "internal-error"
    }

    public let config: VMConfig
    public let platform: MachinePlatform
    public let lock: DeviceLock
    public let loop: EventLoop
    public let ports: Bus
    public let mmio: Bus
    public let memory: any GuestMemory
    public let pci: PCIBus
    let accelerator: any Accelerator
    /// Where devices get RAM the guest maps directly (video RAM): KVM slots or Xen frames.
    let deviceRAM: any DeviceRAMProvider
    /// The Xen side (accelerator, xenstore, domain) when the machine serves a Xen domain.
    let xen: XenDomainLink?
    /// Virtio's doorbells and MSIs: ioeventfd/irqfd on KVM, plain exits and the interrupt sink
    /// otherwise (Xen). Devices see only this seam.
    let notifications: any NotificationProvider
    let events: MachineEvents
    public internal(set) var runState: RunState
    /// Devices in the order their state is saved and they are reset.
    var devices: [AnyObject] = []
    var backends: [any CharBackend] = []
    /// The display device's picture and its readers; nil without a display device.
    var display: MachineDisplay?
    /// The `-vnc` server, if one was asked for.
    var vnc: VNCServer?
    let exitStatus = Atomic<Int32>(0)
    /// Where lifecycle events go (the QMP monitor); set before `run`.
    public weak var monitorEvents: (any MonitorEventSink)?
    /// `cont` during `-incoming`: run once the state has arrived (QEMU's autostart).
    var startAfterIncoming = false

    // MARK: assembly

    /// `xenHypervisor`/`xenStore` replace the real Xen libraries (tests run a Xen machine
    /// against the simulator); by default they are loaded when the machine type needs them.
    public init(config: VMConfig, xenHypervisor: (any XenHypervisor)? = nil,
                xenStore: (any XenStoreAccess)? = nil) throws(MachineError) {
        self.config = config
        platform = try MachinePlatform(config: config)
        var maxBelowFourGiB: UInt64?
        for (key, value) in config.machineProperties {
            switch key {
            case "accel":
                break  // MachinePlatform checked it
            case "max-ram-below-4g":
                guard let size = parseSize(value), size >= 1 << 20, size <= 0xF000_0000 else {
                    throw MachineError("-machine max-ram-below-4g=\(value): expects a size between 1M and 3.75G")
                }
                maxBelowFourGiB = size
            case "suppress-vmdesc", "usb", "vmport", "hpet", "smm", "graphics", "igd-passthru":
                break  // accepted; they change nothing this machine has
            default:
                throw MachineError("-machine \(key)=\(value): invalid machine property '\(key)'")
            }
        }

        // Where RAM splits at the PCI hole (the CMOS memory sizes and the kernel's placement use
        // it). Under Xen low RAM ends at max-ram-below-4g (QEMU's xen_ram_init; 0xF0000000
        // unless libxl says). Direct kernel boot reads and checks its files before the VM exists.
        let lowRAM: UInt64
        if case .xen = platform {
            lowRAM = min(config.memoryBytes, maxBelowFourGiB ?? 0xF000_0000)
        } else {
            lowRAM = PCMemoryLayout(ramSize: config.memoryBytes, biosSize: 0, maxBelowFourGiB: maxBelowFourGiB).belowFourGiB
        }
        let linuxBoot = try LinuxBoot.load(config, belowFourGiB: lowRAM, dma: config.fwCfgDMA)

        lock = DeviceLock()
        let clock = VirtualClock(paused: true)
        do { loop = try EventLoop(lock: lock, clock: clock) } catch { throw MachineError(error.description) }
        ports = Bus(name: "io", unassignedValue: .max)
        mmio = Bus(name: "mmio", unassignedValue: 0)
        events = MachineEvents(loop: loop)
        let dispatcher = IODispatcher(lock: lock, ports: ports, mmio: mmio)
        pci = PCIBus(portBus: ports, mmioBus: mmio)
        runState = config.incoming != nil ? .inmigrate : config.startPaused ? .prelaunch : .running

        // The accelerator and guest memory: ours on KVM, Xen's (through the mapcache) under Xen.
        let hostBridge = I440FXHostBridge()
        var kvmMemory: KVMGuestMemoryMap?
        switch platform {
        case .kvm:
            let biosPath: String
            if let path = config.bios { biosPath = path } else { biosPath = try FirmwareImage.defaultBIOS() }
            let biosBytes = try FirmwareImage.load(biosPath)
            let layout = PCMemoryLayout(ramSize: config.memoryBytes, biosSize: UInt64(biosBytes.count),
                                        maxBelowFourGiB: maxBelowFourGiB)
            let ram: HostMemory, bios: HostMemory, kvm: KVMAccelerator
            do {
                ram = try HostMemory(size: Int(config.memoryBytes))
                bios = try HostMemory(size: biosBytes.count)
                kvm = try KVMAccelerator(cpuCount: config.smp.cpus, dispatcher: dispatcher, events: events)
            } catch {
                throw MachineError("\(error)")
            }
            bios.load(biosBytes, at: 0)
            let map = KVMGuestMemoryMap(accelerator: kvm, layout: layout, ram: ram, bios: bios, pam: hostBridge.pamModes)
            memory = map.memory
            accelerator = kvm
            notifications = KVMNotifications(accelerator: kvm, loop: loop)
            xen = nil
            kvmMemory = map
            deviceRAM = map
        case .xen(let domain, _):
            let pci = pci
            // Device RAM starts where QEMU's first RAM block after guest RAM starts (its
            // `ram_addr`), so physmap records mean the same to both device models.
            let ramBlockEnd = config.memoryBytes > lowRAM ? (1 << 32) + config.memoryBytes - lowRAM : config.memoryBytes
            let link = try XenDomainLink(domain: domain, vcpus: config.smp.maxCPUs, dispatcher: dispatcher,
                                         events: events, hypervisor: xenHypervisor, store: xenStore,
                                         deviceRAMBase: ramBlockEnd, incoming: config.incoming != nil) {
                address, offset, size, isWrite, value in
                // PCI_CONFIG ioreqs: only bus 0 exists; other functions read as absent.
                guard address.segment == 0, address.bus == 0 else { return UInt32(truncatingIfNeeded: mask(size)) }
                let devfn = Int(address.device) << 3 | Int(address.function)
                if isWrite {
                    pci.configWrite(devfn: devfn, offset: Int(offset), size: size, value: value)
                    return 0
                }
                return pci.configRead(devfn: devfn, offset: Int(offset), size: size)
            }
            memory = link.accelerator.mapCache
            accelerator = link.accelerator
            notifications = ExitNotifications(sink: link.accelerator.interrupts)
            xen = link
            deviceRAM = link
        case .none:
            memory = PhysicalMemory(regions: [])
            accelerator = NoAccelerator()
            notifications = ExitNotifications(sink: accelerator.interrupts)
            xen = nil
            deviceRAM = HostDeviceRAMProvider()
        }

        events.machine = self
        let accelerator = accelerator
        events.forwardPowerRequest = { reboot in accelerator.forwardPowerRequest(reboot: reboot) }
        let router = InterruptRouter(sink: accelerator.interrupts)
        do {
            if case .none = platform {
                try assembleChardevs()  // the probe's QMP socket is all it has
                return
            }
            try assembleChipset(hostBridge: hostBridge, router: router)
            if let kvmMemory { try mapKVMMemory(kvmMemory, hostBridge: hostBridge) }
            try assembleChardevs()
            try assembleISA(router: router, belowFourGiB: lowRAM, aboveFourGiB: config.memoryBytes - lowRAM)
            let firmwareBootEntries = try assembleFirmwareConfig(layout: kvmMemory?.layout, linuxBoot: linuxBoot)
            let ide = try assembleIDE(router: router)
            if case .xen(_, platformDevice: true) = platform { try assembleXenPlatformDevice() }
            try assembleDevices(router: router, ide: ide)
            try finishIDE(ide, router: router, firmwareEntries: firmwareBootEntries)
            try xen?.claim(ports: ports, mmio: mmio, pci: pci)
            try assembleVNC()
        } catch let error as MachineError {
            throw error
        } catch let error as ConfigError {
            throw MachineError(error.description)
        } catch {
            throw MachineError("\(error)")
        }
        if config.debugLogging {
            ports.onUnassigned = { address, size, write, value in
                GuestErrorLog.shared.report("io", write ? "unassigned port write \(hex(address)) size \(size) value \(hex(value))"
                                                        : "unassigned port read \(hex(address)) size \(size)")
            }
            mmio.onUnassigned = { address, size, write, value in
                GuestErrorLog.shared.report("mmio", write ? "unassigned write \(hex(address)) size \(size) value \(hex(value))"
                                                          : "unassigned read \(hex(address)) size \(size)")
            }
        }
    }

    /// i440FX, PIIX3 and PIIX4 PM. On KVM the PIIX3 routes PCI interrupts; under Xen the
    /// hypervisor's own PIIX3 model routes INTx (we mirror link routes to it).
    private func assembleChipset(hostBridge: I440FXHostBridge, router: InterruptRouter) throws {
        let isaBridge = PIIX3ISABridge(router: router)
        let power = PIIX4PowerManagement(sci: router.line(gsi: 9), timers: loop)
        try pci.plug(hostBridge, slot: 0)
        try pci.plug(isaBridge, slot: 1, function: 0)
        try pci.plug(power, slot: 1, function: 3)
        try ports.register(power, base: PIIX4PowerManagement.apmPorts.lowerBound,
                           length: UInt64(PIIX4PowerManagement.apmPorts.count), region: PIIX4PowerManagement.apmRegion,
                           name: "APM control/status")
        try ports.register(power, base: PIIX4PowerManagement.gpePorts.lowerBound,
                           length: UInt64(PIIX4PowerManagement.gpePorts.count), region: PIIX4PowerManagement.gpeRegion,
                           name: "ACPI GPE0")
        // Under Xen too: Xen turns 0xCFC cycles of functions we claimed into PCI_CONFIG
        // ioreqs, but passes reads of 0xCF8 through, and Linux's probe for configuration
        // mechanism #1 reads back what it wrote there ("No config space access function" else).
        let configPorts = PCIHostBridgeConfigPorts(bus: pci)
        configPorts.resetControl = isaBridge.resetControlRegister
        try ports.register(configPorts, base: 0xCF8, length: 8, name: "PCI config")
        if let xen {
            let sink = xen.accelerator.sink
            pci.intxRouter = xen.intxRouter
            isaBridge.onLinkRouteChange = { link, irq in sink.setPCILinkRoute(link: UInt8(link), routeRegister: irq ?? 0x80) }
        } else {
            pci.intxRouter = isaBridge
        }
        devices = [configPorts, hostBridge, isaBridge, power]
        let events = events
        isaBridge.onResetRequest = { events.resetRequested(cause: .guestReset) }
        power.onSleepRequest = { type in
            // SeaBIOS's, QEMU's and Xen's ACPI tables agree: SLP_TYP 0 is S5 (soft off), 1 is S3.
            switch type {
            case 0: events.shutdownRequested(cause: .guestShutdown)
            case 1: events.suspendRequested()
            default:
                GuestErrorLog.shared.report("PIIX4-PM", "sleep type \(type) is not supported; staying awake")
            }
        }
    }

    /// KVM maps RAM and the BIOS directly; the PAM window covers what its slots cannot express.
    private func mapKVMMemory(_ map: KVMGuestMemoryMap, hostBridge: I440FXHostBridge) throws {
        let window = LegacyBIOSWindow(layout: map.layout, ram: map.ram, bios: map.bios, pam: hostBridge.pamModes)
        do {
            try mmio.register(window, base: PCMemoryLayout.legacyWindow.lowerBound,
                              length: UInt64(PCMemoryLayout.legacyWindow.count), name: "legacy BIOS window")
            try map.accelerator.setMemoryRegions(map.memory.currentRegions)
        } catch {
            throw MachineError("memory map: \(error)")
        }
        hostBridge.onMemoryMapChange = { modes in
            window.pam = modes
            map.pam = modes
        }
    }
}
