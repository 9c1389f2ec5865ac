import Synchronization

/// The one lock that serialises all device and bus state in a machine.
///
/// Devices are reached from vCPU threads (KVM), the ioreq loop (Xen), the event loop (timers,
/// backend completions) and the monitor. Rather than a lock per device, which invites lock-order
/// bugs whenever one device calls another (PCI config → BAR remap → bus, a UART → its IRQ
/// line), every entry point takes this lock before touching any device, exactly once, and no
/// device takes it itself. Port I/O exits cost microseconds; an uncontended lock costs tens of
/// nanoseconds, so this is not the bottleneck. Data-plane devices that need parallelism later
/// can move work off the lock explicitly.
public final class DeviceLock: Sendable {
    private let mutex = Mutex<Void>(())

    public init() {}

    @inline(__always)
    public func withLock<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try mutex.withLock { _ throws(E) -> R in try body() }
    }
}
