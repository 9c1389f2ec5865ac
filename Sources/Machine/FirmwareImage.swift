#if canImport(Glibc)
import Glibc
#endif

/// Reads a firmware or ROM file whole, refusing anything unreasonable before it reaches guest
/// memory: the BIOS region is at most 16 MiB and must be a multiple of 4 KiB.
enum FirmwareImage {
    static let defaultBIOSPaths = ["/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/bios-256k.bin"]
    static let maxSize = 16 << 20

    static func defaultBIOS() throws(MachineError) -> String {
        guard let path = defaultBIOSPaths.first(where: { access($0, R_OK) == 0 }) else {
            throw MachineError("no firmware: SeaBIOS not found at \(defaultBIOSPaths.joined(separator: " or ")) (apt-get install seabios), or pass -bios FILE")
        }
        return path
    }

    static func load(_ path: String, option: String = "-bios") throws(MachineError) -> [UInt8] {
        let bytes = try readFile(path, limit: maxSize, what: "\(option) \(path)")
        guard !bytes.isEmpty, bytes.count % 4096 == 0 else {
            throw MachineError("\(option) \(path): firmware size \(bytes.count) is not a non-zero multiple of 4 KiB")
        }
        return bytes
    }

    static func readFile(_ path: String, limit: Int, what: String) throws(MachineError) -> [UInt8] {
        try withRegularFile(path, what: what) { (fd, size) throws(MachineError) in
            guard size <= limit else { throw MachineError("\(what): larger than \(limit) bytes") }
            return try read(fd, offset: 0, count: size, what: what)
        }
    }

    /// Opens `path` read-only, checks it is a regular file, and hands its descriptor and size
    /// to `body`; the descriptor is closed afterwards.
    static func withRegularFile<R>(_ path: String, what: String,
                                   _ body: (Int32, Int) throws(MachineError) -> R) throws(MachineError) -> R {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MachineError("\(what): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MachineError("\(what): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw MachineError("\(what): not a regular file") }
        return try body(fd, Int(st.st_size))
    }

    /// Reads `count` bytes at `offset` straight into a new array (no intermediate buffer).
    static func read(_ fd: Int32, offset: Int, count: Int, what: String) throws(MachineError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(offset + done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw MachineError("\(what): short read") }
            done += n
        }
        return bytes
    }
}
