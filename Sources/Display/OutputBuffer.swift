#if canImport(Glibc)
import Glibc
#endif

/// Bytes waiting to go to one client: appended at the end, written to the socket from the
/// front. The storage is kept between updates, so a client in steady state costs no
/// allocations.
struct OutputBuffer {
    private(set) var bytes: [UInt8] = []
    private var start = 0

    var count: Int { bytes.count - start }
    var isEmpty: Bool { start == bytes.count }

    mutating func append(_ byte: UInt8) { bytes.append(byte) }
    mutating func append16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }
    mutating func append32(_ value: UInt32) {
        append16(UInt16(truncatingIfNeeded: value >> 16))
        append16(UInt16(truncatingIfNeeded: value))
    }
    mutating func append(contentsOf data: some Collection<UInt8>) { bytes.append(contentsOf: data) }
    /// The hot path's variant (a compressed rectangle): concrete, so it stays allocation-free
    /// even unoptimised.
    mutating func append(contentsOf data: [UInt8]) { bytes.append(contentsOf: data) }

    /// Where the next byte will go, for patching a count in later or undoing an attempt.
    var endMark: Int { bytes.count }
    mutating func truncate(to mark: Int) { bytes.removeSubrange(mark...) }
    mutating func patch8(at mark: Int, _ value: UInt8) { bytes[mark] = value }
    mutating func patch16(at mark: Int, _ value: UInt16) {
        bytes[mark] = UInt8(truncatingIfNeeded: value >> 8)
        bytes[mark + 1] = UInt8(truncatingIfNeeded: value)
    }

    /// Sends what the socket takes without blocking. Returns false when the socket failed.
    mutating func flush(to fd: Int32) -> Bool {
        while start < bytes.count {
            let sent = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress.map { $0 + start }, bytes.count - start, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent > 0 {
                start += sent
            } else if sent < 0 && errno == EINTR {
                continue
            } else if sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                return false
            }
        }
        if start == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 65536 && start > bytes.count / 2 {
            bytes.removeSubrange(..<start)
            start = 0
        }
        return true
    }

    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        start = 0
    }
}
