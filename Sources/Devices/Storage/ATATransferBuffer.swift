import Backends
import DMCore

/// Runs block I/O completions where device callbacks run: the machine's event loop, with the
/// `DeviceLock` held (`EventLoop.post`). Tests supply a queue they drain themselves.
public protocol BlockCompletionPoster: AnyObject, Sendable {
    func post(_ work: @escaping @Sendable () -> Void)
}

extension EventLoop: BlockCompletionPoster {}

/// An IDE channel's sector buffer, allocated once on first use and reused for every PIO and
/// DMA transfer, so the PIO data port does no allocation per request.
///
/// Ownership alternates: the channel (under the device lock) fills or drains it, then a worker
/// thread reads or writes it against the backend while the channel shows BSY and touches no
/// byte of it. A reset during a request abandons this buffer for a fresh one, so a late worker
/// never races with a new command.
final class ATATransferBuffer: @unchecked Sendable {
    static let capacity = 64 * 1024
    var bytes: [UInt8] = []

    func allocateIfNeeded() {
        if bytes.isEmpty { bytes = [UInt8](repeating: 0, count: Self.capacity) }
    }

    /// Worker side: fills `bytes[0..<count]` from the backend.
    func read(from backend: BlockBackend, at offset: UInt64, count: Int) -> BlockError? {
        guard count >= 0, count <= bytes.count else { return .invalidArgument("transfer larger than the buffer") }
        return bytes.withUnsafeMutableBytes { raw -> BlockError? in
            do throws(BlockError) {
                try backend.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]), at: offset)
                return nil
            } catch { return error }
        }
    }

    /// Worker side: writes `bytes[0..<count]` to the backend.
    func write(to backend: BlockBackend, at offset: UInt64, count: Int) -> BlockError? {
        guard count >= 0, count <= bytes.count else { return .invalidArgument("transfer larger than the buffer") }
        return bytes.withUnsafeBytes { raw -> BlockError? in
            do throws(BlockError) {
                try backend.write(from: UnsafeRawBufferPointer(rebasing: raw[0..<count]), at: offset)
                return nil
            } catch { return error }
        }
    }
}
