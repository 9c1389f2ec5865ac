/// What the monitor needs from the machine it controls. `PCMachine` implements it; tests use a
/// stand-in. Every member is called on the event-loop thread with the `DeviceLock` held, except
/// where a completion is involved: the operations that must wait for vCPUs (stop, cont, reset)
/// hand the work to the loop without the lock and call `completion` back on the loop thread,
/// with the lock held, once it is done; the monitor answers the client then.
public protocol MonitorHost: AnyObject {
    /// QEMU's RunState name: prelaunch, running, paused, shutdown, inmigrate, internal-error...
    var runStateName: String { get }
    var isRunning: Bool { get }
    var guestName: String? { get }
    /// The `-uuid` value, or nil (QEMU then reports all zeroes).
    var guestUUID: String? { get }

    func stop(completion: @escaping () -> Void)
    func cont(completion: @escaping (Result<Void, QMPError>) -> Void)
    func systemReset(completion: @escaping () -> Void)
    /// Leaves ACPI S3; fails when the guest is not suspended.
    func systemWakeup(completion: @escaping (Result<Void, QMPError>) -> Void)
    /// Presses the ACPI power button.
    func systemPowerdown() throws(QMPError)
    /// Ends the process after the current main-loop iteration (the reply has been sent).
    func quit()

    /// The machine's character devices (serial ports, debug console...), for `query-chardev`.
    var chardevs: [ChardevInfo] { get }
    var cpus: [CPUInfo] { get }
    /// The QOM type of a hotpluggable CPU (`query-hotpluggable-cpus`).
    var cpuTypeName: String { get }
    var maxCPUs: Int { get }
    var pciDevices: [PCIDeviceInfo] { get }
    /// `info registers` for one CPU, or nil if there is no such CPU.
    func registerDump(cpu: Int) -> String?

    /// The machine's device state as a `DeviceStateStream` (xen-save-devices-state).
    func saveDeviceState() throws(QMPError) -> [UInt8]
    func loadDeviceState(_ bytes: [UInt8]) throws(QMPError)
    func setGlobalDirtyLog(_ enabled: Bool) throws(QMPError)

    func addDevice(_ properties: JSONObject) throws(QMPError)
    func deleteDevice(id: String) throws(QMPError)

    /// Removable media. `device` is a block backend name, `id` a qdev id (QEMU ≥ 2.8 callers).
    func eject(device: String?, id: String?, force: Bool) throws(QMPError)
    func changeMedium(device: String?, id: String?, filename: String, format: String?,
                      readOnlyMode: String?, fdSets: FileDescriptorSets) throws(QMPError)
    /// `query-block` entries (an empty list while the machine has no block devices).
    var blockDevices: [JSONValue] { get }
    var blockStats: [JSONValue] { get }
    /// `query-vnc`'s reply when a VNC server exists, nil when there is none.
    var vncInfo: JSONValue? { get }
    func setVNCPassword(_ password: String) throws(QMPError)
    /// The display's current picture (`screendump`), redrawn first; an error when the machine
    /// has no display device.
    func screenshot() throws(QMPError) -> Screenshot
}

/// A picture of the display: `pixels` are `0x00RRGGBB`, row-major.
public struct Screenshot: Sendable {
    public let width: Int
    public let height: Int
    public let pixels: [UInt32]
    public init(width: Int, height: Int, pixels: [UInt32]) {
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// Binary PPM (P6), what QEMU's `screendump` writes by default.
    public var ppm: [UInt8] {
        var bytes = Array("P6\n\(width) \(height)\n255\n".utf8)
        bytes.reserveCapacity(bytes.count + 3 * pixels.count)
        for p in pixels.prefix(width * height) {
            bytes.append(UInt8(truncatingIfNeeded: p >> 16))
            bytes.append(UInt8(truncatingIfNeeded: p >> 8))
            bytes.append(UInt8(truncatingIfNeeded: p))
        }
        return bytes
    }
}

public struct ChardevInfo: Equatable, Sendable {
    public var label: String
    public var filename: String
    public var frontendOpen: Bool
    public init(label: String, filename: String, frontendOpen: Bool = true) {
        self.label = label
        self.filename = filename
        self.frontendOpen = frontendOpen
    }
}

public struct CPUInfo: Equatable, Sendable {
    public var index: Int
    public var threadID: Int
    public var socket: Int
    public init(index: Int, threadID: Int, socket: Int) {
        self.index = index
        self.threadID = threadID
        self.socket = socket
    }
}

/// One PCI function as `query-pci` reports it.
public struct PCIDeviceInfo: Equatable, Sendable {
    public struct BAR: Equatable, Sendable {
        public var index: Int
        public var isIO: Bool
        public var address: UInt64
        public var size: UInt64
        public var prefetchable: Bool
        public var is64Bit: Bool
        public init(index: Int, isIO: Bool, address: UInt64, size: UInt64, prefetchable: Bool = false, is64Bit: Bool = false) {
            self.index = index
            self.isIO = isIO
            self.address = address
            self.size = size
            self.prefetchable = prefetchable
            self.is64Bit = is64Bit
        }
    }
    public var bus = 0
    public var slot: Int
    public var function: Int
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    public var classCode: UInt16
    public var description: String
    public var irq: Int?
    public var irqPin: Int
    public var qdevID: String
    public var bars: [BAR]

    public init(slot: Int, function: Int, vendorID: UInt16, deviceID: UInt16, subsystemVendorID: UInt16,
                subsystemID: UInt16, classCode: UInt16, description: String, irq: Int? = nil, irqPin: Int = 0,
                qdevID: String = "", bars: [BAR] = []) {
        self.slot = slot
        self.function = function
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.subsystemVendorID = subsystemVendorID
        self.subsystemID = subsystemID
        self.classCode = classCode
        self.description = description
        self.irq = irq
        self.irqPin = irqPin
        self.qdevID = qdevID
        self.bars = bars
    }
}

/// What the machine tells the monitor about: lifecycle and device events. The monitor
/// delivers each to every connected, negotiated client with a timestamp.
public protocol MonitorEventSink: AnyObject {
    func emit(event: String, data: JSONObject?)
}

extension MonitorEventSink {
    public func emitStop() { emit(event: "STOP", data: nil) }
    public func emitResume() { emit(event: "RESUME", data: nil) }
    public func emitPowerdown() { emit(event: "POWERDOWN", data: nil) }
    public func emitSuspend() { emit(event: "SUSPEND", data: nil) }
    public func emitWakeup() { emit(event: "WAKEUP", data: nil) }
    /// `guest` is true when the guest itself asked; `reason` is a ShutdownCause name.
    public func emitReset(guest: Bool, reason: String) {
        emit(event: "RESET", data: JSONObject([("guest", .bool(guest)), ("reason", .string(reason))]))
    }
    public func emitShutdown(guest: Bool, reason: String) {
        emit(event: "SHUTDOWN", data: JSONObject([("guest", .bool(guest)), ("reason", .string(reason))]))
    }
    public func emitDeviceDeleted(id: String?, path: String) {
        var data = JSONObject()
        if let id { data["device"] = .string(id) }
        data["path"] = .string(path)
        emit(event: "DEVICE_DELETED", data: data)
    }
    public func emitTrayMoved(device: String, id: String, open: Bool) {
        emit(event: "DEVICE_TRAY_MOVED", data: JSONObject([("device", .string(device)), ("tray-open", .bool(open)),
                                                           ("id", .string(id))]))
    }
}
