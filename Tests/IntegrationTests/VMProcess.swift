import Foundation
import XCTest

/// Runs the real `swiftdm` binary as a child process, the way a user or libxl does, and
/// collects what it prints. Every wait is bounded, and the child is killed on the way out.
final class VMProcess: @unchecked Sendable {
    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The swiftdm binary next to the test bundle (SwiftPM builds it for this test target),
    /// or $SWIFTDM.
    static var binary: URL {
        if let path = ProcessInfo.processInfo.environment["SWIFTDM"] { return URL(fileURLWithPath: path) }
        // On Linux the bundle URL is the build directory itself or the .xctest inside it.
        let bundle = Bundle(for: VMProcess.self).bundleURL
        let candidates = [bundle.appendingPathComponent("swiftdm"),
                          bundle.deletingLastPathComponent().appendingPathComponent("swiftdm")]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[0]
    }

    /// The KVM device to probe; SWIFTDM_KVM_DEVICE points elsewhere to check the skip path.
    static let kvmDevice = ProcessInfo.processInfo.environment["SWIFTDM_KVM_DEVICE"] ?? "/dev/kvm"

    static func requireKVM() throws {
        guard FileManager.default.fileExists(atPath: kvmDevice),
              FileManager.default.isReadableFile(atPath: kvmDevice),
              FileManager.default.isWritableFile(atPath: kvmDevice) else {
            let message = "SKIPPED: \(kvmDevice) is not available; KVM integration tests cannot run on this machine"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message)
        }
    }

    /// Builds the test guests (gcc) once per test run.
    static let guestsBuilt: Result<URL, Error> = {
        let guests = repositoryRoot.appendingPathComponent("guests")
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/usr/bin/make")
        make.arguments = ["-s", "-C", guests.path]
        do {
            try make.run()
            make.waitUntilExit()
            guard make.terminationStatus == 0 else {
                return .failure(NSError(domain: "guests", code: Int(make.terminationStatus),
                                        userInfo: [NSLocalizedDescriptionKey: "make -C guests failed"]))
            }
            return .success(guests.appendingPathComponent("build"))
        } catch {
            return .failure(error)
        }
    }()

    let process = Process()
    private let stdoutPipe = Pipe()
    private let stderrPipe = Pipe()
    private let lock = NSLock()
    private var out = Data()
    private var err = Data()

    init(_ arguments: [String]) throws {
        process.executableURL = Self.binary
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        stdoutPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let chunk = handle.availableData
            self?.lock.withLock { self?.out.append(chunk) }
        }
        stderrPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let chunk = handle.availableData
            self?.lock.withLock { self?.err.append(chunk) }
        }
        try process.run()
    }

    deinit {
        if process.isRunning { process.terminate() }
        stdoutPipe.fileHandleForReading.readabilityHandler = nil
        stderrPipe.fileHandleForReading.readabilityHandler = nil
    }

    var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
    var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }

    /// Waits until stdout contains `text`; returns the seconds it took, or nil on timeout.
    @discardableResult
    func waitForOutput(_ text: String, timeout: TimeInterval) -> TimeInterval? {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if stdout.contains(text) { return Date().timeIntervalSince(start) }
            if !process.isRunning { return stdout.contains(text) ? Date().timeIntervalSince(start) : nil }
            usleep(20_000)
        }
        return nil
    }

    /// Waits for the process to exit; returns its status, or nil (and kills it) on timeout.
    func waitForExit(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return nil
        }
        usleep(50_000)  // let the pipes drain
        return process.terminationStatus
    }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Checks that `arguments` are refused with exit status 1 and one line on stderr containing
    /// `expected`.
    static func expectOneLineError(_ arguments: [String], _ expected: String,
                                   file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, _, err) = try run(arguments, timeout: 30)
        XCTAssertEqual(status, 1, "\(arguments): \(err)", file: file, line: line)
        XCTAssertTrue(err.contains(expected), "\(arguments): expected '\(expected)' in: \(err)", file: file, line: line)
        XCTAssertEqual(err.split(separator: "\n").count, 1, "one line: \(err)", file: file, line: line)
    }

    /// Checks that `arguments` start a machine that is still running half a second later and
    /// stops cleanly on SIGTERM.
    static func expectStartsAndStops(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let vm = try VMProcess(arguments)
        usleep(500_000)
        XCTAssertTrue(vm.process.isRunning, vm.stderr, file: file, line: line)
        vm.signal(SIGTERM)
        XCTAssertEqual(vm.waitForExit(timeout: 10), 0, file: file, line: line)
    }

    /// Runs to completion: (status, stdout, stderr).
    static func run(_ arguments: [String], timeout: TimeInterval = 30) throws -> (Int32?, String, String) {
        let vm = try VMProcess(arguments)
        let status = vm.waitForExit(timeout: timeout)
        return (status, vm.stdout, vm.stderr)
    }
}
