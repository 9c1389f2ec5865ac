@testable import Backends
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class SocketCharBackendTests: XCTestCase {
    func testUnixServerServesClientsOneAfterAnother() throws {
        let path = temporaryPath("serial.sock")
        let loop = ManualLoop()
        let server = try SocketCharBackend(id: "ser", address: .unix(path: path), server: true, wait: false, loop: loop)
        let guest = RecordingFrontend()
        server.attach(guest)
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)

        server.write(Array("lost".utf8)[...])  // nobody connected: dropped

        let first = try SocketCharBackend(id: "c1", address: .unix(path: path), server: false, wait: false, loop: loop)
        let firstSide = RecordingFrontend()
        first.attach(firstSide)
        loop.run { server.isConnected }
        first.write(Array("abc".utf8)[...])
        loop.run { guest.received.count == 3 }
        XCTAssertEqual(guest.received, Array("abc".utf8))
        server.write(byte: 0x78)
        server.write(Array("yz".utf8)[...])
        loop.run { firstSide.received.count == 3 }
        XCTAssertEqual(firstSide.received, Array("xyz".utf8))

        // A second client waits in the backlog while the first is connected.
        let second = try SocketCharBackend(id: "c2", address: .unix(path: path), server: false, wait: false, loop: loop)
        let secondSide = RecordingFrontend()
        second.attach(secondSide)
        second.write(Array("2nd".utf8)[...])
        loop.runOnce()
        XCTAssertEqual(guest.received, Array("abc".utf8))

        first.close()
        loop.run { guest.received.count == 6 }
        XCTAssertEqual(guest.received, Array("abc2nd".utf8))
        server.write(Array("ok".utf8)[...])
        loop.run { secondSide.received.count == 2 }
        XCTAssertEqual(secondSide.received, Array("ok".utf8))

        second.close()
        server.close()
        XCTAssertNotEqual(lstat(path, &info), 0, "socket file removed at close")
        XCTAssertTrue(loop.readers.isEmpty, "no descriptors left in the loop")
    }

    func testInputIsBoundedByReceiveCapacity() throws {
        let path = temporaryPath("flow.sock")
        let loop = ManualLoop()
        let server = try SocketCharBackend(id: "ser", address: .unix(path: path), server: true, wait: false, loop: loop)
        defer { server.close() }
        let guest = RecordingFrontend()
        guest.capacity = 2
        server.attach(guest)
        let client = try SocketCharBackend(id: "c", address: .unix(path: path), server: false, wait: false, loop: loop)
        defer { client.close() }
        loop.run { server.isConnected }
        client.write(Array("12345".utf8)[...])
        loop.run { guest.received.count == 2 }
        for _ in 0..<5 { loop.runOnce(timeout: 5) }
        XCTAssertEqual(guest.received, Array("12".utf8), "never more than the frontend's room")
        guest.capacity = 100
        server.frontendReady()
        loop.run { guest.received.count == 5 }
        XCTAssertEqual(guest.received, Array("12345".utf8))
    }

    func testTCPServerOnEphemeralPort() throws {
        let loop = ManualLoop()
        let server = try SocketCharBackend(id: "t", address: .tcp(host: "127.0.0.1", port: 0), server: true,
                                           wait: false, noDelay: true, loop: loop)
        defer { server.close() }
        let guest = RecordingFrontend()
        server.attach(guest)
        let port = try XCTUnwrap(server.localPort)
        XCTAssertNotEqual(port, 0)
        let spec = try CharBackendSpec(shorthand: "tcp:127.0.0.1:\(port)", option: "-serial")
        let client = try makeCharBackend(id: "c", spec: spec, loop: loop)
        defer { client.close() }
        let clientSide = RecordingFrontend()
        client.attach(clientSide)
        loop.run { server.isConnected }
        client.write(Array("ping".utf8)[...])
        loop.run { guest.received.count == 4 }
        server.write(Array("pong".utf8)[...])
        loop.run { clientSide.received.count == 4 }
        XCTAssertEqual(clientSide.received, Array("pong".utf8))
        XCTAssertTrue(server.filename.hasPrefix("tcp:127.0.0.1:0"))
    }

    func testClientToNowhereFails() {
        XCTAssertThrowsError(try SocketCharBackend(id: "c", address: .unix(path: temporaryPath("absent.sock")),
                                                   server: false, wait: false, loop: ManualLoop()))
    }

    func testServerDoesNotDeleteNonSocketFiles() throws {
        let path = temporaryPath("regular")
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        close(fd)
        defer { unlink(path) }
        XCTAssertThrowsError(try SocketCharBackend(id: "s", address: .unix(path: path), server: true, wait: false,
                                                   loop: ManualLoop()))
        var info = stat()
        XCTAssertEqual(lstat(path, &info), 0)
    }
}
