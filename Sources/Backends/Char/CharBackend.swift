/// The guest-facing side of a character device (a UART, a debug console, a monitor).
/// Backends deliver host input only as far as `receiveCapacity` allows, so a slow guest never
/// makes us buffer without bound; the frontend calls `CharBackend.frontendReady()` when it has
/// room again.
public protocol CharFrontend: AnyObject {
    var receiveCapacity: Int { get }
    func receive(_ bytes: ArraySlice<UInt8>)
}

/// A host-side character device: `-chardev stdio|file|pty|null|socket,...` and the
/// `-serial`/`-debugcon` shorthands. Output never blocks the caller (vCPU or event loop):
/// a backend that cannot take more bytes drops them, as QEMU does for a full pty.
/// All calls happen with the machine's `DeviceLock` held.
public protocol CharBackend: AnyObject {
    /// The chardev id (`-chardev ...,id=X`; generated for `-serial` shorthands).
    var id: String { get }
    /// A one-line description for `query-chardev`'s `filename` (e.g. "pty:/dev/pts/3").
    var filename: String { get }
    func attach(_ frontend: any CharFrontend)
    /// One byte: the UART's and the debug console's hot path; must not allocate.
    func write(byte: UInt8)
    func write(_ bytes: ArraySlice<UInt8>)
    func frontendReady()
    /// Releases host resources at exit: restores terminal modes, removes socket files.
    func close()
}

extension CharBackend {
    public func close() {}

    /// Writes each byte in turn; backends that can do better (one syscall) override it.
    public func write(_ bytes: ArraySlice<UInt8>) {
        for b in bytes { write(byte: b) }
    }
}
