import Backends
import DMCore
import XCTest
@testable import Monitor

/// A machine stand-in: records what the monitor asked and completes at once.
final class FakeHost: MonitorHost {
    var runStateName = "running"
    var isRunning: Bool { runStateName == "running" }
    var guestName: String? = "vm"
    var guestUUID: String?
    var saved: [UInt8] = [1, 2, 3]
    var loaded: [UInt8]?
    func stop(completion: @escaping () -> Void) { runStateName = "paused"; completion() }
    func cont(completion: @escaping (Result<Void, QMPError>) -> Void) { runStateName = "running"; completion(.success(())) }
    func systemReset(completion: @escaping () -> Void) { completion() }
    func systemWakeup(completion: @escaping (Result<Void, QMPError>) -> Void) {
        guard runStateName == "suspended" else {
            completion(.failure(.generic("Unable to wake up: guest is not in suspended state")))
            return
        }
        runStateName = "running"
        completion(.success(()))
    }
    func systemPowerdown() throws(QMPError) {}
    func quit() {}
    var chardevs: [ChardevInfo] { [ChardevInfo(label: "serial0", filename: "null")] }
    var cpus: [CPUInfo] { [CPUInfo(index: 0, threadID: 42, socket: 0)] }
    var cpuTypeName: String { "host-x86_64-cpu" }
    var maxCPUs: Int { 2 }
    var pciDevices: [PCIDeviceInfo] { [] }
    func registerDump(cpu: Int) -> String? { cpu == 0 ? "RAX=0" : nil }
    func saveDeviceState() throws(QMPError) -> [UInt8] { saved }
    func loadDeviceState(_ bytes: [UInt8]) throws(QMPError) { loaded = bytes }
    func setGlobalDirtyLog(_ enabled: Bool) throws(QMPError) {}
    func addDevice(_ properties: JSONObject) throws(QMPError) { throw .generic("no hotplug") }
    func deleteDevice(id: String) throws(QMPError) { throw .deviceNotFound(id) }
    func eject(device: String?, id: String?, force: Bool) throws(QMPError) { throw .deviceNotFound(id ?? device ?? "") }
    func changeMedium(device: String?, id: String?, filename: String, format: String?, readOnlyMode: String?,
                      fdSets: FileDescriptorSets) throws(QMPError) { throw .deviceNotFound(id ?? device ?? "") }
    var blockDevices: [JSONValue] { [] }
    var blockStats: [JSONValue] { [] }
    var vncInfo: JSONValue? { nil }
    func setVNCPassword(_ password: String) throws(QMPError) { throw .generic("no VNC display") }
    var picture: Screenshot?
    func screenshot() throws(QMPError) -> Screenshot {
        guard let picture else { throw .generic("There is no console to take a screendump from") }
        return picture
    }
}

final class SessionTests: XCTestCase {
    var host = FakeHost()
    var loop: EventLoop!
    var monitor: Monitor!
    var output: [String] = []
    var session: QMPSession!

    override func setUpWithError() throws {
        loop = try EventLoop(lock: DeviceLock(), clock: VirtualClock(paused: true))
        monitor = Monitor(host: host, loop: loop, package: "SwiftDM test")
        session = QMPSession(monitor: monitor) { [unowned self] bytes in
            XCTAssertEqual(bytes.suffix(2), [0x0D, 0x0A], "every message ends in \\r\\n")
            self.output.append(String(decoding: bytes.dropLast(2), as: UTF8.self))
        }
    }

    func send(_ text: String, fds: [Int32] = []) -> [String] {
        output = []
        session.receive(Array(text.utf8), passedFDs: fds)
        return output
    }

    func testGreetingNegotiationAndIDs() {
        session.start()
        XCTAssertEqual(output, [#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "SwiftDM test"}, "capabilities": []}}"#])
        XCTAssertEqual(send(#"{"execute": "query-status", "id": 1}"#),
                       [#"{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}"#])
        XCTAssertEqual(send(#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 2}"#),
                       [#"{"error": {"class": "GenericError", "desc": "Capability oob not available"}, "id": 2}"#])
        XCTAssertEqual(send(#"{"execute": "qmp_capabilities", "id": {"any": [1.0, "json"]}}"#), [#"{"return": {}, "id": {"any": [1.0, "json"]}}"#])
        XCTAssertEqual(send(#"{"execute": "query-status"}"#), [#"{"return": {"status": "running", "singlestep": false, "running": true}}"#])
        XCTAssertEqual(send(#"{"execute": "stop", "id": 3}{"execute": "query-status", "id": 4}"#),
                       [#"{"return": {}, "id": 3}"#, #"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": 4}"#])
    }

    func testEventsOnlyAfterNegotiation() {
        session.start()
        output = []
        session.sendEvent(["event": "STOP"])
        XCTAssertEqual(output, [])
        _ = send(#"{"execute": "qmp_capabilities"}"#)
        output = []
        session.sendEvent(["event": "STOP"])
        XCTAssertEqual(output, [#"{"event": "STOP"}"#])
    }

    func testFDPassingAndSaveLoad() throws {
        _ = send(#"{"execute": "qmp_capabilities"}"#)
        XCTAssertEqual(send(#"{"execute": "add-fd", "id": 1}"#),
                       [#"{"error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}, "id": 1}"#])
        var pipeFDs: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&pipeFDs), 0)
        let reply = send(#"{"execute": "add-fd", "arguments": {"fdset-id": 3, "opaque": "w"}}"#, fds: [pipeFDs[1]])
        XCTAssertEqual(reply, [#"{"return": {"fdset-id": 3, "fd": \#(pipeFDs[1])}}"#])
        XCTAssertEqual(send(#"{"execute": "query-fdsets"}"#), [#"{"return": [{"fdset-id": 3, "fds": [{"fd": \#(pipeFDs[1]), "opaque": "w"}]}]}"#])
        host.runStateName = "paused"
        XCTAssertEqual(send(#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/3"}}"#), [#"{"return": {}}"#])
        var buffer = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(read(pipeFDs[0], &buffer, 8), 3)
        XCTAssertEqual(Array(buffer.prefix(3)), [1, 2, 3])
        XCTAssertEqual(send(#"{"execute": "xen-load-devices-state", "arguments": {"filename": "/dev/fdset/3"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "Could not open '/dev/fdset/3': Permission denied"}}"#])
        close(pipeFDs[0])
        XCTAssertEqual(send(#"{"execute": "remove-fd", "arguments": {"fdset-id": 3, "fd": 999}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "File descriptor named 'fdset-id:3, fd:999' not found"}}"#])
    }

    func testScreendumpWritesPPMOrSaysWhyNot() throws {
        _ = send(#"{"execute": "qmp_capabilities"}"#)
        let path = "/tmp/swiftdm-screendump-\(getpid()).ppm"
        defer { unlink(path) }
        XCTAssertEqual(send(#"{"execute": "screendump", "arguments": {"filename": "\#(path)"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "There is no console to take a screendump from"}}"#])
        host.picture = Screenshot(width: 2, height: 1, pixels: [0x00FF_8001, 0x0000_00FF])
        XCTAssertEqual(send(#"{"execute": "screendump", "arguments": {"filename": "\#(path)", "format": "png"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "screendump: PNG is not supported; use format=ppm"}}"#])
        XCTAssertEqual(send(#"{"execute": "screendump", "arguments": {"filename": "\#(path)", "format": "gif"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "Parameter 'format' does not accept value 'gif'"}}"#])
        XCTAssertEqual(send(#"{"execute": "screendump", "arguments": {"filename": "\#(path)"}}"#), [#"{"return": {}}"#])
        let fd = open(path, O_RDONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &bytes, 64)
        close(fd)
        XCTAssertEqual(Array(bytes.prefix(max(n, 0))), Array("P6\n2 1\n255\n".utf8) + [0xFF, 0x80, 0x01, 0x00, 0x00, 0xFF])
        // The human monitor's form, as `xl qemu-monitor-command dom screendump FILE` sends it.
        XCTAssertEqual(send(#"{"execute": "human-monitor-command", "arguments": {"command-line": "screendump \#(path)"}}"#),
                       [#"{"return": ""}"#])
    }

    func testErrorsForHostileInput() {
        _ = send(#"{"execute": "qmp_capabilities"}"#)
        XCTAssertEqual(send(#"{"execute": "eject", "arguments": {"id": "cd", "device": "x"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "Need exactly one of 'device' and 'id'"}}"#])
        XCTAssertEqual(send(#"{"execute": "eject", "arguments": {"id": "cd"}}"#),
                       [#"{"error": {"class": "DeviceNotFound", "desc": "Device 'cd' not found"}}"#])
        XCTAssertEqual(send(#"{"execute": "device_add", "arguments": {"id": "x"}}"#),
                       [#"{"error": {"class": "GenericError", "desc": "Parameter 'driver' is missing"}}"#])
        XCTAssertEqual(send(#"{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}}"#),
                       [#"{"return": "VM status: running\r\n"}"#])
        XCTAssertEqual(send(#"{"execute": "human-monitor-command", "arguments": {"command-line": "frobnicate"}}"#),
                       [#"{"return": "unknown command: 'frobnicate'\r\n"}"#])
        XCTAssertEqual(send("\"just a string\""), [#"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"#])
        XCTAssertEqual(send(#"{"execute": "query-status", "extra": 1, "id": 9}"#),
                       [#"{"error": {"class": "GenericError", "desc": "QMP input member 'extra' is unexpected"}, "id": 9}"#])
    }

    func testIntrospectionComesFromTheTable() {
        _ = send(#"{"execute": "qmp_capabilities"}"#)
        let commands = send(#"{"execute": "query-commands"}"#).first ?? ""
        for command in QMPCommands.table.commands { XCTAssertTrue(commands.contains("\"\(command.name)\""), command.name) }
        let schema = send(#"{"execute": "query-qmp-schema"}"#).first ?? ""
        XCTAssertTrue(schema.contains(#"{"name": "xen-save-devices-state-arg", "meta-type": "object", "members": [{"name": "filename", "type": "str"}, {"name": "live", "type": "bool", "default": null}]}"#))
    }
}
