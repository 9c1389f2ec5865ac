import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct GuestMemoryError: Error, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable { case unmapped, readOnly, tooLarge }
    public let reason: Reason
    public let address: UInt64
    public let length: Int

    public init(_ reason: Reason, address: UInt64, length: Int) {
        self.reason = reason
        self.address = address
        self.length = length
    }

    public var description: String {
        "guest memory \(reason) at \(hex(address))+\(hex(length))"
    }
}

/// Guest-physical memory as devices see it for DMA.
///
/// No device ever holds a pointer into guest RAM: each access names a guest address and a
/// length, is checked against the current memory map, and reaches the backing bytes only for
/// the duration of one call. That is what lets Xen serve the same interface from a mapcache
/// (mapping guest frames on demand) while KVM serves it from one flat host mapping.
public protocol GuestMemory: AnyObject, Sendable {
    /// Calls `body` with the host bytes backing [address, address+length). The buffer is valid
    /// only inside `body`. Fails if any byte is unmapped, or read-only when `forWriting`.
    /// For backends that move bulk data; devices use the typed accessors below.
    func withBytes<R>(at address: UInt64, length: Int, forWriting: Bool,
                      _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R
}

extension GuestMemory {
    public func read<T: FixedWidthInteger>(_: T.Type, at address: UInt64) throws(GuestMemoryError) -> T {
        try withBytes(at: address, length: MemoryLayout<T>.size, forWriting: false) {
            T(littleEndian: $0.loadUnaligned(as: T.self))
        }
    }

    public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        try withBytes(at: address, length: MemoryLayout<T>.size, forWriting: true) {
            $0.storeBytes(of: value.littleEndian, as: T.self)
        }
    }

    /// Copies `count` bytes from guest memory into `buffer[offset...]`.
    public func read(at address: UInt64, into buffer: inout [UInt8], offset: Int = 0, count: Int) throws(GuestMemoryError) {
        precondition(offset >= 0 && count >= 0 && count <= buffer.count - offset, "host buffer too small")
        if count == 0 { return }
        // withUnsafeMutableBytes only rethrows untyped errors, so carry ours out as a value.
        let failure = buffer.withUnsafeMutableBytes { dst -> GuestMemoryError? in
            do throws(GuestMemoryError) {
                try withBytes(at: address, length: count, forWriting: false) { src in
                    dst.baseAddress!.advanced(by: offset).copyMemory(from: src.baseAddress!, byteCount: count)
                }
                return nil
            } catch { return error }
        }
        if let failure { throw failure }
    }

    public func readBytes(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try read(at: address, into: &bytes, count: count)
        return bytes
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(at address: UInt64, bytes: some Collection<UInt8>) throws(GuestMemoryError) {
        let count = bytes.count
        try withBytes(at: address, length: count, forWriting: true) { dst in
            UnsafeMutableRawBufferPointer(rebasing: dst[0..<count]).copyBytes(from: bytes)
        }
    }

    public func fill(at address: UInt64, count: Int, byte: UInt8) throws(GuestMemoryError) {
        try withBytes(at: address, length: count, forWriting: true) { dst in
            if count > 0 { memset(dst.baseAddress!, Int32(byte), count) }
        }
    }
}

/// An anonymous host mapping that backs guest RAM or a ROM. Pages cost nothing until touched.
public final class HostMemory: @unchecked Sendable {
    public let size: Int
    /// For the accelerator (KVM memory slots) and `PhysicalMemory` only.
    public let baseAddress: UnsafeMutableRawPointer

    public init(size: Int) throws(HostMemoryError) {
        guard size > 0 else { throw HostMemoryError(size: size, errno: EINVAL) }
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw HostMemoryError(size: size, errno: errno) }
        baseAddress = p
        self.size = size
    }

    /// Copies `bytes` to `offset` (loading firmware images at machine build time).
    public func load(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && bytes.count <= size - offset, "image larger than its region")
        bytes.withUnsafeBytes { baseAddress.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    deinit { munmap(baseAddress, size) }
}

public struct HostMemoryError: Error, CustomStringConvertible {
    public let size: Int
    public let errno: Int32
    public var description: String { "cannot map \(size) bytes of guest memory: \(String(cString: strerror(errno)))" }
}

/// The guest-physical memory map of a machine whose memory lives in host mappings (KVM, tests):
/// a sorted list of regions, each a window onto a `HostMemory`. The machine replaces the map
/// when the chipset changes it (PAM shadowing of the BIOS area, for example).
public final class PhysicalMemory: GuestMemory {
    public struct Region: Sendable {
        public let guestAddress: UInt64
        public let size: UInt64
        public let backing: HostMemory
        public let backingOffset: Int
        public let writable: Bool

        public init(guestAddress: UInt64, size: UInt64, backing: HostMemory, backingOffset: Int, writable: Bool) {
            precondition(backingOffset >= 0 && size <= UInt64(backing.size - backingOffset), "region exceeds its backing")
            self.guestAddress = guestAddress
            self.size = size
            self.backing = backing
            self.backingOffset = backingOffset
            self.writable = writable
        }
    }

    private let regions = Mutex<[Region]>([])

    public init(regions: [Region] = []) {
        setRegions(regions)
    }

    public func setRegions(_ new: [Region]) {
        let sorted = new.sorted { $0.guestAddress < $1.guestAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) {
            precondition(a.guestAddress + a.size <= b.guestAddress, "overlapping guest memory regions")
        }
        regions.withLock { $0 = sorted }
    }

    public var currentRegions: [Region] { regions.withLock { $0 } }

    public func withBytes<R>(at address: UInt64, length: Int, forWriting: Bool,
                             _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R {
        guard length >= 0, length <= 1 << 40 else { throw GuestMemoryError(.tooLarge, address: address, length: length) }
        // A plain index loop: `first(where:)` is unspecialised in debug builds and boxes the
        // Region on the heap, which would make every DMA access allocate there.
        let found = regions.withLock { list -> Region? in
            for i in list.indices where address >= list[i].guestAddress && address - list[i].guestAddress < list[i].size {
                return list[i]
            }
            return nil
        }
        guard let region = found, UInt64(length) <= region.size - (address - region.guestAddress) else {
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
        guard region.writable || !forWriting else { throw GuestMemoryError(.readOnly, address: address, length: length) }
        let start = region.backing.baseAddress.advanced(by: region.backingOffset + Int(address - region.guestAddress))
        return withExtendedLifetime(region.backing) { body(UnsafeMutableRawBufferPointer(start: start, count: length)) }
    }
}
