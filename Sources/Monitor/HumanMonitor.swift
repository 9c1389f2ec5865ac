/// The small human monitor behind `human-monitor-command` (`xl qemu-monitor-command`): a
/// declared table of `info` items printing what QEMU's HMP prints. Output lines end in
/// "\r\n", as QEMU's monitor turns every newline into one.
enum HumanMonitor {
    struct InfoItem: Sendable {
        let name: String
        let help: String
        let run: @Sendable (QMPCommandContext, Int?) -> String
    }

    static let infoItems: [InfoItem] = [
        InfoItem(name: "status", help: "show the current VM status (running|paused)") { context, _ in
            guard let host = context.host else { return "" }
            switch host.runStateName {
            case "running": return "VM status: running\n"
            case "paused": return "VM status: paused\n"
            default: return "VM status: paused (\(host.runStateName))\n"
            }
        },
        InfoItem(name: "version", help: "show the version of QEMU") { context, _ in
            // QEMU prints QEMU_VERSION then QEMU_PKGVERSION with nothing between them.
            "\(context.monitor.qemuVersionString)\(context.monitor.package)\n"
        },
        InfoItem(name: "chardev", help: "show the character devices") { context, _ in
            let all = context.monitor.chardevs + (context.host?.chardevs ?? [])
            return all.map { "\($0.label): filename=\($0.filename)\n" }.joined()
        },
        InfoItem(name: "pci", help: "show PCI info") { context, _ in
            (context.host?.pciDevices ?? []).map(describe).joined()
        },
        InfoItem(name: "block", help: "show the block devices") { context, _ in
            (context.host?.blockDevices ?? []).map(describeBlock).joined(separator: "\n")
        },
        InfoItem(name: "vnc", help: "show the vnc server status") { context, _ in
            guard let info = context.host?.vncInfo else { return "VNC server not active\n" }
            return describeVNC(info)
        },
        InfoItem(name: "registers", help: "show the cpu registers") { context, cpu in
            guard let dump = context.host?.registerDump(cpu: cpu ?? 0) else { return "No CPU \(cpu ?? 0)\n" }
            return dump.hasSuffix("\n") ? dump : dump + "\n"
        },
    ]

    /// QEMU's `info vnc` for its one server (`hmp_info_vnc`), from the `query-vnc` reply.
    static func describeVNC(_ info: JSONValue) -> String {
        func address(_ v: JSONValue) -> String {
            let host = v["host"]?.stringValue ?? "", service = v["service"]?.stringValue ?? ""
            let family = v["family"]?.stringValue ?? ""
            return family == "unix" ? "\(host) (unix)" : "\(host):\(service) (\(family))"
        }
        let auth = info["auth"]?.stringValue ?? "none"
        var text = "default:\n  Server: \(address(info))\n    Auth: \(auth) (Sub: none)\n"
        for client in info["clients"]?.arrayValue ?? [] {
            text += "  Client: \(address(client))\n    x509_dname: none\n    username: none\n"
        }
        return text
    }

    static func execute(_ commandLine: String, cpuIndex: Int?, context: QMPCommandContext) -> String {
        let words = commandLine.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        let output: String
        switch words.first {
        case nil:
            output = ""
        case "info"?:
            if words.count == 1 {
                output = infoItems.map { "info \($0.name) -- \($0.help)\n" }.joined()
            } else if let item = infoItems.first(where: { $0.name == words[1] }) {
                output = item.run(context, cpuIndex)
            } else {
                output = "unknown command: 'info \(words[1])'\n"
            }
        case "screendump"?:
            guard words.count == 2, let host = context.host else {
                output = words.count == 2 ? "no machine\n" : "screendump: expects a file name\n"
                break
            }
            do throws(QMPError) {
                try writeScreendump(words[1], host: host, fdSets: context.monitor.fdSets)
                output = ""
            } catch {
                output = "\(error.desc)\n"
            }
        case let name?:
            output = "unknown command: '\(name)'\n"
        }
        return output.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
    }

    /// QEMU's `info block` paragraph for one `query-block` entry (`print_block_info`): device,
    /// then the medium (`file (format[, read-only])`) or `[not inserted]`, the device it is
    /// attached to, the tray of a removable device, the cache mode of a medium.
    static func describeBlock(_ entry: JSONValue) -> String {
        let device = entry["device"]?.stringValue ?? ""
        var text = device
        if let inserted = entry["inserted"] {
            let file = inserted["file"]?.stringValue ?? ""
            let format = inserted["drv"]?.stringValue ?? ""
            let readOnly = inserted["ro"]?.boolValue == true ? ", read-only" : ""
            text += ": \(file) (\(format)\(readOnly))\n"
        } else {
            text += ": [not inserted]\n"
        }
        if let qdev = entry["qdev"]?.stringValue, !qdev.isEmpty { text += "    Attached to:      \(qdev)\n" }
        if entry["removable"]?.boolValue == true {
            let locked = entry["locked"]?.boolValue == true ? "" : "not "
            let tray = entry["tray_open"]?.boolValue == true ? "open" : "closed"
            text += "    Removable device: \(locked)locked, tray \(tray)\n"
        }
        if let cache = entry["inserted"]?["cache"] {
            let mode = cache["writeback"]?.boolValue == false ? "writethrough" : "writeback"
            text += "    Cache mode:       \(mode)\(cache["direct"]?.boolValue == true ? ", direct" : "")"
                + "\(cache["no-flush"]?.boolValue == true ? ", ignore flushes" : "")\n"
        }
        return text
    }

    /// QEMU's `info pci` paragraph for one function.
    static func describe(_ device: PCIDeviceInfo) -> String {
        func hex4(_ v: UInt16) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, 4 - s.count)) + s
        }
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: " ", count: max(0, width - s.count)) + s
        }
        var text = "  Bus \(pad(device.bus, 2)), device \(pad(device.slot, 3)), function \(device.function):\n"
        let name = device.description.isEmpty ? "Class \(hex4(device.classCode))" : device.description
        text += "    \(name): PCI device \(hex4(device.vendorID)):\(hex4(device.deviceID))\n"
        text += "      PCI subsystem \(hex4(device.subsystemVendorID)):\(hex4(device.subsystemID))\n"
        if let irq = device.irq { text += "      IRQ \(irq), pin \(["?", "A", "B", "C", "D"][min(device.irqPin, 4)])\n" }
        for bar in device.bars {
            let end = bar.address &+ bar.size &- 1
            if bar.isIO {
                text += "      BAR\(bar.index): I/O at 0x\(String(bar.address, radix: 16)) [0x\(String(end, radix: 16))].\n"
            } else {
                text += "      BAR\(bar.index): \(bar.is64Bit ? 64 : 32) bit\(bar.prefetchable ? " prefetchable" : "") memory at 0x\(String(bar.address, radix: 16)) [0x\(String(end, radix: 16))].\n"
            }
        }
        text += "      id \"\(device.qdevID)\"\n"
        return text
    }
}
