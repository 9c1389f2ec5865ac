import Synchronization

/// The guest's notion of elapsed time: host monotonic time that stands still while the VM is
/// stopped, so device timers neither fire nor pile up during a pause or a migration.
public final class VirtualClock: Sendable {
    private struct State {
        var pausedAt: UInt64?
        var pausedTotal: UInt64 = 0
    }
    private let state: Mutex<State>
    private let source: @Sendable () -> UInt64

    /// `source` is injectable so tests can drive time by hand.
    public init(source: @escaping @Sendable () -> UInt64 = monotonicNanoseconds, paused: Bool = false) {
        self.source = source
        state = Mutex(State(pausedAt: paused ? source() : nil))
    }

    /// Nanoseconds of guest time.
    public func now() -> UInt64 {
        state.withLock { s in (s.pausedAt ?? source()) &- s.pausedTotal }
    }

    public var isRunning: Bool { state.withLock { $0.pausedAt == nil } }

    public func pause() {
        state.withLock { s in if s.pausedAt == nil { s.pausedAt = source() } }
    }

    public func resume() {
        state.withLock { s in
            if let at = s.pausedAt {
                s.pausedTotal &+= source() &- at
                s.pausedAt = nil
            }
        }
    }

    /// The host monotonic time at which guest time reaches `deadline` (if the clock keeps running).
    public func hostTime(forGuestTime deadline: UInt64) -> UInt64 {
        state.withLock { s in deadline &+ s.pausedTotal }
    }

    public func hostNow() -> UInt64 { source() }
}
