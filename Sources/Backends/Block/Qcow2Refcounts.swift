/// The refcount structure of a qcow2 image in memory: the refcount table (offsets of refcount
/// blocks) and the blocks loaded so far. Every offset read from the file is validated before it
/// is used. Not thread-safe: `Qcow2Image` calls it with its metadata lock held.
struct Qcow2Refcounts {
    let clusterBits: UInt64
    let refcountBits: UInt64
    /// Refcount entries per refcount block.
    let entriesPerBlock: UInt64
    let maxRefcount: UInt64
    var tableOffset: UInt64
    var table: [UInt64]
    /// Loaded refcount blocks, raw on-disk bytes, by table index.
    var blocks: [Int: [UInt8]] = [:]
    /// Blocks changed in memory and not yet written (all of them in lazy-refcounts mode,
    /// briefly otherwise).
    var dirtyBlocks: Set<Int> = []

    init(header: Qcow2Header, table: [UInt64]) {
        clusterBits = UInt64(header.clusterBits)
        refcountBits = UInt64(header.refcountBits)
        entriesPerBlock = (header.clusterSize * 8) / refcountBits
        maxRefcount = refcountBits == 64 ? UInt64.max : (1 << refcountBits) - 1
        tableOffset = header.refcountTableOffset
        self.table = table
    }

    var clusterSize: UInt64 { 1 << clusterBits }

    func blockIndex(of cluster: UInt64) -> (table: Int, entry: Int) {
        (Int(cluster / entriesPerBlock), Int(cluster % entriesPerBlock))
    }

    /// The refcount block covering `cluster`, loading it; nil if the table has no block for it.
    mutating func loadBlock(_ index: Int, file: BlockFile, fileEnd: UInt64) throws(BlockError) -> Bool {
        if blocks[index] != nil { return true }
        guard index < table.count else { return false }
        let entry = table[index]
        let offset = entry & ~(clusterSize - 1)
        if offset == 0 { return false }
        guard entry & (clusterSize - 1) == 0, let end = checkedAdd(offset, clusterSize), end <= fileEnd else {
            throw .corrupt(path: file.path, reason: "refcount block \(index) at \(entry) is unaligned or outside the file")
        }
        blocks[index] = try file.read(at: offset, count: Int(clusterSize))
        return true
    }

    mutating func refcount(of cluster: UInt64, file: BlockFile, fileEnd: UInt64) throws(BlockError) -> UInt64 {
        let (index, entry) = blockIndex(of: cluster)
        guard try loadBlock(index, file: file, fileEnd: fileEnd), let block = blocks[index] else { return 0 }
        return Self.get(block, entry, refcountBits)
    }

    /// Sets a refcount in a loaded block (the caller made sure it exists) and marks it dirty.
    mutating func setRefcount(of cluster: UInt64, to value: UInt64) {
        let (index, entry) = blockIndex(of: cluster)
        guard var block = blocks[index] else { return }
        blocks[index] = nil  // keep the array uniquely referenced while mutating
        Self.set(&block, entry, refcountBits, min(value, maxRefcount))
        blocks[index] = block
        dirtyBlocks.insert(index)
    }

    /// Writes every dirty block back to its place in the file.
    mutating func writeDirtyBlocks(file: BlockFile) throws(BlockError) {
        for index in dirtyBlocks.sorted() {
            guard let block = blocks[index], index < table.count else { continue }
            try file.write(block, at: table[index] & ~(clusterSize - 1))
        }
        dirtyBlocks.removeAll()
    }

    static func get(_ block: [UInt8], _ entry: Int, _ bits: UInt64) -> UInt64 {
        switch bits {
        case 64: return block.bigEndian64(at: entry * 8)
        case 32: return UInt64(block.bigEndian32(at: entry * 4))
        case 16: return UInt64(block.bigEndian16(at: entry * 2))
        case 8: return UInt64(block[entry])
        default:
            // Sub-byte refcounts are packed least significant bits first.
            let bit = entry * Int(bits)
            return UInt64(block[bit / 8] >> UInt8(bit % 8)) & ((1 << bits) - 1)
        }
    }

    static func set(_ block: inout [UInt8], _ entry: Int, _ bits: UInt64, _ value: UInt64) {
        switch bits {
        case 64: block.setBigEndian64(value, at: entry * 8)
        case 32: block.setBigEndian32(UInt32(truncatingIfNeeded: value), at: entry * 4)
        case 16: block.setBigEndian16(UInt16(truncatingIfNeeded: value), at: entry * 2)
        case 8: block[entry] = UInt8(truncatingIfNeeded: value)
        default:
            let bit = entry * Int(bits)
            let mask = UInt8((1 << bits) - 1) << UInt8(bit % 8)
            block[bit / 8] = (block[bit / 8] & ~mask) | (UInt8(truncatingIfNeeded: value) << UInt8(bit % 8) & mask)
        }
    }
}

/// A bounded LRU of L2 tables, decoded to host order. Tables are written through on every
/// change, so eviction never writes.
struct L2Cache {
    final class Table {
        var entries: [UInt64]
        var lastUse: UInt64 = 0
        init(entries: [UInt64]) { self.entries = entries }
    }

    let capacity: Int
    private var tables: [UInt64: Table] = [:]
    private var clock: UInt64 = 0

    init(capacity: Int) { self.capacity = max(2, capacity) }

    mutating func lookup(_ offset: UInt64) -> Table? {
        guard let table = tables[offset] else { return nil }
        clock += 1
        table.lastUse = clock
        return table
    }

    mutating func insert(_ table: Table, at offset: UInt64) {
        if tables.count >= capacity, let victim = tables.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
            tables[victim] = nil
        }
        clock += 1
        table.lastUse = clock
        tables[offset] = table
    }

    mutating func remove(_ offset: UInt64) { tables[offset] = nil }
}
