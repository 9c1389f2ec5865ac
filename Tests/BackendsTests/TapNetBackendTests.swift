@testable import Backends
import CLinux
import Config
import DMCore
import Foundation
import XCTest

final class RecordingNetFrontend: NetFrontend {
    var canReceive = false
    var frames: [[UInt8]] = []
    func receive(frame: UnsafeRawBufferPointer) { frames.append(Array(frame)) }
}

final class TapNetBackendTests: XCTestCase {
    func testMACAddressParsingAndDefaults() {
        XCTAssertEqual(MACAddress(parsing: "00:16:3e:0a:0b:0c")?.description, "00:16:3e:0a:0b:0c")
        XCTAssertEqual(MACAddress(parsing: "00-16-3E-0A-0B-0C")?.description, "00:16:3e:0a:0b:0c")
        for bad in ["", "00:16:3e:0a:0b", "00:16:3e:0a:0b:0c:0d", "00:16:3e:0a:0b:xx", "001:6:3e:0a:0b:0c", "00:16:3e:0a:0b:"] {
            XCTAssertNil(MACAddress(parsing: bad), bad)
        }
        XCTAssertTrue(MACAddress(parsing: "01:00:5e:00:00:01")?.isMulticast == true)
        XCTAssertEqual(MACAddress.qemuDefault(index: 0).description, "52:54:00:12:34:56")
        XCTAssertEqual(MACAddress.qemuDefault(index: 3).description, "52:54:00:12:34:59")
    }

    func testDescriptorThatIsNotATapIsRefused() throws {
        let fd = open("/dev/null", O_RDWR)
        defer { close(fd) }
        XCTAssertThrowsError(try TapNetBackend(id: "n0", options: .init(fd: fd), loop: ManualLoop())) { error in
            XCTAssertTrue("\(error)".contains("-netdev id=n0: fd=\(fd) is not a tap descriptor"), "\(error)")
        }
    }

    private func requireTap() throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/net/tun"),
              FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") else {
            let message = "SKIPPED: tap tests need root, /dev/net/tun and iproute2"
            FileHandle.standardError.write(Data(("\n*** " + message + " ***\n").utf8))
            throw XCTSkip(message)
        }
    }

    private func ip(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "ip \(arguments.joined(separator: " "))")
    }

    /// A real tap: frames the host sends out of it (ARP for a neighbour) reach the NIC only
    /// while it has room; a tap passed as fd= works the same.
    func testTapDeliversOnlyWhileTheFrontendHasRoom() throws {
        try requireTap()
        let name = "sdmbt\(getpid() % 100_000)"
        let loop = ManualLoop()
        let backend = try TapNetBackend(id: "n0", options: .init(ifname: name), loop: loop)
        XCTAssertEqual(backend.interfaceName, name)
        let frontend = RecordingNetFrontend()
        backend.attach(frontend)
        XCTAssertTrue(loop.readers.isEmpty, "no room: the tap is not watched")

        let subnet = "10.214.\(Int(getpid() % 200) + 20)"
        try ip(["addr", "add", "\(subnet).1/24", "dev", name])
        try ip(["link", "set", name, "up"])
        // A datagram to a neighbour on the tap's subnet makes the kernel ARP out of the tap.
        let sock = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(sock) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(9).bigEndian
        inet_pton(AF_INET, "\(subnet).2", &address.sin_addr)
        let payload = [UInt8](repeating: 0x55, count: 8)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sock, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }

        frontend.canReceive = true
        backend.frontendReady()
        XCTAssertFalse(loop.readers.isEmpty)
        let deadline = Date().addingTimeInterval(3)
        while frontend.frames.isEmpty && Date() < deadline { loop.runOnce(timeout: 50) }
        XCTAssertFalse(frontend.frames.isEmpty, "no frame from the tap")
        XCTAssertTrue(frontend.frames.allSatisfy { $0.count >= 14 })

        frontend.canReceive = false
        // The next readiness (more ARP retries, IPv6 chatter) finds no room and stops watching.
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sock, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        let until = Date().addingTimeInterval(3)
        while !loop.readers.isEmpty && Date() < until { loop.runOnce(timeout: 50) }
        XCTAssertTrue(loop.readers.isEmpty, "a full frontend stops the reading")

        var broadcast = [UInt8](repeating: 0xFF, count: 6) + [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x88, 0xB5]
        broadcast += [UInt8](repeating: 0, count: 46)
        XCTAssertTrue(broadcast.withUnsafeBytes { backend.send(frame: $0) })

        // The same interface through a descriptor our "parent" opened.
        var actual = [CChar](repeating: 0, count: 16)
        let second = "\(name)b"
        let fd = sdm_tap_open(second, &actual, actual.count)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let passed = try TapNetBackend(id: "n1", options: .init(fd: fd), loop: loop)
        XCTAssertEqual(passed.interfaceName, second)
    }
}
