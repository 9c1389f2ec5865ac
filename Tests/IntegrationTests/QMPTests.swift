import Foundation
import XCTest

/// The QMP monitor on a running swiftdm (KVM, SeaBIOS): lifecycle with events, fd passing,
/// QEMU's own Python client, hostile clients, the socket file's life, -incoming.
final class QMPTests: XCTestCase {
    typealias Client = QMPTestClient

    /// After whatever a test did to the monitor: the VM still answers a fresh client.
    func assertAlive(_ vm: QMPVM, file: StaticString = #filePath, line: UInt = #line) throws {
        let client = try vm.client()
        try client.negotiate()
        let reply = try client.execute("query-status")
        XCTAssertNotNil((reply["return"] as? [String: Any])?["status"], "query-status after: \(reply)", file: file, line: line)
        XCTAssertTrue(vm.process.isRunning, "the VM is still running", file: file, line: line)
    }

    /// An event's `reason`, having checked it came from the host (`guest: false`).
    static func reason(_ event: [String: Any]) -> String? {
        let data = event["data"] as? [String: Any]
        guard data?["guest"] as? Bool == false else { return nil }
        return data?["reason"] as? String
    }

    func status(_ client: Client) throws -> String {
        (try client.execute("query-status")["return"] as? [String: Any])?["status"] as? String ?? "?"
    }

    func testLifecycleAndEventsOverRawQMP() throws {
        try VMProcess.requireKVM()
        let vm = try QMPVM(QMPVM.guestArguments + ["-S", "-name", "guest-one", "-uuid", "12345678-9abc-def0-1234-56789ABCDEF0"])
        let client = try vm.client()
        let greeting = try client.greeting()
        let version = (greeting["QMP"] as? [String: Any])?["version"] as? [String: Any]
        XCTAssertEqual((version?["qemu"] as? [String: Any])?["major"] as? Int, 7)
        XCTAssertEqual(((greeting["QMP"] as? [String: Any])?["capabilities"] as? [Any])?.count, 0, "no OOB on offer")
        let first = try client.execute("query-status")
        XCTAssertEqual(Client.errorClass(first), "CommandNotFound", "commands before qmp_capabilities")
        XCTAssertEqual(Client.errorDesc(first), "Expecting capabilities negotiation with 'qmp_capabilities'")
        XCTAssertNotNil(try client.execute("qmp_capabilities")["return"])
        XCTAssertEqual(Client.errorClass(try client.execute("qmp_capabilities")), "CommandNotFound")

        XCTAssertEqual(try status(client), "prelaunch")
        XCTAssertNotNil(try client.execute("cont")["return"])
        XCTAssertNotNil(try client.waitForEvent("RESUME")["timestamp"])
        XCTAssertEqual(try status(client), "running")
        XCTAssertNotNil(try client.execute("stop")["return"])
        _ = try client.waitForEvent("STOP")
        XCTAssertEqual(try status(client), "paused")
        XCTAssertNotNil(try client.execute("cont")["return"])
        _ = try client.waitForEvent("RESUME")
        XCTAssertNotNil(try client.execute("system_reset")["return"])
        let reset = try client.waitForEvent("RESET")
        XCTAssertEqual(Self.reason(reset), "host-qmp-system-reset")
        XCTAssertEqual(try status(client), "running")
        XCTAssertNotNil(try client.execute("system_powerdown")["return"])
        _ = try client.waitForEvent("POWERDOWN")

        XCTAssertEqual((try client.execute("query-name")["return"] as? [String: Any])?["name"] as? String, "guest-one")
        XCTAssertEqual((try client.execute("query-uuid")["return"] as? [String: Any])?["UUID"] as? String,
                       "12345678-9abc-def0-1234-56789abcdef0")
        let cpus = try client.execute("query-cpus-fast")["return"] as? [[String: Any]] ?? []
        XCTAssertEqual(cpus.first?["cpu-index"] as? Int, 0)
        XCTAssertGreaterThan(cpus.first?["thread-id"] as? Int ?? 0, 0, "a real vCPU thread id")
        let pci = (try client.execute("query-pci")["return"] as? [[String: Any]])?.first?["devices"] as? [[String: Any]] ?? []
        let deviceIDs = Set(pci.compactMap { ($0["id"] as? [String: Any])?["device"] as? Int })
        XCTAssertTrue(deviceIDs.isSuperset(of: [0x1237, 0x7000, 0x7113]), "query-pci: \(deviceIDs)")
        XCTAssertEqual((try client.execute("query-block")["return"] as? [Any])?.count, 0)
        XCTAssertEqual((try client.execute("query-vnc")["return"] as? [String: Any])?["enabled"] as? Bool, false)
        XCTAssertEqual(Client.errorDesc(try client.execute("change-vnc-password", ["password": "x"])), "Could not set password")
        let commands = try client.execute("query-commands")["return"] as? [[String: Any]] ?? []
        for name in ["qmp_capabilities", "query-status", "xen-save-devices-state", "add-fd", "human-monitor-command"] {
            XCTAssertTrue(commands.contains { $0["name"] as? String == name }, "query-commands lists \(name)")
        }
        let schema = try client.execute("query-qmp-schema")["return"] as? [[String: Any]] ?? []
        XCTAssertTrue(schema.contains { $0["name"] as? String == "eject" && $0["meta-type"] as? String == "command" })
        let hmp = try client.execute("human-monitor-command", ["command-line": "info status"])["return"] as? String
        XCTAssertEqual(hmp, "VM status: running\r\n")
        let version2 = try client.execute("human-monitor-command", ["command-line": "info version"])["return"] as? String
        XCTAssertEqual(version2, "7.2.0SwiftDM 0.1.0\r\n")
        XCTAssertNotNil(try client.execute("stop")["return"])
        let registers = try client.execute("human-monitor-command", ["command-line": "info registers"])["return"] as? String
        XCTAssertTrue(registers?.contains("RIP=") == true, registers ?? "")

        // The socket file: ours, mode 0600, gone after quit.
        var info = stat()
        XCTAssertEqual(lstat(vm.socketPath, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
        XCTAssertNotNil(try client.execute("quit")["return"])
        let shutdown = try client.waitForEvent("SHUTDOWN")
        XCTAssertEqual(Self.reason(shutdown), "host-qmp-quit")
        XCTAssertNil(try client.readLine(), "the connection closes after quit")
        XCTAssertEqual(vm.waitForExit(), 0)
        XCTAssertNotEqual(lstat(vm.socketPath, &info), 0, "socket file removed at exit")
    }

    func testQEMUsPythonClientDrivesTheVM() throws {
        try VMProcess.requireKVM()
        let python = VMProcess.repositoryRoot.appendingPathComponent(".build-venv/bin/python3")
        guard FileManager.default.isExecutableFile(atPath: python.path) else {
            XCTFail("qemu.qmp is not installed: run scripts/setup-debian.sh (it creates .build-venv with pip install qemu.qmp)")
            return
        }
        let vm = try QMPVM(QMPVM.guestArguments + ["-S"])
        _ = try vm.client()  // waits for the socket; this client just holds the slot briefly
            .greeting()
        let script = Process()
        script.executableURL = python
        script.arguments = [VMProcess.repositoryRoot.appendingPathComponent("tests/qmp/lifecycle.py").path, vm.socketPath,
                            vm.directory.path]
        let output = Pipe()
        script.standardOutput = output
        script.standardError = output
        try script.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        script.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        print(text)
        XCTAssertEqual(script.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("PASS"), text)
        XCTAssertEqual(vm.waitForExit(), 0, vm.stderr)
    }

    func testFDPassingAddFDAndSaveToFdset() throws {
        try VMProcess.requireKVM()
        let vm = try QMPVM(QMPVM.guestArguments)
        let client = try vm.client()
        try client.negotiate()
        let path = vm.directory.appendingPathComponent("state.bin").path
        let saveFD = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(saveFD, 0)
        XCTAssertNotNil(try client.execute("stop")["return"])
        let added = try client.execute("add-fd", ["opaque": "save"], passing: saveFD)["return"] as? [String: Any]
        close(saveFD)
        let setID = try XCTUnwrap(added?["fdset-id"] as? Int)
        let sets = try client.execute("query-fdsets")["return"] as? [[String: Any]] ?? []
        XCTAssertEqual(sets.first?["fdset-id"] as? Int, setID)
        // A read-only open of a write-only member fails as in QEMU (access modes must match).
        XCTAssertEqual(Client.errorClass(try client.execute("xen-load-devices-state", ["filename": "/dev/fdset/\(setID)"])),
                       "GenericError")
        XCTAssertNotNil(try client.execute("xen-save-devices-state", ["filename": "/dev/fdset/\(setID)", "live": false])["return"])
        let saved = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertTrue(saved.starts(with: Data("SWIFTDM-DEVSTATE".utf8)), "device state written through the passed fd")
        // Loading it back into the same machine works (from a plain path).
        XCTAssertNotNil(try client.execute("xen-load-devices-state", ["filename": path])["return"])
        XCTAssertEqual(Client.errorClass(try client.execute("xen-save-devices-state", ["filename": "/dev/fdset/99"])), "GenericError")
        XCTAssertNotNil(try client.execute("remove-fd", ["fdset-id": setID])["return"])
        XCTAssertEqual(Client.errorDesc(try client.execute("remove-fd", ["fdset-id": 42])),
                       "File descriptor named 'fdset-id:42' not found")
        client.hangUp()
        try assertAlive(vm)
    }

    func testIncomingFDLoadsStateAndReportsPaused() throws {
        try VMProcess.requireKVM()
        let source = try QMPVM(QMPVM.guestArguments)
        let client = try source.client()
        try client.negotiate()
        let saved = try source.saveStateAndQuit(client)

        let copy = "/tmp/swiftdm-incoming-\(getpid()).bin"
        try saved.write(to: URL(fileURLWithPath: copy))
        defer { unlink(copy) }
        let target = try QMPVM(QMPVM.guestArguments + ["-incoming", "fd:3"], shellRedirections: "3<\(copy)")
        let second = try target.client()
        try second.negotiate()
        XCTAssertEqual(try status(second), "paused", target.stderr)
        XCTAssertNotNil(try second.execute("cont")["return"])
        XCTAssertEqual(try status(second), "running")

        let deferred = try QMPVM(QMPVM.guestArguments + ["-incoming", "defer"])
        let third = try deferred.client()
        try third.negotiate()
        XCTAssertEqual(try status(third), "inmigrate")

        // A corrupt stream is refused with one line and status 1.
        let garbage = "/tmp/swiftdm-incoming-bad-\(getpid()).bin"
        try Data("not a device state".utf8).write(to: URL(fileURLWithPath: garbage))
        defer { unlink(garbage) }
        let bad = try QMPVM(QMPVM.guestArguments + ["-incoming", "fd:3"], qmp: false, shellRedirections: "3<\(garbage)")
        XCTAssertEqual(bad.waitForExit(), 1)
        XCTAssertTrue(bad.stderr.contains("-incoming fd:3"), bad.stderr)
    }

    /// libxl's shape: two -mon sockets from -chardev; events reach every negotiated client.
    func testTwoMonitorsBothGetEventsAndOneClientAtATime() throws {
        try VMProcess.requireKVM()
        let vm = try QMPVM(QMPVM.guestArguments + [
            "-chardev", "socket,id=libxl-cmd,path=$DIR/libxl.sock,server=on,wait=off", "-mon", "chardev=libxl-cmd,mode=control",
            "-chardev", "socket,id=libxenstat-cmd,path=$DIR/stat.sock,server=on,wait=off", "-mon", "chardev=libxenstat-cmd,mode=control",
        ], qmp: false)
        let libxl = try vm.client(vm.directory.appendingPathComponent("libxl.sock").path)
        let stat = try vm.client(vm.directory.appendingPathComponent("stat.sock").path)
        try libxl.negotiate()
        try stat.negotiate()
        let chardevs = try libxl.execute("query-chardev")["return"] as? [[String: Any]] ?? []
        XCTAssertEqual(Set(chardevs.compactMap { $0["label"] as? String }), ["libxenstat-cmd", "libxl-cmd", "serial0"])
        XCTAssertTrue(chardevs.contains { ($0["filename"] as? String)?.hasPrefix("unix:") == true && $0["label"] as? String == "libxl-cmd" })
        XCTAssertNotNil(try libxl.execute("stop")["return"])
        _ = try libxl.waitForEvent("STOP")
        _ = try stat.waitForEvent("STOP")

        // A second client on the same socket waits (no greeting) until the first leaves.
        let waiting = try vm.client(vm.directory.appendingPathComponent("libxl.sock").path)
        waiting.setTimeout(1)
        XCTAssertThrowsError(try waiting.readLine(), "no greeting while another client is connected")
        waiting.setTimeout(10)
        libxl.hangUp()
        try waiting.negotiate()
        XCTAssertEqual(try status(waiting), "paused")
    }

    // MARK: Hostile clients

    func testHostileClientsGetQEMUsErrorsAndTheVMCarriesOn() throws {
        try VMProcess.requireKVM()
        let vm = try QMPVM(QMPVM.guestArguments)
        let client = try vm.client()
        try client.negotiate()

        // Invalid JSON: an error, and the same connection carries on.
        try client.send("{\"execute\": foo}\r\n")
        var reply = try client.readReply()
        XCTAssertEqual(Client.errorClass(reply), "GenericError")
        XCTAssertTrue(Client.errorDesc(reply).hasPrefix("JSON parse error"), Client.errorDesc(reply))
        XCTAssertNil(reply["id"])
        try client.send([0xFF] + Array("garbage\n".utf8))
        XCTAssertTrue(Client.errorDesc(try client.readReply()).hasPrefix("JSON parse error"))
        XCTAssertEqual(try status(client), "running")

        // Not an object, missing execute, wrong member types, unexpected members, oob.
        try client.send("[1, 2]\r\n")
        XCTAssertEqual(Client.errorDesc(try client.readReply()), "QMP input must be a JSON object")
        try client.send("{\"id\": 7}\r\n")
        reply = try client.readReply()
        XCTAssertEqual(Client.errorDesc(reply), "QMP input lacks member 'execute'")
        XCTAssertEqual(reply["id"] as? Int, 7)
        try client.send("{\"execute\": 5, \"id\": {\"a\": [true, null]}}\r\n")
        reply = try client.readReply()
        XCTAssertEqual(Client.errorDesc(reply), "QMP input member 'execute' must be a string")
        let echoed = (reply["id"] as? [String: Any])?["a"] as? [Any]
        XCTAssertEqual(echoed?.first as? Bool, true, "id echoed as sent")
        XCTAssertTrue(echoed?.last is NSNull, "id echoed as sent")
        try client.send("{\"exec-oob\": \"query-status\", \"id\": 1}\r\n")
        XCTAssertEqual(Client.errorDesc(try client.readReply()), "QMP input member 'exec-oob' is unexpected")
        try client.send("{\"execute\": \"query-status\", \"arguments\": [], \"id\": 1}\r\n")
        XCTAssertEqual(Client.errorDesc(try client.readReply()), "QMP input member 'arguments' must be an object")
        // Wrong argument types, missing and unexpected arguments, unknown commands.
        XCTAssertEqual(Client.errorDesc(try client.execute("eject", ["id": 5])), "Invalid parameter type for 'id', expected: string")
        XCTAssertEqual(Client.errorDesc(try client.execute("xen-save-devices-state", ["live": true])), "Parameter 'filename' is missing")
        XCTAssertEqual(Client.errorDesc(try client.execute("query-status", ["bogus": 1])), "Parameter 'bogus' is unexpected")
        XCTAssertEqual(Client.errorDesc(try client.execute("xen-set-global-dirty-log", ["enable": "yes"])),
                       "Invalid parameter type for 'enable', expected: boolean")
        XCTAssertEqual(Client.errorClass(try client.execute("no-such-command")), "CommandNotFound")
        XCTAssertEqual(Client.errorDesc(try client.execute("qmp_capabilities", ["enable": ["oob"]])),
                       "Capabilities negotiation is already complete, command ignored")

        // A 2 MiB message is read whole and answered (QEMU's limit is 64 MiB per message).
        let big = "{\"execute\": \"human-monitor-command\", \"id\": 99, \"arguments\": {\"command-line\": \"info "
            + String(repeating: "x", count: 2 << 20) + "\"}}\r\n"
        try client.send(big)
        reply = try client.readReply()
        XCTAssertEqual(reply["id"] as? Int, 99)
        XCTAssertTrue((reply["return"] as? String)?.hasPrefix("unknown command: 'info xxx") == true)

        // Deep nesting: one error for the whole message, then business as usual.
        try client.send(String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\r\n")
        XCTAssertEqual(Client.errorDesc(try client.readReply()), "JSON parse error, nesting depth limit exceeded")
        XCTAssertEqual(try status(client), "running")
        client.hangUp()
        try assertAlive(vm)
    }

    func testClientsThatLeaveMidReplyAndThousandsOfConnections() throws {
        try VMProcess.requireKVM()
        let vm = try QMPVM(QMPVM.guestArguments)

        // Pipeline many large replies into a small receive buffer, then vanish with a reset.
        for _ in 0..<3 {
            let rude = try vm.client()
            var small: Int32 = 4096
            setsockopt(rude.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            try rude.greeting()
            try rude.send("{\"execute\":\"qmp_capabilities\"}" + String(repeating: "{\"execute\":\"query-qmp-schema\"}", count: 200))
            usleep(100_000)
            var hangUp = linger(l_onoff: 1, l_linger: 0)
            setsockopt(rude.fd, SOL_SOCKET, SO_LINGER, &hangUp, socklen_t(MemoryLayout<linger>.size))
        }
        try assertAlive(vm)

        // libxenstat's pattern from the Xen lab: send before the greeting, hang up at once.
        for _ in 0..<20 {
            let hasty = try vm.client()
            try hasty.send("{ \"execute\": \"qmp_capabilities\" }")
        }
        try assertAlive(vm)

        // 1,000 connect/disconnect cycles, a third negotiating, a third half a command.
        let start = Date()
        for i in 0..<1000 {
            let client = try vm.client()
            switch i % 3 {
            case 0: try client.negotiate()
            case 1: try client.send("{\"execute\":\"qmp_capab")
            default: break
            }
        }
        print("1000 QMP connect/disconnect cycles in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        try assertAlive(vm)
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(vm.process.processIdentifier)/fd"))?.count ?? 0
        XCTAssertLessThan(fds, 64, "no descriptor leak across connections (\(fds) open)")
    }

    func testInheritedListeningSocketFD() throws {
        try VMProcess.requireKVM()
        // libxl with dm_restrict pre-opens the socket and passes -chardev socket,fd=N.
        let directory = "/tmp/swiftdm-qmp-fd-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/pre.sock"
        let launcher = """
        import os, socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.bind(sys.argv[1]); s.listen(1); os.set_inheritable(s.fileno(), True)
        n = str(s.fileno())
        os.execv(sys.argv[2], [sys.argv[2]] + sys.argv[3:] + ["-chardev", "socket,id=libxl-cmd,fd=" + n + ",server=on,wait=off",
                 "-mon", "chardev=libxl-cmd,mode=control"])
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", launcher, path, VMProcess.binary.path] + QMPVM.guestArguments + ["-S"]
        process.standardInput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate(); process.waitUntilExit() } }
        let client = try QMPTestClient(path: path)
        try client.negotiate()
        XCTAssertEqual(try status(client), "prelaunch")
        let chardevs = try client.execute("query-chardev")["return"] as? [[String: Any]] ?? []
        XCTAssertEqual(chardevs.first { $0["label"] as? String == "libxl-cmd" }?["filename"] as? String, "unix:\(path),server=on")
        XCTAssertNotNil(try client.execute("quit")["return"])
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path), "a socket we did not create is not ours to remove")
    }
}
