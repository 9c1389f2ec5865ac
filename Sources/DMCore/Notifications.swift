/// A guest write an accelerator can recognise without an exit: `length` bytes at `address` in
/// the port or memory space, optionally only when the value written equals `value`.
public struct Doorbell: Sendable, Equatable {
    public enum Space: Sendable, Equatable { case port, memory }
    public let space: Space
    public let address: UInt64
    public let length: Int
    public let value: UInt64?

    public init(space: Space, address: UInt64, length: Int, value: UInt64? = nil) {
        self.space = space
        self.address = address
        self.length = length
        self.value = value
    }
}

/// An MSI a device raises repeatedly (one MSI-X vector). The device passes the message the
/// guest programmed each time, so an implementation that pre-routes messages (KVM's irqfd)
/// re-routes only when the guest changed it.
public protocol MSIVector: AnyObject, Sendable {
    func fire(_ message: MSIMessage)
}

/// The fast paths an accelerator may offer data-plane devices (virtio), behind a seam so devices
/// never see the accelerator: doorbell writes served off the vCPU thread (KVM's ioeventfd) and
/// interrupts injected without a round trip through the device model (KVM's irqfd).
///
/// An accelerator without them (Xen here) uses `ExitNotifications`: doorbells arrive as
/// ordinary bus writes and MSIs go through the `InterruptSink`. Devices must handle both: a
/// doorbell the accelerator took never reaches the bus, one it did not take always does.
///
/// Called with the `DeviceLock` held.
public protocol NotificationProvider: AnyObject {
    /// Arranges for guest writes matching `doorbell` to call `handler` on the event loop, with
    /// the `DeviceLock` held, instead of exiting. Returns nil when the accelerator cannot.
    func addDoorbell(_ doorbell: Doorbell, handler: @escaping () -> Void) -> DoorbellRegistration?
    func makeMSIVector() -> any MSIVector
}

/// A doorbell in place; `cancel` removes it (writes reach the bus again). Idempotent.
public protocol DoorbellRegistration: AnyObject {
    func cancel()
}

/// The fallback: no doorbells, MSIs injected through the interrupt sink on each completion.
public final class ExitNotifications: NotificationProvider {
    private let sink: any InterruptSink

    public init(sink: any InterruptSink) {
        self.sink = sink
    }

    public func addDoorbell(_ doorbell: Doorbell, handler: @escaping () -> Void) -> DoorbellRegistration? { nil }

    public func makeMSIVector() -> any MSIVector { SinkMSIVector(sink: sink) }

    private final class SinkMSIVector: MSIVector {
        let sink: any InterruptSink
        init(sink: any InterruptSink) { self.sink = sink }
        func fire(_ message: MSIMessage) { sink.signalMSI(message) }
    }
}
