/// The narrow seam between an accelerator and the devices: the accelerator turns exits
/// (KVM) or ioreqs (Xen) into these four calls and nothing else. Each call takes the
/// `DeviceLock`, finds the device on the bus and hands it the access.
public final class IODispatcher: Sendable {
    public let lock: DeviceLock
    public let ports: Bus
    public let mmio: Bus

    public init(lock: DeviceLock, ports: Bus, mmio: Bus) {
        self.lock = lock
        self.ports = ports
        self.mmio = mmio
    }

    @inline(__always)
    public func portRead(_ port: UInt16, size: Int) -> UInt32 {
        lock.withLock { UInt32(truncatingIfNeeded: ports.read(UInt64(port), size: size)) }
    }

    @inline(__always)
    public func portWrite(_ port: UInt16, size: Int, value: UInt32) {
        lock.withLock { ports.write(UInt64(port), size: size, value: UInt64(value)) }
    }

    @inline(__always)
    public func mmioRead(_ address: UInt64, size: Int) -> UInt64 {
        lock.withLock { mmio.read(address, size: size) }
    }

    @inline(__always)
    public func mmioWrite(_ address: UInt64, size: Int, value: UInt64) {
        lock.withLock { mmio.write(address, size: size, value: value) }
    }
}

/// Why the guest asked to stop running (mirrors QEMU's shutdown causes, which QMP reports).
public enum ShutdownCause: String, Sendable {
    case guestShutdown = "guest-shutdown"
    case guestReset = "guest-reset"
    case guestPanic = "guest-panic"
    case hostQMPQuit = "host-qmp-quit"
    case hostQMPSystemReset = "host-qmp-system-reset"
    case hostSignal = "host-signal"
    case hostError = "host-error"
    case subsystemReset = "subsystem-reset"
}

/// What an accelerator reports to the machine from its vCPU threads. Implementations must be
/// thread-safe; they typically post the request to the event loop.
public protocol AcceleratorEvents: AnyObject, Sendable {
    /// A triple fault or a firmware reset the CPU itself saw.
    func resetRequested(cause: ShutdownCause)
    func shutdownRequested(cause: ShutdownCause)
    /// The accelerator cannot continue running the guest (an internal error, a failed entry).
    func fatalError(_ message: String)
}

/// An accelerator runs the guest's CPUs and provides interrupts: KVM runs the vCPUs in our
/// threads; under Xen the hypervisor runs them and we serve their ioreqs. Devices never see
/// it; the machine drives it.
public protocol Accelerator: AnyObject {
    var interrupts: any InterruptSink { get }
    /// Starts the vCPU threads (the guest runs unless `paused`).
    func start(paused: Bool) throws
    /// Stops guest execution and returns once every vCPU is outside the guest.
    func pause()
    func resume()
    /// Asks every vCPU to leave the guest and stay out, without waiting: callable from a vCPU
    /// thread (a device that ends the VM from inside an exit, like isa-debug-exit).
    func requestPause()
    /// Puts every vCPU, and any interrupt controller or timer the accelerator emulates itself,
    /// into its power-on state (call while paused).
    func reset() throws
    /// Ends the vCPU threads for good.
    func stop()
    /// Host thread ids of the vCPUs (`query-cpus-fast`); 0 where the hypervisor, not a thread
    /// of ours, runs a vCPU.
    var vcpuThreadIDs: [Int32] { get }
    /// `info registers` for one vCPU, or nil when the accelerator cannot read them.
    func registerDump(cpu: Int) -> String?
    /// The guest asked to power off or reboot; called at once, on the thread that saw the
    /// request (inside the exit or ioreq). True when the platform carries it out itself — under
    /// Xen the toolstack destroys or rebuilds the domain, so the machine only reports it and
    /// stops serving — false when the machine must reset its devices or exit (KVM).
    func forwardPowerRequest(reboot: Bool) -> Bool
    /// The guest entered ACPI S3 (suspend to RAM): its CPUs stop until `wake`; RAM is kept.
    /// Main loop, no device lock.
    func suspend() throws
    /// Leaves S3: the CPUs start again at the reset vector, where the firmware finds the
    /// resume code (CMOS shutdown status 0xFE) and jumps to the OS's waking vector.
    func wake() throws
}

extension Accelerator {
    /// Where the accelerator runs the CPUs itself (KVM): stop them, as QEMU does.
    public func suspend() throws { pause() }
    /// S3 loses the CPUs' and interrupt controllers' state; they come back as from power-on.
    public func wake() throws {
        try reset()
        resume()
    }
}
