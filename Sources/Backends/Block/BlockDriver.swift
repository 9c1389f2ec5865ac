import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public enum BlockFormat: String, Sendable, CaseIterable {
    case raw, qcow2
}

/// How a range of an image is stored, for `convert` (skip what reads as zero) and `map`.
public enum BlockAllocation: Sendable, Equatable {
    /// Data in this image (or, for raw, in the host file).
    case data
    /// Reads as zeroes without data behind it (qcow2 zero cluster, raw hole).
    case zero
    /// Not in this image: reads come from the backing file, or zeroes without one.
    case unallocated
}

/// One image format over one file, the synchronous core every path uses: the worker pool
/// behind the asynchronous API, `swiftdm-img`, tests and the fuzzer.
///
/// Drivers are safe to call from several threads at once. Ranges are validated by
/// `BlockBackend` before they get here; drivers still never touch bytes outside their files.
public protocol BlockDriver: AnyObject, Sendable {
    var path: String { get }
    var format: BlockFormat { get }
    /// The guest-visible size in bytes.
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError)
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError)
    /// Makes every completed write durable (per the cache mode).
    func flush() throws(BlockError)
    /// The range no longer needs its contents; reads may return zeroes or older data.
    func discard(at offset: UInt64, length: UInt64) throws(BlockError)
    /// The range reads as zeroes afterwards, deallocated where the format can.
    func writeZeroes(at offset: UInt64, length: UInt64) throws(BlockError)
    /// The storage of the run starting at `offset`, and its length (1...length bytes).
    func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> (BlockAllocation, UInt64)
    func resize(to newSize: UInt64) throws(BlockError)
    /// Writes back everything and releases the file (and its locks). Idempotent.
    func close() throws(BlockError)
}

/// How to open an image. `format` decides; probing the content happens only when `format` is
/// nil and `allowProbing` is set, as QEMU recommends (a guest can write a qcow2 header into
/// a raw disk and so reach host files through a "backing file").
public struct BlockOpenOptions: Sendable {
    public var format: BlockFormat?
    public var allowProbing: Bool
    public var readOnly: Bool
    public var cache: CacheMode
    /// QEMU-compatible byte-range locks; `locking=off` / `-U` turns them off.
    public var locking: Bool
    /// Open the image without its backing file (reads of unallocated clusters give zeroes);
    /// used by `info` and `check`, which do not need the chain.
    public var skipBacking: Bool
    /// L2 tables kept in memory per qcow2 image.
    public var l2CacheTables: Int
    /// Opens image files instead of `open(2)`: the machine resolves QEMU's `/dev/fdset/N`
    /// names to descriptors passed in with QMP `add-fd` (libxl's CD-ROM insert).
    public var opener: BlockFileOpener?

    public init(format: BlockFormat?, readOnly: Bool = false, cache: CacheMode = .writeback,
                locking: Bool = true, allowProbing: Bool = false, skipBacking: Bool = false,
                l2CacheTables: Int = 32) {
        self.format = format
        self.readOnly = readOnly
        self.cache = cache
        self.locking = locking
        self.allowProbing = allowProbing
        self.skipBacking = skipBacking
        self.l2CacheTables = l2CacheTables
    }
}

/// Limits that keep a hostile chain of images from exhausting the host.
public enum BlockLimits {
    public static let maxBackingChainDepth = 16
}

/// How the block layer gets a descriptor for a file name, when the caller decides (fd sets).
/// `open` returns a descriptor the block layer owns until it hands it to `close`, or -1 with
/// `errno` set.
public struct BlockFileOpener: Sendable {
    public let open: @Sendable (_ path: String, _ flags: Int32) -> Int32
    public let close: @Sendable (_ fd: Int32) -> Void

    public init(open: @escaping @Sendable (String, Int32) -> Int32, close: @escaping @Sendable (Int32) -> Void) {
        self.open = open
        self.close = close
    }
}

/// The identity of an open file, to detect a backing chain that loops back on itself.
struct FileIdentity: Hashable, Sendable {
    let device: UInt64
    let inode: UInt64
}

public enum BlockDrivers {
    /// Opens `path` with the format the options name (or probe, if allowed), backing chain
    /// included.
    public static func open(path: String, options: BlockOpenOptions) throws(BlockError) -> any BlockDriver {
        try open(path: path, options: options, chain: [])
    }

    static func open(path: String, options: BlockOpenOptions, chain: [FileIdentity]) throws(BlockError) -> any BlockDriver {
        guard chain.count <= BlockLimits.maxBackingChainDepth else {
            throw .invalidImage(path: path, reason: "backing chain deeper than \(BlockLimits.maxBackingChainDepth) images")
        }
        let format: BlockFormat
        if let chosen = options.format {
            format = chosen
        } else if options.allowProbing {
            format = try probe(path: path, opener: options.opener)
        } else {
            throw .invalidArgument("\(path): no format given (format=raw or format=qcow2); probing was not requested")
        }
        let file = try BlockFile(path: path, readOnly: options.readOnly, cache: options.cache,
                                 lock: options.locking ? (options.readOnly ? .shared : .exclusiveWriter) : nil,
                                 opener: options.opener)
        guard !chain.contains(file.identity) else {
            throw .invalidImage(path: path, reason: "backing chain loops back to this image")
        }
        switch format {
        case .raw:
            return try RawDriver(file: file)
        case .qcow2:
            return try Qcow2Image(file: file, options: options, chain: chain + [file.identity])
        }
    }

    /// qcow2 if the file starts with qcow2's magic, raw otherwise.
    public static func probe(path: String, opener: BlockFileOpener? = nil) throws(BlockError) -> BlockFormat {
        let file = try BlockFile(path: path, readOnly: true, lock: nil, opener: opener)
        defer { file.close() }
        let head = try file.read(at: 0, count: 4)
        return head == Qcow2Layout.magic ? .qcow2 : .raw
    }

    /// Resolves a backing file name as qemu-img does: absolute names as they are, relative ones
    /// against the directory of the image that names them.
    public static func resolveBackingPath(_ name: String, relativeTo imagePath: String) -> String {
        if name.hasPrefix("/") { return name }
        guard let slash = imagePath.lastIndex(of: "/") else { return name }
        return String(imagePath[...slash]) + name
    }
}

/// A raw image: the guest sees the host file (or block device) byte for byte.
public final class RawDriver: BlockDriver, @unchecked Sendable {
    public let file: BlockFile
    public var path: String { file.path }
    public var format: BlockFormat { .raw }
    public var isReadOnly: Bool { file.isReadOnly }
    public private(set) var size: UInt64

    init(file: BlockFile) throws(BlockError) {
        self.file = file
        size = try file.fileSize()
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try file.read(into: buffer, at: offset)
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        lastRun.withLock { $0 = nil }
        try file.write(from: buffer, at: offset)
    }

    public func flush() throws(BlockError) { try file.flush() }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        lastRun.withLock { $0 = nil }
        if !file.isBlockDevice { file.punchHole(at: offset, length: length) }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws(BlockError) {
        lastRun.withLock { $0 = nil }
        try file.writeZeroes(at: offset, length: length)
    }

    /// The last data-or-hole run found: SEEK_DATA/SEEK_HOLE can cost milliseconds per call
    /// (tmpfs scans to the end of the file), and callers walk a file front to back.
    private let lastRun = Mutex<(start: UInt64, end: UInt64, isData: Bool)?>(nil)

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> (BlockAllocation, UInt64) {
        if file.isBlockDevice { return (.data, length) }
        if let run = lastRun.withLock({ $0 }), offset >= run.start, offset < run.end {
            return (run.isData ? .data : .zero, min(length, run.end - offset))
        }
        // Ask about everything up to the end of the file, then answer from the cached run.
        let wholeRest = size > offset ? size - offset : length
        let run = file.dataRun(at: offset, length: max(wholeRest, length))
        let found = max(run.length, 1)
        lastRun.withLock { $0 = (offset, offset + found, run.isData) }
        return (run.isData ? .data : .zero, min(length, found))
    }

    public func resize(to newSize: UInt64) throws(BlockError) {
        try file.truncate(to: newSize)
        size = newSize
    }

    public func close() throws(BlockError) { file.close() }
}
