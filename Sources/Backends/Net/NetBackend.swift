import DMCore

/// The NIC side of a network backend: it takes frames while it has room for them.
/// Calls arrive on the event loop with the `DeviceLock` held.
public protocol NetFrontend: AnyObject {
    /// Whether the NIC would take a frame now. While false the backend stops reading its
    /// descriptor (the kernel queues, then drops, as a full wire would); the NIC calls
    /// `NetBackend.frontendReady()` once it has room again.
    var canReceive: Bool { get }
    /// One Ethernet frame (no FCS), valid only during the call.
    func receive(frame: UnsafeRawBufferPointer)
}

/// A `-netdev`: where a NIC's frames go and come from.
public protocol NetBackend: AnyObject {
    var id: String { get }
    /// Sets (or, with nil, removes) the NIC that receives frames.
    func attach(_ frontend: (any NetFrontend)?)
    /// Sends one frame; a frame the host cannot take now is dropped (returns false), as on a
    /// congested wire. Never blocks.
    @discardableResult
    func send(frame: UnsafeRawBufferPointer) -> Bool
    /// The frontend has room again: resume delivering.
    func frontendReady()
}

/// A failure to open a `-netdev`, naming it.
public struct NetBackendError: Error, Equatable, CustomStringConvertible {
    public let id: String
    public let reason: String
    public init(id: String, reason: String) {
        self.id = id
        self.reason = reason
    }
    public var description: String { "-netdev id=\(id): \(reason)" }
}
