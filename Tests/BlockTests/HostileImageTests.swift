import Backends
import Foundation
import XCTest

/// Corrupted and malicious images: a clear error at open, or an I/O error for the affected
/// request — never a crash, never an access outside the image.
final class HostileImageTests: XCTestCase {
    /// Patches big-endian `value` (`width` bytes) at `offset` of `path`.
    func patch(_ path: String, at offset: UInt64, _ value: UInt64, width: Int) throws {
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: offset)
        handle.write(Data((0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(width - 1 - $0))) }))
    }

    func readBigEndian(_ path: String, at offset: Int, width: Int) -> UInt64 {
        let bytes = readAll(path)
        return (0..<width).reduce(UInt64(0)) { $0 << 8 | UInt64(bytes[offset + $1]) }
    }

    /// A small qcow2 image with data in the first clusters (L2 table allocated).
    func makeImage(_ dir: TemporaryDirectory, _ name: String = "h.qcow2", compat: String = "1.1") throws -> String {
        let image = dir.file(name)
        try Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", image, "4M")
        try Qemu.io(image, format: "qcow2", ["write -P 0x5a 0 128k", "write -P 0x6b 2M 64k"])
        return image
    }

    func expectOpenError(_ image: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try BlockDrivers.open(path: image, options: BlockOpenOptions(format: .qcow2, readOnly: true)),
                             file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(expected), "expected '\(expected)' in: \(error)", file: file, line: line)
        }
    }

    func testCorruptedHeaders() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let cases: [(offset: UInt64, value: UInt64, width: Int, expected: String)] = [
            (0, 0x1234_5678, 4, "no qcow2 magic"),
            (4, 4, 4, "version 4"),
            (20, 30, 4, "cluster_bits 30"),
            (20, 8, 4, "cluster_bits 8"),
            (24, 1 << 62, 8, "L1 table has"),
            (24, UInt64.max, 8, "virtual size"),
            (40, 1 << 40, 8, "L1 table at"),
            (40, 0x30001, 8, "L1 table at"),
            (36, 0xffff_ffff, 4, "L1 table"),
            (48, 1 << 50, 8, "refcount table at"),
            (56, 0xffff_ffff, 4, "refcount table of"),
            (56, 0, 4, "refcount table of"),
            (32, 1, 4, "encrypted"),
            (72, 1 << 10, 8, "feature bit 10"),
            (72, 1 << 2, 8, "external data"),
            (72, 1 << 4, 8, "extended L2"),
            (96, 7, 4, "refcount_order 7"),
            (100, 50, 4, "header_length"),
            (60, 1 << 20, 4, "snapshots is more than"),
            (60, 5, 4, "snapshot table"),
            (8, 0x10000 - 4, 8, "backing file name"),
        ]
        for (index, bad) in cases.enumerated() {
            let image = try makeImage(dir, "h\(index).qcow2")
            if bad.offset == 8 { try patch(image, at: 16, 100, width: 4) }
            if bad.offset == 60 && bad.value == 5 { try patch(image, at: 64, 1 << 40, width: 8) }
            try patch(image, at: bad.offset, bad.value, width: bad.width)
            expectOpenError(image, bad.expected)
        }
    }

    func testZstdCompressionTypeRefused() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = try makeImage(dir)
        // header_length 112 carries the compression type byte at 104 (bit 3 says it matters).
        XCTAssertEqual(readBigEndian(image, at: 100, width: 4), 112)
        try patch(image, at: 72, 1 << 3, width: 8)
        try patch(image, at: 104, 1, width: 1)
        expectOpenError(image, "compression type 1")
    }

    func testHeaderExtensionOverrunRefused() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = try makeImage(dir)
        // The first extension's length is at header_length + 4.
        let headerLength = readBigEndian(image, at: 100, width: 4)
        try patch(image, at: headerLength + 4, 0xffff_fff0, width: 4)
        expectOpenError(image, "runs past the first cluster")
    }

    func testBackingChainLoops() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let a = dir.file("a.qcow2"), b = dir.file("b.qcow2"), selfLoop = dir.file("self.qcow2")
        try Qemu.img("create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", a, "1M")
        try Qemu.img("create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", b, "1M")
        try Qemu.img("create", "-q", "-f", "qcow2", "-u", "-b", "self.qcow2", "-F", "qcow2", selfLoop, "1M")
        expectOpenError(a, "loops back")
        expectOpenError(selfLoop, "loops back")
        // A long chain is refused beyond the depth limit.
        var previous = dir.file("c0.qcow2")
        try Qemu.img("create", "-q", "-f", "qcow2", previous, "1M")
        for i in 1...20 {
            let next = dir.file("c\(i).qcow2")
            try Qemu.img("create", "-q", "-f", "qcow2", "-u", "-b", "c\(i - 1).qcow2", "-F", "qcow2", next, "1M")
            previous = next
        }
        expectOpenError(previous, "deeper than")
    }

    func testBadTableEntriesFailOnlyTheirRequests() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let l1Offset = UInt64(0x30000)
        // 1: L1 entry points beyond the file. 2: L1 entry with reserved bits.
        // 3: L2 entry beyond the file. 4: L2 entry unaligned. 5: compressed entry with garbage.
        let patches: [(name: String, l1: UInt64?, l2: UInt64?, expected: String)] = [
            ("l1-outside", (1 << 40) | (1 << 63), nil, "outside the file"),
            ("l1-reserved", 0x40000 | 0x100, nil, "reserved bits"),
            ("l2-outside", nil, (1 << 45) | (1 << 63), "beyond the end of the file"),
            ("l2-unaligned", nil, 0x50200 | (1 << 63), "not cluster-aligned"),
            ("compressed-garbage", nil, (1 << 62) | 0x200, "compressed cluster"),
        ]
        for bad in patches {
            let image = try makeImage(dir, bad.name + ".qcow2")
            XCTAssertEqual(readBigEndian(image, at: 40, width: 8), l1Offset)
            let l2Offset = readBigEndian(image, at: Int(l1Offset), width: 8) & 0x00ff_ffff_ffff_fe00
            if let l1 = bad.l1 { try patch(image, at: l1Offset, l1, width: 8) }
            if let l2 = bad.l2 { try patch(image, at: l2Offset, l2, width: 8) }
            let backend = try openImage(image, .qcow2, readOnly: false)
            XCTAssertThrowsError(try backend.read(at: 0, count: 4096), bad.name) { error in
                guard case .corrupt = error as? BlockError else { return XCTFail("\(bad.name): \(error)") }
                XCTAssertTrue("\(error)".contains(bad.expected), "\(bad.name): \(error)")
            }
            XCTAssertThrowsError(try backend.write([1, 2, 3], at: 100), bad.name)
            // Other requests keep working (with a bad L1 entry, the whole 4 MiB image maps
            // through it, so every request fails the same clear way).
            if bad.l1 == nil {
                XCTAssertEqual(try backend.read(at: 65536, count: 16), [UInt8](repeating: 0x5a, count: 16), bad.name)
                XCTAssertEqual(try backend.read(at: 3 << 20, count: 16), [UInt8](repeating: 0, count: 16), bad.name)
            } else {
                XCTAssertThrowsError(try backend.read(at: 3 << 20, count: 16), bad.name)
            }
            try backend.close()
        }
    }

    func testDataClusterPointingIntoMetadataIsNotWritten() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = try makeImage(dir)
        let l2Offset = readBigEndian(image, at: 0x30000, width: 8) & 0x00ff_ffff_ffff_fe00
        // Guest cluster 0 now claims to live on the refcount table (cluster 1).
        try patch(image, at: l2Offset, 0x10000 | (1 << 63), width: 8)
        let before = readAll(image)
        let backend = try openImage(image, .qcow2, readOnly: false)
        _ = try backend.read(at: 0, count: 512)   // reading is harmless
        XCTAssertThrowsError(try backend.write([UInt8](repeating: 0xff, count: 4096), at: 0)) { error in
            XCTAssertTrue("\(error)".contains("overlaps metadata"), "\(error)")
        }
        try backend.close()
        XCTAssertEqual(Array(readAll(image)[0x10000..<0x20000]), Array(before[0x10000..<0x20000]))
    }

    func testOutOfRangeRequestsRejected() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = try makeImage(dir)
        let backend = try openImage(image, .qcow2, readOnly: false)
        XCTAssertThrowsError(try backend.read(at: UInt64.max - 10, count: 100))
        XCTAssertThrowsError(try backend.read(at: 4 << 20, count: 1))
        XCTAssertThrowsError(try backend.write([1], at: 4 << 20))
        XCTAssertThrowsError(try backend.discard(at: 1, length: UInt64.max))
        XCTAssertThrowsError(try backend.writeZeroes(at: UInt64.max, length: 2))
        try backend.close()
        let readOnly = try openImage(image, .qcow2)
        XCTAssertThrowsError(try readOnly.write([1], at: 0)) { error in
            guard case .readOnly = error as? BlockError else { return XCTFail("\(error)") }
        }
        try readOnly.close()
    }

    func testRawIsNeverProbedUnlessAsked() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = try makeImage(dir)
        XCTAssertThrowsError(try BlockDrivers.open(path: image, options: BlockOpenOptions(format: nil)))
        let raw = try BlockDrivers.open(path: image, options: BlockOpenOptions(format: .raw, readOnly: true))
        XCTAssertEqual(raw.format, .raw)   // format=raw means raw, whatever the content says
        try raw.close()
    }
}
