import Backends
import Foundation
import XCTest

/// Images made by qemu-img read correctly; images written by SwiftDM pass qemu-img check and
/// match under qemu-img compare.
final class InteropTests: XCTestCase {
    let size = 16 << 20

    /// Writes a mix of patterns, zeroes and discards with qemu-io.
    func populateWithQemu(_ image: String) throws {
        try Qemu.io(image, format: "qcow2", [
            "write -P 0xa1 0 1M", "write -P 0xb2 3000k 70k", "write -P 0xc3 8191k 2k",
            "write -z 500k 200k", "discard 3M 128k", "write -P 0xd4 15M 1M", "write -z 15360k 64k",
        ])
    }

    func testReadsQemuImagesV2AndV3() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        for (compat, clusterSize) in [("0.10", "65536"), ("1.1", "65536"), ("1.1", "4096"), ("1.1", "512"), ("0.10", "2M")] {
            let image = dir.file("q-\(compat)-\(clusterSize).qcow2"), reference = image + ".raw"
            try Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=\(compat),cluster_size=\(clusterSize)", image, "\(size)")
            try populateWithQemu(image)
            try Qemu.img("convert", "-f", "qcow2", "-O", "raw", image, reference)
            let backend = try openImage(image, .qcow2)
            XCTAssertEqual(try readDevice(backend), readAll(reference), "compat=\(compat) cluster_size=\(clusterSize)")
            // Unaligned reads across cluster boundaries too.
            let piece = try backend.read(at: 3000 * 1024 - 333, count: 70 * 1024 + 999)
            XCTAssertEqual(piece, Array(readAll(reference)[(3000 * 1024 - 333)..<(3000 * 1024 - 333 + 70 * 1024 + 999)]))
            try backend.close()
        }
    }

    func testReadsCompressedClusters() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let source = dir.file("src.raw"), compressed = dir.file("c.qcow2")
        var random = TestRandom(state: 7)
        // Compressible text-like data and incompressible noise, so both deflate block kinds appear.
        var data = [UInt8](repeating: 0, count: size)
        for i in 0..<(4 << 20) { data[i] = UInt8(ascii: "a") + UInt8(i % 7 * (i / 4096 % 3)) }
        data.replaceSubrange((6 << 20)..<(7 << 20), with: random.bytes(1 << 20))
        FileManager.default.createFile(atPath: source, contents: Data(data))
        for compat in ["0.10", "1.1"] {
            try Qemu.img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compat=\(compat)", source, compressed)
            XCTAssertTrue(try Qemu.img("check", compressed).contains("compressed clusters"))
            let backend = try openImage(compressed, .qcow2)
            XCTAssertEqual(try readDevice(backend), data)
            try backend.close()
        }
    }

    func testReadsBackingChainsWithRelativePaths() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let base = dir.file("base.raw"), mid = dir.file("mid.qcow2"), top = dir.file("top.qcow2"), flat = dir.file("flat.raw")
        var random = TestRandom(state: 1)
        FileManager.default.createFile(atPath: base, contents: Data(random.bytes(8 << 20)))  // smaller than the overlays
        try Qemu.img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "\(size)")
        try Qemu.io(mid, format: "qcow2", ["write -P 0x11 1M 100k", "write -z 2M 64k", "write -P 0x12 9M 1M"])
        try Qemu.img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "mid.qcow2", "-F", "qcow2", top)
        try Qemu.io(top, format: "qcow2", ["write -P 0x21 1050k 8k", "write -P 0x22 7M 2M", "discard 9M 64k"])
        try Qemu.img("convert", "-f", "qcow2", "-O", "raw", top, flat)
        // Opened from another working directory: the chain resolves against the image's folder.
        let backend = try openImage(top, .qcow2)
        XCTAssertEqual(try readDevice(backend), readAll(flat))
        try backend.close()
    }

    func testInternalSnapshotsListedAndImageReadOnly() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("s.qcow2")
        try Qemu.img("create", "-q", "-f", "qcow2", image, "1M")
        try Qemu.io(image, format: "qcow2", ["write -P 1 0 64k"])
        try Qemu.img("snapshot", "-c", "first", image)
        let driver = try BlockDrivers.open(path: image, options: BlockOpenOptions(format: .qcow2, readOnly: true))
        XCTAssertEqual((driver as? Qcow2Image)?.snapshots.map(\.name), ["first"])
        try driver.close()
        XCTAssertThrowsError(try BlockDrivers.open(path: image, options: BlockOpenOptions(format: .qcow2))) { error in
            XCTAssertTrue("\(error)".contains("snapshots"), "\(error)")
        }
    }

    /// Random writes, zeroes and discards through BlockBackend, mirrored in memory; then qemu-img
    /// check and compare against the mirror.
    func testWritesPassQemuCheckAndCompare() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        for (version, clusterSize, refcountBits) in [(3, 65536, 16), (2, 65536, 16), (3, 512, 16), (3, 4096, 1), (3, 65536, 64)] {
            let image = dir.file("w-\(version)-\(clusterSize).qcow2"), mirrorPath = image + ".raw"
            var options = Qcow2CreateOptions(size: UInt64(size))
            options.version = UInt32(version)
            options.clusterSize = UInt64(clusterSize)
            options.refcountBits = UInt32(refcountBits)
            try ImageCreation.createQcow2(path: image, options: options)
            var mirror = [UInt8](repeating: 0, count: size)
            var random = TestRandom(state: UInt64(clusterSize + version))
            let backend = try openImage(image, .qcow2, readOnly: false)
            for step in 0..<400 {
                let length = Int(random.next() % 200_000) + 1
                let offset = Int(random.next() % UInt64(size - length))
                switch step % 10 {
                case 7:
                    try backend.writeZeroes(at: UInt64(offset), length: UInt64(length))
                    mirror.replaceSubrange(offset..<offset + length, with: [UInt8](repeating: 0, count: length))
                case 8:
                    // Discard may leave old data or zeroes; keep the mirror exact by zeroing after.
                    try backend.discard(at: UInt64(offset), length: UInt64(length))
                    try backend.writeZeroes(at: UInt64(offset), length: UInt64(length))
                    mirror.replaceSubrange(offset..<offset + length, with: [UInt8](repeating: 0, count: length))
                default:
                    let bytes = random.bytes(length)
                    try backend.write(bytes, at: UInt64(offset))
                    mirror.replaceSubrange(offset..<offset + length, with: bytes)
                }
                if step % 50 == 0 { try backend.flush() }
            }
            XCTAssertEqual(try readDevice(backend), mirror, "read back before close")
            try backend.close()
            FileManager.default.createFile(atPath: mirrorPath, contents: Data(mirror))
            try Qemu.assertClean(image)
            try Qemu.assertIdentical(image, "qcow2", mirrorPath, "raw")
        }
    }

    /// Copy-on-write over qemu-made compressed clusters and a backing file, then check/compare.
    func testWritesOverCompressedAndBackingClusters() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let source = dir.file("src.raw"), compressed = dir.file("c.qcow2"), overlay = dir.file("o.qcow2")
        var random = TestRandom(state: 3)
        var data = [UInt8](repeating: 0, count: size)
        for i in 0..<size where i % 3 == 0 { data[i] = UInt8(i / 65536 % 251) }
        FileManager.default.createFile(atPath: source, contents: Data(data))
        try Qemu.img("convert", "-c", "-f", "raw", "-O", "qcow2", source, compressed)
        try Qemu.img("create", "-q", "-f", "qcow2", "-b", "c.qcow2", "-F", "qcow2", overlay)
        // The overlay first: writing the compressed image changes the overlay's backing.
        for image in [overlay, compressed] {
            var mirror = data
            let backend = try openImage(image, .qcow2, readOnly: false)
            for _ in 0..<60 {
                let length = Int(random.next() % 100_000) + 1
                let offset = Int(random.next() % UInt64(size - length))
                let bytes = random.bytes(length)
                try backend.write(bytes, at: UInt64(offset))
                mirror.replaceSubrange(offset..<offset + length, with: bytes)
            }
            try backend.writeZeroes(at: 5 << 20, length: 1 << 20)
            mirror.replaceSubrange((5 << 20)..<(6 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
            try backend.close()
            let mirrorPath = image + ".raw"
            FileManager.default.createFile(atPath: mirrorPath, contents: Data(mirror))
            try Qemu.assertClean(image)
            try Qemu.assertIdentical(image, "qcow2", mirrorPath, "raw")
        }
    }

    /// Growing past what one refcount block and one refcount table cluster cover (512-byte
    /// clusters: a block covers 128 KiB, the table 8 MiB) moves the refcount table.
    func testRefcountTableGrowth() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("g.qcow2"), mirrorPath = dir.file("g.raw")
        var options = Qcow2CreateOptions(size: 24 << 20)
        options.clusterSize = 512
        try ImageCreation.createQcow2(path: image, options: options)
        var random = TestRandom(state: 9)
        let data = random.bytes(24 << 20)
        let backend = try openImage(image, .qcow2, readOnly: false)
        for chunk in stride(from: 0, to: data.count, by: 1 << 20) {
            try backend.write(Array(data[chunk..<chunk + (1 << 20)]), at: UInt64(chunk))
        }
        XCTAssertEqual(try readDevice(backend), data)
        try backend.close()
        FileManager.default.createFile(atPath: mirrorPath, contents: Data(data))
        try Qemu.assertClean(image)
        try Qemu.assertIdentical(image, "qcow2", mirrorPath, "raw")
    }

    func testAsyncAPIWithWorkers() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("a.qcow2")
        try ImageCreation.createQcow2(path: image, options: Qcow2CreateOptions(size: UInt64(size)))
        let backend = try openImage(image, .qcow2, readOnly: false)
        let group = DispatchGroup()
        let failures = NSLock()
        nonisolated(unsafe) var errors: [BlockError] = []
        for i in 0..<64 {
            group.enter()
            backend.submit(.write(offset: UInt64(i) * 200_000, bytes: [UInt8](repeating: UInt8(i), count: 100_000))) { result in
                if case let .failure(error) = result { failures.lock(); errors.append(error); failures.unlock() }
                group.leave()
            }
        }
        group.wait()
        XCTAssertEqual(errors, [])
        group.enter()
        backend.submit(.read(offset: UInt64(size), count: 1)) { result in
            if case .failure(.outOfRange) = result {} else { XCTFail("expected outOfRange, got \(result)") }
            group.leave()
        }
        group.wait()
        for i in 0..<64 {
            XCTAssertEqual(try backend.read(at: UInt64(i) * 200_000, count: 100_000), [UInt8](repeating: UInt8(i), count: 100_000))
        }
        try backend.close()
        try Qemu.assertClean(image)
    }
}
