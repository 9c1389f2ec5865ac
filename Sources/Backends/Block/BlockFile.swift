import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// QEMU's `cache=` modes. They decide two things: whether the host page cache is bypassed
/// (O_DIRECT) and what a flush means.
public enum CacheMode: String, Sendable, CaseIterable {
    case writeback, none, unsafe, directsync, writethrough

    /// Bypass the host page cache (O_DIRECT).
    public var usesDirectIO: Bool { self == .none || self == .directsync }
    /// Every write is made durable before it completes (the guest sees a write-through cache).
    public var syncsEveryWrite: Bool { self == .directsync || self == .writethrough }
    /// Flushes are ignored: fastest, and an image is only consistent after a clean close.
    public var ignoresFlush: Bool { self == .unsafe }

    public init(parsing text: String) throws(BlockError) {
        guard let mode = CacheMode(rawValue: text) else {
            throw .invalidArgument("invalid cache mode '\(text)' (writeback, none, unsafe, directsync, writethrough)")
        }
        self = mode
    }
}

/// The access a file is opened for, in QEMU's permission terms, so that locks interoperate.
public enum LockAccess: Sendable {
    /// Reading only; others may write-share nothing we read consistently (QEMU's read-only open).
    case shared
    /// Reading and writing; nobody else may write or resize.
    case exclusiveWriter
}

/// One open host file or block device, with whole-buffer pread/pwrite, the cache mode applied
/// and QEMU-compatible byte-range locks.
///
/// Unsafe buffer pointers appear here because this is the system-call boundary: callers pass
/// buffers obtained from `withUnsafe(Mutable)Bytes` or `GuestMemory.withBytes`, valid for the
/// duration of the call only.
public final class BlockFile: @unchecked Sendable {
    public let path: String
    public let isReadOnly: Bool
    public let cacheMode: CacheMode
    public let isBlockDevice: Bool
    private let fd: Int32
    /// Where the descriptor goes back when closed (an fd-set duplicate), nil for `close(2)`.
    private let opener: BlockFileOpener?
    /// Device and inode, for backing-chain loop detection.
    let identity: FileIdentity
    /// Alignment O_DIRECT demands of offsets, lengths and buffers; 1 without O_DIRECT.
    private let directAlignment: Int
    /// Serialises read-modify-write of partial sectors under O_DIRECT.
    private let bounceLock = Mutex<Void>(())
    private let isClosed = Atomic<Bool>(false)

    /// Opens `path`. `create` makes (or truncates) a regular file. `lock` nil means locking=off.
    public init(path: String, readOnly: Bool, cache: CacheMode = .writeback,
                create: Bool = false, lock: LockAccess?, opener: BlockFileOpener? = nil) throws(BlockError) {
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if create { flags |= O_CREAT | O_TRUNC }
        if cache.usesDirectIO { flags |= Self.directFlag }
        let opened = opener.map { $0.open(path, flags) } ?? open(path, flags, 0o644)
        guard opened >= 0 else { throw .system(operation: "open", path: path, errno: errno) }
        func giveBack() { if let opener { opener.close(opened) } else { Glibc.close(opened) } }
        var info = stat()
        guard fstat(opened, &info) == 0 else {
            let code = errno
            giveBack()
            throw .system(operation: "fstat", path: path, errno: code)
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            giveBack()
            throw .invalidArgument("\(path): not a regular file or block device")
        }
        fd = opened
        self.opener = opener
        identity = FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        self.path = path
        isReadOnly = readOnly
        cacheMode = cache
        isBlockDevice = kind == S_IFBLK
        directAlignment = cache.usesDirectIO ? 4096 : 1
        if let lock {
            do throws(BlockError) {
                try applyQEMUCompatibleLocks(lock)
            } catch {
                giveBack()
                throw error
            }
        }
    }

    deinit { close() }

    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if let opener { opener.close(fd) } else { Glibc.close(fd) }
    }

    /// The file's current length (a block device's size via lseek, which Linux supports).
    public func fileSize() throws(BlockError) -> UInt64 {
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0 else { throw .system(operation: "lseek", path: path, errno: errno) }
        return UInt64(end)
    }

    // MARK: data

    /// Fills `buffer` from `offset`; bytes past the end of the file read as zeroes (as QEMU
    /// does for short reads), so a truncated image never exposes uninitialised memory.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard buffer.count > 0 else { return }
        guard offset <= UInt64(Int64.max) - UInt64(buffer.count) else {
            throw .outOfRange(offset: offset, length: UInt64(buffer.count), size: UInt64(Int64.max))
        }
        if directAlignment > 1 && !isAligned(buffer.baseAddress, buffer.count, offset) {
            return try bounced(offset: offset, count: buffer.count) { aligned, skip throws(BlockError) in
                try readFully(into: aligned, at: offset - UInt64(skip))
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: aligned[skip..<skip + buffer.count]))
                return false
            }
        }
        try readFully(into: buffer, at: offset)
    }

    private func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(operation: "pread", path: path, errno: errno)
            }
            if n == 0 {
                // End of file: the rest reads as zeroes.
                memset(buffer.baseAddress! + done, 0, buffer.count - done)
                return
            }
            done += n
        }
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        guard buffer.count > 0 else { return }
        guard offset <= UInt64(Int64.max) - UInt64(buffer.count) else {
            throw .outOfRange(offset: offset, length: UInt64(buffer.count), size: UInt64(Int64.max))
        }
        if directAlignment > 1 && !isAligned(buffer.baseAddress, buffer.count, offset) {
            // Read-modify-write of the partial sectors, under a lock so two of them on the same
            // sector cannot lose each other's bytes.
            try bounceLock.withLock { _ throws(BlockError) in
                _ = try bounced(offset: offset, count: buffer.count) { aligned, skip throws(BlockError) in
                    try readFully(into: aligned, at: offset - UInt64(skip))
                    UnsafeMutableRawBufferPointer(rebasing: aligned[skip..<skip + buffer.count]).copyMemory(from: buffer)
                    try writeFully(from: UnsafeRawBufferPointer(aligned), at: offset - UInt64(skip))
                    return true
                }
            }
        } else {
            try writeFully(from: buffer, at: offset)
        }
        if cacheMode.syncsEveryWrite { try syncData() }
    }

    private func writeFully(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(operation: "pwrite", path: path, errno: errno)
            }
            done += n
        }
    }

    public func read(at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withMutableBytes { (raw: UnsafeMutableRawBufferPointer) throws(BlockError) in
            try read(into: raw, at: offset)
        }
        return bytes
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws(BlockError) {
        try bytes.withBytes { (raw: UnsafeRawBufferPointer) throws(BlockError) in
            try write(from: raw, at: offset)
        }
    }

    private func isAligned(_ base: UnsafeRawPointer?, _ count: Int, _ offset: UInt64) -> Bool {
        guard let base else { return false }
        let a = directAlignment
        return Int(bitPattern: base) % a == 0 && count % a == 0 && offset % UInt64(a) == 0
    }

    /// Runs `body` with an aligned bounce buffer covering [offset, offset+count) rounded out to
    /// the O_DIRECT alignment, and the distance from the buffer start to `offset`.
    private func bounced(offset: UInt64, count: Int,
                         _ body: (UnsafeMutableRawBufferPointer, Int) throws(BlockError) -> Bool) throws(BlockError) {
        let a = UInt64(directAlignment)
        let start = offset / a * a
        let end = (offset + UInt64(count) + a - 1) / a * a
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: directAlignment)
        defer { buffer.deallocate() }
        _ = try body(buffer, Int(offset - start))
    }

    /// Whether `offset` starts host data or a hole, and how long that run is (at most
    /// `length`), from SEEK_DATA/SEEK_HOLE; file systems without them report everything as data.
    public func dataRun(at offset: UInt64, length: UInt64) -> (isData: Bool, length: UInt64) {
        guard offset <= UInt64(Int64.max), length > 0 else { return (true, length) }
        let seekData: Int32 = 3, seekHole: Int32 = 4
        let data = lseek(fd, off_t(offset), seekData)
        if data < 0 { return errno == ENXIO ? (false, length) : (true, length) }
        if UInt64(data) > offset { return (false, min(UInt64(data) - offset, length)) }
        let hole = lseek(fd, off_t(offset), seekHole)
        if hole < 0 || UInt64(hole) <= offset { return (true, length) }
        return (true, min(UInt64(hole) - offset, length))
    }

    // MARK: durability and space

    /// Makes completed writes durable, unless the cache mode is `unsafe`.
    public func flush() throws(BlockError) {
        if cacheMode.ignoresFlush { return }
        try syncData()
    }

    /// A durability barrier for metadata ordering; skipped in `unsafe` mode like flushes.
    func barrier() throws(BlockError) { try flush() }

    private func syncData() throws(BlockError) {
        guard fdatasync(fd) == 0 else { throw .system(operation: "fdatasync", path: path, errno: errno) }
    }

    public func truncate(to length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        guard !isBlockDevice else { throw .invalidArgument("\(path): cannot resize a block device") }
        guard length <= UInt64(Int64.max), ftruncate(fd, off_t(length)) == 0 else {
            throw .system(operation: "ftruncate", path: path, errno: errno)
        }
    }

    /// Gives the range's space back to the host; reads then return zeroes. Best effort: a file
    /// system without hole punching simply keeps the blocks.
    public func punchHole(at offset: UInt64, length: UInt64) {
        guard !isReadOnly, length > 0, offset <= UInt64(Int64.max) - length else { return }
        let punch: Int32 = 0x02 | 0x01  // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        _ = Self.fallocate?(fd, punch, off_t(offset), off_t(length))
    }

    /// Makes the range read as zeroes, deallocating it where the file system can.
    public func writeZeroes(at offset: UInt64, length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        guard length > 0 else { return }
        guard offset <= UInt64(Int64.max) - length else {
            throw .outOfRange(offset: offset, length: length, size: UInt64(Int64.max))
        }
        let fileLength = try fileSize()
        if !isBlockDevice && offset >= fileLength { return }  // already reads as zeroes
        let zeroRange: Int32 = 0x10  // FALLOC_FL_ZERO_RANGE
        if !isBlockDevice, let fallocate = Self.fallocate, fallocate(fd, zeroRange | 0x01, off_t(offset), off_t(length)) == 0 {
            if cacheMode.syncsEveryWrite { try syncData() }
            return
        }
        let chunk = min(length, 1 << 20)
        let zeroes = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunk), alignment: 4096)
        defer { zeroes.deallocate() }
        zeroes.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(chunk, length - done))
            try write(from: UnsafeRawBufferPointer(rebasing: zeroes[0..<n]), at: offset + done)
            done += UInt64(n)
        }
    }

    /// glibc's fallocate(2) wrapper, looked up at run time because Glibc's module map only
    /// exposes it with _GNU_SOURCE, and the C shim belongs to another module.
    private static let fallocate: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32)? = {
        guard let symbol = dlsym(nil, "fallocate") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32).self)
    }()

    // MARK: locking

    /// QEMU's file-posix locking: OFD read locks on single bytes, byte 100+bit for each
    /// permission held and byte 200+bit for each permission *not* shared with others
    /// (bits: 0 consistent read, 1 write, 2 write-unchanged, 3 resize). Before locking, the
    /// opposite bytes are tested, so a running QEMU and this process refuse each other just as
    /// two QEMUs do. The locks belong to this open file description and vanish with it.
    private func applyQEMUCompatibleLocks(_ access: LockAccess) throws(BlockError) {
        let names = ["consistent read", "write", "write unchanged", "resize"]
        let held: [Int]
        let notShared: [Int]
        switch access {
        case .shared:
            held = [0]
            notShared = [1]           // we read consistently, so nobody else may write
        case .exclusiveWriter:
            held = [0, 1, 2, 3]
            notShared = [1, 3]        // others may read and write-unchanged, not write or resize
        }
        for bit in held where try isLockedByOthers(200 + bit) {
            throw .locked(path: path, reason: "Failed to get \"\(names[bit])\" lock; is another process using the image?")
        }
        for bit in notShared where try isLockedByOthers(100 + bit) {
            throw .locked(path: path, reason: "Failed to get shared \"\(names[bit])\" lock; is another process using the image?")
        }
        for byte in held.map({ 100 + $0 }) + notShared.map({ 200 + $0 }) {
            var lock = flock()
            lock.l_type = Int16(F_RDLCK)
            lock.l_whence = Int16(SEEK_SET)
            lock.l_start = off_t(byte)
            lock.l_len = 1
            if fcntl(fd, Self.setOFDLock, &lock) != 0 {
                // A file system without OFD locks (some network ones): QEMU carries on too.
                if errno == EINVAL || errno == ENOTSUP { return }
                throw .locked(path: path, reason: "Failed to lock byte \(byte): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// O_DIRECT, which Glibc's module only exports with _GNU_SOURCE; its value is per
    /// architecture.
    #if arch(arm64)
    private static let directFlag: Int32 = 0o200000
    #else
    private static let directFlag: Int32 = 0o40000
    #endif

    private static let getOFDLock: Int32 = 36   // F_OFD_GETLK
    private static let setOFDLock: Int32 = 37   // F_OFD_SETLK

    private func isLockedByOthers(_ byte: Int) throws(BlockError) -> Bool {
        var probe = flock()
        probe.l_type = Int16(F_WRLCK)
        probe.l_whence = Int16(SEEK_SET)
        probe.l_start = off_t(byte)
        probe.l_len = 1
        guard fcntl(fd, Self.getOFDLock, &probe) == 0 else {
            if errno == EINVAL || errno == ENOTSUP { return false }
            throw .system(operation: "fcntl(F_OFD_GETLK)", path: path, errno: errno)
        }
        return probe.l_type != Int16(F_UNLCK)
    }
}
