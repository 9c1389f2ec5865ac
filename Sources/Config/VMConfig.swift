/// Everything the command line asked for, validated for form; the machine validates meaning
/// (which devices exist, whether a chardev id is known) when it assembles itself.
public struct VMConfig: Sendable, Equatable {
    public struct SMP: Sendable, Equatable {
        public var cpus = 1
        public var maxCPUs = 1
        public init() {}
    }

    public var machineType = "pc"
    /// `-machine` properties other than the type, in order (`accel=kvm`, `max-ram-below-4g=...`).
    public var machineProperties: [(key: String, value: String)] = []
    public var memoryBytes: UInt64 = 128 << 20
    public var smp = SMP()
    public var bios: String?
    public var noDefaults = false
    public var noGraphic = false
    public var displayNone = false
    /// `-serial` specs in order: COM1, COM2, ...
    public var serials: [String] = []
    public var chardevs: [OptionList] = []
    public var debugcon: String?
    public var name: String?
    public var startPaused = false
    public var noReboot = false
    public var noShutdown = false
    public var devices: [OptionList] = []
    /// `-netdev` backends in order, ids unique.
    public var netdevs: [NetdevOption] = []
    /// `-net none`: no default network (SwiftDM makes none anyway; recorded for fidelity).
    public var netNone = false
    /// `-vga` was given (even `none`): no default VGA then.
    public var vgaChosen = false
    /// `-drive` lists in order; `-hda`..`-hdd` and `-cdrom` arrive here as the `-drive` they mean.
    public var drives: [OptionList] = []
    public var bootOrder: String?
    public var bootMenu: Bool?
    /// `-boot` reboot-timeout in ms: SeaBIOS waits this long after "No bootable device".
    public var bootRebootTimeout: Int?
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    /// `-global fw_cfg_io.dma_enabled=off` turns fw_cfg's DMA interface off (as qemu-xen's is).
    public var fwCfgDMA = true
    /// `-d` log items (guest_errors, unimp): also log accesses no device claims.
    public var logItems: [String] = []
    /// `-mon` and `-qmp` monitors, in order.
    public var monitors: [MonitorOption] = []
    /// `-uuid`, validated and lower-cased.
    public var uuid: String?
    /// `-incoming`: the VM waits for its state instead of booting.
    public var incoming: IncomingMigration?
    /// `-xen-domid`: the Xen domain this device model serves (libxl passes it first).
    public var xenDomainID: UInt16?
    /// `-xen-attach`: the domain exists and libxl built it (PV guests).
    public var xenAttach = false
    /// `-xen-domid-restrict`: limit our Xen handles to that one domain after setup.
    public var xenRestrict = false
    /// `-runas USER` / `-run-with user=USER`: drop to this user once set up.
    public var runAsUser: String?
    /// `-chroot DIR` / `-run-with chroot=DIR`: confine the process to DIR once set up.
    public var chrootDirectory: String?
    /// `-no-acpi`: the firmware should not describe ACPI (Xen's hvmloader decides under Xen).
    public var noACPI = false
    /// `-vnc`: nil without one (or with `none`).
    public var vnc: VNCOption?
    /// Options accepted but not acted on (devices, displays, networks we do not have yet), one
    /// line each, printed at start so a libxl-built command line still starts the guest.
    public var warnings: [String] = []
    public var debugLogging: Bool { logItems.contains("guest_errors") || logItems.contains("unimp") }

    public init() {}

    public static func == (a: VMConfig, b: VMConfig) -> Bool {
        a.machineType == b.machineType && a.machineProperties.elementsEqual(b.machineProperties, by: ==)
            && a.memoryBytes == b.memoryBytes && a.smp == b.smp && a.bios == b.bios && a.noDefaults == b.noDefaults
            && a.noGraphic == b.noGraphic && a.displayNone == b.displayNone && a.serials == b.serials
            && a.chardevs == b.chardevs && a.debugcon == b.debugcon && a.name == b.name
            && a.startPaused == b.startPaused && a.noReboot == b.noReboot && a.noShutdown == b.noShutdown
            && a.devices == b.devices && a.drives == b.drives && a.bootOrder == b.bootOrder && a.bootMenu == b.bootMenu
            && a.bootRebootTimeout == b.bootRebootTimeout && a.kernel == b.kernel && a.initrd == b.initrd
            && a.append == b.append && a.fwCfgDMA == b.fwCfgDMA && a.logItems == b.logItems && a.monitors == b.monitors && a.uuid == b.uuid
            && a.incoming == b.incoming && a.xenDomainID == b.xenDomainID && a.xenAttach == b.xenAttach
            && a.xenRestrict == b.xenRestrict && a.runAsUser == b.runAsUser && a.chrootDirectory == b.chrootDirectory
            && a.noACPI == b.noACPI && a.warnings == b.warnings && a.vgaChosen == b.vgaChosen && a.vnc == b.vnc
            && a.netdevs == b.netdevs && a.netNone == b.netNone
    }

    /// The `-chardev` ids a monitor serves: the machine must not open them as devices.
    public var monitorChardevIDs: Set<String> {
        Set(monitors.compactMap { if case .chardev(let id) = $0.source { return id } else { return nil } })
    }
}

/// A QMP monitor: `-mon chardev=ID,mode=control` or the `-qmp DEV` shorthand.
public struct MonitorOption: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        case chardev(String)
        /// A character device in `-serial` syntax (`unix:PATH,server=on,wait=off`).
        case shorthand(String)
    }
    public var source: Source
    public init(source: Source) { self.source = source }
}

/// `-incoming fd:N` (libxl's restore: the device state is read from the descriptor) or
/// `-incoming defer`.
public enum IncomingMigration: Sendable, Equatable {
    case fd(Int32)
    case deferred
}

/// What running the command line should do.
public enum CommandLineAction: Sendable, Equatable {
    case run(VMConfig)
    case printHelp
    case printVersion
    case listMachines
    case listDevices
}
