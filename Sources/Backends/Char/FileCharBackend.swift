import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// `-chardev file,path=P[,append=on]` / `-serial file:P`: output only. The file is created
/// (mode 0666 less umask) and truncated unless `append`, as QEMU does.
public final class FileCharBackend: CharBackend, @unchecked Sendable {
    public let id: String
    public let path: String
    private var fd: Int32

    public init(id: String, path: String, append: Bool) throws(CharBackendError) {
        self.id = id
        self.path = path
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC)
        fd = Glibc.open(path, flags, 0o666)
        guard fd >= 0 else { throw CharBackendError(id: id, SystemError("open \(path)")) }
    }

    deinit { FD.closeIfOpen(&fd) }

    public var filename: String { "file:\(path)" }

    public func attach(_ frontend: any CharFrontend) {}
    public func frontendReady() {}

    public func write(byte: UInt8) {
        guard fd >= 0 else { return }
        _ = FD.write(byte: byte, to: fd, socket: false)
    }

    public func write(_ bytes: ArraySlice<UInt8>) {
        guard fd >= 0 else { return }
        _ = FD.write(bytes, to: fd, socket: false)
    }

    public func close() { FD.closeIfOpen(&fd) }
}
