import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Reports what a guest did wrong (a bad register value, an unclaimed port, a DMA outside RAM)
/// without letting a guest flood the log: at most `burst` lines per second, then one summary of
/// how many were dropped.
public final class GuestErrorLog: Sendable {
    public static let shared = GuestErrorLog()

    private struct State {
        var windowStart: UInt64 = 0
        var printed = 0
        var suppressed = 0
        var total = 0
    }
    private let state = Mutex(State())
    private let burst: Int
    private let sink: @Sendable (String) -> Void

    public init(burst: Int = 20, sink: @escaping @Sendable (String) -> Void = GuestErrorLog.stderrSink) {
        self.burst = burst
        self.sink = sink
    }

    /// How many guest errors were reported in total (printed or not).
    public var count: Int { state.withLock { $0.total } }

    public func report(_ source: String, _ message: @autoclosure () -> String) {
        let now = monotonicNanoseconds()
        var line: String?
        var summary: String?
        state.withLock { s in
            s.total += 1
            if now &- s.windowStart >= 1_000_000_000 {
                if s.suppressed > 0 { summary = "swiftdm: guest error: \(s.suppressed) more suppressed" }
                s.windowStart = now
                s.printed = 0
                s.suppressed = 0
            }
            if s.printed < burst {
                s.printed += 1
                line = ""
            } else {
                s.suppressed += 1
            }
        }
        if let summary { sink(summary) }
        if line != nil { sink("swiftdm: guest error: \(source): \(message())") }
    }

    public static let stderrSink: @Sendable (String) -> Void = { text in
        let line = text + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}

public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
