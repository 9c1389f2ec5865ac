import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The few xenstore operations a device model performs on its own behalf (xen-contract.md
/// §A.4.1): create `device-model/<domid>/backends`, write `device-model/<domid>/state`, keep
/// physmap keys. Paths without a leading `/` are relative to the device model's own domain,
/// as QEMU writes them. `LibXenStore` talks to xenstored; tests use `MemoryXenStore`.
public protocol XenStoreAccess: AnyObject, Sendable {
    func read(_ path: String) -> String?
    func write(_ path: String, _ value: String) throws(XenError)
    func makeDirectory(_ path: String) throws(XenError)
    /// Removes `path` and everything below it; absent paths are not an error.
    func remove(_ path: String)
}

/// xenstore through libxenstore (`xs_open`), one connection, no transactions: each write is
/// atomic on its own and nothing the device model writes needs two keys to change together.
public final class LibXenStore: XenStoreAccess, @unchecked Sendable {
    private static let noTransaction: UInt32 = 0
    private let libraries: XenLibraries
    private let handle: XenLibraries.Handle

    public init(libraries: XenLibraries) throws(XenError) {
        guard let handle = libraries.xsOpen(0) else {
            throw .callFailed(call: "xs_open (is xenstored running?)", errno: errno)
        }
        self.libraries = libraries
        self.handle = handle
    }

    deinit { libraries.xsClose(handle) }

    public func read(_ path: String) -> String? {
        var length: UInt32 = 0
        guard let value = libraries.xsRead(handle, Self.noTransaction, path, &length) else { return nil }
        defer { free(value) }
        return String(decoding: UnsafeRawBufferPointer(start: value, count: Int(length)), as: UTF8.self)
    }

    public func write(_ path: String, _ value: String) throws(XenError) {
        let ok = value.utf8CString.withUnsafeBufferPointer { bytes in
            libraries.xsWrite(handle, Self.noTransaction, path, bytes.baseAddress, UInt32(bytes.count - 1))
        }
        guard ok else { throw .callFailed(call: "xs_write(\(path))", errno: errno) }
    }

    public func makeDirectory(_ path: String) throws(XenError) {
        guard libraries.xsMkdir(handle, Self.noTransaction, path) else {
            throw .callFailed(call: "xs_mkdir(\(path))", errno: errno)
        }
    }

    public func remove(_ path: String) {
        _ = libraries.xsRm(handle, Self.noTransaction, path)
    }
}

/// An in-memory xenstore for tests and simulated runs: a flat map of absolute paths. Relative
/// paths are resolved under `/local/domain/0`, the device model's home in dom0.
public final class MemoryXenStore: XenStoreAccess, Sendable {
    private let nodes = Mutex<[String: String]>([:])
    private let failing = Atomic<Bool>(false)

    public init() {}

    /// Makes every later write and mkdir fail with EACCES (a restricted or broken xenstore).
    public func failWrites(_ fail: Bool) { failing.store(fail, ordering: .releasing) }

    public static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : "/local/domain/0/" + path
    }

    public func read(_ path: String) -> String? { nodes.withLock { $0[Self.absolute(path)] } }

    public func write(_ path: String, _ value: String) throws(XenError) {
        guard !failing.load(ordering: .acquiring) else { throw .callFailed(call: "xs_write(\(path))", errno: EACCES) }
        nodes.withLock { $0[Self.absolute(path)] = value }
    }

    public func makeDirectory(_ path: String) throws(XenError) {
        guard !failing.load(ordering: .acquiring) else { throw .callFailed(call: "xs_mkdir(\(path))", errno: EACCES) }
        nodes.withLock { if $0[Self.absolute(path)] == nil { $0[Self.absolute(path)] = "" } }
    }

    public func remove(_ path: String) {
        let root = Self.absolute(path)
        nodes.withLock { $0 = $0.filter { $0.key != root && !$0.key.hasPrefix(root + "/") } }
    }

    /// Every node, sorted (tests compare against what QEMU writes).
    public var paths: [String] { nodes.withLock { $0.keys.sorted() } }
}
