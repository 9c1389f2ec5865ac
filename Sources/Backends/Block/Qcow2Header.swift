/// Constants of the qcow2 format (QEMU's docs/interop/qcow2.txt). All fields are big-endian.
enum Qcow2Layout {
    static let magic: [UInt8] = [0x51, 0x46, 0x49, 0xfb]   // "QFI\xfb"
    static let v2HeaderLength = 72
    static let v3HeaderLength = 104

    // Incompatible feature bits.
    static let dirtyBit: UInt64 = 1 << 0
    static let corruptBit: UInt64 = 1 << 1
    static let externalDataBit: UInt64 = 1 << 2
    static let compressionTypeBit: UInt64 = 1 << 3
    static let extendedL2Bit: UInt64 = 1 << 4
    /// Incompatible bits we understand (dirty and corrupt are handled; the compression-type bit
    /// is accepted only with zlib).
    static let knownIncompatible: UInt64 = dirtyBit | corruptBit | compressionTypeBit
    // Compatible feature bits.
    static let lazyRefcountsBit: UInt64 = 1 << 0

    // Header extension types.
    static let extensionEnd: UInt32 = 0
    static let extensionBackingFormat: UInt32 = 0xe279_2aca
    static let extensionFeatureNames: UInt32 = 0x6803_f857
    static let extensionBitmaps: UInt32 = 0x2385_2875
    static let extensionEncryption: UInt32 = 0x0537_be77
    static let extensionExternalDataFile: UInt32 = 0x4441_5441

    // L1/L2 entry bits.
    static let copiedFlag: UInt64 = 1 << 63
    static let compressedFlag: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    /// L1 reserved bits: 1-8 and 56-62.
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_01fe
    /// Standard L2 reserved bits: 1-8 and 56-61.
    static let l2ReservedMask: UInt64 = 0x3f00_0000_0000_01fe

    /// QEMU's limits: at most 32 MiB of L1 table and 8 MiB of refcount table.
    static let maxL1Bytes: UInt64 = 32 << 20
    static let maxRefcountTableBytes: UInt64 = 8 << 20
    static let maxSnapshots: UInt32 = 65536
    static let maxBackingNameLength = 1023
}

/// An internal snapshot as listed by `info` (SwiftDM lists them; applying them is not
/// supported, and an image with snapshots opens read-only).
public struct Qcow2Snapshot: Sendable, Equatable {
    public let id: String
    public let name: String
    public let vmStateSize: UInt64
    public let dateSeconds: UInt32
    public let dateNanoseconds: UInt32
    public let vmClockNanoseconds: UInt64
    public let l1TableOffset: UInt64
    public let l1Size: UInt32
    public let diskSize: UInt64?
}

/// The qcow2 header and its extensions, every field validated against the format's rules and
/// the file's size before anything else trusts it.
public struct Qcow2Header: Sendable {
    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var size: UInt64
    public var encryptionMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var snapshotCount: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32
    public var compressionType: UInt8 = 0

    public var backingFile: String?
    public var backingFormat: String?
    public var hasBitmapsExtension = false
    /// Names from the feature name table: (type 0 incompatible / 1 compatible / 2 autoclear, bit).
    public var featureNames: [FeatureKey: String] = [:]

    public struct FeatureKey: Hashable, Sendable {
        public let type: UInt8
        public let bit: UInt8
    }

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    public var isDirty: Bool { incompatibleFeatures & Qcow2Layout.dirtyBit != 0 }
    public var isCorrupt: Bool { incompatibleFeatures & Qcow2Layout.corruptBit != 0 }
    public var hasLazyRefcounts: Bool { compatibleFeatures & Qcow2Layout.lazyRefcountsBit != 0 }
    public var refcountBits: UInt32 { 1 << refcountOrder }

    /// The number of guest bytes one L2 table maps.
    var bytesPerL2Table: UInt64 { clusterSize / 8 * clusterSize }

    /// Parses and validates the header in `firstCluster` (at least the first min(cluster, file)
    /// bytes of the file, zero-padded past the end).
    static func parse(_ bytes: [UInt8], fileSize: UInt64, path: String) throws(BlockError) -> Qcow2Header {
        func invalid(_ reason: String) -> BlockError { .invalidImage(path: path, reason: reason) }
        guard bytes.count >= Qcow2Layout.v2HeaderLength, Array(bytes[0..<4]) == Qcow2Layout.magic else {
            throw invalid("no qcow2 magic")
        }
        let version = bytes.bigEndian32(at: 4)
        guard version == 2 || version == 3 else {
            throw .unsupported(path: path, reason: "qcow2 version \(version) (only 2 and 3 are supported)")
        }
        let clusterBits = bytes.bigEndian32(at: 20)
        guard (9...21).contains(clusterBits) else { throw invalid("cluster_bits \(clusterBits) outside 9...21") }
        var header = Qcow2Header(
            version: version,
            backingFileOffset: bytes.bigEndian64(at: 8),
            backingFileSize: bytes.bigEndian32(at: 16),
            clusterBits: clusterBits,
            size: bytes.bigEndian64(at: 24),
            encryptionMethod: bytes.bigEndian32(at: 32),
            l1Size: bytes.bigEndian32(at: 36),
            l1TableOffset: bytes.bigEndian64(at: 40),
            refcountTableOffset: bytes.bigEndian64(at: 48),
            refcountTableClusters: bytes.bigEndian32(at: 56),
            snapshotCount: bytes.bigEndian32(at: 60),
            snapshotsOffset: bytes.bigEndian64(at: 64),
            headerLength: UInt32(Qcow2Layout.v2HeaderLength))
        let clusterSize = header.clusterSize
        guard UInt64(bytes.count) >= min(clusterSize, UInt64(bytes.count)) else { throw invalid("header truncated") }

        if version == 3 {
            guard bytes.count >= Qcow2Layout.v3HeaderLength else { throw invalid("version 3 header truncated") }
            header.incompatibleFeatures = bytes.bigEndian64(at: 72)
            header.compatibleFeatures = bytes.bigEndian64(at: 80)
            header.autoclearFeatures = bytes.bigEndian64(at: 88)
            header.refcountOrder = bytes.bigEndian32(at: 96)
            header.headerLength = bytes.bigEndian32(at: 100)
            guard header.headerLength >= UInt32(Qcow2Layout.v3HeaderLength),
                  UInt64(header.headerLength) <= clusterSize, UInt64(header.headerLength) <= UInt64(bytes.count) else {
                throw invalid("header_length \(header.headerLength) invalid")
            }
            if header.headerLength > 104 { header.compressionType = bytes[104] }
            guard header.refcountOrder <= 6 else { throw invalid("refcount_order \(header.refcountOrder) above 6") }
        }

        // Header extensions come right after the header and end inside the first cluster.
        var position = Int(header.headerLength)
        let extensionLimit = min(Int(clusterSize), bytes.count)
        var encryptionExtension = false, externalDataExtension = false
        while position + 8 <= extensionLimit {
            let type = bytes.bigEndian32(at: position)
            let length = Int(bytes.bigEndian32(at: position + 4))
            position += 8
            if type == Qcow2Layout.extensionEnd { break }
            guard length <= extensionLimit - position else {
                throw invalid("header extension 0x\(String(type, radix: 16)) runs past the first cluster")
            }
            let data = Array(bytes[position..<position + length])
            switch type {
            case Qcow2Layout.extensionBackingFormat:
                header.backingFormat = String(decoding: data, as: UTF8.self)
            case Qcow2Layout.extensionFeatureNames:
                for entry in stride(from: 0, to: data.count - 47, by: 48) {
                    let nameBytes = data[entry + 2..<entry + 48].prefix { $0 != 0 }
                    header.featureNames[FeatureKey(type: data[entry], bit: data[entry + 1])] =
                        String(decoding: nameBytes, as: UTF8.self)
                }
            case Qcow2Layout.extensionBitmaps: header.hasBitmapsExtension = true
            case Qcow2Layout.extensionEncryption: encryptionExtension = true
            case Qcow2Layout.extensionExternalDataFile: externalDataExtension = true
            default: break  // unknown extensions are ignored, as the specification allows
            }
            // Extension data is padded to a multiple of 8 bytes.
            position += (length + 7) & ~7
        }

        // Refuse what we cannot serve correctly, with the reason.
        if header.encryptionMethod != 0 || encryptionExtension {
            throw .unsupported(path: path, reason: "encrypted qcow2 images are not supported")
        }
        if header.incompatibleFeatures & Qcow2Layout.externalDataBit != 0 || externalDataExtension {
            throw .unsupported(path: path, reason: "qcow2 external data files are not supported")
        }
        let unknown = header.incompatibleFeatures & ~Qcow2Layout.knownIncompatible
        if unknown != 0 {
            let names = (0..<64).filter { unknown & (1 << UInt64($0)) != 0 }.map { bit in
                header.featureNames[FeatureKey(type: 0, bit: UInt8(bit))] ?? "unknown incompatible feature bit \(bit)"
            }
            throw .unsupported(path: path, reason: "qcow2 feature(s) not supported: \(names.joined(separator: ", "))")
        }
        if header.compressionType != 0 {
            throw .unsupported(path: path, reason: "compression type \(header.compressionType) (only zlib is supported)")
        }

        // Geometry: the L1 table must map the whole virtual size, within QEMU's limits.
        guard header.size <= UInt64(Int64.max) else { throw invalid("virtual size \(header.size) too large") }
        let neededL1 = (header.size + header.bytesPerL2Table - 1) / header.bytesPerL2Table
        guard UInt64(header.l1Size) >= neededL1 else {
            throw invalid("L1 table has \(header.l1Size) entries, \(neededL1) needed for the virtual size")
        }
        guard UInt64(header.l1Size) * 8 <= Qcow2Layout.maxL1Bytes else {
            throw invalid("L1 table of \(header.l1Size) entries is too large")
        }
        try header.checkTable(offset: header.l1TableOffset, bytes: UInt64(header.l1Size) * 8,
                              name: "L1 table", fileSize: fileSize, path: path)
        let refcountTableBytes = UInt64(header.refcountTableClusters) * clusterSize
        guard header.refcountTableClusters > 0, refcountTableBytes <= Qcow2Layout.maxRefcountTableBytes else {
            throw invalid("refcount table of \(header.refcountTableClusters) clusters is invalid")
        }
        try header.checkTable(offset: header.refcountTableOffset, bytes: refcountTableBytes,
                              name: "refcount table", fileSize: fileSize, path: path)
        guard header.snapshotCount <= Qcow2Layout.maxSnapshots else {
            throw invalid("\(header.snapshotCount) snapshots is more than \(Qcow2Layout.maxSnapshots)")
        }
        if header.snapshotCount > 0 {
            try header.checkTable(offset: header.snapshotsOffset, bytes: UInt64(header.snapshotCount) * 40,
                                  name: "snapshot table", fileSize: fileSize, path: path)
        }

        // The backing file name lives in the first cluster too.
        if header.backingFileOffset != 0 {
            let length = Int(header.backingFileSize)
            guard length > 0, length <= Qcow2Layout.maxBackingNameLength,
                  header.backingFileOffset < UInt64(extensionLimit),
                  length <= extensionLimit - Int(header.backingFileOffset) else {
                throw invalid("backing file name at \(header.backingFileOffset)+\(length) is outside the header cluster")
            }
            let start = Int(header.backingFileOffset)
            let name = String(decoding: bytes[start..<start + length], as: UTF8.self)
            guard !name.utf8.contains(0) else { throw invalid("backing file name contains a NUL byte") }
            header.backingFile = name
        }
        return header
    }

    /// A table must be cluster-aligned, not overlap the header and lie inside the file.
    func checkTable(offset: UInt64, bytes: UInt64, name: String, fileSize: UInt64, path: String) throws(BlockError) {
        if bytes == 0 { return }
        guard offset % clusterSize == 0, offset != 0,
              let end = checkedAdd(offset, bytes), end <= fileSize else {
            throw .invalidImage(path: path, reason: "\(name) at \(offset) (\(bytes) bytes) is unaligned or outside the file (\(fileSize) bytes)")
        }
    }

    /// The header fields as written on disk (the first `headerLength` bytes, no extensions).
    func encodedFields() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: version == 3 ? Int(headerLength) : Qcow2Layout.v2HeaderLength)
        out.replaceSubrange(0..<4, with: Qcow2Layout.magic)
        out.setBigEndian32(version, at: 4)
        out.setBigEndian64(backingFileOffset, at: 8)
        out.setBigEndian32(backingFileSize, at: 16)
        out.setBigEndian32(clusterBits, at: 20)
        out.setBigEndian64(size, at: 24)
        out.setBigEndian32(encryptionMethod, at: 32)
        out.setBigEndian32(l1Size, at: 36)
        out.setBigEndian64(l1TableOffset, at: 40)
        out.setBigEndian64(refcountTableOffset, at: 48)
        out.setBigEndian32(refcountTableClusters, at: 56)
        out.setBigEndian32(snapshotCount, at: 60)
        out.setBigEndian64(snapshotsOffset, at: 64)
        if version == 3 {
            out.setBigEndian64(incompatibleFeatures, at: 72)
            out.setBigEndian64(compatibleFeatures, at: 80)
            out.setBigEndian64(autoclearFeatures, at: 88)
            out.setBigEndian32(refcountOrder, at: 96)
            out.setBigEndian32(headerLength, at: 100)
            if headerLength > 104 { out[104] = compressionType }
        }
        return out
    }

    /// Reads the snapshot table (for listing); every entry is bounds-checked.
    static func readSnapshots(_ header: Qcow2Header, file: BlockFile, fileSize: UInt64) throws(BlockError) -> [Qcow2Snapshot] {
        var snapshots: [Qcow2Snapshot] = []
        var offset = header.snapshotsOffset
        func bad(_ reason: String) -> BlockError { .invalidImage(path: file.path, reason: "snapshot table: \(reason)") }
        for _ in 0..<header.snapshotCount {
            guard let fixedEnd = checkedAdd(offset, 40), fixedEnd <= fileSize else { throw bad("entry outside the file") }
            let fixed = try file.read(at: offset, count: 40)
            let idLength = Int(fixed.bigEndian16(at: 12))
            let nameLength = Int(fixed.bigEndian16(at: 14))
            let extraLength = Int(fixed.bigEndian32(at: 36))
            guard extraLength <= 1024 else { throw bad("extra data of \(extraLength) bytes") }
            let variableLength = UInt64(extraLength + idLength + nameLength)
            guard let end = checkedAdd(fixedEnd, variableLength), end <= fileSize else { throw bad("entry outside the file") }
            let variable = try file.read(at: fixedEnd, count: Int(variableLength))
            var vmStateSize = UInt64(fixed.bigEndian32(at: 32))
            var diskSize: UInt64?
            if extraLength >= 8 { vmStateSize = variable.bigEndian64(at: 0) }
            if extraLength >= 16 { diskSize = variable.bigEndian64(at: 8) }
            // The snapshot's L1 table must be as sane as the active one (its clusters are
            // walked by check and recorded as metadata).
            let l1Offset = fixed.bigEndian64(at: 0), l1Size = UInt64(fixed.bigEndian32(at: 8))
            guard l1Size * 8 <= Qcow2Layout.maxL1Bytes else { throw bad("snapshot L1 table of \(l1Size) entries is too large") }
            try header.checkTable(offset: l1Offset, bytes: l1Size * 8, name: "snapshot L1 table", fileSize: fileSize, path: file.path)
            let id = String(decoding: variable[extraLength..<extraLength + idLength], as: UTF8.self)
            let name = String(decoding: variable[(extraLength + idLength)...], as: UTF8.self)
            snapshots.append(Qcow2Snapshot(id: id, name: name, vmStateSize: vmStateSize,
                                           dateSeconds: fixed.bigEndian32(at: 16), dateNanoseconds: fixed.bigEndian32(at: 20),
                                           vmClockNanoseconds: fixed.bigEndian64(at: 24),
                                           l1TableOffset: fixed.bigEndian64(at: 0), l1Size: fixed.bigEndian32(at: 8),
                                           diskSize: diskSize))
            guard let next = roundUp(end, toMultipleOf: 8) else { throw bad("offset overflow") }
            offset = next
        }
        return snapshots
    }
}
