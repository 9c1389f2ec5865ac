import DMCore
import Synchronization

/// Guest memory under Xen: the device model cannot keep all of a guest's RAM mapped, so it
/// maps 1 MiB buckets of guest frames on demand through foreign mapping (QEMU's mapcache,
/// `hw/xen/xen-mapcache.c`), keeps at most `maxBuckets` of them, and evicts the least recently
/// used unlocked bucket when it needs room.
///
/// - A bucket is *locked* while a `withBytes` body runs on it, so neither eviction nor an
///   `INVALIDATE` can unmap bytes a device is copying. Invalidation of a locked bucket is
///   deferred: it leaves the table at once (no new user finds it) and is unmapped when its last
///   user returns.
/// - A range that crosses a bucket boundary gets its own temporary mapping of exactly the
///   frames it covers, for the duration of the call (rare: DMA buffers are page-sized pieces).
/// - Frames Xen refused to map (holes, MMIO) make an access to them fail with `.unmapped`;
///   nothing outside a valid mapped page is ever touched.
/// - While global dirty logging is on (migration; QMP `xen-set-global-dirty-log`), every write
///   access is reported to Xen with `modified_memory`.
public final class XenMapCache: GuestMemory, @unchecked Sendable {
    public static let bucketShift: UInt64 = 20
    public static let bucketSize: UInt64 = 1 << bucketShift
    static let pagesPerBucket = Int(bucketSize >> xenPageShift)
    /// Guest-physical addresses Xen can name on x86-64 (52 bits).
    public static let addressLimit: UInt64 = 1 << 52
    /// The largest single access (a temporary mapping of this many bytes at most).
    public static let maxAccessLength = 64 << 20

    private let hypervisor: any XenHypervisor
    public let maxBuckets: Int
    private let errors: GuestErrorLog

    final class Bucket: @unchecked Sendable {  // mutated only under `state`'s lock
        let mapping: ForeignMapping
        var users = 0
        var lastUse: UInt64 = 0
        var invalidated = false
        init(mapping: ForeignMapping) { self.mapping = mapping }
    }

    private struct State {
        var buckets: [UInt64: Bucket] = [:]
        var clock: UInt64 = 0
        var mapsDone = 0
        var unmapsDone = 0
    }
    private let state = Mutex(State())
    private let dirtyLogging = Atomic<Bool>(false)

    public init(hypervisor: any XenHypervisor, maxBuckets: Int = 4096, errors: GuestErrorLog = .shared) {
        precondition(maxBuckets >= 1, "the mapcache needs at least one bucket")
        self.hypervisor = hypervisor
        self.maxBuckets = maxBuckets
        self.errors = errors
    }

    deinit {
        state.withLock { s in
            for bucket in s.buckets.values { hypervisor.unmapForeignPages(bucket.mapping) }
            s.buckets.removeAll()
        }
    }

    /// Global dirty logging (QMP `xen-set-global-dirty-log`): report every write to Xen.
    public var globalDirtyLogging: Bool {
        get { dirtyLogging.load(ordering: .acquiring) }
        set { dirtyLogging.store(newValue, ordering: .releasing) }
    }

    /// Buckets currently mapped, and how many map/unmap calls the cache made (tests, stats).
    public var statistics: (mapped: Int, maps: Int, unmaps: Int) {
        state.withLock { ($0.buckets.count, $0.mapsDone, $0.unmapsDone) }
    }

    public func withBytes<R>(at address: UInt64, length: Int, forWriting: Bool,
                             _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R {
        guard length >= 0, length <= Self.maxAccessLength else { throw GuestMemoryError(.tooLarge, address: address, length: length) }
        guard address < Self.addressLimit, UInt64(length) <= Self.addressLimit - address else {
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
        let result: R
        let index = address >> Self.bucketShift
        let lastByte = address + UInt64(max(length, 1)) - 1
        if lastByte >> Self.bucketShift == index {
            result = try withBucket(index, address: address, length: length, body)
        } else {
            result = try withTemporaryMapping(address: address, length: length, body)
        }
        if forWriting, length > 0, globalDirtyLogging {
            let first = address >> xenPageShift
            let count = UInt32(truncatingIfNeeded: (lastByte >> xenPageShift) - first + 1)
            do throws(XenError) {
                try hypervisor.modifiedMemory(firstGFN: first, count: count)
            } catch {
                errors.report("xen-mapcache", "modified_memory(\(hex(first)), \(count)): \(error)")
            }
        }
        return result
    }

    /// Drops every mapping (an `INVALIDATE` ioreq: Xen took frames away, e.g. ballooning).
    /// Buckets in use are unmapped when their last user returns.
    public func invalidate() {
        let unmap = state.withLock { s -> [Bucket] in
            var idle: [Bucket] = []
            for bucket in s.buckets.values {
                bucket.invalidated = true
                if bucket.users == 0 { idle.append(bucket) }
            }
            s.buckets.removeAll()
            s.unmapsDone += idle.count
            return idle
        }
        for bucket in unmap { hypervisor.unmapForeignPages(bucket.mapping) }
    }

    private func withBucket<R>(_ index: UInt64, address: UInt64, length: Int,
                               _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R {
        let bucket = try acquire(index, address: address, length: length)
        defer { release(bucket) }
        let offset = Int(address & (Self.bucketSize - 1))
        try checkPages(bucket.mapping, offset: offset, length: length, address: address)
        return body(UnsafeMutableRawBufferPointer(start: bucket.mapping.base + offset, count: length))
    }

    /// Finds or maps bucket `index` and marks it in use.
    private func acquire(_ index: UInt64, address: UInt64, length: Int) throws(GuestMemoryError) -> Bucket {
        if let hit = state.withLock({ s -> Bucket? in
            guard let b = s.buckets[index] else { return nil }
            s.clock &+= 1
            b.lastUse = s.clock
            b.users += 1
            return b
        }) {
            return hit
        }
        // Miss: map outside the lock (a hypercall), then install, unless another thread won.
        let mapping: ForeignMapping
        do throws(XenError) {
            mapping = try hypervisor.mapForeignPages(firstGFN: index << (Self.bucketShift - xenPageShift),
                                                     pageCount: Self.pagesPerBucket)
        } catch {
            errors.report("xen-mapcache", "cannot map guest memory at \(hex(index << Self.bucketShift)): \(error)")
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
        var evicted: [Bucket] = []
        let (bucket, duplicate) = state.withLock { s -> (Bucket?, Bool) in
            s.clock &+= 1
            if let existing = s.buckets[index] {
                existing.users += 1
                existing.lastUse = s.clock
                return (existing, true)
            }
            while s.buckets.count >= maxBuckets {
                // Least recently used among the idle buckets: a linear scan, on misses only.
                guard let victim = s.buckets.filter({ $0.value.users == 0 }).min(by: { $0.value.lastUse < $1.value.lastUse })
                else { return (nil, false) }
                s.buckets[victim.key] = nil
                evicted.append(victim.value)
            }
            let b = Bucket(mapping: mapping)
            b.users = 1
            b.lastUse = s.clock
            s.buckets[index] = b
            s.mapsDone += 1
            s.unmapsDone += evicted.count
            return (b, false)
        }
        for victim in evicted { hypervisor.unmapForeignPages(victim.mapping) }
        if duplicate { hypervisor.unmapForeignPages(mapping) }
        guard let bucket else {
            hypervisor.unmapForeignPages(mapping)
            errors.report("xen-mapcache", "all \(maxBuckets) buckets are in use; access at \(hex(address)) refused")
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
        return bucket
    }

    private func release(_ bucket: Bucket) {
        let unmapNow = state.withLock { s -> Bool in
            bucket.users -= 1
            if bucket.users == 0 && bucket.invalidated {
                s.unmapsDone += 1
                return true
            }
            return false
        }
        if unmapNow { hypervisor.unmapForeignPages(bucket.mapping) }
    }

    private func withTemporaryMapping<R>(address: UInt64, length: Int,
                                         _ body: (UnsafeMutableRawBufferPointer) -> R) throws(GuestMemoryError) -> R {
        let first = address >> xenPageShift
        let pages = Int(((address + UInt64(length) - 1) >> xenPageShift) - first + 1)
        let mapping: ForeignMapping
        do throws(XenError) {
            mapping = try hypervisor.mapForeignPages(firstGFN: first, pageCount: pages)
        } catch {
            errors.report("xen-mapcache", "cannot map guest memory at \(hex(address))+\(hex(length)): \(error)")
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
        defer { hypervisor.unmapForeignPages(mapping) }
        let offset = Int(address & UInt64(xenPageSize - 1))
        try checkPages(mapping, offset: offset, length: length, address: address)
        return body(UnsafeMutableRawBufferPointer(start: mapping.base + offset, count: length))
    }

    /// Every page [offset, offset+length) touches must be one Xen actually mapped.
    @inline(__always)
    private func checkPages(_ mapping: ForeignMapping, offset: Int, length: Int, address: UInt64) throws(GuestMemoryError) {
        guard length > 0 else { return }
        let firstPage = offset / xenPageSize, lastPage = (offset + length - 1) / xenPageSize
        for page in firstPage...lastPage where !mapping.isValid(page: page) {
            throw GuestMemoryError(.unmapped, address: address, length: length)
        }
    }
}
