import Backends
import Config
import DMCore
import Devices

/// What a `-device` driver may touch while the machine is being assembled.
struct DeviceContext {
    let ports: Bus
    let mmio: Bus
    let pci: PCIBus
    let router: InterruptRouter
    let memory: any GuestMemory
    let poster: any BlockCompletionPoster
    let notifications: any NotificationProvider
    let onDebugExit: (Int32) -> Void
    /// Where video RAM comes from (KVM slots, Xen frames).
    let deviceRAM: any DeviceRAMProvider
    var created: [AnyObject] = []
    /// The display device (a VGA), if one was asked for; a PC has one.
    var display: (any DisplaySource)?
    /// The IDE slots `ide-hd`/`ide-cd` fill (the controller is built after `-device`).
    var ide: IDEAssembly?
    /// AHCI controllers by `id=` (their ports are buses `ID.N`) with their firmware paths.
    var ahci: [String: (controller: AHCIController, firmwarePath: String)] = [:]
    /// The `id=` of the `-device` being built.
    var deviceID: String?
    /// `-netdev` backends by id (nil: a type not implemented yet); a NIC takes its own out.
    var netdevs: [String: (any NetBackend)?] = [:]
    /// Netdev ids already taken by a NIC (each backend has one peer).
    var usedNetdevs: Set<String> = []
    /// NICs built so far: the next default MAC address is QEMU's 52:54:00:12:34:56 + count.
    var nicCount = 0
    /// Guest-time timers (the event loop's).
    let timers: any TimerService
}

/// The `-device` drivers this machine knows, as one declared table (QEMU's `-device help`
/// prints the same list). Each driver takes its properties from the option list; anything left
/// over is an error naming the property.
struct DeviceDriver: Sendable {
    let name: String
    let bus: String
    let help: String
    let build: @Sendable (inout OptionList, inout DeviceContext) throws(ConfigError) -> Void

    static let all: [DeviceDriver] = [
        DeviceDriver(name: "isa-debug-exit", bus: "ISA", help: "exits the VMM with status (value << 1) | 1 when the guest writes value") {
            list, context throws(ConfigError) in
            let base = try list.takeUInt("iobase", max: 0xFFFF) ?? 0x501
            let size = try list.takeUInt("iosize", max: 4) ?? 2
            guard [1, 2, 4].contains(size), base + size <= 0x10000 else {
                throw ConfigError(option: "-device", value: list.text, reason: "iosize must be 1, 2 or 4 within the port space")
            }
            let device = ISADebugExit(onExit: context.onDebugExit)
            try register(device, on: context.ports, base: base, length: size, name: "isa-debug-exit", list: list)
            context.created.append(device)
        },
        DeviceDriver(name: "pci-testdev", bus: "PCI", help: "QEMU's PCI test device (1b36:0005), for dispatch tests") {
            list, context throws(ConfigError) in
            let device = PCITestDevice()
            try plugPCI(device, list: &list, pci: context.pci)
            context.created.append(device)
        },
        DeviceDriver(name: "ahci", bus: "PCI", help: "ICH9 AHCI controller (8086:2922), 6 ports: ide-hd/ide-cd with bus=ID.N") {
            list, context throws(ConfigError) in
            try addAHCI(list: &list, context: &context)
        },
        DeviceDriver(name: "ich9-ahci", bus: "PCI", help: "the same as ahci") {
            list, context throws(ConfigError) in
            try addAHCI(list: &list, context: &context)
        },
        DeviceDriver(name: "ide-hd", bus: "IDE", help: "virtual IDE disk (drive=ID of an if=none -drive, bus=ide.N, unit=U)") {
            list, context throws(ConfigError) in
            try attachIDEDevice(kind: .disk, list: &list, id: context.deviceID, context: &context)
        },
        DeviceDriver(name: "ide-cd", bus: "IDE", help: "virtual IDE CD-ROM (drive=ID of an if=none -drive, or empty)") {
            list, context throws(ConfigError) in
            try attachIDEDevice(kind: .cdrom, list: &list, id: context.deviceID, context: &context)
        },
        DeviceDriver(name: "virtio-blk-pci", bus: "PCI",
                     help: "virtio block device (drive=ID of an if=none -drive, serial, disable-legacy, disable-modern, bootindex)") {
            list, context throws(ConfigError) in
            try attachVirtioBlk(list: &list, context: &context)
        },
        DeviceDriver(name: "VGA", bus: "PCI",
                     help: "standard VGA with the Bochs VBE extension (1234:1111): vgamem_mb (1-256), romfile, addr") {
            list, context throws(ConfigError) in
            try addStdVGA(list: &list, context: &context)
        },
        DeviceDriver(name: "rtl8139", bus: "PCI",
                     help: "Realtek RTL8139C Fast Ethernet (10ec:8139): netdev=ID of a -netdev, mac, addr, romfile") {
            list, context throws(ConfigError) in
            try addRTL8139(list: &list, context: &context)
        },
        DeviceDriver(name: "cirrus-vga", bus: "PCI",
                     help: "Cirrus Logic GD5446 VGA with BitBLT engine (1013:00b8): vgamem_mb (4, 8 or 16), romfile, addr") {
            list, context throws(ConfigError) in
            try addCirrusVGA(list: &list, context: &context)
        },
    ]

    static func find(_ name: String) -> DeviceDriver? { all.first { $0.name == name } }

    /// QEMU devices libxl (or a QEMU user) may ask for that SwiftDM does not have yet: accepted
    /// with a warning instead of refused, so the guest starts (xen-contract.md §A.2.5).
    static let notYetImplemented: Set<String> = [
        "qxl-vga", "e1000", "virtio-net-pci", "lsi53c895a", "scsi-hd",
        "piix3-usb-uhci", "ich9-usb-ehci1", "ich9-usb-uhci1", "ich9-usb-uhci2", "ich9-usb-uhci3",
        "nec-usb-xhci", "usb-ehci", "usb-redir", "usb-tablet", "usb-mouse", "usb-kbd", "intel-hda", "hda-duplex",
        "ac97", "adlib", "cs4231a", "es1370", "gus", "sb16", "virtio-serial", "virtserialport", "xen-pvdevice",
    ]

    static var helpText: String {
        all.map { "name \"\($0.name)\", bus \($0.bus), desc \"\($0.help)\"" }.joined(separator: "\n")
    }
}

/// `-device ahci,id=ID[,addr=SLOT]`: the controller is plugged now (PCI slots follow the
/// command line order, as in QEMU) and `ide-hd`/`ide-cd` with `bus=ID.N` attach drives to it.
func addAHCI(list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    let name = context.deviceID ?? "ahci\(context.ahci.count)"
    guard context.ahci[name] == nil else {
        throw ConfigError(option: "-device", value: list.text, reason: "Duplicate ID '\(name)' for device")
    }
    let sink = context.router.sink
    let controller = AHCIController(stateID: "ahci:\(name)", memory: context.memory, poster: context.poster,
                                    msi: { sink.signalMSI($0) })
    try plugPCI(controller, list: &list, pci: context.pci)
    let devfn = context.pci.devfn(of: controller) ?? 0
    // The firmware device path QEMU 7.2 writes into bootorder: class 01:06 has no firmware name,
    // so the node is named by vendor and device.
    let function = devfn & 7 == 0 ? "" : ",\(devfn & 7)"
    context.ahci[name] = (controller, "/pci@i0cf8/pci8086,2922@\(String(devfn >> 3, radix: 16))\(function)")
    context.created.append(controller)
}

/// A VGA card as `addVGA` plugs it: a PCI function that draws the display and claims the legacy
/// VGA ports and memory window.
protocol VGACard: PCIDevice, DisplaySource {
    func registerLegacyWindows(ports: Bus, mmio: Bus) throws(BusError)
}

extension StdVGA: VGACard {}
extension CirrusVGA: VGACard {}

/// `-device VGA[,vgamem_mb=MB][,romfile=FILE][,addr=SLOT]` (also `-vga std`, libxl's
/// `vga="stdvga"`): the standard VGA with vgabios-stdvga.bin in its ROM BAR.
func addStdVGA(list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    try addVGA(list: &list, context: &context, megabytes: (default: 16, max: 256), sizeRule: "between 1 and 256",
               vramSize: { $0 >= 1 ? StdVGA.vramSize(megabytes: $0) : nil }, defaultROM: "vgabios-stdvga.bin") {
        vram, rom throws in try StdVGA(vram: vram, rom: rom)
    }
}

/// `-device cirrus-vga[,vgamem_mb=MB][,romfile=FILE][,addr=SLOT]` (also `-vga cirrus`, libxl's
/// default for HVM guests with `vgamem_mb=8`): the GD5446 with vgabios-cirrus.bin in its ROM BAR.
func addCirrusVGA(list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    try addVGA(list: &list, context: &context, megabytes: (default: 4, max: 16), sizeRule: "4, 8 or 16",
               vramSize: CirrusVGA.vramSize(megabytes:), defaultROM: "vgabios-cirrus.bin") {
        vram, rom throws in try CirrusVGA(vram: vram, rom: rom)
    }
}

/// Builds a VGA card with its video RAM (QEMU's region name `vga.vram`, which Xen's physmap
/// records carry) and VGA BIOS, claims the legacy windows and plugs it; it becomes the display.
/// One display device per machine.
func addVGA<Card: VGACard>(list: inout OptionList, context: inout DeviceContext, megabytes: (default: UInt64, max: UInt64),
                           sizeRule: String, vramSize: (Int) -> Int?, defaultROM: String,
                           make: (any DeviceRAM, [UInt8]) throws -> Card) throws(ConfigError) {
    func failure(_ reason: String) -> ConfigError { ConfigError(option: "-device", value: list.text, reason: reason) }
    guard context.display == nil else {
        throw failure("only one display device per machine: a VGA is already there")
    }
    let requested = try list.takeUInt("vgamem_mb", max: megabytes.max) ?? megabytes.default
    guard let size = vramSize(Int(requested)) else { throw failure("vgamem_mb must be \(sizeRule)") }
    let romfile = list.take("romfile")
    let vga: Card
    do {
        let rom = try FirmwareImage.optionROM(romfile: romfile, defaultName: defaultROM, device: list.text)
        let vram = try context.deviceRAM.makeDeviceRAM(name: "vga.vram", size: size)
        vga = try make(vram, rom)
        try vga.registerLegacyWindows(ports: context.ports, mmio: context.mmio)
    } catch let error as MachineError {
        throw failure(error.message)
    } catch {
        throw failure("\(error)")
    }
    try plugPCI(vga, list: &list, pci: context.pci)
    context.created.append(vga)
    context.display = vga
}

func register(_ device: any BusDevice, on bus: Bus, base: UInt64, length: UInt64, name: String,
              list: OptionList) throws(ConfigError) {
    do {
        try bus.register(device, base: base, length: length, name: name)
    } catch {
        throw ConfigError(option: "-device", value: list.text, reason: error.description)
    }
}

/// Plugs a PCI function at `addr=SLOT[.FN]` or the first free slot.
func plugPCI(_ device: any PCIDevice, list: inout OptionList, pci: PCIBus) throws(ConfigError) {
    let address = list.take("addr")
    do {
        if let address {
            let parts = address.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count <= 2, let slot = parseUInt(String(parts[0])),
                  let function = parts.count == 2 ? parseUInt(String(parts[1])) : 0 else {
                throw ConfigError(option: "-device", value: list.text, reason: "invalid PCI address '\(address)'")
            }
            try pci.plug(device, slot: Int(min(slot, 255)), function: Int(min(function, 255)))
        } else {
            try pci.plug(device, slot: try pci.freeSlot())
        }
    } catch let error as PCIError {
        throw ConfigError(option: "-device", value: list.text, reason: error.description)
    } catch let error as ConfigError {
        throw error
    } catch {
        throw ConfigError(option: "-device", value: list.text, reason: "\(error)")
    }
}
