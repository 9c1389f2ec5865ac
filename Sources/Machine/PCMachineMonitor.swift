import Backends
import Config
import DMCore
import Devices
import Monitor
#if canImport(Glibc)
import Glibc
#endif

/// The machine as the QMP monitor sees it. Called on the event loop with the `DeviceLock`
/// held; the operations that wait for vCPUs move to the loop without the lock
/// (`postUnlocked`) and come back under it (`post`) to complete.
extension PCMachine: MonitorHost {
    public var runStateName: String { runState.rawValue }
    public var isRunning: Bool { runState == .running }
    public var guestName: String? { config.name }
    public var guestUUID: String? { config.uuid }

    public func stop(completion: @escaping () -> Void) {
        let done = UncheckedSendable(completion)
        loop.postUnlocked { [self] in
            // QEMU's vm_stop changes nothing unless the VM runs (prelaunch stays prelaunch).
            if runState == .running { pause() }
            loop.post { done.value() }
        }
    }

    public func cont(completion: @escaping (Result<Void, QMPError>) -> Void) {
        switch runState {
        case .shutdown, .internalError:
            completion(.failure(.generic("Resetting the Virtual Machine is required")))
        case .inmigrate:
            // As QEMU: remember to start once the incoming state has been loaded.
            startAfterIncoming = true
            completion(.success(()))
        case .running, .suspended:
            completion(.success(()))
        case .prelaunch, .paused:
            let done = UncheckedSendable(completion)
            loop.postUnlocked { [self] in
                resume()
                loop.post { done.value(.success(())) }
            }
        }
    }

    public func systemReset(completion: @escaping () -> Void) {
        let done = UncheckedSendable(completion)
        loop.postUnlocked { [self] in
            handleReset(cause: .hostQMPSystemReset)
            loop.post { done.value() }
        }
    }

    public func systemWakeup(completion: @escaping (Result<Void, QMPError>) -> Void) {
        let done = UncheckedSendable(completion)
        loop.postUnlocked { [self] in
            let result: Result<Void, QMPError>
            do throws(MachineError) {
                try wake()
                result = .success(())
            } catch {
                result = .failure(.generic(error.message))
            }
            loop.post { done.value(result) }
        }
    }

    public func systemPowerdown() throws(QMPError) {
        guard let power = device(PIIX4PowerManagement.self) else {
            throw .generic("this machine has no ACPI power button")
        }
        monitorEvents?.emitPowerdown()
        power.pressPowerButton()
    }

    public func quit() {
        monitorEvents?.emitShutdown(guest: false, reason: ShutdownCause.hostQMPQuit.rawValue)
        requestExit(status: 0)
    }

    public var chardevs: [ChardevInfo] {
        backends.map { ChardevInfo(label: $0.id, filename: $0.filename) }
    }

    public var cpus: [CPUInfo] {
        let threads = accelerator.vcpuThreadIDs
        return (0..<config.smp.cpus).map { index in
            CPUInfo(index: index, threadID: Int(index < threads.count ? threads[index] : 0), socket: index)
        }
    }

    public var cpuTypeName: String { "host-x86_64-cpu" }
    public var maxCPUs: Int { config.smp.maxCPUs }

    public var pciDevices: [PCIDeviceInfo] {
        pci.functions.enumerated().compactMap { devfn, device -> PCIDeviceInfo? in
            guard let device else { return nil }
            let function = device.pci
            let config = function.config
            let pin = Int(config.get8(0x3D))
            var bars: [PCIDeviceInfo.BAR] = []
            for (index, definition) in function.bars.enumerated() {
                guard let definition else { continue }
                let address = function.decodedAddress(bar: index) ?? UInt64(0xFFFF_FFFF_FFFF_FFFF)
                switch definition.kind {
                case .io:
                    bars.append(.init(index: index, isIO: true, address: address, size: definition.size))
                case .memory32(let prefetchable):
                    bars.append(.init(index: index, isIO: false, address: address, size: definition.size, prefetchable: prefetchable))
                case .memory64(let prefetchable):
                    bars.append(.init(index: index, isIO: false, address: address, size: definition.size,
                                      prefetchable: prefetchable, is64Bit: true))
                }
            }
            return PCIDeviceInfo(slot: devfn >> 3, function: devfn & 7, vendorID: config.get16(0x00),
                                 deviceID: config.get16(0x02), subsystemVendorID: config.get16(0x2C),
                                 subsystemID: config.get16(0x2E), classCode: config.get16(0x0A),
                                 description: Self.pciClassNames[config.get16(0x0A)] ?? "",
                                 irq: pin != 0 ? Int(config.get8(0x3C)) : nil, irqPin: pin, bars: bars)
        }
    }

    /// QEMU's names for the classes this machine has (`pci_class_descriptions`).
    static let pciClassNames: [UInt16: String] = [
        0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0680: "Bridge", 0x0101: "IDE controller", 0x0106: "SATA controller",
        0x0300: "VGA controller", 0x0200: "Ethernet controller", 0x00FF: "Class 00ff",
    ]

    public func registerDump(cpu: Int) -> String? {
        guard cpu >= 0, cpu < config.smp.cpus else { return nil }
        // Reading registers needs the vCPU outside KVM_RUN; while it runs, KVM would make us
        // wait for its next exit with the device lock held, which that exit may need.
        guard runState != .running else { return "info registers needs a stopped VM (run 'stop' first)" }
        return accelerator.registerDump(cpu: cpu)
    }

    public func saveDeviceState() throws(QMPError) -> [UInt8] {
        DeviceStateStream.save(snapshottableDevices)
    }

    public func loadDeviceState(_ bytes: [UInt8]) throws(QMPError) {
        do {
            try DeviceStateStream.load(bytes, into: snapshottableDevices)
        } catch {
            throw .generic("Error loading device state: \(error.description)")
        }
    }

    public func setGlobalDirtyLog(_ enabled: Bool) throws(QMPError) {
        guard let xen else {
            throw .generic("global dirty-page logging needs the Xen accelerator; this machine runs on KVM")
        }
        xen.accelerator.globalDirtyLogging = enabled
    }

    public func addDevice(_ properties: JSONObject) throws(QMPError) {
        let driver = properties["driver"]?.stringValue ?? ""
        guard DeviceDriver.find(driver) != nil else { throw .generic("'\(driver)' is not a valid device model name") }
        throw .generic("Device '\(driver)' cannot be hot-plugged: this machine has no hotplug controller yet")
    }

    public func deleteDevice(id: String) throws(QMPError) {
        // -device ids are not kept as qdev ids yet, and nothing is hot-pluggable.
        throw .deviceNotFound(id)
    }

    public func eject(device: String?, id: String?, force: Bool) throws(QMPError) {
        try ejectDrive(device: device, id: id, force: force)  // Drives.swift
    }

    public func changeMedium(device: String?, id: String?, filename: String, format: String?, readOnlyMode: String?,
                             fdSets: FileDescriptorSets) throws(QMPError) {
        try changeDriveMedium(device: device, id: id, filename: filename, format: format, readOnlyMode: readOnlyMode,
                              fdSets: fdSets)
    }

    public var blockDevices: [JSONValue] { blockQueryEntries }
    public var blockStats: [JSONValue] { blockStatsEntries }
    public var vncInfo: JSONValue? { vncQueryInfo }

    /// QEMU refuses (with this message) when there is no VNC server or it runs without
    /// `password=on`: a password would not be asked for.
    public func setVNCPassword(_ password: String) throws(QMPError) {
        guard let vnc, vnc.option.password else { throw .generic("Could not set password") }
        vnc.setPassword(password)
    }

    public func screenshot() throws(QMPError) -> Screenshot {
        guard let display else { throw .generic("There is no console to take a screendump from") }
        return display.screenshot()
    }

    /// `-incoming fd:N`: reads the device state libxl saved (`xen-save-devices-state`) from
    /// the descriptor, loads it, and leaves the VM paused — or running if `cont` came first,
    /// or under Xen without -S.
    /// `-incoming defer` stays in `inmigrate`. Call before `run`.
    public func loadIncomingState() throws(MachineError) {
        guard case .fd(let fd) = config.incoming else { return }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw MachineError("-incoming fd:\(fd): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            bytes += chunk[0..<n]
            guard bytes.count <= 64 << 20 else { throw MachineError("-incoming fd:\(fd): device state larger than 64 MiB") }
        }
        close(fd)
        do {
            try lock.withLock { () throws(StateError) in try DeviceStateStream.load(bytes, into: snapshottableDevices) }
        } catch {
            throw MachineError("-incoming fd:\(fd): \(error.description)")
        }
        // Under Xen QEMU keeps no run state in the stream and autostarts unless -S; libxl
        // then waits for `state = running` (its restore path sends `cont` only afterwards).
        let autostart = platform.isXen && !config.startPaused
        runState = startAfterIncoming || autostart ? .running : .paused
    }
}

/// Carries a loop-thread closure through `post`, which wants `@Sendable`: the closure only
/// ever runs on the loop thread it came from.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
