import Backends
import Config
import DMCore
import Devices
import KVMAccel
import Monitor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The i440FX/PIIX3 PC on KVM, assembled from the command line: chipset, legacy ISA devices,
/// firmware and fw_cfg, then whatever `-device` adds. It owns the run state and turns guest
/// and host requests (reset, power-off, debug exit, signals) into QEMU's behaviour and exit
/// statuses.
public final class PCMachine: @unchecked Sendable {
    public enum RunState: String, Sendable {
        case prelaunch, running, paused, shutdown
        /// `-incoming`: waiting for the device state.
        case inmigrate
        case internalError = "internal-error"
    }

    public let config: VMConfig
    public let lock: DeviceLock
    public let loop: EventLoop
    public let ports: Bus
    public let mmio: Bus
    public let memory: PhysicalMemory
    public let pci: PCIBus
    let accelerator: KVMAccelerator
    /// ioeventfd/irqfd for virtio; devices see only the `NotificationProvider` seam.
    let notifications: any NotificationProvider
    let events: MachineEvents
    public internal(set) var runState: RunState
    /// Devices in the order their state is saved and they are reset.
    var devices: [AnyObject] = []
    var backends: [any CharBackend] = []
    let exitStatus = Atomic<Int32>(0)
    /// Where lifecycle events go (the QMP monitor); set before `run`.
    public weak var monitorEvents: (any MonitorEventSink)?
    /// `cont` during `-incoming`: run once the state has arrived (QEMU's autostart).
    var startAfterIncoming = false

    // MARK: assembly

    public init(config: VMConfig) throws(MachineError) {
        self.config = config
        guard config.machineType == "pc" || config.machineType.hasPrefix("pc-i440fx") else {
            throw MachineError("-machine \(config.machineType): unsupported machine type (use -machine help)")
        }
        var maxBelowFourGiB: UInt64?
        for (key, value) in config.machineProperties {
            switch key {
            case "accel":
                guard value == "kvm" else { throw MachineError("-machine accel=\(value): only kvm is supported") }
            case "max-ram-below-4g":
                guard let size = parseSize(value), size >= 1 << 20, size <= 0xE000_0000 else {
                    throw MachineError("-machine max-ram-below-4g=\(value): expects a size between 1M and 3.5G")
                }
                maxBelowFourGiB = size
            case "suppress-vmdesc", "usb", "vmport", "hpet", "smm", "graphics":
                break  // accepted; they change nothing this machine has
            default:
                throw MachineError("-machine \(key)=\(value): invalid machine property '\(key)'")
            }
        }

        let biosPath: String
        if let path = config.bios { biosPath = path } else { biosPath = try FirmwareImage.defaultBIOS() }
        let biosBytes = try FirmwareImage.load(biosPath)
        let layout = PCMemoryLayout(ramSize: config.memoryBytes, biosSize: UInt64(biosBytes.count),
                                    maxBelowFourGiB: maxBelowFourGiB)
        let ram: HostMemory, bios: HostMemory
        do {
            ram = try HostMemory(size: Int(config.memoryBytes))
            bios = try HostMemory(size: biosBytes.count)
        } catch {
            throw MachineError(error.description)
        }
        bios.load(biosBytes, at: 0)

        lock = DeviceLock()
        let clock = VirtualClock(paused: true)
        do { loop = try EventLoop(lock: lock, clock: clock) } catch { throw MachineError(error.description) }
        ports = Bus(name: "io", unassignedValue: .max)
        mmio = Bus(name: "mmio", unassignedValue: 0)
        events = MachineEvents(loop: loop)
        let dispatcher = IODispatcher(lock: lock, ports: ports, mmio: mmio)
        do {
            accelerator = try KVMAccelerator(cpuCount: config.smp.cpus, dispatcher: dispatcher, events: events)
        } catch {
            throw MachineError(error.description)
        }
        let router = InterruptRouter(sink: accelerator)
        notifications = KVMNotifications(accelerator: accelerator, loop: loop)
        runState = config.incoming != nil ? .inmigrate : config.startPaused ? .prelaunch : .running

        // Chipset.
        pci = PCIBus(portBus: ports, mmioBus: mmio)
        let hostBridge = I440FXHostBridge()
        let isaBridge = PIIX3ISABridge(router: router)
        let power = PIIX4PowerManagement(sci: router.line(gsi: 9), timers: loop)
        let configPorts = PCIHostBridgeConfigPorts(bus: pci)
        configPorts.resetControl = isaBridge.resetControlRegister
        pci.intxRouter = isaBridge
        do {
            try pci.plug(hostBridge, slot: 0)
            try pci.plug(isaBridge, slot: 1, function: 0)
            try pci.plug(power, slot: 1, function: 3)
            try ports.register(configPorts, base: 0xCF8, length: 8, name: "PCI config")
        } catch {
            throw MachineError("chipset assembly: \(error)")
        }

        // Memory: what KVM maps directly, and the PAM window for what it cannot.
        memory = PhysicalMemory(regions: layout.regions(ram: ram, bios: bios, pam: hostBridge.pamModes))
        let window = LegacyBIOSWindow(layout: layout, ram: ram, bios: bios, pam: hostBridge.pamModes)
        do {
            try mmio.register(window, base: PCMemoryLayout.legacyWindow.lowerBound,
                              length: UInt64(PCMemoryLayout.legacyWindow.count), name: "legacy BIOS window")
            try accelerator.setMemoryRegions(memory.currentRegions)
        } catch {
            throw MachineError("memory map: \(error)")
        }
        let memory = memory, accelerator = accelerator
        hostBridge.onMemoryMapChange = { modes in
            window.pam = modes
            memory.setRegions(layout.regions(ram: ram, bios: bios, pam: modes))
            do { try accelerator.setMemoryRegions(memory.currentRegions) } catch {
                GuestErrorLog.shared.report("i440FX", "PAM change not applied: \(error)")
            }
        }

        devices = [configPorts, hostBridge, isaBridge, power]
        let events = events
        isaBridge.onResetRequest = { events.resetRequested(cause: .guestReset) }
        power.onSleepRequest = { type in
            // SeaBIOS's and QEMU's ACPI tables: SLP_TYP 0 is S5 (soft off), 1 is S3.
            if type == 0 {
                events.shutdownRequested(cause: .guestShutdown)
            } else {
                GuestErrorLog.shared.report("PIIX4-PM", "sleep type \(type) is not supported; staying awake")
            }
        }

        do {
            try assembleChardevs()
            try assembleISA(router: router, layout: layout)
            try assembleFirmwareConfig(layout: layout)
            let ide = try assembleIDE(router: router)
            try assembleDevices(router: router, ide: ide)
            try finishIDE(ide, router: router)
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
        events.machine = self
        let stopping = accelerator
        events.stopGuest = { stopping.requestPause() }
    }
}
