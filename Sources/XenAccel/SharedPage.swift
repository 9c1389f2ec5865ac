import CXen

/// A page (or pages) of memory shared with Xen and readable, often writable, by the guest:
/// the synchronous ioreq page and the buffered ring. Its contents can change at any moment,
/// between any two of our loads, so this type offers only what the protocol needs: atomic
/// loads and stores of the fields that carry ordering (the slot state, the ring pointers) and
/// a one-shot volatile copy of a whole slot. Every offset is checked against the region; a
/// caller never gets a pointer into it.
public struct SharedPage: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int

    public init(base: UnsafeMutableRawPointer, length: Int) {
        self.base = base
        self.length = length
    }

    @inline(__always)
    func contains(_ offset: Int, _ size: Int) -> Bool {
        offset >= 0 && size >= 0 && offset <= length - size
    }

    @inline(__always)
    func loadAcquireByte(at offset: Int) -> UInt8 {
        precondition(contains(offset, 1), "shared page offset out of range")
        return cxen_load_acquire_u8(base + offset)
    }

    @inline(__always)
    func storeReleaseByte(_ value: UInt8, at offset: Int) {
        precondition(contains(offset, 1), "shared page offset out of range")
        cxen_store_release_u8(base + offset, value)
    }

    @inline(__always)
    func loadAcquireUInt32(at offset: Int) -> UInt32 {
        precondition(contains(offset, 4) && offset % 4 == 0, "shared page offset out of range")
        return UInt32(littleEndian: cxen_load_acquire_u32(base + offset))
    }

    @inline(__always)
    func storeReleaseUInt32(_ value: UInt32, at offset: Int) {
        precondition(contains(offset, 4) && offset % 4 == 0, "shared page offset out of range")
        cxen_store_release_u32(base + offset, value.littleEndian)
    }

    @inline(__always)
    func fetchAddUInt32(_ value: UInt32, at offset: Int) {
        precondition(contains(offset, 4) && offset % 4 == 0, "shared page offset out of range")
        _ = cxen_fetch_add_u32(base + offset, value)
    }

    /// Plain little-endian store of a 64-bit field (the response `data`, published later by the
    /// release store of the state byte).
    @inline(__always)
    func storeUInt64(_ value: UInt64, at offset: Int) {
        precondition(contains(offset, 8), "shared page offset out of range")
        (base + offset).storeBytes(of: value.littleEndian, as: UInt64.self)
    }

    /// Copies `count` bytes at `offset` into `destination` exactly once, with volatile loads, so
    /// nothing is ever re-read from the shared page afterwards (the XSA-197 class of bugs).
    @inline(__always)
    func copyOnce(from offset: Int, count: Int, into destination: UnsafeMutableRawPointer) {
        precondition(contains(offset, count), "shared page offset out of range")
        cxen_copy_from_shared(destination, base + offset, UInt(count))
    }

    /// Test and simulator access: compare-and-swap one byte (plays Xen's side of `state`).
    public func compareExchangeByte(at offset: Int, expected: UInt8, desired: UInt8) -> Bool {
        precondition(contains(offset, 1), "shared page offset out of range")
        return cxen_cas_u8(base + offset, expected, desired) != 0
    }

    /// Test and simulator access: raw byte writes (a hostile guest or Xen filling a slot).
    public func storeBytes(_ bytes: [UInt8], at offset: Int) {
        precondition(contains(offset, bytes.count), "shared page offset out of range")
        for (i, b) in bytes.enumerated() { (base + offset + i).storeBytes(of: b, as: UInt8.self) }
    }

    public func loadBytes(at offset: Int, count: Int) -> [UInt8] {
        precondition(contains(offset, count), "shared page offset out of range")
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { copyOnce(from: offset, count: count, into: $0.baseAddress!) }
        return out
    }
}
