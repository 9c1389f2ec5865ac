import Foundation
import XCTest

/// What the display boot tests share: loud skips, waiting on a guest's log file, screendumps,
/// and the same guest under QEMU for a side-by-side picture.
enum DisplayComparison {
    static let qemuBinary = "/usr/bin/qemu-system-x86_64"

    static var qemuInstalled: Bool { FileManager.default.isExecutableFile(atPath: qemuBinary) }

    /// Prints `message` as a loud SKIPPED line and returns the skip to throw.
    static func skip(_ message: String) -> XCTSkip {
        FileHandle.standardError.write(Data(("\n*** SKIPPED: " + message + " ***\n").utf8))
        return XCTSkip("SKIPPED: " + message)
    }

    /// Skips unless the Debian seabios package's VGA BIOS `path` is there.
    static func requireVGABIOS(_ path: String, for test: String) throws {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw skip("\(path) is missing (apt-get install seabios); the \(test) cannot run")
        }
    }

    /// A log file's text so far; guests print raw bytes now and then, so decode leniently.
    static func text(of log: String) -> String {
        String(decoding: FileManager.default.contents(atPath: log) ?? Data(), as: UTF8.self)
    }

    /// Waits until `log` contains `marker`; false on timeout.
    static func wait(for marker: String, in log: String, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if text(of: log).contains(marker) { return true }
            usleep(100_000)
        }
        return false
    }
}

extension QMPTestClient {
    /// Asks for a screendump into `path` and reads it back.
    func screendump(to path: String) throws -> VGABootTests.Picture {
        let reply = try execute("screendump", ["filename": path])
        guard reply["return"] != nil else { throw QMPTestClient.Failure("screendump: \(reply)") }
        return try VGABootTests.Picture(ppm: Data(contentsOf: URL(fileURLWithPath: path)))
    }
}

/// qemu-system-x86_64 under TCG (its KVM mode does not get through SeaBIOS on this nested KVM)
/// with the test's own arguments and a QMP socket; `stop()` it when done.
final class QEMUProcess {
    let process = Process()
    let socket: String

    init(_ arguments: [String], socket: String) throws {
        self.socket = socket
        process.executableURL = URL(fileURLWithPath: DisplayComparison.qemuBinary)
        process.arguments = ["-accel", "tcg"] + arguments + ["-qmp", "unix:\(socket),server=on,wait=off"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    func client() throws -> QMPTestClient { try QMPTestClient(path: socket) }

    func stop() {
        if process.isRunning { process.terminate(); process.waitUntilExit() }
    }
}

extension VGABootTests.Picture {
    /// The pixel at (x, y) as 0xRRGGBB.
    subscript(x: Int, y: Int) -> UInt32 {
        let at = (y * width + x) * 3
        return UInt32(rgb[at]) << 16 | UInt32(rgb[at + 1]) << 8 | UInt32(rgb[at + 2])
    }
}
