import Synchronization

/// A qcow2 image (versions 2 and 3), read and write.
///
/// Concurrency: one metadata lock guards the L1/L2 tables, refcounts and the allocator. Reads
/// and writes to already-allocated clusters only look up the mapping under the lock and do the
/// data I/O outside it, so requests proceed in parallel; allocating writes hold the lock.
///
/// Crash safety (kill -9 and, outside `cache=unsafe`, power loss): metadata is written through
/// in an order where the file on disk is consistent at every instant, leaks allowed:
///  - new clusters are reserved in batches: their refcounts are written (and made durable)
///    before anything can reference them, so an interrupted write only leaks;
///  - data is written before the L2 entry that points at it, a new L2 table before the L1 entry;
///  - freeing (discard, overwriting a compressed cluster) first removes the reference, and the
///    refcount decrement is applied only after the next flush made the removal durable, and the
///    allocator only appends, so a freed cluster is never reused while an old reference may
///    still be on disk.
/// With lazy refcounts (v3) refcount updates stay in memory until a flush and the header's
/// dirty bit is set meanwhile; opening a dirty image read-write rebuilds the refcounts.
public final class Qcow2Image: BlockDriver, @unchecked Sendable {
    public let file: BlockFile
    public var path: String { file.path }
    public var format: BlockFormat { .qcow2 }
    public let isReadOnly: Bool
    public let backing: (any BlockDriver)?
    /// The backing file as resolved for opening (nil without one).
    public let backingPath: String?
    public let snapshots: [Qcow2Snapshot]
    public var size: UInt64 { lock.withLock { _ in header.size } }
    public var currentHeader: Qcow2Header { lock.withLock { _ in header } }

    let clusterSize: UInt64
    let clusterBits: UInt64
    let l2EntryCount: UInt64
    private let lock = Mutex<Void>(())
    // Everything below is guarded by `lock`.
    private var header: Qcow2Header
    private var l1: [UInt64]
    private var l2Cache: L2Cache
    private var refcounts: Qcow2Refcounts
    /// Clusters holding metadata; a data write into one of them is refused.
    private var metadataClusters: Set<UInt64> = []
    /// Clusters up to here may be in use; allocation appends beyond it.
    private var frontier: UInt64
    /// Clusters whose refcount is already 1 on disk, not yet handed out.
    private var poolStart: UInt64
    private var poolEnd: UInt64
    /// Clusters whose reference is gone, to be decremented after the next flush.
    private var pendingFrees: [UInt64] = []
    private var lazyRefcounts: Bool
    private var closed = false
    private var decompressed: (entry: UInt64, bytes: [UInt8])?
    /// How many clusters to reserve at once. Each reservation costs a durability barrier
    /// (which also flushes the file's dirty data), so the batch doubles after every use, up
    /// to a quarter of what one refcount block covers (512 MiB with 64 KiB clusters).
    private var reserveBatch: UInt64
    private let maxReserveBatch: UInt64

    init(file: BlockFile, options: BlockOpenOptions, chain: [FileIdentity]) throws(BlockError) {
        self.file = file
        let fileSize = try file.fileSize()
        let probe = try file.read(at: 0, count: 512)
        guard probe.count >= 24, Array(probe[0..<4]) == Qcow2Layout.magic else {
            throw .invalidImage(path: file.path, reason: "no qcow2 magic")
        }
        let bits = probe.bigEndian32(at: 20)
        guard (9...21).contains(bits) else { throw .invalidImage(path: file.path, reason: "cluster_bits \(bits) outside 9...21") }
        let firstCluster = try file.read(at: 0, count: 1 << Int(bits))
        let header = try Qcow2Header.parse(firstCluster, fileSize: fileSize, path: file.path)
        clusterSize = header.clusterSize
        clusterBits = UInt64(header.clusterBits)
        l2EntryCount = clusterSize / 8
        // From about 8 MiB, staying well inside one refcount block's coverage so that batches
        // stay contiguous.
        let perRefcountBlock = header.clusterSize * 8 / UInt64(header.refcountBits)
        maxReserveBatch = max(16, perRefcountBlock / 4)
        reserveBatch = max(16, min((8 << 20) / header.clusterSize, maxReserveBatch))
        isReadOnly = options.readOnly

        if !options.readOnly {
            if header.isCorrupt {
                throw .unsupported(path: file.path, reason: "image is marked corrupt; open it read-only, or repair it with `check -r all`")
            }
            if header.snapshotCount > 0 {
                throw .unsupported(path: file.path, reason: "image has internal snapshots; writing to such images is not supported (open read-only)")
            }
            if header.hasBitmapsExtension && header.autoclearFeatures & 1 != 0 {
                // Persistent bitmaps are not maintained here; clearing the autoclear bit tells
                // QEMU they are stale, which is what QEMU itself does without bitmap support.
            }
        }
        snapshots = try Qcow2Header.readSnapshots(header, file: file, fileSize: fileSize)

        let l1Bytes = try file.read(at: header.l1TableOffset, count: Int(header.l1Size) * 8)
        l1 = (0..<Int(header.l1Size)).map { l1Bytes.bigEndian64(at: $0 * 8) }
        let tableBytes = try file.read(at: header.refcountTableOffset, count: Int(UInt64(header.refcountTableClusters) * header.clusterSize))
        let table = (0..<tableBytes.count / 8).map { tableBytes.bigEndian64(at: $0 * 8) }
        refcounts = Qcow2Refcounts(header: header, table: table)
        l2Cache = L2Cache(capacity: options.l2CacheTables)
        frontier = (fileSize + header.clusterSize - 1) / header.clusterSize
        poolStart = frontier
        poolEnd = frontier
        lazyRefcounts = header.version >= 3 && header.hasLazyRefcounts

        // The backing chain: the format the header names, else probed (QEMU does the same for
        // images made without backing_fmt); the backing is only ever read.
        if let name = header.backingFile, !options.skipBacking {
            let resolved = BlockDrivers.resolveBackingPath(name, relativeTo: file.path)
            var backingOptions = options
            backingOptions.readOnly = true
            backingOptions.skipBacking = false
            if let formatName = header.backingFormat {
                guard let backingFormat = BlockFormat(rawValue: formatName) else {
                    throw .unsupported(path: file.path, reason: "backing file format '\(formatName)'")
                }
                backingOptions.format = backingFormat
            } else {
                backingOptions.format = nil
                backingOptions.allowProbing = true
            }
            do throws(BlockError) {
                backing = try BlockDrivers.open(path: resolved, options: backingOptions, chain: chain)
            } catch {
                throw .invalidImage(path: file.path, reason: "could not open backing file: \(error)")
            }
            backingPath = resolved
        } else {
            backing = nil
            backingPath = nil
        }
        self.header = header

        try lock.withLock { _ throws(BlockError) in
            try collectMetadataClusters()
            if !isReadOnly {
                if self.header.autoclearFeatures != 0 {
                    self.header.autoclearFeatures = 0
                    try writeHeaderFields()
                    try file.barrier()
                }
                if self.header.isDirty {
                    // Refcounts may be stale after a crash with lazy refcounts: rebuild them.
                    _ = try checkLocked(repair: .all)
                    try refcounts.writeDirtyBlocks(file: file)
                    try file.barrier()
                    self.header.incompatibleFeatures &= ~Qcow2Layout.dirtyBit
                    try writeHeaderFields()
                    try file.barrier()
                }
            }
        }
    }

    // MARK: metadata helpers (lock held)

    private func collectMetadataClusters() throws(BlockError) {
        metadataClusters.insert(0)
        insertClusters(offset: header.l1TableOffset, bytes: UInt64(header.l1Size) * 8)
        insertClusters(offset: header.refcountTableOffset, bytes: UInt64(header.refcountTableClusters) * clusterSize)
        for entry in refcounts.table where entry != 0 { metadataClusters.insert(entry >> clusterBits) }
        for entry in l1 where entry & Qcow2Layout.offsetMask != 0 {
            metadataClusters.insert((entry & Qcow2Layout.offsetMask) >> clusterBits)
        }
        if header.snapshotCount > 0 { metadataClusters.insert(header.snapshotsOffset >> clusterBits) }
        for snapshot in snapshots {
            insertClusters(offset: snapshot.l1TableOffset, bytes: UInt64(snapshot.l1Size) * 8)
        }
    }

    private func insertClusters(offset: UInt64, bytes: UInt64) {
        guard bytes > 0, let end = checkedAdd(offset, bytes) else { return }
        var cluster = offset >> clusterBits
        while cluster << clusterBits < end {
            metadataClusters.insert(cluster)
            cluster += 1
        }
    }

    private var fileEnd: UInt64 { frontier << clusterBits }

    private func corrupt(_ reason: String) -> BlockError { .corrupt(path: file.path, reason: reason) }

    /// Writes the fixed header fields (not the extensions that follow them).
    private func writeHeaderFields() throws(BlockError) {
        try file.write(header.encodedFields(), at: 0)
    }

    /// Sets the dirty bit before the first refcount update that is deferred (lazy refcounts).
    private func prepareForMetadataChange() throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: file.path) }
        guard !closed else { throw .closed }
        if lazyRefcounts && !header.isDirty {
            header.incompatibleFeatures |= Qcow2Layout.dirtyBit
            try writeHeaderFields()
            try file.barrier()
        }
    }

    /// The L2 table at `offset`, from the cache or the file, validated.
    private func l2Table(at offset: UInt64) throws(BlockError) -> L2Cache.Table {
        if let table = l2Cache.lookup(offset) { return table }
        guard offset != 0, let end = checkedAdd(offset, clusterSize), end <= fileEnd else {
            throw corrupt("L2 table at \(offset) is outside the file")
        }
        let bytes = try file.read(at: offset, count: Int(clusterSize))
        let table = L2Cache.Table(entries: (0..<Int(l2EntryCount)).map { bytes.bigEndian64(at: $0 * 8) })
        l2Cache.insert(table, at: offset)
        return table
    }

    /// The L2 table offset for L1 index `index`, 0 if none. Validates the L1 entry.
    private func l2Offset(l1Index index: Int) throws(BlockError) -> UInt64 {
        guard index < l1.count else { throw corrupt("guest offset beyond the L1 table") }
        let entry = l1[index]
        guard entry & Qcow2Layout.l1ReservedMask == 0 else { throw corrupt("L1 entry \(index) has reserved bits set") }
        return entry & Qcow2Layout.offsetMask
    }

    enum Mapping: Equatable {
        case data(host: UInt64, writable: Bool)
        case zero(host: UInt64)          // host 0 when nothing is allocated
        case unallocated
        case compressed(entry: UInt64)
    }

    /// Decodes and validates one L2 entry.
    private func decode(_ entry: UInt64) throws(BlockError) -> Mapping {
        if entry & Qcow2Layout.compressedFlag != 0 {
            guard entry & Qcow2Layout.copiedFlag == 0 else { throw corrupt("compressed L2 entry has the copied flag") }
            return .compressed(entry: entry)
        }
        guard entry & Qcow2Layout.l2ReservedMask == 0 else { throw corrupt("L2 entry 0x\(String(entry, radix: 16)) has reserved bits set") }
        let host = entry & Qcow2Layout.offsetMask
        if host != 0 {
            guard host & (clusterSize - 1) == 0 else { throw corrupt("data cluster offset \(host) is not cluster-aligned") }
            guard let end = checkedAdd(host, clusterSize), end <= fileEnd else {
                throw corrupt("data cluster at \(host) is beyond the end of the file")
            }
        }
        if entry & Qcow2Layout.zeroFlag != 0 {
            guard header.version >= 3 else { throw corrupt("zero cluster flag in a version 2 image") }
            return .zero(host: host)
        }
        if host == 0 { return .unallocated }
        return .data(host: host, writable: entry & Qcow2Layout.copiedFlag != 0)
    }

    /// The mapping at guest `offset` and how many bytes (≤ maxLength) share it contiguously,
    /// staying inside one L2 table.
    private func mapRun(_ offset: UInt64, maxLength: Int) throws(BlockError) -> (Mapping, Int) {
        guard offset < header.size else { throw .outOfRange(offset: offset, length: UInt64(maxLength), size: header.size) }
        let limit = UInt64(maxLength)
        let inCluster = offset & (clusterSize - 1)
        let l1Index = Int(offset >> clusterBits / l2EntryCount)
        var l2Index = Int((offset >> clusterBits) % l2EntryCount)
        let l2At = try l2Offset(l1Index: l1Index)
        let firstLength = min(clusterSize - inCluster, limit)
        if l2At == 0 { return (.unallocated, Int(min(limit, clusterSize * (l2EntryCount - UInt64(l2Index)) - inCluster))) }
        let table = try l2Table(at: l2At)
        let first = try decode(table.entries[l2Index])
        if case .compressed = first { return (first, Int(firstLength)) }
        var length = firstLength
        while length < limit, l2Index + 1 < Int(l2EntryCount) {
            l2Index += 1
            let next = try decode(table.entries[l2Index])
            let contiguous: Bool
            switch (first, next) {
            case (.unallocated, .unallocated), (.zero, .zero): contiguous = true
            case let (.data(a, wa), .data(b, wb)): contiguous = wa == wb && b == a + length + inCluster
            default: contiguous = false
            }
            guard contiguous else { break }
            length = min(length + clusterSize, limit)
        }
        return (first, Int(length))
    }

    // MARK: reading

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        var done = 0
        while done < buffer.count {
            let guest = offset + UInt64(done)
            let (mapping, length) = try lock.withLock { _ throws(BlockError) in
                try mapRun(guest, maxLength: buffer.count - done)
            }
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + length])
            try readMapped(mapping, guest: guest, into: piece)
            done += length
        }
    }

    /// Reads what `mapping` says is at `guest` (no lock needed except for the compressed
    /// cluster cache).
    private func readMapped(_ mapping: Mapping, guest: UInt64, into piece: UnsafeMutableRawBufferPointer) throws(BlockError) {
        switch mapping {
        case let .data(host, _):
            try file.read(into: piece, at: host + (guest & (clusterSize - 1)))
        case .zero:
            piece.initializeMemory(as: UInt8.self, repeating: 0)
        case .unallocated:
            try readBacking(into: piece, at: guest)
        case let .compressed(entry):
            let cluster = try decompressCluster(entry)
            let start = Int(guest & (clusterSize - 1))
            cluster.withUnsafeBytes { piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + piece.count])) }
        }
    }

    private func readBacking(into piece: UnsafeMutableRawBufferPointer, at guest: UInt64) throws(BlockError) {
        guard let backing else {
            piece.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let backingSize = backing.size
        let available = guest < backingSize ? Int(min(UInt64(piece.count), backingSize - guest)) : 0
        if available > 0 { try backing.read(into: UnsafeMutableRawBufferPointer(rebasing: piece[0..<available]), at: guest) }
        if available < piece.count {
            UnsafeMutableRawBufferPointer(rebasing: piece[available...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// Host extent of a compressed cluster: (offset, byte count), validated.
    private func compressedExtent(_ entry: UInt64) throws(BlockError) -> (UInt64, UInt64) {
        let offsetBits = 62 - (clusterBits - 8)
        let host = entry & ((1 << offsetBits) - 1)
        let sectors = ((entry >> offsetBits) & ((1 << (clusterBits - 8)) - 1)) + 1
        let length = sectors * 512 - (host & 511)
        guard host >= clusterSize, host < fileEnd else { throw corrupt("compressed cluster at \(host) is outside the file") }
        return (host, min(length, fileEnd - host))
    }

    private func decompressCluster(_ entry: UInt64) throws(BlockError) -> [UInt8] {
        if let cached = lock.withLock({ _ in decompressed }), cached.entry == entry { return cached.bytes }
        let (host, length) = try lock.withLock { _ throws(BlockError) in try compressedExtent(entry) }
        let input = try file.read(at: host, count: Int(length))
        let output: [UInt8]
        do throws(Inflate.Failure) {
            output = try Inflate.decompress(input, outputSize: Int(clusterSize))
        } catch {
            throw corrupt("compressed cluster at \(host): \(error.reason)")
        }
        lock.withLock { _ in decompressed = (entry, output) }
        return output
    }

    // MARK: writing

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: file.path) }
        var done = 0
        while done < buffer.count {
            let guest = offset + UInt64(done)
            let remaining = UnsafeRawBufferPointer(rebasing: buffer[done...])
            // Fast path: clusters already allocated to this image alone are written in place,
            // outside the lock.
            let inPlace = try lock.withLock { _ throws(BlockError) -> (UInt64, Int)? in
                guard !closed else { throw .closed }
                let (mapping, length) = try mapRun(guest, maxLength: remaining.count)
                guard case let .data(host, writable) = mapping else { return nil }
                if !writable {
                    let references = try refcounts.refcount(of: host >> clusterBits, file: file, fileEnd: fileEnd)
                    guard references == 1 else { return nil }
                }
                try refuseMetadataOverlap(host: host, bytes: UInt64(length) + (guest & (clusterSize - 1)))
                return (host + (guest & (clusterSize - 1)), length)
            }
            if let (host, length) = inPlace {
                try file.write(from: UnsafeRawBufferPointer(rebasing: remaining[0..<length]), at: host)
                done += length
                continue
            }
            switch try lock.withLock({ _ throws(BlockError) in try allocatingWrite(at: guest, from: remaining) }) {
            case let .written(length):
                done += length
            case let .pending(allocation):
                // Whole clusters: the data goes to the new clusters outside the lock (other
                // requests proceed), then the L2 entries are committed.
                try file.write(from: UnsafeRawBufferPointer(rebasing: remaining[0..<allocation.length]), at: allocation.host)
                try lock.withLock { _ throws(BlockError) in try commit(allocation) }
                done += allocation.length
            }
        }
    }

    private func refuseMetadataOverlap(host: UInt64, bytes: UInt64) throws(BlockError) {
        var cluster = host >> clusterBits
        let last = (host + bytes - 1) >> clusterBits
        while cluster <= last {
            if metadataClusters.contains(cluster) {
                throw corrupt("data cluster \(cluster) overlaps metadata; write refused")
            }
            cluster += 1
        }
    }

    /// Freshly allocated clusters whose data is being written outside the lock.
    struct PendingAllocation {
        let host: UInt64
        let length: Int
        let l2Offset: UInt64
        let firstIndex: Int
        /// The L2 entries replaced, as they were when the clusters were allocated.
        let replaced: [UInt64]
    }

    enum AllocationOutcome {
        case written(Int)
        case pending(PendingAllocation)
    }

    /// Points the L2 entries at the clusters of `allocation` (its data is written). An entry
    /// changed meanwhile by a concurrent request is the one replaced (and freed) instead.
    private func commit(_ allocation: PendingAllocation) throws(BlockError) {
        let table = try l2Table(at: allocation.l2Offset)
        for (i, original) in allocation.replaced.enumerated() {
            let index = allocation.firstIndex + i
            scheduleFree(try decode(table.entries[index] == original ? original : table.entries[index]))
            table.entries[index] = (allocation.host + UInt64(i) * clusterSize) | Qcow2Layout.copiedFlag
        }
        try writeL2Entries(table, at: allocation.l2Offset,
                           range: allocation.firstIndex..<allocation.firstIndex + allocation.replaced.count)
    }

    /// Writes the clusters from `guest` that need new storage (unallocated, zero, compressed or
    /// shared), as one contiguous run, and points the L2 table at them. Whole clusters are
    /// returned as pending, for the caller to write outside the lock and then commit.
    private func allocatingWrite(at guest: UInt64, from source: UnsafeRawBufferPointer) throws(BlockError) -> AllocationOutcome {
        try prepareForMetadataChange()
        let head = guest & (clusterSize - 1)
        let l1Index = Int(guest >> clusterBits / l2EntryCount)
        let firstIndex = Int((guest >> clusterBits) % l2EntryCount)
        var l2At = try l2Offset(l1Index: l1Index)
        if l2At == 0 { l2At = try allocateL2Table(l1Index: l1Index) }
        let table = try l2Table(at: l2At)

        // How many clusters this run covers: up to the end of the request or L2 table, while
        // they need allocation.
        var old: [Mapping] = []
        var covered: UInt64 = 0
        let wanted = head + UInt64(source.count)
        while covered < wanted, firstIndex + old.count < Int(l2EntryCount) {
            let mapping = try decode(table.entries[firstIndex + old.count])
            if case let .data(host, writable) = mapping, !old.isEmpty {
                if writable { break }
                if try refcounts.refcount(of: host >> clusterBits, file: file, fileEnd: fileEnd) == 1 { break }
            }
            old.append(mapping)
            covered += clusterSize
        }
        let count = old.count
        let consumed = Int(min(covered, wanted) - head)

        let host = try allocateClusters(UInt64(count))
        // Data first, then the L2 entries that point at it. Whole clusters go straight from
        // the caller's buffer; partial ones are assembled with the old contents around them.
        if head == 0 && UInt64(consumed) == covered {
            let replaced = (0..<count).map { table.entries[firstIndex + $0] }
            return .pending(PendingAllocation(host: host, length: consumed, l2Offset: l2At,
                                              firstIndex: firstIndex, replaced: replaced))
        } else {
            var staging = [UInt8](repeating: 0, count: Int(covered))
            let guestBase = guest - head
            try staging.withMutableBytes { (buffer: UnsafeMutableRawBufferPointer) throws(BlockError) in
                if head > 0 {
                    try readOldContents(old[0], guest: guestBase, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(head)]))
                }
                let tailStart = Int(head) + consumed
                if tailStart < buffer.count {
                    let lastCluster = guestBase + UInt64(count - 1) * clusterSize
                    let from = tailStart - (count - 1) * Int(clusterSize)
                    let target = UnsafeMutableRawBufferPointer(rebasing: buffer[tailStart...])
                    try readOldContents(old[count - 1], guest: lastCluster + UInt64(from), into: target, offsetInCluster: from)
                }
                UnsafeMutableRawBufferPointer(rebasing: buffer[Int(head)..<tailStart])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<consumed]))
            }
            try file.write(staging, at: host)
        }
        for i in 0..<count {
            table.entries[firstIndex + i] = (host + UInt64(i) * clusterSize) | Qcow2Layout.copiedFlag
        }
        try writeL2Entries(table, at: l2At, range: firstIndex..<firstIndex + count)
        for mapping in old { scheduleFree(mapping) }
        return .written(consumed)
    }

    /// Old contents of part of a cluster being replaced (partial-cluster copy-on-write).
    private func readOldContents(_ mapping: Mapping, guest: UInt64, into target: UnsafeMutableRawBufferPointer,
                                 offsetInCluster: Int = 0) throws(BlockError) {
        switch mapping {
        case let .compressed(entry):
            // decompressCluster takes the lock itself; do it inline here (lock already held).
            let (host, length) = try compressedExtent(entry)
            let input = try file.read(at: host, count: Int(length))
            do throws(Inflate.Failure) {
                let cluster = try Inflate.decompress(input, outputSize: Int(clusterSize))
                let start = Int(guest & (clusterSize - 1))
                cluster.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<start + target.count])) }
            } catch {
                throw corrupt("compressed cluster at \(host): \(error.reason)")
            }
        default:
            try readMapped(mapping, guest: guest, into: target)
        }
    }

    /// Drops the storage behind a replaced mapping once the replacement is durable.
    private func scheduleFree(_ mapping: Mapping) {
        switch mapping {
        case let .data(host, _):
            pendingFrees.append(host >> clusterBits)
        case let .zero(host) where host != 0:
            pendingFrees.append(host >> clusterBits)
        case let .compressed(entry):
            if let (host, length) = try? compressedExtent(entry) {
                var cluster = host >> clusterBits
                while cluster << clusterBits < host + length {
                    pendingFrees.append(cluster)
                    cluster += 1
                }
            }
        default:
            break
        }
    }

    private func writeL2Entries(_ table: L2Cache.Table, at l2At: UInt64, range: Range<Int>) throws(BlockError) {
        var bytes = [UInt8](repeating: 0, count: range.count * 8)
        for (i, index) in range.enumerated() { bytes.setBigEndian64(table.entries[index], at: i * 8) }
        try file.write(bytes, at: l2At + UInt64(range.lowerBound) * 8)
    }

    /// A new, empty L2 table for `l1Index`: written (zeroes) before the L1 entry points at it.
    private func allocateL2Table(l1Index: Int) throws(BlockError) -> UInt64 {
        let offset = try allocateClusters(1)
        try file.write([UInt8](repeating: 0, count: Int(clusterSize)), at: offset)
        metadataClusters.insert(offset >> clusterBits)
        l2Cache.insert(L2Cache.Table(entries: [UInt64](repeating: 0, count: Int(l2EntryCount))), at: offset)
        l1[l1Index] = offset | Qcow2Layout.copiedFlag
        var entry = [UInt8](repeating: 0, count: 8)
        entry.setBigEndian64(l1[l1Index], at: 0)
        try file.write(entry, at: header.l1TableOffset + UInt64(l1Index) * 8)
        return offset
    }

    // MARK: allocation

    /// `count` contiguous clusters whose refcount is already 1 on disk; returns the byte offset.
    private func allocateClusters(_ count: UInt64) throws(BlockError) -> UInt64 {
        if poolEnd - poolStart < count { try reserve(atLeast: count) }
        let start = poolStart
        poolStart += count
        frontier = max(frontier, poolStart)
        return start << clusterBits
    }

    /// Extends the reservation at the end of the image to at least `count` contiguous clusters:
    /// refcounts set to 1 and written (and made durable) before any of them is used.
    private func reserve(atLeast count: UInt64) throws(BlockError) {
        let target = max(count, reserveBatch)
        while poolEnd - poolStart < target {
            let cluster = poolEnd
            guard cluster < (1 << (56 - clusterBits)) else { throw .system(operation: "allocate", path: file.path, errno: 27) }  // EFBIG
            let (blockIndex, _) = refcounts.blockIndex(of: cluster)
            if blockIndex >= refcounts.table.count {
                try growRefcountTable(toCover: blockIndex)
                continue
            }
            if !(try refcounts.loadBlock(blockIndex, file: file, fileEnd: max(fileEnd, poolEnd << clusterBits))) {
                // No refcount block covers this cluster yet. It takes the first reserved
                // cluster, which keeps the rest of the reservation contiguous; with nothing
                // reserved it goes here and covers itself.
                if poolStart < poolEnd {
                    poolStart += 1
                    try createRefcountBlock(blockIndex, at: poolStart - 1)
                } else {
                    try createRefcountBlock(blockIndex, at: cluster)
                    poolStart = cluster + 1
                    poolEnd = cluster + 1
                }
                continue
            }
            if try refcounts.refcount(of: cluster, file: file, fileEnd: max(fileEnd, poolEnd << clusterBits)) != 0 {
                // Leaked by an earlier crash: skip it, the reservation must stay contiguous.
                try releasePool()
                poolStart = cluster + 1
                poolEnd = cluster + 1
                continue
            }
            refcounts.setRefcount(of: cluster, to: 1)
            poolEnd += 1
        }
        if !lazyRefcounts {
            try refcounts.writeDirtyBlocks(file: file)
            try file.barrier()
        }
        reserveBatch = min(reserveBatch * 2, maxReserveBatch)
    }

    /// Gives back reserved clusters that were never used (refcount 1 → 0; nothing refers to them).
    private func releasePool() throws(BlockError) {
        guard poolStart < poolEnd else { return }
        for cluster in poolStart..<poolEnd { refcounts.setRefcount(of: cluster, to: 0) }
        if !lazyRefcounts { try refcounts.writeDirtyBlocks(file: file) }
        poolEnd = poolStart
    }

    private func createRefcountBlock(_ index: Int, at cluster: UInt64) throws(BlockError) {
        var block = [UInt8](repeating: 0, count: Int(clusterSize))
        if refcounts.blockIndex(of: cluster).table == index {
            Qcow2Refcounts.set(&block, Int(cluster % refcounts.entriesPerBlock), refcounts.refcountBits, 1)
        }
        let offset = cluster << clusterBits
        try file.write(block, at: offset)
        // The block's own refcount (when it lives in another block) must be on disk before
        // the table points at it.
        if !lazyRefcounts { try refcounts.writeDirtyBlocks(file: file) }
        try file.barrier()
        refcounts.blocks[index] = block
        refcounts.table[index] = offset
        metadataClusters.insert(cluster)
        frontier = max(frontier, cluster + 1)
        var entry = [UInt8](repeating: 0, count: 8)
        entry.setBigEndian64(offset, at: 0)
        try file.write(entry, at: refcounts.tableOffset + UInt64(index) * 8)
        try file.barrier()
    }

    /// Moves the refcount table to a larger place at the end of the image. The new table and
    /// the refcount blocks it needs are written first, then the header is switched to it, then
    /// the old table is freed.
    private func growRefcountTable(toCover index: Int) throws(BlockError) {
        try releasePool()
        let start = poolEnd
        let perCluster = Int(clusterSize / 8)
        var entries = max(index + 1, refcounts.table.count * 2)
        var tableClusters = UInt64((entries + perCluster - 1) / perCluster)
        // Refcount blocks missing for the new table's clusters (and for themselves) go right
        // after it; iterate until the layout covers itself.
        var newBlocks: [Int] = []
        while true {
            let end = start + tableClusters + UInt64(newBlocks.count)
            var needed: [Int] = []
            var cluster = start
            while cluster < end {
                let block = Int(cluster / refcounts.entriesPerBlock)
                if (block >= refcounts.table.count || refcounts.table[block] == 0) && needed.last != block { needed.append(block) }
                cluster += 1
            }
            entries = max(entries, (needed.last ?? 0) + 1)
            let clustersNow = UInt64((entries + perCluster - 1) / perCluster)
            if needed == newBlocks && clustersNow == tableClusters { break }
            newBlocks = needed
            tableClusters = clustersNow
        }
        guard tableClusters * clusterSize <= Qcow2Layout.maxRefcountTableBytes else {
            throw .system(operation: "grow refcount table", path: file.path, errno: 27)  // EFBIG
        }
        var table = refcounts.table + [UInt64](repeating: 0, count: entries - refcounts.table.count)
        for (i, block) in newBlocks.enumerated() {
            let cluster = start + tableClusters + UInt64(i)
            table[block] = cluster << clusterBits
            refcounts.blocks[block] = [UInt8](repeating: 0, count: Int(clusterSize))
        }
        let oldOffset = refcounts.tableOffset
        let oldClusters = UInt64(header.refcountTableClusters)
        refcounts.table = table
        let end = start + tableClusters + UInt64(newBlocks.count)
        for cluster in start..<end {
            _ = try refcounts.loadBlock(Int(cluster / refcounts.entriesPerBlock), file: file, fileEnd: fileEnd)
            refcounts.setRefcount(of: cluster, to: 1)
        }
        // New blocks land where the table says; write them and every block touched.
        try refcounts.writeDirtyBlocks(file: file)
        var tableBytes = [UInt8](repeating: 0, count: Int(tableClusters * clusterSize))
        for (i, entry) in table.enumerated() { tableBytes.setBigEndian64(entry, at: i * 8) }
        let newOffset = start << clusterBits
        try file.write(tableBytes, at: newOffset)
        try file.barrier()
        header.refcountTableOffset = newOffset
        header.refcountTableClusters = UInt32(tableClusters)
        try writeHeaderFields()
        try file.barrier()
        refcounts.tableOffset = newOffset
        for cluster in start..<end { metadataClusters.insert(cluster) }
        frontier = max(frontier, end)
        poolStart = end
        poolEnd = end
        // The old table is unreferenced now.
        for i in 0..<oldClusters {
            let cluster = (oldOffset >> clusterBits) + i
            metadataClusters.remove(cluster)
            try decrement(cluster)
        }
        try refcounts.writeDirtyBlocks(file: file)
    }

    private func decrement(_ cluster: UInt64) throws(BlockError) {
        let current = try refcounts.refcount(of: cluster, file: file, fileEnd: fileEnd)
        guard current > 0 else { return }
        refcounts.setRefcount(of: cluster, to: current - 1)
        if current == 1 {
            metadataClusters.remove(cluster)
            file.punchHole(at: cluster << clusterBits, length: clusterSize)
        }
    }

    // MARK: flush, discard, zeroes

    public func flush() throws(BlockError) {
        try lock.withLock { _ throws(BlockError) in
            guard !closed else { return }
            try flushLocked()
        }
    }

    private func flushLocked() throws(BlockError) {
        guard !isReadOnly else { return }
        if lazyRefcounts { try refcounts.writeDirtyBlocks(file: file) }
        try file.flush()
        // References removed before this flush are durable now: their clusters can go.
        if !pendingFrees.isEmpty {
            let frees = pendingFrees
            pendingFrees.removeAll()
            for cluster in frees { try decrement(cluster) }
            if !lazyRefcounts { try refcounts.writeDirtyBlocks(file: file) }
        }
    }

    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {
        try changeFullClusters(at: offset, length: length, zeroing: false)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: file.path) }
        let end = offset + length
        let firstFull = min(end, (offset + clusterSize - 1) & ~(clusterSize - 1))
        let lastFull = max(firstFull, end & ~(clusterSize - 1))
        // Partial clusters at either end get real zero bytes.
        try writeZeroBytes(at: offset, length: firstFull - offset)
        if lastFull > firstFull {
            // Version 2 has no zero flag: with a backing file the zeroes must be written out.
            if header.version < 3 && backing != nil {
                try writeZeroBytes(at: firstFull, length: lastFull - firstFull)
            } else {
                try changeFullClusters(at: firstFull, length: lastFull - firstFull, zeroing: true)
            }
        }
        try writeZeroBytes(at: lastFull, length: end - lastFull)
    }

    private func writeZeroBytes(at offset: UInt64, length: UInt64) throws(BlockError) {
        guard length > 0 else { return }
        let chunk = Int(min(length, 1 << 20))
        let zeroes = [UInt8](repeating: 0, count: chunk)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(chunk), length - done))
            try zeroes.withBytes { (raw: UnsafeRawBufferPointer) throws(BlockError) in
                try write(from: UnsafeRawBufferPointer(rebasing: raw[0..<n]), at: offset + done)
            }
            done += UInt64(n)
        }
    }

    /// Discards (or zeroes) every whole cluster in the range by rewriting L2 entries; partial
    /// clusters are left alone (discard is advisory).
    private func changeFullClusters(at offset: UInt64, length: UInt64, zeroing: Bool) throws(BlockError) {
        guard !isReadOnly else { throw .readOnly(path: file.path) }
        try lock.withLock { _ throws(BlockError) in
            try prepareForMetadataChange()
            var cluster = (offset + clusterSize - 1) >> clusterBits
            let endCluster = (offset + length) >> clusterBits
            // Zero flag where reads must not fall through to a backing file; 0 otherwise.
            let replacement: UInt64 = (header.version >= 3 && backing != nil) ? Qcow2Layout.zeroFlag : 0
            while cluster < endCluster {
                let l1Index = Int(cluster / l2EntryCount)
                let first = Int(cluster % l2EntryCount)
                let count = Int(min(l2EntryCount - UInt64(first), endCluster - cluster))
                var l2At = try l2Offset(l1Index: l1Index)
                if l2At == 0 {
                    if replacement == 0 || (!zeroing && backing == nil) {
                        cluster += UInt64(count)
                        continue
                    }
                    l2At = try allocateL2Table(l1Index: l1Index)
                }
                let table = try l2Table(at: l2At)
                var changed = false
                for i in first..<first + count where table.entries[i] != replacement {
                    let old = try decode(table.entries[i])
                    if case .data(_, false) = old {
                        throw corrupt("shared cluster (internal snapshots) cannot be discarded")
                    }
                    table.entries[i] = replacement
                    scheduleFree(old)
                    changed = true
                }
                if changed { try writeL2Entries(table, at: l2At, range: first..<first + count) }
                cluster += UInt64(count)
            }
        }
    }

    // MARK: allocation status, resize, close

    public func allocation(at offset: UInt64, length: UInt64) throws(BlockError) -> (BlockAllocation, UInt64) {
        let (mapping, run) = try lock.withLock { _ throws(BlockError) in
            try mapRun(offset, maxLength: Int(min(length, 1 << 30)))
        }
        switch mapping {
        case .data, .compressed: return (.data, UInt64(run))
        case .zero: return (.zero, UInt64(run))
        case .unallocated:
            guard let backing, offset < backing.size else { return (.unallocated, UInt64(run)) }
            let (below, belowRun) = try backing.allocation(at: offset, length: min(UInt64(run), backing.size - offset))
            return (below == .data ? .data : .unallocated, belowRun)
        }
    }

    /// Grows the virtual size (shrinking a qcow2 image is not supported). The L1 table moves
    /// to a larger place if needed: new table written, header switched, old table freed.
    public func resize(to newSize: UInt64) throws(BlockError) {
        try lock.withLock { _ throws(BlockError) in
            try prepareForMetadataChange()
            guard newSize >= header.size else {
                throw .unsupported(path: file.path, reason: "shrinking qcow2 images is not supported")
            }
            guard newSize <= UInt64(Int64.max) else { throw .invalidArgument("size \(newSize) too large") }
            let needed = (newSize + header.bytesPerL2Table - 1) / header.bytesPerL2Table
            guard needed * 8 <= Qcow2Layout.maxL1Bytes else { throw .invalidArgument("size \(newSize) too large for this cluster size") }
            if needed > UInt64(l1.count) {
                let clusters = (needed * 8 + clusterSize - 1) / clusterSize
                let newOffset = try allocateClusters(clusters)
                var table = [UInt8](repeating: 0, count: Int(clusters * clusterSize))
                for (i, entry) in l1.enumerated() { table.setBigEndian64(entry, at: i * 8) }
                try file.write(table, at: newOffset)
                try file.barrier()
                let oldOffset = header.l1TableOffset
                let oldClusters = (UInt64(l1.count) * 8 + clusterSize - 1) / clusterSize
                header.l1TableOffset = newOffset
                header.l1Size = UInt32(needed)
                header.size = newSize
                try writeHeaderFields()
                try file.barrier()
                l1 += [UInt64](repeating: 0, count: Int(needed) - l1.count)
                insertClusters(offset: newOffset, bytes: clusters * clusterSize)
                for i in 0..<oldClusters where oldOffset != 0 {
                    let cluster = (oldOffset >> clusterBits) + i
                    metadataClusters.remove(cluster)
                    try decrement(cluster)
                }
                if !lazyRefcounts { try refcounts.writeDirtyBlocks(file: file) }
            } else {
                header.size = newSize
                try writeHeaderFields()
                try file.barrier()
            }
        }
    }

    public func close() throws(BlockError) {
        try lock.withLock { _ throws(BlockError) in
            guard !closed else { return }
            defer {
                closed = true
                file.close()
            }
            if !isReadOnly {
                try flushLocked()
                try releasePool()
                try refcounts.writeDirtyBlocks(file: file)
                try file.flush()
                if header.isDirty {
                    header.incompatibleFeatures &= ~Qcow2Layout.dirtyBit
                    try writeHeaderFields()
                    try file.flush()
                }
            }
        }
        try backing?.close()
    }

    // MARK: check

    public enum RepairMode: Sendable { case leaks, all }

    /// What `check` found: qemu-img's categories and figures.
    public struct CheckReport: Sendable {
        public var corruptions = 0
        public var leaks = 0
        public var corruptionsFixed = 0
        public var leaksFixed = 0
        public var messages: [String] = []
        public var allocatedClusters: UInt64 = 0
        public var totalClusters: UInt64 = 0
        public var fragmentedClusters: UInt64 = 0
        public var compressedClusters: UInt64 = 0
        public var imageEndOffset: UInt64 = 0
    }

    public func check(repair: RepairMode?) throws(BlockError) -> CheckReport {
        try lock.withLock { _ throws(BlockError) in
            if repair != nil { try prepareForMetadataChange() }
            let report = try checkLocked(repair: repair)
            if repair != nil {
                try refcounts.writeDirtyBlocks(file: file)
                try file.flush()
            }
            return report
        }
    }

    /// Counts every reference to every cluster by walking all metadata, compares with the
    /// refcounts, and optionally fixes refcounts that are too high (leaks) or, with `.all`,
    /// too low where a refcount block exists.
    private func checkLocked(repair: RepairMode?) throws(BlockError) -> CheckReport {
        var report = CheckReport()
        let fileClusters = frontier
        guard fileClusters <= 1 << 32 else { throw .unsupported(path: file.path, reason: "image too large to check") }
        var references = [UInt32](repeating: 0, count: Int(fileClusters))
        func reference(_ offset: UInt64, _ bytes: UInt64, _ what: String) {
            guard bytes > 0 else { return }
            guard let end = checkedAdd(offset, bytes), end <= fileClusters << clusterBits else {
                report.corruptions += 1
                report.messages.append("ERROR \(what) at offset \(offset) is beyond the end of the image file")
                return
            }
            var cluster = offset >> clusterBits
            while cluster << clusterBits < end {
                references[Int(cluster)] &+= 1
                cluster += 1
            }
        }
        reference(0, clusterSize, "header")
        reference(header.l1TableOffset, UInt64(header.l1Size) * 8, "L1 table")
        reference(refcounts.tableOffset, UInt64(header.refcountTableClusters) * clusterSize, "refcount table")
        for (i, entry) in refcounts.table.enumerated() where entry != 0 {
            guard entry & (clusterSize - 1) == 0 else {
                report.corruptions += 1
                report.messages.append("ERROR refcount block \(i) is not cluster aligned; refcount table entry corrupted")
                continue
            }
            reference(entry, clusterSize, "refcount block \(i)")
        }
        if header.snapshotCount > 0, let tableEnd = try? snapshotTableEnd() {
            reference(header.snapshotsOffset, tableEnd - header.snapshotsOffset, "snapshot table")
        }
        var previousHost: UInt64 = 0
        // (host cluster, has the copied flag, what) for the active tables: the flag must be set
        // exactly when the refcount is 1; compared once refcounts are final.
        var copiedFlags: [(UInt64, Bool, String)] = []
        func walk(l1Table: [UInt64], active: Bool) throws(BlockError) {
            for (i, entry) in l1Table.enumerated() {
                let l2At = entry & Qcow2Layout.offsetMask
                guard l2At != 0 else { continue }
                guard entry & Qcow2Layout.l1ReservedMask == 0, l2At & (clusterSize - 1) == 0,
                      let end = checkedAdd(l2At, clusterSize), end <= fileClusters << clusterBits else {
                    report.corruptions += 1
                    report.messages.append("ERROR L1 entry \(i) (0x\(String(entry, radix: 16))) is invalid or outside the image")
                    continue
                }
                reference(l2At, clusterSize, "L2 table")
                if active { copiedFlags.append((l2At, entry & Qcow2Layout.copiedFlag != 0, "L2 table at \(l2At)")) }
                let bytes = try file.read(at: l2At, count: Int(clusterSize))
                for j in 0..<Int(l2EntryCount) {
                    let l2Entry = bytes.bigEndian64(at: j * 8)
                    if l2Entry == 0 { continue }
                    do throws(BlockError) {
                        switch try decode(l2Entry) {
                        case let .compressed(compressed):
                            let (host, length) = try compressedExtent(compressed)
                            reference(host, length, "compressed cluster")
                            if active {
                                report.allocatedClusters += 1
                                report.compressedClusters += 1
                            }
                        case let .data(host, _), let .zero(host):
                            if host != 0 { reference(host, clusterSize, "data cluster") }
                            if active, host != 0 {
                                copiedFlags.append((host, l2Entry & Qcow2Layout.copiedFlag != 0,
                                                    "data cluster: l2_entry=\(String(l2Entry, radix: 16))"))
                                report.allocatedClusters += 1
                                if previousHost != 0 && host != previousHost + clusterSize { report.fragmentedClusters += 1 }
                                previousHost = host
                            }
                        case .unallocated:
                            break
                        }
                    } catch {
                        report.corruptions += 1
                        report.messages.append("ERROR L2 entry \(j) of table at \(l2At): \(error)")
                    }
                }
            }
        }
        try walk(l1Table: l1, active: true)
        for snapshot in snapshots {
            guard snapshot.l1Size <= UInt32(Qcow2Layout.maxL1Bytes / 8),
                  let end = checkedAdd(snapshot.l1TableOffset, UInt64(snapshot.l1Size) * 8),
                  end <= fileClusters << clusterBits, snapshot.l1TableOffset & (clusterSize - 1) == 0 else {
                report.corruptions += 1
                report.messages.append("ERROR snapshot \(snapshot.id) L1 table is invalid")
                continue
            }
            reference(snapshot.l1TableOffset, UInt64(snapshot.l1Size) * 8, "snapshot L1 table")
            let bytes = try file.read(at: snapshot.l1TableOffset, count: Int(snapshot.l1Size) * 8)
            try walk(l1Table: (0..<Int(snapshot.l1Size)).map { bytes.bigEndian64(at: $0 * 8) }, active: false)
        }

        // Compare. Clusters reserved but unused by this process are not references.
        for cluster in 0..<fileClusters {
            let found: UInt64
            do throws(BlockError) {
                found = try refcounts.refcount(of: cluster, file: file, fileEnd: fileClusters << clusterBits)
            } catch {
                report.corruptions += 1
                report.messages.append("ERROR cluster \(cluster): \(error)")
                continue
            }
            let expected = UInt64(references[Int(cluster)])
            if found == expected || (cluster >= poolStart && cluster < poolEnd) { continue }
            let exists = try refcounts.loadBlock(Int(cluster / refcounts.entriesPerBlock), file: file,
                                                 fileEnd: fileClusters << clusterBits)
            if found > expected {
                report.leaks += 1
                report.messages.append("Leaked cluster \(cluster) refcount=\(found) reference=\(expected)")
                if repair != nil && exists {
                    refcounts.setRefcount(of: cluster, to: expected)
                    report.leaksFixed += 1
                }
            } else {
                report.corruptions += 1
                report.messages.append("ERROR cluster \(cluster) refcount=\(found) reference=\(expected)")
                if repair == .all && exists {
                    refcounts.setRefcount(of: cluster, to: expected)
                    report.corruptionsFixed += 1
                }
            }
        }
        for (host, flagged, what) in copiedFlags {
            let count = try refcounts.refcount(of: host >> clusterBits, file: file, fileEnd: fileClusters << clusterBits)
            if (count == 1) != flagged {
                report.corruptions += 1
                report.messages.append("ERROR OFLAG_COPIED \(what) refcount=\(count)")
            }
        }
        report.totalClusters = (header.size + clusterSize - 1) >> clusterBits
        var last: UInt64 = 0
        for cluster in stride(from: Int(fileClusters) - 1, through: 0, by: -1) where references[cluster] > 0 {
            last = UInt64(cluster) + 1
            break
        }
        report.imageEndOffset = last << clusterBits
        return report
    }

    private func snapshotTableEnd() throws(BlockError) -> UInt64 {
        var offset = header.snapshotsOffset
        for _ in 0..<header.snapshotCount {
            let fixed = try file.read(at: offset, count: 40)
            let variable = UInt64(fixed.bigEndian32(at: 36)) + UInt64(fixed.bigEndian16(at: 12)) + UInt64(fixed.bigEndian16(at: 14))
            guard let next = roundUp(offset + 40 + variable, toMultipleOf: 8) else { throw corrupt("snapshot table overflow") }
            offset = next
        }
        return offset
    }
}
