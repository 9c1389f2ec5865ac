/// A one-shot timer a device arms in guest time; it fires on the event loop with the
/// `DeviceLock` held. Re-arming replaces the previous deadline.
public protocol DeviceTimer: AnyObject {
    var deadline: UInt64? { get }
    func arm(at guestNanoseconds: UInt64)
    func cancel()
}

/// Where devices get their clock and timers. The event loop implements it for real machines;
/// unit tests drive a `TimerList` by hand.
public protocol TimerService: AnyObject, Sendable {
    var clock: VirtualClock { get }
    func makeTimer(_ fire: @escaping () -> Void) -> any DeviceTimer
}

/// The set of armed device timers. Few timers exist (a handful per machine), so the earliest
/// deadline is found by a scan: no heap, no allocation when a timer is re-armed.
/// Guarded by the machine's `DeviceLock`.
public final class TimerList: TimerService, @unchecked Sendable {
    public let clock: VirtualClock
    private var timers: [Entry] = []
    /// Told when the earliest deadline may have moved earlier (the loop re-arms its timerfd).
    var onChange: (() -> Void)?

    public init(clock: VirtualClock) {
        self.clock = clock
    }

    final class Entry: DeviceTimer {
        unowned let list: TimerList
        let fire: () -> Void
        var deadline: UInt64?

        init(list: TimerList, fire: @escaping () -> Void) {
            self.list = list
            self.fire = fire
        }

        func arm(at guestNanoseconds: UInt64) {
            deadline = guestNanoseconds
            list.onChange?()
        }

        func cancel() { deadline = nil }
    }

    public func makeTimer(_ fire: @escaping () -> Void) -> any DeviceTimer {
        let entry = Entry(list: self, fire: fire)
        timers.append(entry)
        return entry
    }

    public var nextDeadline: UInt64? {
        var best: UInt64?
        for t in timers { if let d = t.deadline, d < (best ?? .max) { best = d } }
        return best
    }

    /// Fires every timer whose deadline is at or before `now`, earliest first; a timer may
    /// re-arm itself from its callback. Returns how many fired.
    @discardableResult
    public func fireDue(now: UInt64) -> Int {
        var fired = 0
        while fired < 10_000, let due = earliestDue(now: now) {
            due.deadline = nil
            due.fire()
            fired += 1
        }
        return fired
    }

    private func earliestDue(now: UInt64) -> Entry? {
        var best: Entry?
        for t in timers {
            if let d = t.deadline, d <= now, d < (best?.deadline ?? .max) { best = t }
        }
        return best
    }
}
