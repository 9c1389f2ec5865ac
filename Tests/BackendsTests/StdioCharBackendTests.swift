@testable import Backends
import CLinux
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// stdio on a terminal, played by a fresh pty: raw input that keeps ISIG, OPOST output, and the
/// original modes back after restoreTerminal.
final class StdioCharBackendTests: XCTestCase {
    func openPty() throws -> (master: Int32, slave: Int32) {
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY)
        guard master >= 0 else { throw XCTSkip("no /dev/ptmx") }
        var unlock: Int32 = 0
        var number: UInt32 = 0
        XCTAssertEqual(sdm_ioctl(master, PtyCharBackend.setPtyLock, &unlock), 0)
        XCTAssertEqual(sdm_ioctl(master, PtyCharBackend.getPtyNumber, &number), 0)
        let slave = open("/dev/pts/\(number)", O_RDWR | O_NOCTTY)
        XCTAssertGreaterThanOrEqual(slave, 0)
        return (master, slave)
    }

    func testTerminalModesAndRestore() throws {
        let (master, slave) = try openPty()
        defer { close(master); close(slave) }
        var before = termios()
        XCTAssertEqual(tcgetattr(slave, &before), 0)
        XCTAssertNotEqual(before.c_lflag & tcflag_t(ICANON), 0, "a fresh pty starts cooked")

        let loop = ManualLoop()
        let stdio = try StdioCharBackend(id: "serial0", loop: loop, inputFD: slave, outputFD: slave)
        var during = termios()
        XCTAssertEqual(tcgetattr(slave, &during), 0)
        XCTAssertEqual(during.c_lflag & tcflag_t(ICANON | ECHO), 0, "raw input")
        XCTAssertNotEqual(during.c_lflag & tcflag_t(ISIG), 0, "Ctrl-C still signals")
        XCTAssertEqual(during.c_iflag & tcflag_t(ICRNL), 0)

        let guest = RecordingFrontend()
        stdio.attach(guest)
        _ = Array("ab\r".utf8).withUnsafeBytes { write(master, $0.baseAddress, $0.count) }
        loop.run { guest.received.count == 3 }
        XCTAssertEqual(guest.received, Array("ab\r".utf8), "bytes as typed, CR not turned into NL")

        stdio.write(Array("hi\n".utf8)[...])
        XCTAssertEqual(readAll(fd: master, count: 4), Array("hi\r\n".utf8), "OPOST kept")

        stdio.close()
        var after = termios()
        XCTAssertEqual(tcgetattr(slave, &after), 0)
        XCTAssertEqual(after.c_lflag, before.c_lflag)
        XCTAssertEqual(after.c_iflag, before.c_iflag)
        XCTAssertTrue(loop.readers.isEmpty)
        stdio.restoreTerminal()  // idempotent
    }

    func testSignalOffDisablesISIG() throws {
        let (master, slave) = try openPty()
        defer { close(master); close(slave) }
        let stdio = try StdioCharBackend(id: "s", loop: ManualLoop(), allowSignals: false, inputFD: slave, outputFD: slave)
        var during = termios()
        XCTAssertEqual(tcgetattr(slave, &during), 0)
        XCTAssertEqual(during.c_lflag & tcflag_t(ISIG), 0)
        stdio.restoreTerminal()
        XCTAssertEqual(tcgetattr(slave, &during), 0)
        XCTAssertNotEqual(during.c_lflag & tcflag_t(ISIG), 0)
    }

    func testOnlyOneBackendOwnsStdin() throws {
        let loop = ManualLoop()
        let first = try makeCharBackend(id: "serial0", spec: .stdio(allowSignals: true), loop: loop)
        XCTAssertThrowsError(try makeCharBackend(id: "debugcon", spec: .stdio(allowSignals: true), loop: loop)) {
            XCTAssertTrue("\($0)".contains("multiple"))
        }
        first.close()
        let again = try makeCharBackend(id: "serial0", spec: .stdio(allowSignals: true), loop: loop)
        again.close()
    }

    func testNonTerminalStdinIsLeftAlone() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]); close(fds[1]) }
        let loop = ManualLoop()
        let stdio = try StdioCharBackend(id: "s", loop: loop, inputFD: fds[0], outputFD: fds[1])
        let guest = RecordingFrontend()
        stdio.attach(guest)
        stdio.write(byte: 0x41)
        XCTAssertEqual(readAll(fd: fds[0], count: 1), [0x41])
        stdio.close()
    }
}
