import Backends
import Foundation
import XCTest

/// swiftdm-img create/convert/resize/check/info, verified by the real qemu-img.
final class ToolTests: XCTestCase {
    @discardableResult
    func tool(_ arguments: String..., expect: Set<Int32> = [0], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        try Qemu.run(try Tool.require(), arguments, expect: expect, file: file, line: line).output
    }

    func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func testCreateMatchesQemuInfoAndChecksClean() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        try Qemu.img("create", "-q", "-f", "raw", dir.file("base.raw"), "8M")
        let cases: [(String, [String])] = [
            ("v3.qcow2", ["-o", "cluster_size=65536"]),
            ("v2.qcow2", ["-o", "compat=0.10,cluster_size=4096"]),
            ("lazy.qcow2", ["-o", "lazy_refcounts=on,refcount_bits=8"]),
            ("overlay.qcow2", ["-b", "base.raw", "-F", "raw"]),
            ("tiny.qcow2", ["-o", "cluster_size=512"]),
        ]
        for (name, options) in cases {
            let image = dir.file(name)
            let size = name == "overlay.qcow2" ? [] : ["100M"]
            try Qemu.run(try Tool.require(), ["create", "-q", "-f", "qcow2"] + options + [image] + size)
            try Qemu.assertClean(image)
            let theirs = try json(try Qemu.img("info", "--output=json", image))
            let ours = try json(try tool("info", "--output=json", image))
            for key in ["virtual-size", "cluster-size", "format", "backing-filename", "backing-filename-format", "dirty-flag"] {
                XCTAssertEqual("\(theirs[key] ?? "-")", "\(ours[key] ?? "-")", "\(name): \(key)")
            }
            let theirData = ((theirs["format-specific"] as? [String: Any])?["data"] as? [String: Any]) ?? [:]
            let ourData = ((ours["format-specific"] as? [String: Any])?["data"] as? [String: Any]) ?? [:]
            for key in ["compat", "lazy-refcounts", "refcount-bits"] {
                XCTAssertEqual("\(theirData[key] ?? "-")", "\(ourData[key] ?? "-")", "\(name): \(key)")
            }
            // qemu-io can write to it, and it stays clean.
            try Qemu.io(image, format: "qcow2", ["write -P 7 0 3M", "write -z 1M 64k"])
            try Qemu.assertClean(image)
        }
    }

    func testConvertQemuImagesBothWays() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let base = dir.file("base.qcow2"), top = dir.file("top.qcow2"), source = dir.file("src.raw"), compressed = dir.file("c.qcow2")
        var random = TestRandom(state: 5)
        var data = random.bytes(6 << 20) + [UInt8](repeating: 0, count: 4 << 20)
        for i in (7 << 20)..<(8 << 20) { data[i] = UInt8(i % 13) }
        FileManager.default.createFile(atPath: source, contents: Data(data))
        try Qemu.img("convert", "-c", "-f", "raw", "-O", "qcow2", source, compressed)
        try Qemu.img("convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", source, base)
        try Qemu.img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
        try Qemu.io(top, format: "qcow2", ["write -P 0x33 1M 300k", "write -z 5M 1M", "discard 7M 1M"])
        for (input, format) in [(source, "raw"), (compressed, "qcow2"), (top, "qcow2")] {
            for (output, compat) in [("raw", ""), ("qcow2", "compat=1.1"), ("qcow2", "compat=0.10,cluster_size=4096")] {
                let out = dir.file("out.\(output)")
                var arguments = ["convert", "-p", "-f", format, "-O", output]
                if !compat.isEmpty { arguments += ["-o", compat] }
                try Qemu.run(try Tool.require(), arguments + [input, out])
                if output == "qcow2" { try Qemu.assertClean(out) }
                try Qemu.assertIdentical(input, format, out, output)
            }
        }
    }

    func testResizeGrowsAndQemuAgrees() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("r.qcow2"), raw = dir.file("r.raw")
        try tool("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", image, "1M")
        try Qemu.io(image, format: "qcow2", ["write -P 9 0 1M"])
        // 512-byte clusters: 1 MiB needs 32 L1 entries, 64 MiB needs 2048, so the L1 table moves.
        XCTAssertTrue(try tool("resize", "-f", "qcow2", image, "+63M").contains("Image resized"))
        try Qemu.assertClean(image)
        XCTAssertTrue(try Qemu.img("info", image).contains("64 MiB"))
        try Qemu.io(image, format: "qcow2", ["write -P 10 63M 1M", "read -P 9 0 1M", "read -P 10 63M 1M"])
        try Qemu.assertClean(image)
        try tool("resize", "-f", "qcow2", image, "32M", expect: [1])   // shrink needs --shrink (and is refused)
        try tool("create", "-q", "-f", "raw", raw, "1M")
        try tool("resize", "-f", "raw", raw, "5M")
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: raw)[.size] as? Int, 5 << 20)
    }

    /// Refcounts patched too high (a leak) and too low (corruption): check finds them, -r
    /// repairs them, and qemu-img agrees afterwards.
    func testCheckRepairsLeaksAndRefcountErrors() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("c.qcow2")
        try Qemu.img("create", "-q", "-f", "qcow2", image, "4M")
        try Qemu.io(image, format: "qcow2", ["write -P 1 0 256k"])
        // Refcount block at 0x20000, 16-bit entries; cluster 0 is the header (a data cluster
        // would also break its copied flag, which qemu-img reports as corruption).
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: image))
        try handle.seek(toOffset: 0x20000)
        handle.write(Data([0, 2]))
        try handle.close()
        XCTAssertTrue(try tool("check", "-f", "qcow2", image, expect: [3]).contains("Leaked cluster 0 refcount=2 reference=1"))
        try Qemu.img("check", image, expect: [3])
        try tool("check", "-r", "leaks", "-f", "qcow2", image)
        try Qemu.assertClean(image)

        let patch = try XCTUnwrap(FileHandle(forUpdatingAtPath: image))
        try patch.seek(toOffset: 0x20000 + 6 * 2)
        patch.write(Data([0, 0]))
        try patch.close()
        XCTAssertTrue(try tool("check", "-f", "qcow2", image, expect: [2]).contains("ERROR cluster 6 refcount=0 reference=1"))
        try Qemu.img("check", image, expect: [2])
        try tool("check", "-r", "all", "-f", "qcow2", image)
        try Qemu.assertClean(image)
        try Qemu.io(image, format: "qcow2", ["read -P 1 0 256k"])
    }

    func testBenchRuns() throws {
        try Qemu.require()
        let dir = TemporaryDirectory()
        let image = dir.file("b.qcow2")
        try tool("create", "-q", "-f", "qcow2", image, "64M")
        XCTAssertTrue(try tool("bench", "-f", "qcow2", "-w", "-c", "2000", "-d", "8", "-s", "4096", "-S", "1M", "--pattern=7", image).contains("Run completed"))
        try Qemu.assertClean(image)
        try Qemu.io(image, format: "qcow2", ["read -P 7 0 4k", "read -P 7 1M 4k"])
        XCTAssertTrue(try tool("bench", "-f", "qcow2", "-c", "2000", "-d", "8", image).contains("Run completed"))
    }
}
