/// Options of `create` for qcow2, spelled as qemu-img's `-o` keys.
public struct Qcow2CreateOptions: Sendable {
    public var size: UInt64
    public var clusterSize: UInt64 = 65536
    /// compat=1.1 (version 3) or compat=0.10 (version 2).
    public var version: UInt32 = 3
    public var lazyRefcounts = false
    public var refcountBits: UInt32 = 16
    public var backingFile: String?
    public var backingFormat: BlockFormat?

    public init(size: UInt64) { self.size = size }
}

public enum ImageCreation {
    /// Creates (or truncates) a raw image of `size` bytes, sparse.
    public static func createRaw(path: String, size: UInt64) throws(BlockError) {
        let file = try BlockFile(path: path, readOnly: false, create: true, lock: .exclusiveWriter)
        defer { file.close() }
        try file.truncate(to: size)
    }

    /// Creates an empty qcow2 image laid out like qemu-img's: header, refcount table, refcount
    /// blocks, L1 table, each cluster-aligned, every cluster refcounted.
    public static func createQcow2(path: String, options: Qcow2CreateOptions) throws(BlockError) {
        let clusterSize = options.clusterSize
        guard clusterSize.nonzeroBitCount == 1, (512...(2 << 20)).contains(clusterSize) else {
            throw .invalidArgument("Cluster size must be a power of two between 512 and 2048k")
        }
        guard [2, 3].contains(options.version) else { throw .invalidArgument("compat must be 0.10 or 1.1") }
        guard options.refcountBits.nonzeroBitCount == 1, options.refcountBits <= 64,
              options.version == 3 || options.refcountBits == 16 else {
            throw .invalidArgument("refcount_bits must be a power of two up to 64 (16 for compat=0.10)")
        }
        guard !options.lazyRefcounts || options.version == 3 else {
            throw .invalidArgument("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
        }
        let clusterBits = UInt32(clusterSize.trailingZeroBitCount)
        let bytesPerL2 = clusterSize / 8 * clusterSize
        let l1Entries = (options.size + bytesPerL2 - 1) / bytesPerL2
        guard l1Entries * 8 <= Qcow2Layout.maxL1Bytes else { throw .invalidArgument("image size too large for this cluster size") }
        let l1Clusters = max(1, (l1Entries * 8 + clusterSize - 1) / clusterSize)
        let entriesPerBlock = clusterSize * 8 / UInt64(options.refcountBits)
        var tableClusters: UInt64 = 1, blockCount: UInt64 = 1
        while true {
            let total = 1 + tableClusters + blockCount + l1Clusters
            let blocksNeeded = (total + entriesPerBlock - 1) / entriesPerBlock
            let tableNeeded = (blocksNeeded * 8 + clusterSize - 1) / clusterSize
            if blocksNeeded == blockCount && tableNeeded == tableClusters { break }
            blockCount = blocksNeeded
            tableClusters = tableNeeded
        }
        let tableAt: UInt64 = 1, blocksAt = 1 + tableClusters, l1At = blocksAt + blockCount
        let totalClusters = l1At + l1Clusters

        var header = Qcow2Header(version: options.version, backingFileOffset: 0, backingFileSize: 0,
                                 clusterBits: clusterBits, size: options.size, encryptionMethod: 0,
                                 l1Size: UInt32(l1Entries), l1TableOffset: l1At * clusterSize,
                                 refcountTableOffset: tableAt * clusterSize, refcountTableClusters: UInt32(tableClusters),
                                 snapshotCount: 0, snapshotsOffset: 0,
                                 headerLength: UInt32(options.version == 3 ? 112 : Qcow2Layout.v2HeaderLength))
        if options.version == 3 {
            header.refcountOrder = UInt32(options.refcountBits.trailingZeroBitCount)
            header.compatibleFeatures = options.lazyRefcounts ? Qcow2Layout.lazyRefcountsBit : 0
        }
        var first = header.encodedFields()
        func appendExtension(_ type: UInt32, _ data: [UInt8]) {
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.setBigEndian32(type, at: 0)
            bytes.setBigEndian32(UInt32(data.count), at: 4)
            first += bytes + data + [UInt8](repeating: 0, count: (8 - data.count % 8) % 8)
        }
        if let format = options.backingFormat { appendExtension(Qcow2Layout.extensionBackingFormat, Array(format.rawValue.utf8)) }
        if options.version == 3 {
            // The feature name table, so that other tools can name our bits.
            let names: [(UInt8, UInt8, String)] = [(0, 0, "dirty bit"), (0, 1, "corrupt bit"), (0, 2, "external data file"),
                                                   (0, 3, "compression type"), (0, 4, "extended L2 entries"),
                                                   (1, 0, "lazy refcounts"), (2, 0, "bitmaps"), (2, 1, "raw external data")]
            var table: [UInt8] = []
            for (type, bit, name) in names {
                var entry = [UInt8](repeating: 0, count: 48)
                entry[0] = type
                entry[1] = bit
                entry.replaceSubrange(2..<2 + name.utf8.count, with: Array(name.utf8))
                table += entry
            }
            appendExtension(Qcow2Layout.extensionFeatureNames, table)
        }
        first += [UInt8](repeating: 0, count: 8)  // end of extensions
        if let backing = options.backingFile {
            let name = Array(backing.utf8)
            guard !name.isEmpty, name.count <= Qcow2Layout.maxBackingNameLength else { throw .invalidArgument("backing file name too long") }
            guard UInt64(first.count + name.count) <= clusterSize else { throw .invalidArgument("header does not fit in one cluster") }
            first.setBigEndian64(UInt64(first.count), at: 8)
            first.setBigEndian32(UInt32(name.count), at: 16)
            first += name
        }
        guard UInt64(first.count) <= clusterSize else { throw .invalidArgument("header does not fit in one cluster") }

        var refcountTable = [UInt8](repeating: 0, count: Int(tableClusters * clusterSize))
        var blocks = [UInt8](repeating: 0, count: Int(blockCount * clusterSize))
        for i in 0..<blockCount { refcountTable.setBigEndian64((blocksAt + i) * clusterSize, at: Int(i) * 8) }
        for cluster in 0..<totalClusters {
            let block = Int(cluster / entriesPerBlock)
            var bytes = Array(blocks[block * Int(clusterSize)..<(block + 1) * Int(clusterSize)])
            Qcow2Refcounts.set(&bytes, Int(cluster % entriesPerBlock), UInt64(options.refcountBits), 1)
            blocks.replaceSubrange(block * Int(clusterSize)..<(block + 1) * Int(clusterSize), with: bytes)
        }
        let file = try BlockFile(path: path, readOnly: false, create: true, lock: .exclusiveWriter)
        defer { file.close() }
        try file.write(first + [UInt8](repeating: 0, count: Int(clusterSize) - first.count), at: 0)
        try file.write(refcountTable, at: tableAt * clusterSize)
        try file.write(blocks, at: blocksAt * clusterSize)
        try file.write([UInt8](repeating: 0, count: Int(l1Clusters * clusterSize)), at: l1At * clusterSize)
        try file.flush()
    }

    /// Parses a size with qemu-img's suffixes (k, M, G, T, P, E; powers of 1024; b/B bytes).
    public static func parseSize(_ text: String) -> UInt64? {
        guard let last = text.last else { return nil }
        let units: [Character: UInt64] = ["k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                                          "P": 1 << 50, "E": 1 << 60, "b": 1, "B": 1]
        if let unit = units[last] {
            guard let value = UInt64(text.dropLast()) else { return nil }
            return checkedMultiply(value, unit)
        }
        return UInt64(text)
    }
}
