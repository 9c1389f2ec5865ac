import Backends
import Foundation
import XCTest

final class CrashSafetyTests: XCTestCase {
    /// Runs swiftdm-img crash-writer, SIGKILLs it at a random moment, then requires the image to
    /// be qemu-img-check-clean (leaks allowed) and every write before the last flush to be there.
    func crashRounds(lazyRefcounts: Bool, rounds: Int, clusterSize: UInt64) throws {
        try Qemu.require()
        let tool = try Tool.require()
        let dir = TemporaryDirectory()
        let imageSize: UInt64 = 48 << 20
        var random = TestRandom(state: lazyRefcounts ? 99 : 42)
        for round in 0..<rounds {
            let image = dir.file("crash\(round).qcow2")
            var options = Qcow2CreateOptions(size: imageSize)
            options.lazyRefcounts = lazyRefcounts
            options.clusterSize = clusterSize
            try ImageCreation.createQcow2(path: image, options: options)
            let seed = random.next() % 1_000_000
            let process = Process()
            process.executableURL = URL(fileURLWithPath: tool)
            process.arguments = ["crash-writer", "-f", "qcow2", image, String(seed)]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            usleep(UInt32(200_000 + random.next() % 1_300_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let flushed = output.split(separator: "\n").last.flatMap { UInt64($0.split(separator: " ").last ?? "") } ?? 0
            XCTAssertEqual(process.terminationReason, .uncaughtSignal)
            if lazyRefcounts {
                // A dirty image is repaired on the next read-write open, as QEMU does.
                let reopened = try openImage(image, .qcow2, readOnly: false)
                try reopened.close()
            }
            try Qemu.assertClean(image, allowLeaks: true)
            // Expected contents: writes before the flush, minus whatever the unflushed tail
            // (at most 64 more requests) or a discard may have changed.
            var expected = [UInt8](repeating: 0, count: Int(imageSize))
            var known = [Bool](repeating: true, count: Int(imageSize))
            for index in 0..<(flushed + 64) {
                let (offset, bytes) = CrashPattern.write(seed: seed, index: index, imageSize: imageSize)
                let range = Int(offset)..<Int(offset) + bytes.count
                if index >= flushed || CrashPattern.operation(index: index) == 1 {
                    for i in range { known[i] = false }
                } else if CrashPattern.operation(index: index) == 2 {
                    expected.replaceSubrange(range, with: [UInt8](repeating: 0, count: bytes.count))
                    for i in range { known[i] = true }
                } else {
                    expected.replaceSubrange(range, with: bytes)
                    for i in range { known[i] = true }
                }
            }
            let backend = try openImage(image, .qcow2)
            let actual = try readDevice(backend)
            try backend.close()
            var mismatches = 0
            for i in 0..<actual.count where known[i] && actual[i] != expected[i] { mismatches += 1 }
            XCTAssertEqual(mismatches, 0, "round \(round): \(mismatches) flushed bytes lost (flushed \(flushed) requests)")
            XCTAssertGreaterThan(flushed, 0, "round \(round): the writer never flushed; kill too early")
            print("crash round \(round): killed after \(flushed) flushed requests; check clean, flushed data intact")
        }
    }

    func testKillDuringWritesLeavesConsistentImage() throws {
        try crashRounds(lazyRefcounts: false, rounds: 6, clusterSize: 65536)
    }

    func testKillDuringWritesSmallClusters() throws {
        try crashRounds(lazyRefcounts: false, rounds: 3, clusterSize: 4096)
    }

    func testKillWithLazyRefcountsIsRepairedOnOpen() throws {
        try crashRounds(lazyRefcounts: true, rounds: 3, clusterSize: 65536)
    }
}

final class LockingTests: XCTestCase {
    /// A qemu-io holding the image (as a running QEMU would) locks us out, and we lock out
    /// qemu-img; `locking=off` / -U bypasses.
    func testLocksInteroperateWithQemu() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("l.qcow2")
        try Qemu.img("create", "-q", "-f", "qcow2", image, "1M")
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: Qemu.ioPath ?? "qemu-io")
        holder.arguments = ["-f", "qcow2", image]
        let input = Pipe()
        holder.standardInput = input
        holder.standardOutput = Pipe()
        try holder.run()
        usleep(500_000)
        XCTAssertThrowsError(try openImage(image, .qcow2, readOnly: false)) { error in
            guard case .locked = error as? BlockError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try openImage(image, .qcow2, readOnly: true)) { error in
            XCTAssertTrue("\(error)".contains("shared \"write\" lock"), "\(error)")
        }
        let unlocked = try BlockBackend(path: image, options: BlockOpenOptions(format: .qcow2, readOnly: true, locking: false))
        try unlocked.close()
        try input.fileHandleForWriting.close()
        holder.waitUntilExit()

        let ours = try openImage(image, .qcow2, readOnly: false)
        let refused = try Qemu.run(Qemu.imgPath ?? "qemu-img", ["info", image], expect: [1])
        XCTAssertTrue(refused.output.contains("lock"), refused.output)
        try Qemu.run(Qemu.imgPath ?? "qemu-img", ["info", "-U", image])
        try ours.close()
        try Qemu.img("info", image)
    }
}
