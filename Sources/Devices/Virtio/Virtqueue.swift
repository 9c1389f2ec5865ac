import DMCore
import Synchronization

/// Why a split virtqueue cannot be served. Every case is the driver's fault (or a hostile
/// guest's); the transport answers by setting DEVICE_NEEDS_RESET and leaving the queue alone.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    /// The queue's size or ring addresses break the spec's rules (power-of-two size,
    /// alignment) or lie outside guest RAM.
    case invalidLayout
    /// `avail.idx` moved further ahead of us than the ring has entries.
    case availIndexJump(available: UInt16, seen: UInt16)
    case descriptorIndex(UInt16)
    /// More descriptors than the queue may hold: a loop in `next`, or a chain too long.
    case chainTooLong
    case nestedIndirect
    /// An indirect descriptor whose table length is zero or not a multiple of 16 bytes, or
    /// which also has NEXT set.
    case badIndirect
    /// A buffer whose address plus length wraps the 64-bit address space.
    case bufferWraps(address: UInt64, length: UInt32)
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case .invalidLayout: return "invalid ring layout"
        case let .availIndexJump(a, s): return "avail index \(a) is more than a ring ahead of \(s)"
        case .descriptorIndex(let i): return "descriptor index \(i) out of range"
        case .chainTooLong: return "descriptor chain longer than the queue (a loop?)"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .badIndirect: return "malformed indirect descriptor"
        case let .bufferWraps(a, l): return "buffer \(hex(a))+\(hex(l)) wraps the address space"
        case .memory(let e): return e.description
        }
    }
}

/// One buffer of a descriptor chain, as the device uses it.
public struct VirtqueueBuffer: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE); otherwise device-readable.
    public var writable: Bool

    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }
}

/// A split virtqueue (virtio 1.x §2.7): the registers the driver programs and the device's own
/// two indices, as a value. Nothing here holds guest memory; each operation reads or writes
/// the rings through `GuestMemory` for the duration of the call, so a queue is plain data that
/// can be saved, restored and compared.
public struct SplitVirtqueue: Equatable, Sendable {
    static let flagNext: UInt16 = 1
    static let flagWrite: UInt16 = 2
    static let flagIndirect: UInt16 = 4
    /// avail.flags: the driver does not want interrupts (ignored with EVENT_IDX).
    static let availNoInterrupt: UInt16 = 1

    /// The largest size the device offers; the driver may pick a smaller power of two.
    public let maxSize: UInt16
    public var size: UInt16
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var availRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    /// VIRTIO_F_EVENT_IDX negotiated: `used_event`/`avail_event` replace the flags.
    public var eventIndex = false
    /// Indirect descriptors negotiated (VIRTIO_F_INDIRECT_DESC).
    public var indirect = false
    /// The next avail ring slot the device will look at.
    public var nextAvail: UInt16 = 0
    /// The next used ring slot the device will fill.
    public var nextUsed: UInt16 = 0
    /// `nextUsed` when the driver was last interrupted, for event-index suppression.
    public var signalledUsed: UInt16 = 0

    public init(maxSize: UInt16) {
        precondition(maxSize > 0 && maxSize.nonzeroBitCount == 1 && maxSize <= 32768)
        self.maxSize = maxSize
        size = maxSize
    }

    /// Back to the state a device reset leaves: unconfigured, size at its maximum.
    public mutating func reset() {
        self = SplitVirtqueue(maxSize: maxSize)
    }

    /// Spec rules for an enabled queue: size a power of two no larger than the maximum,
    /// descriptor table 16-byte aligned, avail ring 2-byte, used ring 4-byte, and all three
    /// inside guest RAM. Checked when the driver enables the queue so a bad layout never
    /// reaches the data path.
    public func validateLayout(_ memory: any GuestMemory) throws(VirtqueueError) {
        guard size > 0, size <= maxSize, size.nonzeroBitCount == 1,
              descriptorTable & 15 == 0, availRing & 1 == 0, usedRing & 3 == 0 else { throw .invalidLayout }
        let n = Int(size)
        // Descriptors 16 bytes each; avail: flags, idx, ring, used_event; used: flags, idx,
        // 8-byte elements, avail_event.
        for (base, length) in [(descriptorTable, 16 * n), (availRing, 6 + 2 * n), (usedRing, 6 + 8 * n)] {
            do { try memory.withBytes(at: base, length: length, forWriting: false) { _ in } } catch {
                throw .invalidLayout
            }
        }
    }

    // MARK: driver → device

    /// The head of the next available chain, consuming its avail slot; nil when the driver
    /// has made nothing new available.
    public mutating func popAvailable(_ memory: any GuestMemory) throws(VirtqueueError) -> UInt16? {
        let available = try read(UInt16.self, availRing + 2, memory)
        guard available != nextAvail else { return nil }
        guard available &- nextAvail <= size else { throw .availIndexJump(available: available, seen: nextAvail) }
        // The ring entry must be read after the index that published it.
        atomicMemoryFence(ordering: .acquiring)
        let head = try read(UInt16.self, availRing + 4 + 2 * UInt64(nextAvail % size), memory)
        guard head < size else { throw .descriptorIndex(head) }
        nextAvail &+= 1
        if eventIndex {
            // avail_event: "notify me again once you make this entry available".
            try write(nextAvail, usedRing + 4 + 8 * UInt64(size), memory)
        }
        return head
    }

    /// Walks the chain starting at `head`; see `DescriptorChain`.
    public func chain(head: UInt16) -> DescriptorChain {
        DescriptorChain(queue: self, head: head)
    }

    // MARK: device → driver

    /// Returns chain `head` to the driver with `written` bytes written into its buffers.
    public mutating func pushUsed(head: UInt16, written: UInt32, _ memory: any GuestMemory) throws(VirtqueueError) {
        let slot = usedRing + 4 + 8 * UInt64(nextUsed % size)
        try write(UInt32(head), slot, memory)
        try write(written, slot + 4, memory)
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        nextUsed &+= 1
        try write(nextUsed, usedRing + 2, memory)
    }

    /// Whether the driver wants an interrupt for what was pushed since the last one, and
    /// records that it got one. Full memory barrier first: the driver's `used_event` (or flags)
    /// must be read after our used index was published, or an interrupt can be lost.
    public mutating func shouldInterrupt(_ memory: any GuestMemory) throws(VirtqueueError) -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = signalledUsed, new = nextUsed
        guard old != new else { return false }
        signalledUsed = new
        if eventIndex {
            let event = try read(UInt16.self, availRing + 4 + 2 * UInt64(size), memory)
            // Interrupt if `used_event` lies in (old, new]: the driver asked to hear about it.
            return new &- event &- 1 < new &- old
        }
        return try read(UInt16.self, availRing, memory) & Self.availNoInterrupt == 0
    }

    // MARK: memory helpers

    @inline(__always)
    func read<T: FixedWidthInteger>(_: T.Type, _ address: UInt64, _ memory: any GuestMemory) throws(VirtqueueError) -> T {
        do { return try memory.read(T.self, at: address) } catch { throw .memory(error) }
    }

    @inline(__always)
    func write<T: FixedWidthInteger>(_ value: T, _ address: UInt64, _ memory: any GuestMemory) throws(VirtqueueError) {
        do { try memory.write(value, at: address) } catch { throw .memory(error) }
    }
}

/// An iterator over one descriptor chain: direct descriptors, at most one indirect table, all
/// validated as they are read. It allocates nothing and never trusts the guest's `next`
/// fields: the number of descriptors is bounded by the queue size (the spec's limit for a
/// chain), which is what catches loops, and an indirect table's own entries are bounded by its
/// length.
public struct DescriptorChain: Sendable {
    private let queue: SplitVirtqueue
    private var nextIndex: UInt16?
    /// The indirect table being walked, if any: its base and entry count.
    private var table: (base: UInt64, count: UInt32)?
    private var visited: UInt32 = 0
    private var limit: UInt32

    init(queue: SplitVirtqueue, head: UInt16) {
        self.queue = queue
        nextIndex = head
        limit = UInt32(queue.size)
    }

    /// The next buffer, nil at the end of the chain.
    public mutating func next(_ memory: any GuestMemory) throws(VirtqueueError) -> VirtqueueBuffer? {
        guard let index = nextIndex else { return nil }
        visited += 1
        guard visited <= limit else { throw .chainTooLong }
        let address: UInt64
        if let table {
            guard UInt32(index) < table.count else { throw .descriptorIndex(index) }
            address = table.base + 16 * UInt64(index)
        } else {
            guard index < queue.size else { throw .descriptorIndex(index) }
            address = queue.descriptorTable + 16 * UInt64(index)
        }
        let bufferAddress = try queue.read(UInt64.self, address, memory)
        let length = try queue.read(UInt32.self, address + 8, memory)
        let flags = try queue.read(UInt16.self, address + 12, memory)
        let next = try queue.read(UInt16.self, address + 14, memory)
        guard length == 0 || bufferAddress <= UInt64.max - UInt64(length - 1) else {
            throw .bufferWraps(address: bufferAddress, length: length)
        }
        if flags & SplitVirtqueue.flagIndirect != 0 {
            guard queue.indirect else { throw .badIndirect }
            guard table == nil else { throw .nestedIndirect }
            guard flags & SplitVirtqueue.flagNext == 0, length > 0, length % 16 == 0 else { throw .badIndirect }
            // The table replaces the rest of the chain; its entries count against the same
            // limit, so an indirect table cannot make a chain longer than the queue.
            table = (bufferAddress, length / 16)
            nextIndex = 0
            return try self.next(memory)
        }
        nextIndex = flags & SplitVirtqueue.flagNext != 0 ? next : nil
        return VirtqueueBuffer(address: bufferAddress, length: length, writable: flags & SplitVirtqueue.flagWrite != 0)
    }
}
