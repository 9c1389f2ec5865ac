import Backends
import Foundation
import TestTools
import XCTest

/// Helpers for tests that drive the real qemu-img / qemu-io on temporary files.
enum Qemu {
    static let imgPath = ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let ioPath = ["/usr/bin/qemu-io", "/usr/local/bin/qemu-io"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Skips the test loudly when qemu-img is missing.
    static func require(file: StaticString = #filePath, line: UInt = #line) throws {
        guard imgPath != nil, ioPath != nil else {
            let message = "SKIPPED: qemu-img/qemu-io not installed (apt-get install -y qemu-utils); interop with QEMU NOT tested"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message, file: file, line: line)
        }
    }

    @discardableResult
    static func run(_ tool: String, _ arguments: [String], expect: Set<Int32> = [0],
                    file: StaticString = #filePath, line: UInt = #line) throws -> (status: Int32, output: String) {
        let (status, output) = try ExternalTool.run(tool, arguments, timeout: 600)
        if !expect.contains(status) {
            XCTFail("\(tool) \(arguments.joined(separator: " ")) exited \(status):\n\(output)", file: file, line: line)
        }
        return (status, output)
    }

    @discardableResult
    static func img(_ arguments: String..., expect: Set<Int32> = [0], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        try run(imgPath ?? "qemu-img", arguments, expect: expect, file: file, line: line).output
    }

    static func io(_ image: String, format: String, _ commands: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        try run(ioPath ?? "qemu-io", ["-f", format] + commands.flatMap { ["-c", $0] } + [image], file: file, line: line)
    }

    /// `qemu-img check` must find no corruption (leaks allowed when `allowLeaks`).
    static func assertClean(_ image: String, allowLeaks: Bool = false, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, output) = try run(imgPath ?? "qemu-img", ["check", "-f", "qcow2", image], expect: allowLeaks ? [0, 3] : [0], file: file, line: line)
        if status != 0 && !(allowLeaks && status == 3) { XCTFail("check output:\n\(output)", file: file, line: line) }
    }

    static func assertIdentical(_ a: String, _ formatA: String, _ b: String, _ formatB: String,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let output = try img("compare", "-f", formatA, "-F", formatB, a, b, file: file, line: line)
        XCTAssertTrue(output.contains("Images are identical"), output, file: file, line: line)
    }
}

/// A fresh temporary directory per test, removed afterwards.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "blocktests-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// The swiftdm-img executable next to the test bundle (SwiftPM builds it with the tests).
enum Tool {
    static var path: String? {
        let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [bundleDirectory.appendingPathComponent("swiftdm-img").path,
                          Bundle.main.bundleURL.appendingPathComponent("swiftdm-img").path] +
            (ProcessInfo.processInfo.environment["SWIFTDM_IMG"].map { [$0] } ?? [])
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func require(file: StaticString = #filePath, line: UInt = #line) throws -> String {
        guard let path else {
            let message = "SKIPPED: swiftdm-img not built next to the tests (swift build --product swiftdm-img, or set SWIFTDM_IMG)"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message, file: file, line: line)
        }
        return path
    }
}

/// Deterministic pseudo-random bytes.
struct TestRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

func readAll(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

func openImage(_ path: String, _ format: BlockFormat, readOnly: Bool = true, cache: CacheMode = .writeback) throws -> BlockBackend {
    try BlockBackend(path: path, options: BlockOpenOptions(format: format, readOnly: readOnly, cache: cache))
}

/// Reads the whole device through the block layer.
func readDevice(_ backend: BlockBackend) throws -> [UInt8] {
    try backend.read(at: 0, count: Int(backend.size))
}
