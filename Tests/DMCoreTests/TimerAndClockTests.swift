import Synchronization
import XCTest
@testable import DMCore

final class ManualTime: Sendable {
    let now = Atomic<UInt64>(1_000)
    var source: @Sendable () -> UInt64 { { [self] in now.load(ordering: .relaxed) } }
    func advance(_ ns: UInt64) { now.wrappingAdd(ns, ordering: .relaxed) }
}

final class TimerAndClockTests: XCTestCase {
    func testClockStandsStillWhilePaused() {
        let time = ManualTime()
        let clock = VirtualClock(source: time.source)
        let start = clock.now()
        time.advance(100)
        XCTAssertEqual(clock.now(), start + 100)
        clock.pause()
        time.advance(1_000)
        XCTAssertEqual(clock.now(), start + 100)
        clock.resume()
        time.advance(5)
        XCTAssertEqual(clock.now(), start + 105)
        XCTAssertEqual(clock.hostTime(forGuestTime: start + 200), start + 200 + 1_000)
    }

    func testTimersFireInDeadlineOrderAndMayRearm() {
        let list = TimerList(clock: VirtualClock(source: ManualTime().source))
        var fired: [String] = []
        var periodic: (any DeviceTimer)!
        periodic = list.makeTimer {
            fired.append("periodic")
            if fired.count < 4 { periodic.arm(at: 100 + 50 * UInt64(fired.count)) }
        }
        let late = list.makeTimer { fired.append("late") }
        late.arm(at: 300)
        periodic.arm(at: 100)
        XCTAssertEqual(list.nextDeadline, 100)
        list.fireDue(now: 99)
        XCTAssertEqual(fired, [])
        list.fireDue(now: 400)
        XCTAssertEqual(fired.first, "periodic")
        XCTAssertTrue(fired.contains("late"))
        XCTAssertNil(late.deadline)
    }

    func testCancelledTimersDoNotFire() {
        let list = TimerList(clock: VirtualClock())
        var count = 0
        let timer = list.makeTimer { count += 1 }
        timer.arm(at: 10)
        timer.cancel()
        XCTAssertNil(list.nextDeadline)
        list.fireDue(now: 1_000)
        XCTAssertEqual(count, 0)
    }

    func testATimerThatAlwaysRearmsInThePastCannotSpinForever() {
        let list = TimerList(clock: VirtualClock())
        var count = 0
        var timer: (any DeviceTimer)!
        timer = list.makeTimer {
            count += 1
            timer.arm(at: 0)
        }
        timer.arm(at: 0)
        list.fireDue(now: 10)
        XCTAssertEqual(count, 10_000, "bounded per pass")
    }
}
