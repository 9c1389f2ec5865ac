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
