import Config
import DMCore
import Foundation
import XCTest
@testable import Machine
@testable import XenAccel

/// `-vnc` wired into a machine (the simulated Xen one, so no KVM is needed): without a display
/// device the server shows a blank 640x480 framebuffer, keys reach the i8042, and the monitor
/// sees the server.
final class MachineVNCTests: XCTestCase {
    func testKeysReachTheI8042AndQueryVNCReportsTheServer() throws {
        let socket = FileManager.default.temporaryDirectory.appendingPathComponent("vnc-machine-\(getpid()).sock").path
        guard case .run(let config) = try CommandLineParser.parse(["-xen-domid", "5", "-machine", "pc,accel=xen", "-nodefaults",
                                                                   "-m", "64", "-vnc", "unix:\(socket)"]) else {
            return XCTFail("not a run")
        }
        let machine = try PCMachine(config: config, xenHypervisor: SimulatedXenHypervisor(vcpus: 1, ramSize: 16 << 20),
                                    xenStore: MemoryXenStore())
        defer { machine.shutdownBackends() }
        let info = machine.lock.withLock { machine.vncInfo }
        XCTAssertEqual(info?["family"]?.stringValue, "unix")
        XCTAssertEqual(info?["host"]?.stringValue, socket)
        XCTAssertEqual(info?["auth"]?.stringValue, "none")
        let loop = machine.loop
        let thread = Thread { loop.run() }
        thread.start()
        defer {
            loop.stop()
            while !thread.isFinished { usleep(1000) }
        }

        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socket.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(rc, 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func read(_ n: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            var have = 0
            while have < n {
                let got = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, n - have, 0) }
                guard got > 0 else { break }
                have += got
            }
            return Array(out[0..<have])
        }
        func write(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } }
        XCTAssertEqual(read(12), Array("RFB 003.008\n".utf8))
        write(Array("RFB 003.008\n".utf8))
        XCTAssertEqual(read(2), [1, 1])
        write([1])
        XCTAssertEqual(read(4), [0, 0, 0, 0])
        write([1])
        let serverInit = read(24)
        XCTAssertEqual(Array(serverInit.prefix(4)), [0x02, 0x80, 0x01, 0xE0], "640x480")
        XCTAssertEqual(String(decoding: read(Int(serverInit.last ?? 0)), as: UTF8.self), "SwiftDM")
        write([4, 1, 0, 0, 0, 0, 0, 0x61])  // 'a' down

        // The i8042 (translation off after -nodefaults reset) shows the set-2 make code.
        var byte: UInt64?
        let deadline = Date().addingTimeInterval(5)
        while byte == nil && Date() < deadline {
            machine.lock.withLock {
                if machine.ports.read(0x64, size: 1) & 1 != 0 { byte = machine.ports.read(0x60, size: 1) }
            }
            usleep(2000)
        }
        XCTAssertEqual(byte, 0x1C)
        let clients = machine.lock.withLock { machine.vncInfo?["clients"]?.arrayValue }
        XCTAssertEqual(clients?.count, 1)
    }
}
