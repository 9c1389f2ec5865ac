import Foundation
import XCTest

/// Runs the external tools the tests check against (vncdotool, vncsnapshot, python, qemu-img),
/// shared by the test targets that drive them.
public enum ExternalTool {
    /// The Python virtualenv scripts/setup-debian.sh makes (vncdotool, PIL).
    public static let venv = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build-venv/bin")

    /// Skips the test loudly unless `what` is installed at `path`.
    public static func require(_ path: String, _ what: String) throws {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            let message = "SKIPPED: \(what) is not installed at \(path); run scripts/setup-debian.sh"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message)
        }
    }

    /// Runs `executable` with stdout and stderr together; kills it after `timeout` seconds.
    /// Returns its exit status and output.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], timeout: TimeInterval = 30) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Drained while the tool runs, so a chatty one does not block on a full pipe.
        let collected = Collected()
        let reader = output.fileHandleForReading
        let drained = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            collected.data = reader.readDataToEndOfFile()
            drained.signal()
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            process.terminate()
        }
        process.waitUntilExit()
        drained.wait()
        return (process.terminationStatus, String(decoding: collected.data, as: UTF8.self))
    }

    private final class Collected: @unchecked Sendable {
        var data = Data()
    }
}
