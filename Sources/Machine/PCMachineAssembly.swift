import Backends
import Config
import DMCore
import Devices
import KVMAccel

/// fw_cfg item keys SeaBIOS reads (QEMU's numbering).
enum FwCfgKey {
    static let uuid: UInt16 = 0x02
    static let ramSize: UInt16 = 0x03
    static let noGraphic: UInt16 = 0x04
    static let cpuCount: UInt16 = 0x05
    static let numa: UInt16 = 0x0D
    static let bootMenu: UInt16 = 0x0E
    static let maxCPUs: UInt16 = 0x0F
    static let irq0Override: UInt16 = 0x8002
}

extension PCMachine {
    /// `-chardev` backends, created first so `chardev:ID` references resolve. Those a `-mon`
    /// serves belong to the QMP monitor, which opens them itself.
    func assembleChardevs() throws {
        let monitorIDs = config.monitorChardevIDs
        for list in config.chardevs {
            if let id = list.entries.last(where: { $0.key == "id" })?.value, monitorIDs.contains(id) { continue }
            let spec = try CharBackendSpec(chardev: list)
            guard let id = list.entries.last(where: { $0.key == "id" })?.value else { continue }
            guard !backends.contains(where: { $0.id == id }) else {
                throw MachineError("-chardev \(list.text): duplicate chardev id '\(id)'")
            }
            backends.append(try makeCharBackend(id: id, spec: spec, loop: loop))
        }
    }

    /// COM ports, the RTC, the keyboard controller and the small legacy ports. Under Xen the
    /// hypervisor's RTC answers the clock registers (CMOS 0x00-0x0D) and forwards every other
    /// index to us, so our CMOS still tells SeaBIOS the memory sizes and the boot order.
    func assembleISA(router: InterruptRouter, belowFourGiB: UInt64, aboveFourGiB: UInt64) throws {
        let events = events
        let rtc = CMOSRTC(irq: router.line(gsi: 8), timers: loop)
        rtc.setMemorySizes(belowFourGiB: belowFourGiB, aboveFourGiB: aboveFourGiB)
        rtc.setCPUCount(config.smp.cpus)
        rtc.setEquipment()
        try rtc.setBootOrder(config.bootOrder ?? "cad")  // QEMU's default for pc
        rtc.updateChecksum()
        try ports.register(rtc, base: 0x70, length: 2, name: "rtc")

        let keyboard = I8042(keyboardIRQ: router.line(gsi: 1), mouseIRQ: router.line(gsi: 12))
        keyboard.onResetRequest = { events.resetRequested(cause: .guestReset) }
        try ports.register(keyboard, base: 0x60, length: 1, region: 0, name: "i8042 data")
        try ports.register(keyboard, base: 0x64, length: 1, region: 1, name: "i8042 command")

        let port92 = Port92()
        port92.onResetRequest = { events.resetRequested(cause: .guestReset) }
        try ports.register(port92, base: 0x92, length: 1, name: "port 92")

        let post = POSTPort()
        try ports.register(post, base: 0x80, length: 1, name: "POST")

        var serialSpecs = config.serials
        if serialSpecs.isEmpty && !config.noDefaults { serialSpecs = ["stdio"] }
        let comPorts: [(base: UInt64, gsi: UInt32)] = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)]
        guard serialSpecs.count <= comPorts.count else {
            throw MachineError("-serial: at most \(comPorts.count) serial ports")
        }
        var uarts: [UART16550] = []
        for (index, spec) in serialSpecs.enumerated() where spec != "none" {
            let backend = try charBackend(shorthand: spec, option: "-serial", id: "serial\(index)")
            let uart = UART16550(backend: backend, irq: router.line(gsi: comPorts[index].gsi),
                                 stateID: "serial\(index)", timers: loop)
            backend?.attach(uart)
            try ports.register(uart, base: comPorts[index].base, length: 8, name: "serial\(index)")
            uarts.append(uart)
        }

        var extra: [AnyObject] = []
        if let spec = config.debugcon, let backend = try charBackend(shorthand: spec, option: "-debugcon", id: "debugcon") {
            // SeaBIOS logs to 0x402; QEMU's -debugcon listens on 0xE9 (the Bochs port). Serve both.
            let console = DebugConsole(backend: backend)
            try ports.register(console, base: 0x402, length: 1, region: 0, name: "debugcon")
            try ports.register(console, base: 0xE9, length: 1, region: 1, name: "debugcon (0xe9)")
            extra.append(console)
        }
        append(devices: [rtc, keyboard, port92, post] + uarts + extra)
    }

    /// The fw_cfg device and everything SeaBIOS reads from it, including a direct kernel boot;
    /// returns the `bootorder` entries it needs (written with the devices' ones). Under Xen
    /// (`layout` nil) hvmloader hands SeaBIOS the memory map, so there is no e820 file.
    func assembleFirmwareConfig(layout: PCMemoryLayout?, linuxBoot: LinuxBoot? = nil) throws -> [BootEntry] {
        let fwcfg = FwCfg(memory: memory, dmaEnabled: config.fwCfgDMA)
        try ports.register(fwcfg, base: 0x510, length: 12, name: "fw_cfg")
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        try fwcfg.addItem(key: FwCfgKey.ramSize, data: le(config.memoryBytes))
        try fwcfg.addItem(key: FwCfgKey.cpuCount, data: le(UInt16(config.smp.cpus)))
        try fwcfg.addItem(key: FwCfgKey.maxCPUs, data: le(UInt16(config.smp.maxCPUs)))
        try fwcfg.addItem(key: FwCfgKey.noGraphic, data: le(UInt16(usesTerminalConsole ? 1 : 0)))
        try fwcfg.addItem(key: FwCfgKey.bootMenu, data: le(UInt16(config.bootMenu == true ? 1 : 0)))
        try fwcfg.addItem(key: FwCfgKey.irq0Override, data: le(UInt32(1)))
        // No NUMA nodes: the node count, then one (zero) entry per possible CPU.
        try fwcfg.addItem(key: FwCfgKey.numa, data: [UInt8](repeating: 0, count: 8 * (1 + config.smp.maxCPUs)))
        try fwcfg.addItem(key: FwCfgKey.uuid, data: [UInt8](repeating: 0, count: 16))
        if let layout { try fwcfg.addFile(name: "etc/e820", data: Self.e820Table(layout)) }
        // -1: after "No bootable device." wait forever, as QEMU without reboot-timeout.
        try fwcfg.addFile(name: "etc/boot-fail-wait", data: le(Int32(config.bootRebootTimeout ?? -1)))
        // As QEMU's linuxboot ROM: bootindex 0, so SeaBIOS boots it first.
        let bootEntries = try linuxBoot.map { [BootEntry(index: 0, path: try $0.install(into: fwcfg))] } ?? []
        append(devices: [fwcfg])
        return bootEntries
    }

    /// The e820 map QEMU gives SeaBIOS: all RAM below the hole as usable (SeaBIOS carves the
    /// legacy areas itself), KVM's identity-map pages reserved, and RAM above 4 GiB.
    static func e820Table(_ layout: PCMemoryLayout) -> [UInt8] {
        var entries: [(UInt64, UInt64, UInt32)] = [(0, layout.belowFourGiB, 1)]
        entries.append((KVMAccelerator.identityMapBase, KVMAccelerator.identityMapSize, 2))
        if layout.aboveFourGiB > 0 { entries.append((1 << 32, layout.aboveFourGiB, 1)) }
        var bytes: [UInt8] = []
        for (address, length, type) in entries {
            withUnsafeBytes(of: address.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: length.littleEndian) { bytes += $0 }
            withUnsafeBytes(of: type.littleEndian) { bytes += $0 }
        }
        return bytes
    }

    /// `-device` entries, through the driver table.
    func assembleDevices(router: InterruptRouter, ide: IDEAssembly? = nil) throws {
        var context = DeviceContext(ports: ports, mmio: mmio, pci: pci, router: router, memory: memory, poster: loop,
                                    notifications: notifications,
                                    onDebugExit: { [weak self] status in self?.requestExit(status: status) },
                                    deviceRAM: deviceRAM, timers: loop)
        context.ide = ide
        context.netdevs = try openNetdevs()
        for var list in config.devices {
            guard let name = list.take("driver") else {
                throw ConfigError(option: "-device", value: list.text, reason: "missing driver name")
            }
            guard let driver = DeviceDriver.find(name) else {
                if DeviceDriver.notYetImplemented.contains(name) {
                    // libxl always asks for a VGA and often a NIC: the guest still starts without.
                    GuestErrorLog.stderrSink("swiftdm: warning: -device \(list.text): '\(name)' is not implemented yet; the guest runs without it")
                    continue
                }
                throw ConfigError(option: "-device", value: list.text, reason: "unknown device '\(name)' (-device help lists them)")
            }
            context.deviceID = list.take("id")
            try driver.build(&list, &context)
            try list.rejectUnknown()
        }
        if let ide { try plugVirtioDrives(ide, context: &context) }
        for id in config.netdevs.map(\.id) where !context.usedNetdevs.contains(id) {
            GuestErrorLog.stderrSink("swiftdm: warning: netdev \(id) has no peer")
        }
        append(devices: context.created)
        if let source = context.display { display = MachineDisplay(source: source, timers: loop) }
    }

    /// The `-netdev` backends: taps are opened (and created if missing) now, before any
    /// privilege is dropped; types not implemented yet stand as nil.
    func openNetdevs() throws -> [String: (any NetBackend)?] {
        var netdevs: [String: (any NetBackend)?] = [:]
        for netdev in config.netdevs {
            switch netdev.kind {
            case .tap(let options):
                do {
                    netdevs[netdev.id] = try TapNetBackend(id: netdev.id, options: options, loop: loop)
                } catch {
                    throw MachineError(error.description)
                }
            case .notImplemented:
                netdevs[netdev.id] = .some(nil)
            }
        }
        return netdevs
    }

    /// With no display, the serial port is the console, and SeaBIOS should print there.
    var usesTerminalConsole: Bool { config.noGraphic || !config.displayNone }

    /// A char backend for a `-serial`/`-debugcon` shorthand, or a `chardev:ID` reference.
    func charBackend(shorthand: String, option: String, id: String) throws -> (any CharBackend)? {
        let spec = try CharBackendSpec(shorthand: shorthand, option: option)
        if case .none = spec { return nil }
        if case .chardev(let name) = spec {
            guard let existing = backends.first(where: { $0.id == name }) else {
                throw MachineError("\(option) \(shorthand): no chardev with id '\(name)'")
            }
            return existing
        }
        let backend = try makeCharBackend(id: id, spec: spec, loop: loop)
        backends.append(backend)
        return backend
    }
}

