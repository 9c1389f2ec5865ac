import Synchronization
import XCTest
@testable import DMCore
#if canImport(Glibc)
import Glibc
#endif

final class EventLoopTests: XCTestCase {
    func testPostedWorkAndTimersRunOnTheLoop() throws {
        let loop = try EventLoop(lock: DeviceLock(), clock: VirtualClock())
        let log = Mutex<[String]>([])
        nonisolated(unsafe) let timer = loop.makeTimer {
            log.withLock { $0.append("timer") }
            loop.stop()
        }
        let thread = Thread {
            loop.post {
                log.withLock { $0.append("posted") }
                timer.arm(at: loop.clock.now() + 2_000_000)
            }
        }
        thread.start()
        loop.run()
        XCTAssertEqual(log.withLock { $0 }, ["posted", "timer"])
    }

    func testReadersAreCalledWhenTheirDescriptorIsReadable() throws {
        let loop = try EventLoop(lock: DeviceLock(), clock: VirtualClock())
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]); close(fds[1]) }
        var received: [UInt8] = []
        try loop.addReader(fds[0]) {
            var byte: UInt8 = 0
            if read(fds[0], &byte, 1) == 1 { received.append(byte) }
            if received.count == 2 {
                loop.removeReader(fds[0])
                loop.stop()
            }
        }
        var bytes: [UInt8] = [7, 8]
        XCTAssertEqual(write(fds[1], &bytes, 2), 2)
        loop.run()
        XCTAssertEqual(received, [7, 8])
    }

    func testWritersAreCalledWhenAFullSocketDrains() throws {
        let loop = try EventLoop(lock: DeviceLock(), clock: VirtualClock())
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        let chunk = [UInt8](repeating: 0x5A, count: 4096)
        var sent = 0
        while chunk.withUnsafeBytes({ send(fds[0], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0 { sent += 4096 }
        XCTAssertThrowsError(try loop.setWriter(fds[1], {}), "a writer needs a reader")
        var reads = 0
        var writable = 0
        try loop.addReader(fds[0]) { reads += 1 }
        try loop.setWriter(fds[0]) {
            writable += 1
            try? loop.setWriter(fds[0], nil)
            loop.removeReader(fds[0])
            loop.stop()
        }
        // The peer drains what was queued: the socket becomes writable again.
        let peer = fds[1]
        let total = sent
        let drainer = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            var got = 0
            while got < total {
                let n = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                got += n
            }
        }
        drainer.start()
        loop.run()
        XCTAssertEqual(writable, 1)
        XCTAssertEqual(reads, 0, "nothing to read: the reader is not called for writability")
    }

    func testTimersDoNotFireWhileTheClockIsPaused() throws {
        let clock = VirtualClock()
        let loop = try EventLoop(lock: DeviceLock(), clock: clock)
        var fired = false
        let timer = loop.makeTimer { fired = true }
        clock.pause()
        timer.arm(at: clock.now())
        loop.postUnlocked {
            usleep(20_000)
            loop.stop()
        }
        loop.run()
        XCTAssertFalse(fired)
    }
}
