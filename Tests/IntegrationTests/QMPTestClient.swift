import CMonitor
import Foundation
import XCTest

/// A raw QMP client for tests: unix socket, bounded waits, SCM_RIGHTS, and a check that every
/// message the server sends ends in "\r\n" (libxl rejects anything else).
final class QMPTestClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    let fd: Int32
    private var buffer: [UInt8] = []
    /// Events seen while waiting for replies, in order.
    private(set) var events: [[String: Any]] = []
    private var nextID = 1

    /// Connects to `path`, waiting up to `timeout` for the socket to appear (the VM starting).
    init(path: String, timeout: TimeInterval = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let candidate = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard candidate >= 0 else { throw Failure("socket: \(errno)") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes + [0]) }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(candidate, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 {
                fd = candidate
                break
            }
            close(candidate)
            if Date() > deadline { throw Failure("connect \(path): errno \(errno)") }
            usleep(20_000)
        }
        setTimeout(10)
    }

    deinit { close(fd) }

    /// Ends the conversation (the server serves one client per socket at a time).
    func hangUp() { shutdown(fd, Int32(SHUT_RDWR)) }

    func setTimeout(_ seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    static let trace = ProcessInfo.processInfo.environment["QMP_TRACE"] != nil

    func send(_ bytes: [UInt8], passing passFD: Int32? = nil) throws {
        if Self.trace { print(">> \(String(decoding: bytes.prefix(200), as: UTF8.self))") }
        var done = 0
        if let passFD {
            // As libxl: the descriptor rides on the first byte of the command.
            var one = [passFD]
            let n = bytes.withUnsafeBytes { sdm_send_with_fds(fd, $0.baseAddress, 1, &one, 1) }
            guard n == 1 else { throw Failure("sendmsg SCM_RIGHTS: errno \(errno)") }
            done = 1
        }
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure("send: errno \(errno)") }
            done += n
        }
    }

    /// One message as text (without its "\r\n"), or nil at end of file.
    func readLine() throws -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeFirst(newline + 1)
                if Self.trace { print("<< \(String(decoding: line.prefix(200), as: UTF8.self))") }
                guard line.last == 0x0D else { throw Failure("message not ended by \\r\\n: \(String(decoding: line, as: UTF8.self))") }
                return String(decoding: line.dropLast(), as: UTF8.self)
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            guard n > 0 else { throw Failure("recv: errno \(errno) (timeout?)") }
            buffer += chunk[0..<n]
        }
    }

    func readMessage() throws -> [String: Any] {
        guard let line = try readLine() else { throw Failure("connection closed") }
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw Failure("not a JSON object: \(line)")
        }
        return object
    }

    /// The next message that is not an event (events are kept in `events`).
    func readReply() throws -> [String: Any] {
        while true {
            let message = try readMessage()
            if message["event"] != nil {
                events.append(message)
                continue
            }
            return message
        }
    }

    @discardableResult
    func greeting() throws -> [String: Any] {
        let message = try readMessage()
        guard message["QMP"] != nil else { throw Failure("no greeting: \(message)") }
        return message
    }

    func negotiate() throws {
        try greeting()
        let reply = try execute("qmp_capabilities")
        guard reply["return"] != nil else { throw Failure("negotiation failed: \(reply)") }
    }

    /// Sends a command with a fresh integer id; returns the reply (checked to carry that id).
    @discardableResult
    func execute(_ name: String, _ arguments: [String: Any]? = nil, passing passFD: Int32? = nil) throws -> [String: Any] {
        let id = nextID
        nextID += 1
        var command: [String: Any] = ["execute": name, "id": id]
        if let arguments { command["arguments"] = arguments }
        let data = try JSONSerialization.data(withJSONObject: command)
        try send(Array(data) + [0x0D, 0x0A], passing: passFD)
        let reply = try readReply()
        guard (reply["id"] as? Int) == id else { throw Failure("reply to \(name) has id \(reply["id"] ?? "none"), sent \(id)") }
        return reply
    }

    func waitForEvent(_ name: String) throws -> [String: Any] {
        if let index = events.firstIndex(where: { $0["event"] as? String == name }) { return events.remove(at: index) }
        while true {
            let message = try readMessage()
            if message["event"] as? String == name { return message }
            if message["event"] != nil { events.append(message) }
        }
    }

    static func errorClass(_ reply: [String: Any]) -> String? { (reply["error"] as? [String: Any])?["class"] as? String }
    static func errorDesc(_ reply: [String: Any]) -> String { (reply["error"] as? [String: Any])?["desc"] as? String ?? "" }
}

/// A swiftdm process with QMP sockets in a private directory, stdout/stderr to files.
final class QMPVM {
    let directory: URL
    let process = Process()
    var socketPath: String { directory.appendingPathComponent("qmp.sock").path }

    static let guestArguments = ["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "null"]

    /// `arguments` may mention `$QMP` (the socket path) and `$DIR`. With `shellPrefix`, the
    /// binary runs under `/bin/sh -c 'exec swiftdm ... <shellRedirections>'`, so a test can
    /// hand it descriptors (`-incoming fd:3` with `3<file`).
    init(_ arguments: [String], qmp: Bool = true, shellRedirections: String? = nil) throws {
        directory = URL(fileURLWithPath: "/tmp").appendingPathComponent("swiftdm-qmp-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var args = arguments.map { $0.replacingOccurrences(of: "$QMP", with: directory.appendingPathComponent("qmp.sock").path)
                                      .replacingOccurrences(of: "$DIR", with: directory.path) }
        if qmp { args += ["-qmp", "unix:\(socketPath),server=on,wait=off"] }
        if let shellRedirections {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "exec \"$0\" \"$@\" \(shellRedirections)", VMProcess.binary.path] + args
        } else {
            process.executableURL = VMProcess.binary
            process.arguments = args
        }
        process.standardInput = FileHandle.nullDevice
        FileManager.default.createFile(atPath: directory.appendingPathComponent("stdout").path, contents: nil)
        FileManager.default.createFile(atPath: directory.appendingPathComponent("stderr").path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: directory.appendingPathComponent("stdout"))
        process.standardError = try FileHandle(forWritingTo: directory.appendingPathComponent("stderr"))
        try process.run()
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    var stderr: String { (try? String(contentsOf: directory.appendingPathComponent("stderr"), encoding: .utf8)) ?? "" }

    func client(_ path: String? = nil) throws -> QMPTestClient { try QMPTestClient(path: path ?? socketPath) }

    /// libxl's save: `stop`, `xen-save-devices-state` into this VM's directory, `quit`; returns
    /// the saved stream once the process exited 0.
    func saveStateAndQuit(_ client: QMPTestClient, file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        let path = directory.appendingPathComponent("saved.bin").path
        XCTAssertNotNil(try client.execute("stop")["return"], file: file, line: line)
        XCTAssertNotNil(try client.execute("xen-save-devices-state", ["filename": path])["return"], file: file, line: line)
        XCTAssertNotNil(try client.execute("quit")["return"], file: file, line: line)
        XCTAssertEqual(waitForExit(), 0, file: file, line: line)
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }

    func waitForExit(timeout: TimeInterval = 20) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }
}
