import Config
#if canImport(Glibc)
import Glibc
#endif

// MARK: Argument types

struct CapabilitiesArguments: QMPArguments {
    static let parameters = [QMPParameter("enable", "[str]", optional: true)]
    let enable: [String]?
}

struct CommandLineOptionsArguments: QMPArguments {
    static let parameters = [QMPParameter("option", "str", optional: true)]
    let option: String?
}

struct PasswordArguments: QMPArguments {
    static let parameters = [QMPParameter("password", "str")]
    let password: String
}

struct SetPasswordArguments: QMPArguments {
    static let parameters = [QMPParameter("protocol", "str"), QMPParameter("password", "str"),
                             QMPParameter("connected", "str", optional: true), QMPParameter("display", "str", optional: true)]
    let `protocol`: String
    let password: String
    let connected: String?
    let display: String?
}

struct ScreendumpArguments: QMPArguments {
    static let parameters = [QMPParameter("filename", "str"), QMPParameter("device", "str", optional: true),
                             QMPParameter("head", "int", optional: true), QMPParameter("format", "str", optional: true)]
    let filename: String
    let device: String?
    let head: Int?
    let format: String?
}

struct EjectArguments: QMPArguments {
    static let parameters = [QMPParameter("device", "str", optional: true), QMPParameter("id", "str", optional: true),
                             QMPParameter("force", "bool", optional: true)]
    let device: String?
    let id: String?
    let force: Bool?
}

struct ChangeMediumArguments: QMPArguments {
    static let parameters = [QMPParameter("device", "str", optional: true), QMPParameter("id", "str", optional: true),
                             QMPParameter("filename", "str"), QMPParameter("format", "str", optional: true),
                             QMPParameter("force", "bool", optional: true),
                             QMPParameter("read-only-mode", "str", optional: true)]
    let device: String?
    let id: String?
    let filename: String
    let format: String?
    let force: Bool?
    let readOnlyMode: String?
    enum CodingKeys: String, CodingKey {
        case device, id, filename, format, force
        case readOnlyMode = "read-only-mode"
    }
}

struct ChangeArguments: QMPArguments {
    static let parameters = [QMPParameter("device", "str"), QMPParameter("target", "str"), QMPParameter("arg", "str", optional: true)]
    let device: String
    let target: String
    let arg: String?
}

/// `device_add` takes the driver, an optional id and any property of the device.
struct DeviceAddArguments: QMPArguments {
    static let parameters = [QMPParameter("driver", "str"), QMPParameter("id", "str", optional: true),
                             QMPParameter("bus", "str", optional: true)]
    static var acceptsAnyMember: Bool { true }
    let driver: String
    let properties: JSONObject

    enum CodingKeys: String, CodingKey { case driver }
    init(from decoder: any Decoder) throws {
        driver = try decoder.container(keyedBy: CodingKeys.self).decode(String.self, forKey: .driver)
        properties = try JSONValue(from: decoder).objectValue ?? JSONObject()
    }
}

struct DeviceIDArguments: QMPArguments {
    static let parameters = [QMPParameter("id", "str")]
    let id: String
}

struct HumanMonitorArguments: QMPArguments {
    static let parameters = [QMPParameter("command-line", "str"), QMPParameter("cpu-index", "int", optional: true)]
    let commandLine: String
    let cpuIndex: Int?
    enum CodingKeys: String, CodingKey {
        case commandLine = "command-line"
        case cpuIndex = "cpu-index"
    }
}

struct SaveDevicesStateArguments: QMPArguments {
    static let parameters = [QMPParameter("filename", "str"), QMPParameter("live", "bool", optional: true)]
    let filename: String
    let live: Bool?
}

struct LoadDevicesStateArguments: QMPArguments {
    static let parameters = [QMPParameter("filename", "str")]
    let filename: String
}

struct DirtyLogArguments: QMPArguments {
    static let parameters = [QMPParameter("enable", "bool")]
    let enable: Bool
}

struct AddFDArguments: QMPArguments {
    static let parameters = [QMPParameter("fdset-id", "int", optional: true), QMPParameter("opaque", "str", optional: true)]
    let fdsetID: Int?
    let opaque: String?
    enum CodingKeys: String, CodingKey {
        case fdsetID = "fdset-id"
        case opaque
    }
}

struct RemoveFDArguments: QMPArguments {
    static let parameters = [QMPParameter("fdset-id", "int"), QMPParameter("fd", "int", optional: true)]
    let fdsetID: Int
    let fd: Int32?
    enum CodingKeys: String, CodingKey {
        case fdsetID = "fdset-id"
        case fd
    }
}

// MARK: The table

enum QMPCommands {
    static let table = QMPCommandTable([
        QMPCommand("qmp_capabilities", CapabilitiesArguments.self, allowedInNegotiation: true) { args, context throws(QMPError) in
            try context.session.negotiate(enable: args.enable ?? [])
            return .empty
        },
        QMPCommand("query-version", NoArguments.self, returns: "VersionInfo") { _, context in
            .value(context.monitor.versionInfo)
        },
        QMPCommand("query-commands", NoArguments.self, returns: "[CommandInfo]") { _, context in
            .value(context.monitor.commands.commandList)
        },
        QMPCommand("query-qmp-schema", NoArguments.self, returns: "[SchemaInfo]") { _, context in
            .value(context.monitor.commands.schema(events: Monitor.eventNames))
        },
        QMPCommand("query-command-line-options", CommandLineOptionsArguments.self, returns: "[CommandLineOptionInfo]") {
            args, _ throws(QMPError) in
            // libxl probes `run-with` for `chroot` and `user` to pick its deprivilege spelling.
            var entries = CommandLineParser.optionParameters
            if let option = args.option {
                entries = entries.filter { $0.option == option }
                guard !entries.isEmpty else { throw .generic("invalid option name: \(option)") }
            }
            return .value(.array(entries.map { entry in
                ["option": .string(entry.option),
                 "parameters": .array(entry.parameters.map { ["name": .string($0), "type": "string"] })]
            }))
        },
        QMPCommand("query-status", NoArguments.self, returns: "StatusInfo") { _, context throws(QMPError) in
            let host = try context.requireHost()
            return .value(["status": .string(host.runStateName), "singlestep": false, "running": .bool(host.isRunning)])
        },
        QMPCommand("stop", NoArguments.self) { _, context throws(QMPError) in
            let host = try context.requireHost()
            return .later { complete in host.stop { complete(.success(.object(JSONObject()))) } }
        },
        QMPCommand("cont", NoArguments.self) { _, context throws(QMPError) in
            let host = try context.requireHost()
            return .later { complete in host.cont { result in complete(result.map { .object(JSONObject()) }) } }
        },
        QMPCommand("system_reset", NoArguments.self) { _, context throws(QMPError) in
            let host = try context.requireHost()
            return .later { complete in host.systemReset { complete(.success(.object(JSONObject()))) } }
        },
        QMPCommand("system_wakeup", NoArguments.self) { _, context throws(QMPError) in
            let host = try context.requireHost()
            return .later { complete in host.systemWakeup { result in complete(result.map { .object(JSONObject()) }) } }
        },
        QMPCommand("system_powerdown", NoArguments.self) { _, context throws(QMPError) in
            try context.requireHost().systemPowerdown()
            return .empty
        },
        QMPCommand("quit", NoArguments.self) { _, context throws(QMPError) in
            // Answer first, then go, as QEMU: the reply and the SHUTDOWN event reach the client.
            let host = try context.requireHost()
            return .later { complete in
                complete(.success(.object(JSONObject())))
                host.quit()
            }
        },
        QMPCommand("query-name", NoArguments.self, returns: "NameInfo") { _, context throws(QMPError) in
            .value(.object(JSONObject(try context.requireHost().guestName.map { [("name", JSONValue.string($0))] } ?? [])))
        },
        QMPCommand("query-uuid", NoArguments.self, returns: "UuidInfo") { _, context throws(QMPError) in
            .value(["UUID": .string(try context.requireHost().guestUUID ?? "00000000-0000-0000-0000-000000000000")])
        },
        QMPCommand("query-chardev", NoArguments.self, returns: "[ChardevInfo]") { _, context throws(QMPError) in
            let all = context.monitor.chardevs + (try context.requireHost().chardevs)
            return .value(.array(all.map {
                ["label": .string($0.label), "filename": .string($0.filename), "frontend-open": .bool($0.frontendOpen)]
            }))
        },
        QMPCommand("query-cpus-fast", NoArguments.self, returns: "[CpuInfoFast]") { _, context throws(QMPError) in
            .value(.array(try context.requireHost().cpus.map { cpu in
                ["thread-id": .int(cpu.threadID),
                 "props": ["core-id": 0, "thread-id": 0, "socket-id": .int(cpu.socket)],
                 "qom-path": .string("/machine/unattached/device[\(cpu.index)]"),
                 "cpu-index": .int(cpu.index), "target": "x86_64"]
            }))
        },
        QMPCommand("query-hotpluggable-cpus", NoArguments.self, returns: "[HotpluggableCPU]") { _, context throws(QMPError) in
            let host = try context.requireHost()
            let present = host.cpus
            // QEMU lists the free slots first, highest socket first, then the present CPUs.
            var entries: [JSONValue] = []
            for socket in stride(from: host.maxCPUs - 1, through: 0, by: -1) {
                var entry = JSONObject([("props", ["core-id": 0, "thread-id": 0, "socket-id": .int(socket)]),
                                        ("vcpus-count", 1)])
                if let cpu = present.first(where: { $0.socket == socket }) {
                    entry["qom-path"] = .string("/machine/unattached/device[\(cpu.index)]")
                }
                entry["type"] = .string(host.cpuTypeName)
                entries.append(.object(entry))
            }
            return .value(.array(entries))
        },
        QMPCommand("query-pci", NoArguments.self, returns: "[PciInfo]") { _, context throws(QMPError) in
            .value([["bus": 0, "devices": .array(try context.requireHost().pciDevices.map(pciDeviceJSON))]])
        },
        QMPCommand("query-block", NoArguments.self, returns: "[BlockInfo]") { _, context throws(QMPError) in
            .value(.array(try context.requireHost().blockDevices))
        },
        QMPCommand("query-blockstats", NoArguments.self, returns: "[BlockStats]") { _, context throws(QMPError) in
            .value(.array(try context.requireHost().blockStats))
        },
        QMPCommand("query-vnc", NoArguments.self, returns: "VncInfo") { _, context throws(QMPError) in
            .value(try context.requireHost().vncInfo ?? ["enabled": false])
        },
        QMPCommand("change-vnc-password", PasswordArguments.self) { args, context throws(QMPError) in
            try context.requireHost().setVNCPassword(args.password)
            return .empty
        },
        QMPCommand("set_password", SetPasswordArguments.self) { args, context throws(QMPError) in
            switch args.protocol {
            case "vnc":
                // QEMU: VNC only knows "keep" (clients stay connected).
                if let connected = args.connected, connected != "keep" {
                    throw .generic("VNC protocol only supports 'connected=keep'")
                }
                try context.requireHost().setVNCPassword(args.password)
            case "spice":
                throw .generic("SPICE is not available")
            default:
                throw .generic("Parameter 'protocol' does not accept value '\(args.protocol)'")
            }
            return .empty
        },
        QMPCommand("screendump", ScreendumpArguments.self) { args, context throws(QMPError) in
            switch args.format ?? "ppm" {
            case "ppm": break
            case "png": throw .generic("screendump: PNG is not supported; use format=ppm")
            case let other: throw .generic("Parameter 'format' does not accept value '\(other)'")
            }
            if let head = args.head, head != 0 { throw .generic("Head '\(head)' does not exist") }
            try writeScreendump(args.filename, host: try context.requireHost(), fdSets: context.monitor.fdSets)
            return .empty
        },
        QMPCommand("eject", EjectArguments.self) { args, context throws(QMPError) in
            guard (args.device == nil) != (args.id == nil) else { throw .generic("Need exactly one of 'device' and 'id'") }
            try context.requireHost().eject(device: args.device, id: args.id, force: args.force ?? false)
            return .empty
        },
        QMPCommand("blockdev-change-medium", ChangeMediumArguments.self) { args, context throws(QMPError) in
            guard (args.device == nil) != (args.id == nil) else { throw .generic("Need exactly one of 'device' and 'id'") }
            try context.requireHost().changeMedium(device: args.device, id: args.id, filename: args.filename,
                                                   format: args.format, readOnlyMode: args.readOnlyMode,
                                                   fdSets: context.monitor.fdSets)
            return .empty
        },
        QMPCommand("change", ChangeArguments.self) { args, context throws(QMPError) in
            let host = try context.requireHost()
            if args.device == "vnc" {
                guard args.target == "password", let password = args.arg else {
                    throw .generic("Parameter 'target' expects 'password'")
                }
                try host.setVNCPassword(password)
            } else {
                try host.changeMedium(device: args.device, id: nil, filename: args.target, format: args.arg,
                                      readOnlyMode: nil, fdSets: context.monitor.fdSets)
            }
            return .empty
        },
        QMPCommand("device_add", DeviceAddArguments.self) { args, context throws(QMPError) in
            try context.requireHost().addDevice(args.properties)
            return .empty
        },
        QMPCommand("device_del", DeviceIDArguments.self) { args, context throws(QMPError) in
            try context.requireHost().deleteDevice(id: args.id)
            return .empty
        },
        QMPCommand("human-monitor-command", HumanMonitorArguments.self, returns: "str") { args, context throws(QMPError) in
            .value(.string(HumanMonitor.execute(args.commandLine, cpuIndex: args.cpuIndex, context: context)))
        },
        QMPCommand("add-fd", AddFDArguments.self, returns: "AddfdInfo") { args, context throws(QMPError) in
            guard let fd = context.takePassedFD() else { throw .generic("No file descriptor supplied via SCM_RIGHTS") }
            let added = try context.monitor.fdSets.add(fd, toSet: args.fdsetID, opaque: args.opaque)
            return .value(["fdset-id": .int(added.setID), "fd": .int(added.fd)])
        },
        QMPCommand("remove-fd", RemoveFDArguments.self) { args, context throws(QMPError) in
            try context.monitor.fdSets.remove(setID: args.fdsetID, fd: args.fd, vmRunning: context.host?.isRunning ?? false)
            return .empty
        },
        QMPCommand("query-fdsets", NoArguments.self, returns: "[FdsetInfo]") { _, context in
            .value(context.monitor.fdSets.queryResult)
        },
        QMPCommand("xen-save-devices-state", SaveDevicesStateArguments.self) { args, context throws(QMPError) in
            // `live` only matters for the block layer's hand-over in QEMU; the device state
            // is the same either way.
            let host = try context.requireHost()
            let fdSets = context.monitor.fdSets
            return withStoppedVM(host) { () throws(QMPError) in
                let bytes = try host.saveDeviceState()
                let fd: Int32
                do throws(FileDescriptorSets.OpenError) {
                    fd = try fdSets.open(args.filename, flags: O_WRONLY | O_CREAT | O_TRUNC)
                } catch {
                    throw .generic(error.description)
                }
                defer { fdSets.closeDuplicate(fd) }
                try writeAll(fd, bytes, path: args.filename)
            }
        },
        QMPCommand("xen-load-devices-state", LoadDevicesStateArguments.self) { args, context throws(QMPError) in
            let host = try context.requireHost()
            let fdSets = context.monitor.fdSets
            return withStoppedVM(host) { () throws(QMPError) in
                let fd: Int32
                do throws(FileDescriptorSets.OpenError) {
                    fd = try fdSets.open(args.filename, flags: O_RDONLY)
                } catch {
                    throw .generic(error.description)
                }
                defer { fdSets.closeDuplicate(fd) }
                try host.loadDeviceState(try readAll(fd, path: args.filename))
            }
        },
        QMPCommand("xen-set-global-dirty-log", DirtyLogArguments.self) { args, context throws(QMPError) in
            try context.requireHost().setGlobalDirtyLog(args.enable)
            return .empty
        },
    ])

    /// Runs `work` with the vCPUs stopped, as QEMU's save/load of device state does (a running
    /// VM is stopped, then resumed, with STOP and RESUME events).
    static func withStoppedVM(_ host: any MonitorHost, _ work: @escaping () throws(QMPError) -> Void) -> QMPReply {
        guard host.isRunning else {
            do throws(QMPError) {
                try work()
                return .empty
            } catch {
                return .later { complete in complete(.failure(error)) }
            }
        }
        return .later { complete in
            host.stop {
                let result: Result<JSONValue, QMPError>
                do throws(QMPError) {
                    try work()
                    result = .success(.object(JSONObject()))
                } catch {
                    result = .failure(error)
                }
                host.cont { _ in complete(result) }
            }
        }
    }

    static func pciDeviceJSON(_ device: PCIDeviceInfo) -> JSONValue {
        var entry = JSONObject([("bus", .int(device.bus)), ("slot", .int(device.slot)), ("function", .int(device.function))])
        var classInfo = JSONObject([("class", .int(device.classCode))])
        if !device.description.isEmpty { classInfo["desc"] = .string(device.description) }
        entry["class_info"] = .object(classInfo)
        entry["id"] = ["device": .int(device.deviceID), "vendor": .int(device.vendorID),
                       "subsystem": .int(device.subsystemID), "subsystem-vendor": .int(device.subsystemVendorID)]
        if let irq = device.irq {
            entry["irq"] = .int(irq)
            entry["irq_pin"] = .int(device.irqPin)
        }
        entry["qdev_id"] = .string(device.qdevID)
        entry["regions"] = .array(device.bars.map { bar in
            var region = JSONObject([("bar", .int(bar.index)), ("type", .string(bar.isIO ? "io" : "memory")),
                                     ("address", .int(bar.address)), ("size", .int(bar.size))])
            if !bar.isIO {
                region["prefetch"] = .bool(bar.prefetchable)
                region["mem_type_64"] = .bool(bar.is64Bit)
            }
            return .object(region)
        })
        return .object(entry)
    }
}

/// Device state files are small (kilobytes); both loops are bounded by the file and by a
/// 64 MiB cap on what we accept to read.
/// Writes the display's picture as PPM to `filename` (a path or `/dev/fdset/N`).
func writeScreendump(_ filename: String, host: any MonitorHost, fdSets: FileDescriptorSets) throws(QMPError) {
    let picture = try host.screenshot()
    let fd: Int32
    do throws(FileDescriptorSets.OpenError) {
        fd = try fdSets.open(filename, flags: O_WRONLY | O_CREAT | O_TRUNC)
    } catch {
        throw .generic(error.description)
    }
    defer { fdSets.closeDuplicate(fd) }
    try writeAll(fd, picture.ppm, path: filename)
}

func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(QMPError) {
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress?.advanced(by: done), $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw .generic("Could not write '\(path)': \(String(cString: strerror(n < 0 ? errno : EIO)))") }
        done += n
    }
}

func readAll(_ fd: Int32, path: String, limit: Int = 64 << 20) throws(QMPError) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw .generic("Could not read '\(path)': \(String(cString: strerror(errno)))") }
        if n == 0 { return out }
        out += chunk[0..<n]
        guard out.count <= limit else { throw .generic("'\(path)' is larger than \(limit >> 20) MiB") }
    }
}
