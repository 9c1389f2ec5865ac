import Backends
import Config
import DMCore
import Devices
import Monitor
#if canImport(Glibc)
import Glibc
#endif

/// One `-drive` (or `-hda`..`-hdd`, `-cdrom`), validated for form. The image is opened when the
/// drive is attached: `if=ide` drives at machine assembly, `if=virtio` ones after `-device`,
/// `if=none` ones by `-device ide-hd/ide-cd/virtio-blk-pci`.
struct DriveSpec {
    enum Interface: String { case ide, none, virtio }
    let text: String
    let option: String
    var id: String?
    var file: String?
    var interface: Interface
    var index: Int?
    var bus: Int?
    var unit: Int?
    var kind: ATADrive.Kind
    var format: BlockFormat?
    var cache: CacheMode
    var readOnly: Bool
    var locking: Bool

    init(_ source: OptionList) throws(ConfigError) {
        var list = source
        text = source.text
        option = source.option
        func fail(_ reason: String) -> ConfigError { ConfigError(option: source.option, value: source.text, reason: reason) }
        id = list.take("id")
        file = list.take("file")
        if file?.isEmpty == true { file = nil }
        let interfaceName = list.take("if") ?? "ide"
        guard let interface = Interface(rawValue: interfaceName) else {
            throw fail("unsupported interface '\(interfaceName)' (ide, virtio or none)")
        }
        self.interface = interface
        index = try list.takeUInt("index", max: 3).map(Int.init)
        bus = try list.takeUInt("bus", max: 1).map(Int.init)
        unit = try list.takeUInt("unit", max: 1).map(Int.init)
        switch list.take("media") ?? "disk" {
        case "disk": kind = .disk
        case "cdrom": kind = .cdrom
        case let other: throw fail("invalid media '\(other)' (disk or cdrom)")
        }
        if let name = list.take("format") {
            guard let format = BlockFormat(rawValue: name) else { throw fail("unsupported format '\(name)' (raw or qcow2)") }
            self.format = format
        }
        if let name = list.take("cache") {
            do { cache = try CacheMode(parsing: name) } catch { throw fail("invalid cache mode '\(name)'") }
        } else {
            cache = .writeback
        }
        let readonly = try list.takeBool("readonly")
        let readOnlyAlias = try list.takeBool("read-only")
        readOnly = readonly ?? readOnlyAlias ?? false
        locking = try list.takeBool("file.locking") ?? true
        // Accepted for compatibility; they change nothing here (errors always reach the guest,
        // I/O always runs on the worker pool, discard requests are always passed on). `serial`
        // and `addr` are read again by if=virtio's device.
        for key in ["discard", "aio", "werror", "rerror", "detect-zeroes", "serial", "addr"] { _ = list.take(key) }
        if let snapshot = try list.takeBool("snapshot"), snapshot { throw fail("snapshot=on is not supported") }
        try list.rejectUnknown()
        if kind == .cdrom { readOnly = true }
    }

    /// Opens the image: raw unless `format=` says otherwise, never by probing its content.
    func open() throws -> BlockBackend? {
        guard let file else {
            guard kind == .cdrom else { throw MachineError("\(option) \(text): a disk needs file=") }
            return nil
        }
        let format: BlockFormat
        if let given = self.format {
            format = given
        } else {
            // QEMU probes here and warns; probing lets a guest turn a raw disk into a qcow2 with a
            // backing file of its choice, so SwiftDM assumes raw and says so.
            let line = "swiftdm: warning: \(option) \(text): image format was not specified; using raw (SwiftDM does not probe; add format=raw or format=qcow2)\n"
            _ = line.withCString { write(2, $0, strlen($0)) }
            format = .raw
        }
        do {
            return try BlockBackend(path: file, options: BlockOpenOptions(format: format, readOnly: readOnly, cache: cache,
                                                                        locking: locking),
                                    workers: 1)
        } catch {
            throw MachineError("\(option) \(text): could not open '\(file)': \(error)")
        }
    }
}

/// One line of fw_cfg `bootorder`: a bootindex and the device path SeaBIOS matches.
struct BootEntry {
    let index: Int
    let path: String
}

/// The drives being placed while the machine assembles: -drive if=ide first, then -device
/// ide-hd/ide-cd/virtio-blk-pci (which take if=none drives by id), then the if=virtio drives.
final class IDEAssembly {
    var slots = [[ATADrive?]](repeating: [nil, nil], count: 2)
    var unnamedDrives: [String: DriveSpec] = [:]
    var usedDrives: Set<String> = []
    /// `-drive if=virtio`, each becoming a virtio-blk-pci function after the `-device`s.
    var virtioDrives: [DriveSpec] = []
    var serialCounter = 0
    /// `bootindex=` of the disk devices, with the device path SeaBIOS matches.
    private(set) var bootEntries: [BootEntry] = []

    /// Records a `bootindex=`; each index names one device.
    func addBootEntry(index: Int, path: String) -> Bool {
        guard !bootEntries.contains(where: { $0.index == index }) else { return false }
        bootEntries.append(BootEntry(index: index, path: path))
        return true
    }

    /// The `if=none` drive `id` names, marked used so no second device takes it.
    func claimDrive(_ id: String) throws(DriveClaimError) -> DriveSpec {
        guard let spec = unnamedDrives[id] else { throw .notFound }
        guard usedDrives.insert(id).inserted else { throw .inUse }
        return spec
    }

    enum DriveClaimError: Error { case notFound, inUse }

    func serial() -> String {
        serialCounter += 1
        return "QM" + String(repeating: "0", count: max(0, 5 - String(serialCounter).count)) + String(serialCounter)
    }

    func freeSlot() -> (Int, Int)? {
        for bus in 0..<2 { for unit in 0..<2 where slots[bus][unit] == nil { return (bus, unit) } }
        return nil
    }
}

extension PCMachine {
    /// PIIX3 IDE at 00:01.1 with its legacy ports and IRQs 14/15, present on every `pc`
    /// (with -nodefaults too), carrying the `-drive if=ide` drives.
    func assembleIDE(router: InterruptRouter) throws -> IDEAssembly {
        let assembly = IDEAssembly()
        var nextIndex = 0
        for list in config.drives {
            let spec = try DriveSpec(list)
            if spec.interface == .virtio {
                guard spec.kind == .disk else { throw MachineError("\(spec.option) \(spec.text): virtio drives are disks (media=disk)") }
                assembly.virtioDrives.append(spec)
                continue
            }
            if spec.interface == .none {
                guard let id = spec.id else { throw MachineError("\(spec.option) \(spec.text): if=none needs id=") }
                guard assembly.unnamedDrives[id] == nil else { throw MachineError("\(spec.option) \(spec.text): duplicate drive id '\(id)'") }
                assembly.unnamedDrives[id] = spec
                continue
            }
            let index: Int
            if let given = spec.index {
                index = given
            } else if let bus = spec.bus ?? (spec.unit != nil ? 0 : nil) {
                index = bus * 2 + (spec.unit ?? 0)
            } else {
                while nextIndex < 4 && assembly.slots[nextIndex / 2][nextIndex % 2] != nil { nextIndex += 1 }
                guard nextIndex < 4 else { throw MachineError("\(spec.option) \(spec.text): no free IDE slot (4 drives at most)") }
                index = nextIndex
            }
            let (bus, unit) = (index / 2, index % 2)
            guard assembly.slots[bus][unit] == nil else {
                throw MachineError("\(spec.option) \(spec.text): drive with bus=\(bus), unit=\(unit) (index=\(index)) exists")
            }
            if spec.kind == .disk && spec.readOnly {
                throw MachineError("\(spec.option) \(spec.text): Can't use a read-only drive for an IDE disk")
            }
            let id = spec.id ?? "ide\(bus)-\(spec.kind == .cdrom ? "cd" : "hd")\(unit)"
            assembly.slots[bus][unit] = ATADrive(kind: spec.kind, medium: try spec.open(), id: id, serial: assembly.serial(),
                                                 readOnly: spec.readOnly)
        }
        return assembly
    }

    /// Builds the controller once `-device ide-hd/ide-cd` had their say, plugs it at 01.1 and
    /// claims the legacy ports.
    func finishIDE(_ assembly: IDEAssembly, router: InterruptRouter, firmwareEntries: [BootEntry] = []) throws {
        let controller = PIIX3IDEController(drives: assembly.slots,
                                            irqs: PIIX3IDEController.legacyResources.map { router.line(gsi: $0.irq) },
                                            memory: memory, poster: loop)
        do {
            try pci.plug(controller, slot: 1, function: 1)
            for (i, resources) in PIIX3IDEController.legacyResources.enumerated() {
                try ports.register(controller, base: resources.command, length: 8,
                                   region: i == 0 ? PIIX3IDEController.primaryCommandRegion : PIIX3IDEController.secondaryCommandRegion,
                                   name: "ide.\(i)")
                try ports.register(controller, base: resources.control, length: 1,
                                   region: i == 0 ? PIIX3IDEController.primaryControlRegion : PIIX3IDEController.secondaryControlRegion,
                                   name: "ide.\(i) control")
            }
        } catch {
            throw MachineError("IDE controller: \(error)")
        }
        append(devices: [controller])
        for drive in blockDrives where drive.isRemovable {
            drive.onTrayMoved = { [weak self] drive, open in
                self?.monitorEvents?.emit(event: "DEVICE_TRAY_MOVED", data: JSONObject([
                    ("device", .string(drive.id)), ("id", .string(drive.qdevID ?? drive.id)), ("tray-open", .bool(open))]))
            }
        }
        try writeBootOrder(firmwareEntries + assembly.bootEntries)
    }

    /// The fw_cfg `bootorder` file: every bootindex entry by index (the direct-kernel-boot ROM
    /// has index 0). SeaBIOS boots these before the CMOS order (-boot order=).
    func writeBootOrder(_ entries: [BootEntry]) throws {
        guard !entries.isEmpty, let fwcfg = devices.lazy.compactMap({ $0 as? FwCfg }).first else { return }
        var seen: Set<Int> = []
        for entry in entries where !seen.insert(entry.index).inserted {
            throw MachineError("bootindex \(entry.index) is used twice (-kernel takes bootindex 0)")
        }
        let paths = entries.sorted { $0.index < $1.index }.map(\.path)
        do { _ = try fwcfg.addFile(name: "bootorder", data: Array(paths.joined(separator: "\n").utf8) + [0]) } catch {
            throw MachineError("bootindex: \(error)")
        }
    }

    /// The IDE and AHCI drives, for query-block and the media commands (call with `lock` held).
    public var blockDrives: [ATADrive] {
        devices.compactMap { $0 as? StorageController }.flatMap(\.drives)
    }

    /// The drive a monitor command names: by drive id or by the device's id.
    public func blockDrive(named name: String) -> ATADrive? {
        blockDrives.first { $0.id == name || $0.qdevID == name }
    }

    /// What query-block and query-blockstats report: IDE drives, then virtio disks.
    var blockDeviceInfos: [BlockDeviceInfo] {
        blockDrives.map(\.info) + virtioDisks.map(\.info)
    }

    /// Writes back and closes every image (at exit).
    func closeBlockDrives() {
        for drive in blockDrives { drive.removeMedium() }
        for disk in virtioDisks { try? disk.medium.close() }
    }
}

/// `-device ide-hd` / `ide-cd`: `drive=ID` (an if=none drive), `bus=ide.N` (PIIX3) or
/// `bus=ID.N` (port N of the AHCI controller `-device ahci,id=ID`), `unit=U`, `bootindex=N`
/// (fw_cfg bootorder).
func attachIDEDevice(kind: ATADrive.Kind, list: inout OptionList, id: String?, context: inout DeviceContext) throws(ConfigError) {
    func fail(_ reason: String) -> ConfigError { ConfigError(option: "-device", value: list.text, reason: reason) }
    guard let assembly = context.ide else { throw fail("no IDE bus") }
    let driveID = list.take("drive")
    let busName = list.take("bus")
    let unit = try list.takeUInt("unit", max: 1).map(Int.init)
    let bootIndex = try list.takeUInt("bootindex", max: 1 << 30).map(Int.init)
    // The IDENTIFY serial number (20 characters at most); QEMU's QMnnnnn otherwise.
    let serial = list.take("serial").map { String($0.prefix(20)) }
    let kindName = kind == .cdrom ? "cd" : "hd"

    // Where the drive goes: a PIIX3 slot or an AHCI port; its default name and firmware path.
    var ideSlot: (Int, Int)?
    var ahciPort: (controller: AHCIController, port: Int)?
    let defaultName: String, bootPath: String
    if let busName, !busName.hasPrefix("ide."), let dot = busName.lastIndex(of: ".") {
        guard let bus = context.ahci[String(busName[..<dot])], let port = Int(busName[busName.index(after: dot)...]),
              (0..<AHCIController.portCount).contains(port) else {
            throw fail("Bus '\(busName)' not found")
        }
        guard unit ?? 0 == 0 else { throw fail("unit \(unit ?? 0) on AHCI port \(busName): an AHCI port has one unit, 0") }
        guard bus.controller.drive(onPort: port) == nil else { throw fail("AHCI port \(busName) is in use") }
        ahciPort = (bus.controller, port)
        defaultName = "\(busName)-\(kindName)"
        bootPath = "\(bus.firmwarePath)/drive@\(port)/disk@0"
    } else {
        var bus: Int?
        if let busName {
            guard busName.hasPrefix("ide."), let n = Int(busName.dropFirst(4)), (0...1).contains(n) else {
                throw fail("Bus '\(busName)' not found (ide.0 or ide.1)")
            }
            bus = n
        }
        let slot: (Int, Int)
        if let bus {
            guard let u = unit ?? (0..<2).first(where: { assembly.slots[bus][$0] == nil }) else { throw fail("IDE bus ide.\(bus) is full") }
            slot = (bus, u)
        } else if let unit {
            slot = (0, unit)
        } else {
            guard let free = assembly.freeSlot() else { throw fail("no free IDE slot") }
            slot = free
        }
        guard assembly.slots[slot.0][slot.1] == nil else { throw fail("IDE unit \(slot.1) on ide.\(slot.0) is in use") }
        ideSlot = slot
        defaultName = "ide\(slot.0)-\(kindName)\(slot.1)"
        bootPath = "/pci@i0cf8/ide@1,1/drive@\(slot.0)/disk@\(slot.1)"
    }

    var medium: BlockBackend?
    var readOnly = kind == .cdrom
    var name = id ?? defaultName
    if let driveID {
        var spec: DriveSpec
        do { spec = try assembly.claimDrive(driveID) } catch {
            throw fail(error == .notFound ? "Property 'ide-\(kindName).drive' can't find value '\(driveID)'"
                                          : "drive '\(driveID)' is already in use")
        }
        if kind == .cdrom { spec.readOnly = true } else if spec.readOnly { throw fail("Can't use a read-only drive") }
        spec.kind = kind
        readOnly = spec.readOnly
        name = driveID
        do { medium = try spec.open() } catch { throw fail("\(error)") }
    } else if kind == .disk {
        throw fail("drive property not set")
    }
    if let bootIndex {
        guard assembly.addBootEntry(index: bootIndex, path: bootPath) else { throw fail("bootindex \(bootIndex) is used twice") }
    }
    let drive = ATADrive(kind: kind, medium: medium, id: name, qdevID: id, serial: serial ?? assembly.serial(), readOnly: readOnly)
    if let (controller, port) = ahciPort {
        controller.attach(drive, port: port)
    } else if let (bus, unit) = ideSlot {
        assembly.slots[bus][unit] = drive
    }
}

// MARK: monitor (QMP) side; call with `lock` held

extension PCMachine {
    /// QMP names a drive by its block device name (`device`, the -drive id) or its qdev `id`.
    func drive(device: String?, id: String?) throws(QMPError) -> ATADrive {
        let drives = blockDrives
        if let id {
            guard let drive = drives.first(where: { ($0.qdevID ?? $0.id) == id }) else { throw .deviceNotFound(id) }
            return drive
        }
        let name = device ?? ""
        guard let drive = drives.first(where: { $0.id == name }) else { throw .deviceNotFound(name) }
        return drive
    }

    func ejectDrive(device: String?, id: String?, force: Bool) throws(QMPError) {
        let drive = try drive(device: device, id: id)
        do { try drive.eject(force: force) } catch { throw .generic(error.description) }
    }

    /// blockdev-change-medium / change: `format` raw unless given (no probing), `readOnlyMode`
    /// retain, read-only or read-write (a CD is always read-only).
    /// QMP `blockdev-change-medium`; `/dev/fdset/N` names a descriptor from `add-fd`, which
    /// is how libxl inserts a CD-ROM it opened itself.
    func changeDriveMedium(device: String?, id: String?, filename: String, format: String?, readOnlyMode: String?,
                           fdSets: FileDescriptorSets) throws(QMPError) {
        let drive = try drive(device: device, id: id)
        var opener: BlockFileOpener?
        if FileDescriptorSets.setID(inPath: filename) != nil {
            // The sets live on the loop thread, where media change and close happen too.
            let sets = UncheckedSendable(fdSets)
            opener = BlockFileOpener(open: { path, flags in
                do throws(FileDescriptorSets.OpenError) { return try sets.value.open(path, flags: flags) } catch {
                    errno = error.errno
                    return -1
                }
            }, close: { fd in sets.value.closeDuplicate(fd) })
        }
        guard let blockFormat = BlockFormat(rawValue: format ?? "raw") else {
            throw .generic("Unknown driver '\(format ?? "")'")
        }
        switch readOnlyMode ?? "retain" {
        case "retain", "read-only": break
        case "read-write": throw .generic("Cannot change the read-only mode of a CD-ROM to read-write")
        case let other: throw .generic("Parameter 'read-only-mode' does not accept value '\(other)'")
        }
        do { try drive.changeMedium(path: filename, format: blockFormat, readOnly: true, opener: opener) } catch {
            throw .generic(error.description)
        }
    }

    /// query-block's entries, in QEMU's shape.
    var blockQueryEntries: [JSONValue] {
        blockDeviceInfos.map { info in
            var entry = JSONObject([("device", .string(info.id)), ("qdev", .string(info.qdevID ?? info.id)),
                                    ("locked", .bool(info.locked)), ("removable", .bool(info.removable))])
            if let open = info.trayOpen { entry["tray_open"] = .bool(open) }
            entry["io-status"] = "ok"
            if let path = info.path, let format = info.format {
                let image = JSONObject([("filename", .string(path)), ("format", .string(format)),
                                        ("virtual-size", .int(info.size))])
                entry["inserted"] = .object(JSONObject([
                    ("file", .string(path)), ("ro", .bool(info.readOnly)), ("drv", .string(format)),
                    ("encrypted", false), ("detect_zeroes", "off"), ("backing_file_depth", 0),
                    ("bps", 0), ("bps_rd", 0), ("bps_wr", 0), ("iops", 0), ("iops_rd", 0), ("iops_wr", 0),
                    ("write_threshold", 0), ("image", .object(image)),
                    ("cache", .object(JSONObject([("writeback", true), ("direct", false), ("no-flush", false)]))),
                ]))
            }
            entry["type"] = "unknown"
            return .object(entry)
        }
    }

    /// query-blockstats' entries with the drives' counters.
    var blockStatsEntries: [JSONValue] {
        blockDeviceInfos.map { info in
            let s = info.stats
            let stats = JSONObject([
                ("rd_bytes", .int(s.readBytes)), ("wr_bytes", .int(s.writtenBytes)),
                ("rd_operations", .int(s.readOperations)), ("wr_operations", .int(s.writeOperations)),
                ("flush_operations", .int(s.flushOperations)),
                ("rd_total_time_ns", .int(s.readTotalNanoseconds)), ("wr_total_time_ns", .int(s.writeTotalNanoseconds)),
                ("flush_total_time_ns", .int(s.flushTotalNanoseconds)),
                ("failed_rd_operations", .int(s.failedReadOperations)), ("failed_wr_operations", .int(s.failedWriteOperations)),
                ("failed_flush_operations", .int(s.failedFlushOperations)),
                ("invalid_rd_operations", 0), ("invalid_wr_operations", 0), ("invalid_flush_operations", 0),
                ("rd_merged", 0), ("wr_merged", 0), ("wr_highest_offset", 0),
                ("unmap_operations", 0), ("unmap_bytes", 0), ("unmap_merged", 0), ("unmap_total_time_ns", 0),
                ("failed_unmap_operations", 0), ("invalid_unmap_operations", 0),
                ("account_invalid", true), ("account_failed", true), ("timed_stats", []),
            ])
            return .object(JSONObject([("device", .string(info.id)), ("qdev", .string(info.qdevID ?? info.id)),
                                       ("stats", .object(stats))]))
        }
    }
}
