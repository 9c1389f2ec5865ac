@testable import Backends
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class PtyCharBackendTests: XCTestCase {
    func testOutputReachesTheSlaveAndInputTheFrontend() throws {
        let loop = ManualLoop()
        let pty = try PtyCharBackend(id: "serial0", loop: loop, announce: false)
        defer { pty.close() }
        XCTAssertTrue(pty.slavePath.hasPrefix("/dev/pts/"))
        XCTAssertEqual(pty.filename, "pty:\(pty.slavePath)")
        let guest = RecordingFrontend()
        pty.attach(guest)
        XCTAssertFalse(pty.isConnected)
        pty.write(Array("dropped".utf8)[...])
        XCTAssertTrue(loop.readers.isEmpty, "no client: the master is not watched")

        let slave = open(pty.slavePath, O_RDWR | O_NOCTTY)
        XCTAssertGreaterThanOrEqual(slave, 0)
        defer { close(slave) }
        loop.advance(nanoseconds: PtyCharBackend.connectionPollInterval)
        XCTAssertTrue(pty.isConnected)

        pty.write(Array("hello\n".utf8)[...])
        pty.write(byte: 0x21)
        XCTAssertEqual(readAll(fd: slave, count: 7), Array("hello\n!".utf8), "raw mode: no CR added")

        _ = Array("typed".utf8).withUnsafeBytes { write(slave, $0.baseAddress, $0.count) }
        loop.run { guest.received.count == 5 }
        XCTAssertEqual(guest.received, Array("typed".utf8))
    }

    func testClientLeavingAndComingBack() throws {
        let loop = ManualLoop()
        let pty = try PtyCharBackend(id: "p", loop: loop, announce: false)
        defer { pty.close() }
        let guest = RecordingFrontend()
        pty.attach(guest)
        var slave = open(pty.slavePath, O_RDWR | O_NOCTTY)
        loop.advance(nanoseconds: PtyCharBackend.connectionPollInterval)
        XCTAssertTrue(pty.isConnected)
        close(slave)
        loop.run { !pty.isConnected }
        XCTAssertTrue(loop.readers.isEmpty)
        slave = open(pty.slavePath, O_RDWR | O_NOCTTY)
        defer { close(slave) }
        loop.advance(nanoseconds: PtyCharBackend.connectionPollInterval)
        XCTAssertTrue(pty.isConnected)
        pty.write(Array("back".utf8)[...])
        XCTAssertEqual(readAll(fd: slave, count: 4), Array("back".utf8))
    }
}
