/// QEMU's command-line grammar, as one declared table: each option's spellings, whether it
/// takes an argument, its help line and how it updates the configuration. `--help` is printed
/// from the same table, so the two cannot drift apart.
public enum CommandLineParser {
    public static let programVersion = "0.1.0"
    /// The QEMU release whose command line and QMP we follow.
    public static let qemuCompatibleVersion = "7.2.0"

    struct Option: Sendable {
        let names: [String]
        let argument: String?
        let help: String
        /// The `key=` parameters the option takes, for `query-command-line-options` (libxl
        /// probes `run-with` for `chroot` and `user`).
        var parameters: [String] = []
        let apply: @Sendable (inout VMConfig, String) throws(ConfigError) -> CommandLineAction?
    }

    /// An option SwiftDM accepts but whose feature it does not have yet: the guest still
    /// starts, and the warning names what it goes without.
    static func ignored(_ names: [String], _ argument: String?, _ help: String, silentFor quiet: Set<String> = [],
                        _ consequence: String) -> Option {
        Option(names: names, argument: argument, help: help) { config, text in
            if !quiet.contains(text) {
                let spelled = "-" + (names.last ?? "") + (argument == nil ? "" : " " + text)
                config.warnings.append("\(spelled): \(consequence)")
            }
            return nil
        }
    }

    static func flag(_ names: [String], _ help: String, _ set: @escaping @Sendable (inout VMConfig) -> Void) -> Option {
        Option(names: names, argument: nil, help: help) { config, _ in
            set(&config)
            return nil
        }
    }

    static func value(_ names: [String], _ argument: String, _ help: String,
                      _ set: @escaping @Sendable (inout VMConfig, String) throws(ConfigError) -> Void) -> Option {
        Option(names: names, argument: argument, help: help) { config, text throws(ConfigError) in
            try set(&config, text)
            return nil
        }
    }

    static let options: [Option] = [
        Option(names: ["h", "help"], argument: nil, help: "print this help and exit") { _, _ in .printHelp },
        Option(names: ["version"], argument: nil, help: "print the version and exit") { _, _ in .printVersion },
        value(["M", "machine"], "[type=]name[,prop=value...]", "machine type (pc; help lists them) and properties") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-machine", text: text, impliedKey: "type")
            if let type = list.take("type") { c.machineType = type }
            c.machineProperties += list.entries
        },
        value(["m"], "[size=]megs[M|G]", "guest RAM size (default 128M)") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-m", text: text, impliedKey: "size")
            guard let size = try list.takeSize("size", defaultUnit: 1 << 20), size >= 1 << 20, size <= 1 << 40 else {
                throw ConfigError(option: "-m", value: text, reason: "expects a size between 1M and 1T")
            }
            _ = list.take("slots")
            _ = list.take("maxmem")
            try list.rejectUnknown()
            c.memoryBytes = size & ~0xFFFFF
        },
        value(["smp"], "[cpus=]n[,maxcpus=n][,sockets=n][,cores=n][,threads=n]", "number of vCPUs") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-smp", text: text, impliedKey: "cpus")
            let cpus = try list.takeUInt("cpus", max: 255)
            let maxCPUs = try list.takeUInt("maxcpus", max: 255)
            let topology = try ["sockets", "dies", "cores", "threads"].map { (key: String) throws(ConfigError) -> UInt64 in
                try list.takeUInt(key, max: 255) ?? 1
            }
            try list.rejectUnknown()
            let product = topology.reduce(1, *)
            let count = Int(cpus ?? (maxCPUs ?? product))
            guard count >= 1 else { throw ConfigError(option: "-smp", value: text, reason: "needs at least one CPU") }
            let maximum = Int(maxCPUs ?? UInt64(count))
            guard maximum >= count else {
                throw ConfigError(option: "-smp", value: text, reason: "maxcpus must be at least cpus")
            }
            c.smp.cpus = count
            c.smp.maxCPUs = maximum
        },
        value(["bios"], "file", "firmware image (default: SeaBIOS bios-256k.bin)") { c, text in c.bios = text },
        flag(["nodefaults"], "create no default devices") { $0.noDefaults = true },
        flag(["no-user-config"], "read no user configuration (there is none)") { _ in },
        flag(["nographic"], "no display; serial port and monitor on the terminal") { $0.noGraphic = true },
        value(["display"], "none", "display backend (none; others are accepted with a warning)") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-display", text: text, impliedKey: "type")
            if list.take("type") == "none" {
                try list.rejectUnknown()
                c.displayNone = true
            } else {
                c.warnings.append("-display \(text): there is no local display yet; the guest runs without one")
            }
        },
        value(["serial"], "dev", "serial port backend: stdio, null, none, pty, file:F, unix:P[,server=on,wait=off], chardev:ID") { c, text in
            c.serials.append(text)
        },
        value(["chardev"], "backend,id=id[,...]", "character device (stdio, null, file, pty, socket)") { c, text throws(ConfigError) in
            let list = try OptionList(option: "-chardev", text: text, impliedKey: "backend")
            guard list.has("id") else { throw ConfigError(option: "-chardev", value: text, reason: "missing id") }
            c.chardevs.append(list)
        },
        value(["debugcon"], "dev", "debug console on port 0x402 (same syntax as -serial)") { c, text in c.debugcon = text },
        value(["name"], "[guest=]name", "guest name") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-name", text: text, impliedKey: "guest")
            c.name = list.take("guest")
            _ = list.take("debug-threads")
            _ = list.take("process")
            try list.rejectUnknown()
        },
        flag(["S"], "do not start the CPUs (wait for 'cont' on the monitor)") { $0.startPaused = true },
        value(["mon"], "chardev=id[,mode=control]", "QMP monitor on a -chardev (socket, server=on)") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-mon", text: text, impliedKey: "chardev")
            guard let chardev = list.take("chardev"), !chardev.isEmpty else {
                throw ConfigError(option: "-mon", value: text, reason: "missing chardev=")
            }
            // QEMU's default mode is the human monitor (readline), which we do not serve.
            let mode = list.take("mode") ?? "readline"
            guard mode == "control" else {
                throw ConfigError(option: "-mon", value: text, reason: "mode=\(mode) is not supported (only mode=control, QMP)")
            }
            if try list.takeBool("pretty") == true {
                throw ConfigError(option: "-mon", value: text, reason: "pretty=on is not supported")
            }
            _ = list.take("id")
            try list.rejectUnknown()
            c.monitors.append(MonitorOption(source: .chardev(chardev)))
        },
        value(["qmp"], "unix:path,server=on[,wait=off]", "QMP monitor on a unix socket") { c, text throws(ConfigError) in
            guard text.hasPrefix("unix:") else {
                throw ConfigError(option: "-qmp", value: text, reason: "only unix:PATH,server=on sockets are supported")
            }
            c.monitors.append(MonitorOption(source: .shorthand(text)))
        },
        value(["uuid"], "uuid", "the machine's UUID (query-uuid, SMBIOS)") { c, text throws(ConfigError) in
            let groups = text.split(separator: "-", omittingEmptySubsequences: false)
            guard groups.map(\.count) == [8, 4, 4, 4, 12], groups.allSatisfy({ $0.allSatisfy(\.isHexDigit) }) else {
                throw ConfigError(option: "-uuid", value: text, reason: "invalid UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
            }
            c.uuid = text.lowercased()
        },
        value(["incoming"], "fd:N | defer", "wait for the VM's device state (from descriptor N) instead of booting") { c, text throws(ConfigError) in
            if text == "defer" {
                c.incoming = .deferred
            } else if text.hasPrefix("fd:"), let fd = Int32(text.dropFirst(3)), fd >= 0 {
                c.incoming = .fd(fd)
            } else {
                throw ConfigError(option: "-incoming", value: text, reason: "only fd:N and defer are supported")
            }
        },
        flag(["no-reboot"], "exit instead of rebooting") { $0.noReboot = true },
        flag(["no-shutdown"], "stop instead of exiting when the guest powers off") { $0.noShutdown = true },
        value(["device"], "driver[,prop=value...]", "add a device (help lists them)") { c, text throws(ConfigError) in
            let list = try OptionList(option: "-device", text: text, impliedKey: "driver")
            c.devices.append(list)
        },
        value(["vga"], "std|cirrus|none", "the VGA card (a -device VGA or cirrus-vga)") { c, text throws(ConfigError) in
            switch text {
            case "std": c.devices.append(try OptionList(option: "-vga", text: "VGA", impliedKey: "driver"))
            case "cirrus": c.devices.append(try OptionList(option: "-vga", text: "cirrus-vga", impliedKey: "driver"))
            case "none": break
            default: throw ConfigError(option: "-vga", value: text, reason: "unsupported VGA type (std, cirrus or none)")
            }
            c.vgaChosen = true
        },
        value(["drive"], "[file=F][,if=ide|none][,index=N][,media=disk|cdrom][,format=raw|qcow2][,id=ID][,...]",
              "a drive (IDE on if=ide, the default; if=none for -device ide-hd/ide-cd)") { c, text throws(ConfigError) in
            c.drives.append(try OptionList(option: "-drive", text: text))
        },
        value(["hda"], "file", "IDE disk 0 (primary master)") { c, text throws(ConfigError) in
            c.drives.append(try legacyDrive("-hda", text, index: 0, media: "disk"))
        },
        value(["hdb"], "file", "IDE disk 1 (primary slave)") { c, text throws(ConfigError) in
            c.drives.append(try legacyDrive("-hdb", text, index: 1, media: "disk"))
        },
        value(["hdc"], "file", "IDE disk 2 (secondary master)") { c, text throws(ConfigError) in
            c.drives.append(try legacyDrive("-hdc", text, index: 2, media: "disk"))
        },
        value(["hdd"], "file", "IDE disk 3 (secondary slave)") { c, text throws(ConfigError) in
            c.drives.append(try legacyDrive("-hdd", text, index: 3, media: "disk"))
        },
        value(["cdrom"], "file", "IDE CD-ROM image (secondary master)") { c, text throws(ConfigError) in
            c.drives.append(try legacyDrive("-cdrom", text, index: 2, media: "cdrom"))
        },
        value(["boot"], "[order=drives][,menu=on|off][,reboot-timeout=ms]", "boot order and menu") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-boot", text: text, impliedKey: "order")
            if let order = list.take("order") {
                guard !order.isEmpty, order.allSatisfy({ "abcdnp".contains($0) }) else {
                    throw ConfigError(option: "-boot", value: text, reason: "invalid boot device in '\(order)'")
                }
                c.bootOrder = order
            }
            _ = list.take("once")
            c.bootMenu = try list.takeBool("menu")
            _ = list.take("splash")
            _ = list.take("splash-time")
            if let timeout = try list.takeUInt("reboot-timeout", max: 0xFFFF) { c.bootRebootTimeout = Int(timeout) }
            _ = try list.takeBool("strict")
            try list.rejectUnknown()
        },
        value(["kernel"], "bzImage", "Linux kernel for direct boot (loaded by SeaBIOS over fw_cfg)") { c, text throws(ConfigError) in
            guard !text.isEmpty else { throw ConfigError(option: "-kernel", value: text, reason: "empty file name") }
            c.kernel = text
        },
        value(["initrd"], "file", "initial ramdisk for direct boot (one file)") { c, text throws(ConfigError) in
            guard !text.isEmpty else { throw ConfigError(option: "-initrd", value: text, reason: "empty file name") }
            c.initrd = text
        },
        value(["append"], "cmdline", "kernel command line") { c, text in c.append = text },
        value(["global"], "fw_cfg_io.dma_enabled=on|off", "device property default (only fw_cfg DMA for now)") { c, text throws(ConfigError) in
            let parts = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts[0].lowercased()
            guard parts.count == 2, ["fw_cfg_io.dma_enabled", "fw_cfg.dma_enabled"].contains(name) else {
                throw ConfigError(option: "-global", value: text, reason: "unsupported property (only fw_cfg_io.dma_enabled=on|off)")
            }
            var list = try OptionList(option: "-global", text: "dma_enabled=" + parts[1])
            c.fwCfgDMA = try list.takeBool("dma_enabled") ?? true
        },
        value(["d"], "item[,...]", "log items: guest_errors, unimp (accesses no device claims)") { c, text throws(ConfigError) in
            let items = text.split(separator: ",").map(String.init)
            if let bad = items.first(where: { !["guest_errors", "unimp"].contains($0) }) {
                throw ConfigError(option: "-d", value: text, reason: "unknown log item '\(bad)'")
            }
            c.logItems += items
        },
        value(["xen-domid"], "id", "serve Xen domain ID (libxl passes it; selects the Xen accelerator)") { c, text throws(ConfigError) in
            // 0x7FF0 and up are DOMID_FIRST_RESERVED and beyond; dom0 needs no device model.
            guard let id = UInt16(text), id >= 1, id < 0x7FF0 else {
                throw ConfigError(option: "-xen-domid", value: text, reason: "expects a domain id between 1 and 32751")
            }
            c.xenDomainID = id
        },
        flag(["xen-attach"], "attach to a domain libxl already built (PV guests)") { $0.xenAttach = true },
        flag(["xen-domid-restrict"], "restrict the Xen handles to that domain once set up") { $0.xenRestrict = true },
        value(["runas"], "user", "drop to this user (and its group) once set up") { c, text throws(ConfigError) in
            guard !text.isEmpty else { throw ConfigError(option: "-runas", value: text, reason: "empty user name") }
            c.runAsUser = text
        },
        value(["chroot"], "dir", "confine the process to dir once set up") { c, text throws(ConfigError) in
            guard text.hasPrefix("/") else { throw ConfigError(option: "-chroot", value: text, reason: "expects an absolute path") }
            c.chrootDirectory = text
        },
        Option(names: ["run-with"], argument: "[chroot=dir][,user=user]", help: "confine and drop privileges once set up",
               parameters: ["chroot", "user"]) { c, text throws(ConfigError) in
            var list = try OptionList(option: "-run-with", text: text)
            if let dir = list.take("chroot") {
                guard dir.hasPrefix("/") else { throw ConfigError(option: "-run-with", value: text, reason: "chroot= expects an absolute path") }
                c.chrootDirectory = dir
            }
            if let user = list.take("user") {
                guard !user.isEmpty else { throw ConfigError(option: "-run-with", value: text, reason: "empty user name") }
                c.runAsUser = user
            }
            _ = list.take("async-teardown")
            try list.rejectUnknown()
            return nil
        },
        flag(["no-acpi"], "no ACPI (under Xen, hvmloader builds the tables)") { $0.noACPI = true },
        value(["vnc"], "[host]:display[,to=N][,password=on][,share=...]|unix:path|none",
              "VNC server on port 5900+display") { c, text throws(ConfigError) in
            c.vnc = try VNCOption.parse(text)
            c.warnings += c.vnc?.warnings ?? []
        },
        ignored(["k"], "keymap", "VNC keyboard layout (keysyms are mapped as US)", silentFor: ["en-us"],
                "keymaps are not supported; VNC keys are mapped as a US keyboard"),
        ignored(["spice"], "options", "SPICE server (not implemented)", "SPICE is not implemented; the guest runs without it"),
        value(["netdev"], "[type=]tap,id=id[,ifname=name|fd=N][,script=no,downscript=no]",
              "network backend for a NIC's netdev= (tap; other types accepted with a warning)") { c, text throws(ConfigError) in
            let netdev = try NetdevOption.parse(text, warnings: &c.warnings)
            guard !c.netdevs.contains(where: { $0.id == netdev.id }) else {
                throw ConfigError(option: "-netdev", value: text, reason: "Duplicate ID '\(netdev.id)' for netdev")
            }
            c.netdevs.append(netdev)
        },
        value(["nic"], "[tap|none|...][,model=rtl8139][,mac=MAC][,tap options]",
              "a NIC with its own netdev (-netdev TYPE plus -device MODEL,netdev=..,mac=..)") { c, text throws(ConfigError) in
            try addNIC(&c, text)
        },
        value(["net"], "none", "legacy network option (none; others accepted with a warning)") { c, text in
            if text == "none" {
                c.netNone = true
            } else {
                c.warnings.append("-net \(text): the legacy -net syntax is not implemented; use -netdev and -device")
            }
        },
        ignored(["object"], "type,id=id[,...]", "user-creatable object (not implemented)", "objects are not implemented; ignored"),
        ignored(["usb"], nil, "USB controller (not yet)", "USB is not implemented yet; no USB controller"),
        ignored(["usbdevice"], "device", "USB device (not yet)", "USB is not implemented yet; no USB device"),
        ignored(["monitor"], "dev", "human monitor (only none, /dev/null)", silentFor: ["none", "/dev/null"],
                "the human monitor is not implemented; use QMP (-qmp or -mon ...,mode=control)"),
        ignored(["parallel"], "dev", "parallel port (only none, /dev/null)", silentFor: ["none", "/dev/null"],
                "there is no parallel port yet"),
        flag(["enable-kvm"], "use KVM (always on outside Xen)") { _ in },
        value(["accel"], "kvm", "accelerator (kvm)") { c, text throws(ConfigError) in
            var list = try OptionList(option: "-accel", text: text, impliedKey: "accel")
            guard list.take("accel") == "kvm" else {
                throw ConfigError(option: "-accel", value: text, reason: "only kvm is supported")
            }
            try list.rejectUnknown()
        },
        value(["cpu"], "host", "CPU model (the host's, as KVM offers it)") { _, text throws(ConfigError) in
            guard ["host", "max"].contains(text) else {
                throw ConfigError(option: "-cpu", value: text, reason: "only 'host' and 'max' are supported")
            }
        },
    ]

    /// Each option's name and the `key=` parameters it takes (`query-command-line-options`).
    public static var optionParameters: [(option: String, parameters: [String])] {
        options.map { ($0.names.last ?? "", $0.parameters) }
    }

    /// Parses `arguments` (without the program name).
    public static func parse(_ arguments: [String]) throws(ConfigError) -> CommandLineAction {
        var config = VMConfig()
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            index += 1
            guard word.hasPrefix("-"), word.count > 1 else {
                throw ConfigError(option: word, value: "", reason: "unexpected argument (options start with '-')")
            }
            let name = String(word.drop(while: { $0 == "-" }))
            guard let option = options.first(where: { $0.names.contains(name) }) else {
                throw ConfigError(option: word, value: "", reason: "invalid option")
            }
            var argument = ""
            if option.argument != nil {
                guard index < arguments.count else {
                    throw ConfigError(option: word, value: "", reason: "requires an argument")
                }
                argument = arguments[index]
                index += 1
            }
            do {
                if let action = try option.apply(&config, argument) { return action }
            } catch {
                throw ConfigError(option: "-" + name, value: error.value, reason: error.reason)
            }
            if config.machineType == "help" { return .listMachines }
            if config.devices.last?.entries.first.map({ $0.key == "driver" && $0.value == "help" }) == true {
                return .listDevices
            }
        }
        // As QEMU: the initrd and command line only mean something to a -kernel.
        if config.kernel == nil {
            if let initrd = config.initrd {
                throw ConfigError(option: "-initrd", value: initrd, reason: "only allowed with -kernel")
            }
            if let append = config.append {
                throw ConfigError(option: "-append", value: append, reason: "only allowed with -kernel")
            }
        }
        return .run(config)
    }

    public static var helpText: String {
        var lines = ["usage: swiftdm [options]", "",
                     "SwiftDM \(programVersion): a memory-safe PC device model for KVM and Xen,",
                     "with QEMU's command line (\(qemuCompatibleVersion)).", ""]
        for option in options {
            let spelled = option.names.map { "-" + $0 }.joined(separator: ", ")
            let head = option.argument.map { "\(spelled) \($0)" } ?? spelled
            lines.append(head.count < 34 ? head + String(repeating: " ", count: 34 - head.count) + option.help
                                         : head + "\n" + String(repeating: " ", count: 34) + option.help)
        }
        lines.append("")
        lines.append("With no options: a 128 MiB pc machine running SeaBIOS, serial console on the terminal.")
        return lines.joined(separator: "\n")
    }

    public static var versionText: String {
        "SwiftDM version \(programVersion) (QEMU-compatible \(qemuCompatibleVersion))"
    }
}

/// `-hda F` is `-drive file=F,index=0,media=disk` (commas in F escaped, as QEMU does).
private func legacyDrive(_ option: String, _ path: String, index: Int, media: String) throws(ConfigError) -> OptionList {
    guard !path.isEmpty else { throw ConfigError(option: option, value: path, reason: "empty file name") }
    let escaped = path.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,")
    return try OptionList(option: option, text: "file=\(escaped),index=\(index),media=\(media)")
}

/// `-nic TYPE,model=M,mac=A,...` is `-netdev TYPE,id=__org.qemu.nicN,...` plus
/// `-device M,netdev=__org.qemu.nicN,mac=A` (QEMU's default model for pc is e1000).
private func addNIC(_ c: inout VMConfig, _ text: String) throws(ConfigError) {
    var list = try OptionList(option: "-nic", text: text, impliedKey: "type")
    let type = list.take("type") ?? "user"
    if type == "none" {
        try list.rejectUnknown()
        c.netNone = true
        return
    }
    let model = list.take("model") ?? "e1000"
    let mac = list.take("mac")
    let index = c.netdevs.filter { $0.id.hasPrefix("__org.qemu.nic") }.count
    let id = "__org.qemu.nic\(index)"
    func escaped(_ v: String) -> String { v.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,") }
    let rest = list.entries.map { ",\($0.key)=\(escaped($0.value))" }.joined()
    var netdev: NetdevOption
    do {
        netdev = try NetdevOption.parse("type=\(escaped(type)),id=nic\(rest)", warnings: &c.warnings)
    } catch {
        throw ConfigError(option: "-nic", value: text, reason: error.reason)
    }
    netdev.id = id
    c.netdevs.append(netdev)
    c.devices.append(try OptionList(option: "-nic", text: "\(escaped(model)),netdev=\(id)" + (mac.map { ",mac=\(escaped($0))" } ?? ""),
                                    impliedKey: "driver"))
}
