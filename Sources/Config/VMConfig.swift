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
    public var bootOrder: String?
    public var bootMenu: Bool?
    /// `-boot` reboot-timeout in ms: SeaBIOS waits this long after "No bootable device".
    public var bootRebootTimeout: Int?
    public var kernel: String?
    public var initrd: String?
    public var append: String?
    /// `-d` log items (guest_errors, unimp): also log accesses no device claims.
    public var logItems: [String] = []
    public var debugLogging: Bool { logItems.contains("guest_errors") || logItems.contains("unimp") }

    public init() {}

    public static func == (a: VMConfig, b: VMConfig) -> Bool {
        a.machineType == b.machineType && a.machineProperties.elementsEqual(b.machineProperties, by: ==)
            && a.memoryBytes == b.memoryBytes && a.smp == b.smp && a.bios == b.bios && a.noDefaults == b.noDefaults
            && a.noGraphic == b.noGraphic && a.displayNone == b.displayNone && a.serials == b.serials
            && a.chardevs == b.chardevs && a.debugcon == b.debugcon && a.name == b.name
            && a.startPaused == b.startPaused && a.noReboot == b.noReboot && a.noShutdown == b.noShutdown
            && a.devices == b.devices && a.bootOrder == b.bootOrder && a.bootMenu == b.bootMenu
            && a.bootRebootTimeout == b.bootRebootTimeout && a.kernel == b.kernel && a.initrd == b.initrd
            && a.append == b.append && a.logItems == b.logItems
    }
}

/// What running the command line should do.
public enum CommandLineAction: Sendable, Equatable {
    case run(VMConfig)
    case printHelp
    case printVersion
    case listMachines
    case listDevices
}
