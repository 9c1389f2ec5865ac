import Foundation
import XCTest

/// Plays the QMP dialogues libxl and libxenstat really had with qemu-xen in the Xen lab
/// (tests/qmp/captures, recorded by a proxy between them) against swiftdm, byte for byte as
/// libxl sent them — the descriptor on the first byte of add-fd included — and checks every
/// reply against what libxl parses: the id echoed, `return` vs `error`, the members it reads,
/// and "\r\n" after every message.
final class LibxlReplayTests: XCTestCase {
    enum Step {
        case send([UInt8], passesFD: Bool)
        case expect([String: Any])
    }

    /// One capture file as connections of steps.
    static func parseCapture(_ url: URL) throws -> [[Step]] {
        let bytes = Array(try Data(contentsOf: url))
        var connections: [Int: [Step]] = [:]
        var position = 0
        func nextLine() -> String? {
            guard position < bytes.count else { return nil }
            let end = bytes[position...].firstIndex(of: 0x0A) ?? bytes.count
            defer { position = min(end + 1, bytes.count) }
            return String(decoding: bytes[position..<end], as: UTF8.self)
        }
        while let line = nextLine() {
            // "TS [+Ns] [N] libxl->qemu 67B [SCM_RIGHTS fds=1]" followed by exactly 67 bytes.
            let words = line.split(separator: " ").map(String.init)
            guard let connIndex = words.firstIndex(where: { $0.hasPrefix("[") && $0.hasSuffix("]") }),
                  let connection = Int(words[connIndex].dropFirst().dropLast()),
                  connIndex + 2 < words.count, words[connIndex + 2].hasSuffix("B"),
                  let count = Int(words[connIndex + 2].dropLast()) else { continue }
            let direction = words[connIndex + 1]
            let payload = Array(bytes[position..<min(position + count, bytes.count)])
            position += payload.count
            if payload.last != 0x0A, position < bytes.count, bytes[position] == 0x0A { position += 1 }
            if direction == "libxl->qemu" {
                connections[connection, default: []].append(.send(payload, passesFD: line.contains("SCM_RIGHTS")))
            } else if let object = try JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] {
                connections[connection, default: []].append(.expect(object))
            }
        }
        return connections.keys.sorted().compactMap { connections[$0] }
    }

    /// What libxl reads from each reply (libxl_qmp.c, libxl_dm.c, libxl_domain.c, libxl_disk.c).
    func checkShape(command: String, reply: [String: Any], expected: [String: Any], file: StaticString = #filePath, line: UInt = #line) {
        let value = reply["return"]
        if reply["error"] != nil {
            let error = reply["error"] as? [String: Any]
            let errorClass = error?["class"] as? String ?? ""
            XCTAssertTrue(["GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound"].contains(errorClass),
                          "\(command): an error class libxl knows: \(reply)", file: file, line: line)
            XCTAssertNotNil(error?["desc"] as? String, file: file, line: line)
            // Where QEMU succeeded we may answer an error only where a subsystem is honestly
            // missing here; each such case is named.
            let allowed: [String: String] = [
                "device_add": "GenericError",  // CPU hotplug: no hotplug controller yet
                "xen-set-global-dirty-log": "GenericError",  // needs the Xen accelerator; this runs on KVM
            ]
            if expected["return"] != nil {
                XCTAssertEqual(allowed[command], errorClass, "\(command): QEMU answered \(expected), we \(reply)", file: file, line: line)
            }
            if errorClass != "GenericError" { print("replay: \(command) -> \(errorClass): \(error?["desc"] ?? "")") }
            return
        }
        XCTAssertNotNil(value, "\(command): return or error: \(reply)", file: file, line: line)
        switch command {
        case "qmp_capabilities", "cont", "stop", "eject", "xen-save-devices-state", "blockdev-change-medium":
            XCTAssertEqual((value as? [String: Any])?.count, 0, "\(command) returns {}", file: file, line: line)
        case "query-chardev":
            let list = value as? [[String: Any]] ?? []
            XCTAssertFalse(list.isEmpty, file: file, line: line)
            for entry in list {
                XCTAssertNotNil(entry["label"] as? String, file: file, line: line)
                XCTAssertNotNil(entry["filename"] as? String, file: file, line: line)
                XCTAssertNotNil(entry["frontend-open"] as? Bool, file: file, line: line)
            }
            for label in ["libxl-cmd", "libxenstat-cmd", "serial0"] {
                XCTAssertTrue(list.contains { $0["label"] as? String == label }, "query-chardev lists \(label)", file: file, line: line)
            }
        case "query-vnc":
            XCTAssertNotNil((value as? [String: Any])?["enabled"] as? Bool, file: file, line: line)
        case "human-monitor-command":
            XCTAssertTrue((value as? String)?.hasSuffix("\r\n") == true, "HMP output is a string: \(reply)", file: file, line: line)
        case "query-version":
            let qemu = (value as? [String: Any])?["qemu"] as? [String: Any]
            let major = qemu?["major"] as? Int ?? 0, minor = qemu?["minor"] as? Int ?? 0
            XCTAssertTrue(major > 2 || (major == 2 && minor >= 11), "libxl's modern paths need >= 2.11", file: file, line: line)
        case "add-fd":
            XCTAssertNotNil((value as? [String: Any])?["fdset-id"] as? Int, file: file, line: line)
        case "query-cpus-fast":
            let cpus = value as? [[String: Any]] ?? []
            XCTAssertEqual(cpus.first?["cpu-index"] as? Int, 0, file: file, line: line)
        case "query-hotpluggable-cpus":
            XCTAssertNotNil((value as? [[String: Any]])?.first?["type"] as? String, file: file, line: line)
        default:
            break
        }
    }

    func replay(_ capture: String, extraArguments: [String]) throws {
        let url = VMProcess.repositoryRoot.appendingPathComponent("tests/qmp/captures/\(capture)")
        let connections = try Self.parseCapture(url)
        XCTAssertFalse(connections.isEmpty)
        let vm = try QMPVM(QMPVM.guestArguments + extraArguments + [
            "-chardev", "socket,id=libxl-cmd,path=$DIR/libxl.sock,server=on,wait=off", "-mon", "chardev=libxl-cmd,mode=control",
            "-chardev", "socket,id=libxenstat-cmd,path=$DIR/stat.sock,server=on,wait=off", "-mon", "chardev=libxenstat-cmd,mode=control",
            "-no-shutdown", "-name", "hvm2",
        ], qmp: false)
        let socket = vm.directory.appendingPathComponent(capture.contains("libxenstat") ? "stat.sock" : "libxl.sock").path
        var commandsPlayed = 0
        for (index, steps) in connections.enumerated() {
            let client = try QMPTestClient(path: socket)
            var sentByID: [Int: String] = [:]
            var pendingFD = false
            var hungUpEarly = false
            // libxl names the fd set our add-fd returned; map the captured ids to ours.
            var fdsetIDs: [Int: Int] = [:]
            for (stepIndex, step) in steps.enumerated() {
                switch step {
                case let .send(bytes, passesFD):
                    if passesFD {
                        pendingFD = true
                        // libxl sends the descriptor alone on the command's first byte.
                        if bytes.count == 1 { continue }
                    }
                    var payload = bytes
                    var passing: Int32?
                    if pendingFD {
                        // Which file libxl passed: the save file (write-only) or a CD image.
                        let laterText = steps[stepIndex...].compactMap { if case .send(let b, _) = $0 { return String(decoding: b, as: UTF8.self) } else { return nil } }.joined()
                        let saving = laterText.contains("xen-save-devices-state")
                        let path = vm.directory.appendingPathComponent(saving ? "qemu-save" : "cd2.iso").path
                        if !saving { FileManager.default.createFile(atPath: path, contents: Data(count: 32768)) }
                        passing = open(path, saving ? (O_WRONLY | O_CREAT) : O_RDONLY, 0o600)
                        if stepIndex > 0, case .send(let first, true) = steps[stepIndex - 1], first.count == 1 { payload = first + bytes }
                        pendingFD = false
                    }
                    var text = String(decoding: payload, as: UTF8.self)
                    for (captured, ours) in fdsetIDs { text = text.replacingOccurrences(of: "/dev/fdset/\(captured)\"", with: "/dev/fdset/\(ours)\"") }
                    payload = Array(text.utf8)
                    if let object = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any],
                       let name = object["execute"] as? String {
                        sentByID[object["id"] as? Int ?? -1] = name
                        commandsPlayed += 1
                    }
                    do {
                        try client.send(payload, passing: passing)
                    } catch {
                        hungUpEarly = true  // libxenstat hangs up before reading; so may we
                    }
                    if let passing { close(passing) }
                case .expect(let expected):
                    if expected["QMP"] != nil {
                        let greeting = try client.greeting()
                        let version = ((greeting["QMP"] as? [String: Any])?["version"] as? [String: Any])?["qemu"] as? [String: Any]
                        XCTAssertEqual(version?["major"] as? Int, 7, "conn \(index + 1)")
                    } else if expected["event"] != nil {
                        continue  // checked through the replies' own events below
                    } else if !hungUpEarly {
                        let reply = try client.readReply()
                        let expectedID = expected["id"] as? Int
                        XCTAssertEqual(reply["id"] as? Int, expectedID, "conn \(index + 1): id echoed: \(reply)")
                        let command = sentByID[expectedID ?? -1] ?? "?"
                        checkShape(command: command, reply: reply, expected: expected)
                        if command == "add-fd", let captured = (expected["return"] as? [String: Any])?["fdset-id"] as? Int,
                           let ours = (reply["return"] as? [String: Any])?["fdset-id"] as? Int {
                            fdsetIDs[captured] = ours
                        }
                        if command == "stop" { XCTAssertTrue(client.events.contains { $0["event"] as? String == "STOP" }) }
                    }
                }
            }
            client.hangUp()
        }
        print("replayed \(connections.count) connections, \(commandsPlayed) commands from \(capture)")
        // And the VM carries on.
        let after = try QMPTestClient(path: socket)
        try after.negotiate()
        XCTAssertNotNil(try after.execute("query-status")["return"])
    }

    func testHVMGuestWithCDROMLifecycle() throws {
        try VMProcess.requireKVM()
        let iso = "/tmp/swiftdm-replay-cd-\(getpid()).iso"
        FileManager.default.createFile(atPath: iso, contents: Data(count: 32768))
        defer { unlink(iso) }
        // xl create hvm2.cfg, then vcpu-set, cd-eject/cd-insert, save: the richest dialogue.
        try replay("dm-023110-pid968.qmp-libxl-cmd.log", extraArguments: [
            "-S", "-smp", "1,maxcpus=2",
            "-drive", "if=none,readonly=on,id=ide-5632,file=\(iso),format=raw",
            "-device", "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
        ])
    }

    func testHVMGuestStartAndRestore() throws {
        try VMProcess.requireKVM()
        try replay("dm-022922-pid318.qmp-libxl-cmd.log", extraArguments: ["-S"])
        try replay("dm-023143-pid1152.qmp-libxl-cmd.log", extraArguments: ["-S"])
    }

    func testLibxenstatHangsUpBeforeTheGreeting() throws {
        try VMProcess.requireKVM()
        try replay("dm-023324-pid1716.qmp-libxenstat-cmd.log", extraArguments: [])
    }
}
