import Synchronization

/// What devices and tools hold: one opened image (its whole backing chain behind it) with every
/// request validated before any I/O — offset and length inside the device, no overflow,
/// writes refused on read-only images — and an asynchronous API served by a worker pool so the
/// vCPU, ioreq and event-loop threads never wait for the disk.
///
/// Synchronous calls (`read`, `write`, ...) block the caller: for the tool, tests and workers.
/// Asynchronous calls (`submit`, and the EventLoop/GuestMemory helpers in `Async/`) return at
/// once and call the completion later.
public final class BlockBackend: Sendable {
    public let driver: any BlockDriver
    public var size: UInt64 { driver.size }
    public var isReadOnly: Bool { driver.isReadOnly }
    public var path: String { driver.path }
    public var format: BlockFormat { driver.format }
    public let pool: BlockWorkerPool

    /// Opens an image; `workers` threads serve the asynchronous API (started on first use),
    /// with at most `queueDepth` requests waiting.
    public convenience init(path: String, options: BlockOpenOptions, workers: Int = 4, queueDepth: Int = 1024) throws(BlockError) {
        self.init(driver: try BlockDrivers.open(path: path, options: options), workers: workers, queueDepth: queueDepth)
    }

    public init(driver: any BlockDriver, workers: Int = 4, queueDepth: Int = 1024) {
        self.driver = driver
        pool = BlockWorkerPool(threads: workers, capacity: queueDepth)
    }

    /// Checks a request against the device; returns nothing or throws `outOfRange`.
    public func validate(offset: UInt64, length: UInt64, writing: Bool) throws(BlockError) {
        if writing && driver.isReadOnly { throw .readOnly(path: driver.path) }
        guard let end = checkedAdd(offset, length), end <= driver.size else {
            throw .outOfRange(offset: offset, length: length, size: driver.size)
        }
    }

    // MARK: synchronous

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try validate(offset: offset, length: UInt64(buffer.count), writing: false)
        try driver.read(into: buffer, at: offset)
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try validate(offset: offset, length: UInt64(buffer.count), writing: true)
        try driver.write(from: buffer, at: offset)
    }

    public func read(at offset: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        guard count >= 0 else { throw .invalidArgument("negative read length") }
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

    public func flush() throws(BlockError) { try driver.flush() }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        try validate(offset: offset, length: length, writing: true)
        try driver.discard(at: offset, length: length)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws(BlockError) {
        try validate(offset: offset, length: length, writing: true)
        try driver.writeZeroes(at: offset, length: length)
    }

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> (BlockAllocation, UInt64) {
        try validate(offset: offset, length: length, writing: false)
        guard length > 0 else { return (.data, 0) }
        return try driver.allocation(at: offset, length: length)
    }

    public func resize(to newSize: UInt64) throws(BlockError) {
        guard !driver.isReadOnly else { throw .readOnly(path: driver.path) }
        try driver.resize(to: newSize)
    }

    /// Waits for queued requests, stops the workers, writes back and closes the chain.
    public func close() throws(BlockError) {
        pool.shutdown()
        try driver.close()
    }

    // MARK: asynchronous

    /// One request for the worker pool. Buffers are owned by the request (devices copy to and
    /// from guest memory through the `Async/` helpers, or pass a GuestMemory-backed request).
    public enum Request: Sendable {
        case read(offset: UInt64, count: Int)
        case write(offset: UInt64, bytes: [UInt8])
        case flush
        case discard(offset: UInt64, length: UInt64)
        case writeZeroes(offset: UInt64, length: UInt64)
    }

    /// The result of a request: the bytes read for `.read`, empty otherwise.
    public typealias Completion = @Sendable (Result<[UInt8], BlockError>) -> Void

    /// Queues `request`; `completion` runs on a worker thread when it is done. Validation
    /// errors complete at once, on the caller's thread. Blocks only if the queue is full.
    public func submit(_ request: Request, completion: @escaping Completion) {
        do throws(BlockError) {
            switch request {
            case let .read(offset, count): try validate(offset: offset, length: UInt64(max(count, 0)), writing: false)
            case let .write(offset, bytes): try validate(offset: offset, length: UInt64(bytes.count), writing: true)
            case .flush: break
            case let .discard(offset, length), let .writeZeroes(offset, length):
                try validate(offset: offset, length: length, writing: true)
            }
        } catch {
            completion(.failure(error))
            return
        }
        submitWork { [self] in
            do throws(BlockError) {
                switch request {
                case let .read(offset, count): completion(.success(try read(at: offset, count: count)))
                case let .write(offset, bytes):
                    try write(bytes, at: offset)
                    completion(.success([]))
                case .flush:
                    try flush()
                    completion(.success([]))
                case let .discard(offset, length):
                    try discard(at: offset, length: length)
                    completion(.success([]))
                case let .writeZeroes(offset, length):
                    try writeZeroes(at: offset, length: length)
                    completion(.success([]))
                }
            } catch {
                completion(.failure(error))
            }
        }
    }

    /// Runs arbitrary work on the pool (the `Async/` helpers use it for zero-copy requests).
    public func submitWork(_ work: @escaping @Sendable () -> Void) {
        pool.enqueue(work)
    }
}
