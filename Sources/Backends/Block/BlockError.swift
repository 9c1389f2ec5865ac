#if canImport(Glibc)
import Glibc
#endif

/// Everything the block layer can fail with. Image files are hostile input, so a bad header is
/// `invalidImage` at open, and bad metadata found while serving a request is `corrupt` for that
/// request only: the device reports an I/O error to the guest and the model keeps running.
public enum BlockError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed; `errno` says why.
    case system(operation: String, path: String, errno: Int32)
    /// The file is not a valid image of the requested format (found at open).
    case invalidImage(path: String, reason: String)
    /// A valid image that uses something this implementation refuses (encryption, unknown
    /// incompatible features, external data files, ...).
    case unsupported(path: String, reason: String)
    /// Metadata met while serving one request is inconsistent (points outside the file, into
    /// metadata, has reserved bits set). The request fails; the image stays open.
    case corrupt(path: String, reason: String)
    /// A request outside the device, or with an offset+length that overflows.
    case outOfRange(offset: UInt64, length: UInt64, size: UInt64)
    case readOnly(path: String)
    /// Another process (QEMU, qemu-img, swiftdm-img) holds a conflicting lock.
    case locked(path: String, reason: String)
    case invalidArgument(String)
    case closed

    public var description: String {
        switch self {
        case let .system(operation, path, code):
            return "\(path): \(operation): \(String(cString: strerror(code)))"
        case let .invalidImage(path, reason): return "\(path): not a valid image: \(reason)"
        case let .unsupported(path, reason): return "\(path): unsupported: \(reason)"
        case let .corrupt(path, reason): return "\(path): corrupt metadata: \(reason)"
        case let .outOfRange(offset, length, size):
            return "request at \(offset)+\(length) is outside the device (size \(size))"
        case let .readOnly(path): return "\(path): image is read-only"
        case let .locked(path, reason): return "\(path): \(reason)"
        case let .invalidArgument(text): return text
        case .closed: return "block device is closed"
        }
    }

    /// The errno a device should report to the guest (or qemu-img-like tools print).
    public var errnoValue: Int32 {
        switch self {
        case let .system(_, _, code): return code
        case .outOfRange, .invalidArgument: return EINVAL
        case .readOnly: return EROFS
        case .locked: return EAGAIN
        case .unsupported: return ENOTSUP
        case .invalidImage, .corrupt, .closed: return EIO
        }
    }
}

/// Overflow-checked arithmetic for offsets that come from image files or guests.
@inline(__always)
func checkedAdd(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? nil : sum
}

@inline(__always)
func checkedMultiply(_ a: UInt64, _ b: UInt64) -> UInt64? {
    let (product, overflow) = a.multipliedReportingOverflow(by: b)
    return overflow ? nil : product
}

@inline(__always)
func roundUp(_ value: UInt64, toMultipleOf alignment: UInt64) -> UInt64? {
    guard let bumped = checkedAdd(value, alignment - 1) else { return nil }
    return bumped / alignment * alignment
}

// Big-endian field access for on-disk structures (qcow2 is big-endian throughout). Callers
// check bounds first; these trap only on a programming error, never on file contents.
extension Array where Element == UInt8 {
    @inline(__always)
    func bigEndian64(at index: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<8 { value = value << 8 | UInt64(self[index + i]) }
        return value
    }

    @inline(__always)
    func bigEndian32(at index: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<4 { value = value << 8 | UInt32(self[index + i]) }
        return value
    }

    @inline(__always)
    func bigEndian16(at index: Int) -> UInt16 {
        UInt16(self[index]) << 8 | UInt16(self[index + 1])
    }

    @inline(__always)
    mutating func setBigEndian64(_ value: UInt64, at index: Int) {
        for i in 0..<8 { self[index + i] = UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64(i))) }
    }

    @inline(__always)
    mutating func setBigEndian32(_ value: UInt32, at index: Int) {
        for i in 0..<4 { self[index + i] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(i))) }
    }

    @inline(__always)
    mutating func setBigEndian16(_ value: UInt16, at index: Int) {
        self[index] = UInt8(value >> 8)
        self[index + 1] = UInt8(truncatingIfNeeded: value)
    }
}

// Typed-throws bridges: the standard library's withUnsafe(Mutable)Bytes only rethrows untyped
// errors, so carry ours out as a value.
extension Array where Element == UInt8 {
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(BlockError) -> R) throws(BlockError) -> R {
        let result = withUnsafeBytes { raw -> Result<R, BlockError> in
            do throws(BlockError) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    mutating func withMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws(BlockError) -> R) throws(BlockError) -> R {
        let result = withUnsafeMutableBytes { raw -> Result<R, BlockError> in
            do throws(BlockError) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
