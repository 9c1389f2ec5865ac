import DMCore
@testable import Machine
import XCTest

final class MachineDisplayTests: XCTestCase {
    /// A display device whose picture changes only when the test says so.
    final class StillPicture: DisplaySource {
        var colour: UInt32 = 0
        func refresh(_ framebuffer: Framebuffer) {
            let row = [UInt32](repeating: colour, count: framebuffer.width)
            row.withUnsafeBufferPointer { for y in 0..<framebuffer.height { framebuffer.storeRow(y, $0) } }
        }
    }

    final class HostTime: @unchecked Sendable { var now: UInt64 = 1_000 }

    /// QEMU's VNC pacing: 30 ms while the picture changes, 50 ms more per redraw that finds
    /// nothing new up to 3 s, halved by a change; a new watcher starts at 30 ms again.
    func testRedrawsSlowDownOnAStillScreenAndSpeedUpOnAChange() {
        let time = HostTime()
        let timers = TimerList(clock: VirtualClock(source: { time.now }))
        let picture = StillPicture()
        let display = MachineDisplay(source: picture, timers: timers)
        var redraws = 0
        display.watcher = { redraws += 1; return true }
        display.startRefreshing()
        func nextWait() -> UInt64? {
            guard let deadline = timers.nextDeadline else { return nil }
            let wait = deadline - time.now
            time.now = deadline
            _ = timers.fireDue(now: deadline)
            return wait
        }
        let ms: UInt64 = 1_000_000
        XCTAssertEqual(nextWait(), 30 * ms)   // the first redraw draws everything
        XCTAssertEqual(nextWait(), 30 * ms)
        XCTAssertEqual(nextWait(), 80 * ms)   // nothing new since
        XCTAssertEqual(nextWait(), 130 * ms)
        for _ in 0..<100 { _ = nextWait() }
        XCTAssertEqual(nextWait(), 3_000 * ms, "an idle screen is redrawn every 3 s")
        picture.colour = 0xFF0000
        XCTAssertEqual(nextWait(), 3_000 * ms)
        XCTAssertEqual(nextWait(), 1_500 * ms, "a change halves the wait")
        display.watcher = { false }
        _ = nextWait()
        XCTAssertNil(timers.nextDeadline, "no watcher, no redraws")
        display.startRefreshing()
        XCTAssertEqual(timers.nextDeadline.map { $0 - time.now }, 30 * ms)
        XCTAssertGreaterThan(redraws, 100)
    }
}
