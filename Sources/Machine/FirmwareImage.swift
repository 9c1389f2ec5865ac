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

    /// Where QEMU's packages keep option ROMs (SeaBIOS's VGA BIOSes, iPXE's NIC ROMs).
    static let optionROMDirectories = ["/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu"]
    static let maxOptionROMSize = 16 << 20

    /// A PCI device's expansion ROM, as QEMU's `romfile=` property: a path, a file name looked
    /// up in the ROM directories, or "" for none (`romfile` absent: `defaultName`).
    static func optionROM(romfile: String?, defaultName: String, device: String) throws(MachineError) -> [UInt8] {
        let name = romfile ?? defaultName
        if name.isEmpty { return [] }
        let candidates = name.contains("/") ? [name] : optionROMDirectories.map { "\($0)/\(name)" }
        guard let path = candidates.first(where: { access($0, R_OK) == 0 }) else {
            throw MachineError("-device \(device): romfile \(name) not found (looked in \(candidates.joined(separator: ", ")); apt-get install seabios ipxe-qemu, or romfile=\"\" for none)")
        }
        let bytes = try readFile(path, limit: maxOptionROMSize, what: "-device \(device) romfile \(path)")
        guard bytes.count >= 3, bytes[0] == 0x55, bytes[1] == 0xAA else {
            throw MachineError("-device \(device): \(path) is not a PCI option ROM (no 55 AA signature)")
        }
        return bytes
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
