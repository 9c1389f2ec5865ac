import DMCore
import Devices
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Receives requests from vCPU threads and devices and queues them for the main loop, where
/// the machine acts on them one at a time. Requests arriving before the machine is complete
/// are impossible (no vCPU runs yet), so `machine` is set once, at the end of assembly.
final class MachineEvents: AcceleratorEvents, @unchecked Sendable {
    let loop: EventLoop
    weak var machine: PCMachine?
    /// Hands a guest's power-off (false) or reboot (true) to the accelerator at once, on the
    /// thread that saw it: KVM takes the guest off its CPUs (it must not run on while the main
    /// loop gets to the request); Xen asks the toolstack to end or rebuild the domain before
    /// the guest's access completes. True when the platform carries the request out itself.
    var forwardPowerRequest: (_ reboot: Bool) -> Bool = { _ in false }

    init(loop: EventLoop) {
        self.loop = loop
    }

    func resetRequested(cause: ShutdownCause) {
        let forwarded = forwardPowerRequest(true)
        loop.postUnlocked { [weak self] in self?.machine?.handleReset(cause: cause, forwarded: forwarded) }
    }

    func shutdownRequested(cause: ShutdownCause) {
        let forwarded = forwardPowerRequest(false)
        loop.postUnlocked { [weak self] in self?.machine?.handleShutdown(cause: cause, forwarded: forwarded) }
    }

    func fatalError(_ message: String) {
        loop.postUnlocked { [weak self] in self?.machine?.handleFatal(message) }
    }

    /// The guest asked for S3. It carries on until the main loop suspends it, as in QEMU.
    func suspendRequested() {
        loop.postUnlocked { [weak self] in self?.machine?.handleSuspend() }
    }
}

extension PCMachine {
    func append(devices new: [AnyObject]) {
        devices += new
    }

    var snapshottableDevices: [any Snapshottable] { devices.compactMap { $0 as? any Snapshottable } }

    /// The machine's device of that type, if it has one.
    func device<D>(_: D.Type) -> D? { devices.lazy.compactMap { $0 as? D }.first }

    /// Runs the guest until something ends the process; returns the exit status.
    public func run() -> Int32 {
        do {
            try accelerator.start(paused: runState != .running)
        } catch {
            GuestErrorLog.stderrSink("swiftdm: \(error)")
            return 1
        }
        if runState == .running {
            resumeClock()
            xen?.recordRunning()
        }
        loop.run()
        accelerator.stop()
        return exitStatus.load(ordering: .acquiring)
    }

    /// Ends the process with `status` once the main loop unwinds. Any thread. The guest stops
    /// executing at once, as when QEMU exits from inside a device.
    public func requestExit(status: Int32) {
        exitStatus.store(status, ordering: .releasing)
        accelerator.requestPause()
        loop.stop()
    }

    private func resumeClock() {
        loop.clock.resume()
        loop.clockChanged()
    }

    /// Stops the guest (QMP `stop`, `-no-shutdown` power-off). Main loop, no device lock.
    public func pause(to state: RunState = .paused) {
        let wasRunning = runState == .running
        accelerator.pause()
        loop.clock.pause()
        loop.clockChanged()
        runState = state
        if wasRunning { monitorEvents?.emitStop() }
    }

    /// Starts or restarts the guest (QMP `cont`). Main loop, no device lock.
    public func resume() {
        guard runState != .running else { return }
        runState = .running
        resumeClock()
        accelerator.resume()
        xen?.recordRunning()
        monitorEvents?.emitResume()
    }

    /// A system reset: every device and CPU back to power-on state; RAM is kept, as on a PC.
    /// Under Xen the toolstack rebuilds the domain instead (`forwarded`; a monitor's
    /// `system_reset` is forwarded here), and this process ends when libxl replaces it.
    func handleReset(cause: ShutdownCause, forwarded: Bool? = nil) {
        if config.noReboot && !platform.isXen {
            handleShutdown(cause: cause, forwarded: forwarded)
            return
        }
        monitorEvents?.emitReset(guest: cause.isGuestRequest, reason: cause.rawValue)
        if forwarded ?? accelerator.forwardPowerRequest(reboot: true) { return }
        let wasRunning = runState == .running
        accelerator.pause()
        lock.withLock {
            for case let device as any Resettable in devices { device.reset() }
        }
        do {
            try accelerator.reset()
        } catch {
            handleFatal("reset failed: \(error)")
            return
        }
        // As QEMU: a running VM runs on after a reset; a stopped one waits in prelaunch.
        if wasRunning {
            accelerator.resume()
        } else {
            runState = .prelaunch
        }
    }

    /// The guest powered off (or reset under -no-reboot): exit 0, or stop under -no-shutdown
    /// (libxl's choice: the domain is gone, libxl ends us with SIGHUP).
    func handleShutdown(cause: ShutdownCause, forwarded: Bool? = nil) {
        if forwarded == nil { _ = accelerator.forwardPowerRequest(reboot: false) }
        monitorEvents?.emitShutdown(guest: cause.isGuestRequest, reason: cause.rawValue)
        if config.noShutdown {
            pause(to: .shutdown)
        } else {
            requestExit(status: 0)
        }
    }

    /// ACPI S3 (suspend to RAM). The CMOS shutdown status tells the firmware, when the CPUs
    /// start again, to resume instead of booting (QEMU's RTC does the same on suspend).
    func handleSuspend() {
        guard runState == .running else { return }
        lock.withLock { device(CMOSRTC.self)?.recordSuspendToRAM() }
        do {
            try accelerator.suspend()
        } catch {
            handleFatal("suspend to RAM failed: \(error)")
            return
        }
        runState = .suspended
        monitorEvents?.emitSuspend()
    }

    /// Leaves S3 (QMP `system_wakeup`). Devices keep their state, PCI configuration included:
    /// the firmware's resume path does not program the chipset again, and under Xen the
    /// toolstack's own wake-up (`xl trigger s3resume`) bypasses us anyway, so guests restore
    /// their devices themselves. Main loop, no device lock.
    func wake() throws(MachineError) {
        guard runState == .suspended else { throw MachineError("Unable to wake up: guest is not in suspended state") }
        lock.withLock { device(PIIX4PowerManagement.self)?.signalWake() }
        do {
            try accelerator.wake()
        } catch {
            throw MachineError("wake-up failed: \(error)")
        }
        runState = .running
        monitorEvents?.emitWakeup()
    }

    func handleFatal(_ message: String) {
        GuestErrorLog.stderrSink("swiftdm: \(message)")
        runState = .internalError
        requestExit(status: 1)
    }

    /// Host signals (SIGINT, SIGTERM, SIGHUP — libxl destroys with SIGHUP): QEMU prints this
    /// line and exits 0.
    public func terminate(signal: Int32) {
        GuestErrorLog.stderrSink("swiftdm: terminating on signal \(signal)")
        monitorEvents?.emitShutdown(guest: false, reason: ShutdownCause.hostSignal.rawValue)
        requestExit(status: 0)
    }
}

extension ShutdownCause {
    /// QMP's `guest` flag: the guest asked (as opposed to the host or a monitor command).
    var isGuestRequest: Bool { rawValue.hasPrefix("guest-") }
}

extension PCMachine {
    /// Closes every character backend: terminal modes restored, socket files removed.
    public func shutdownBackends() {
        lock.withLock {
            for backend in backends { backend.close() }
            closeBlockDrives()
            vnc?.close()
        }
    }
}

/// What `-device help` and `-machine help` print.
public enum MachineCatalog {
    public static var deviceHelp: String { DeviceDriver.helpText }
    public static let machineHelp = """
        Supported machines are:
        pc                   Standard PC (i440FX + PIIX, 1996) (default)
        xenfv                Xen Fully-virtualized PC (i440FX + PIIX + Xen platform device)
        none                 empty machine
        """
}
