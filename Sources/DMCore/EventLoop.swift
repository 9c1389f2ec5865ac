import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let errno: Int32
    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.errno = errno
    }
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// The machine's main loop: file descriptors (character backends, sockets, signals), device
/// timers and work posted from other threads (vCPUs asking for a reset, for example).
/// Every callback runs on the loop's thread with the `DeviceLock` held.
public final class EventLoop: TimerService, @unchecked Sendable {
    public let lock: DeviceLock
    public var clock: VirtualClock { timers.clock }
    public let timers: TimerList

    private let epollFD: Int32
    private let wakeFD: Int32
    private let timerFD: Int32
    private var readers: [Int32: () -> Void] = [:]
    /// Handlers for "writable again" on some readers' descriptors (a socket with queued output).
    private var writers: [Int32: () -> Void] = [:]
    /// Work from other threads. A struct rather than a tuple of closures: stored at its own
    /// abstraction level, so queueing needs no reabstraction thunk (an allocation per post).
    private struct Posted {
        let locked: Bool
        let work: @Sendable () -> Void
    }
    private let posted = Mutex<[Posted]>([])
    /// Loop thread only: the batch being run. It swaps buffers with `posted`, so in steady
    /// state posting and running allocate nothing (block completions take this path).
    private var running: [Posted] = []
    private let stopped = Atomic<Bool>(false)
    private var armedHostDeadline: UInt64?

    public init(lock: DeviceLock, clock: VirtualClock) throws(SystemError) {
        self.lock = lock
        timers = TimerList(clock: clock)
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw SystemError("epoll_create1") }
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard wakeFD >= 0 else { throw SystemError("eventfd") }
        timerFD = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard timerFD >= 0 else { throw SystemError("timerfd_create") }
        for fd in [wakeFD, timerFD] {
            guard sdm_epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, UInt32(EPOLLIN.rawValue), UInt64(fd)) == 0 else {
                throw SystemError("epoll_ctl")
            }
        }
        timers.onChange = { [unowned self] in self.armTimerFD() }
    }

    deinit {
        close(epollFD)
        close(wakeFD)
        close(timerFD)
    }

    public func makeTimer(_ fire: @escaping () -> Void) -> any DeviceTimer {
        timers.makeTimer(fire)
    }

    /// Calls `handler` whenever `fd` is readable (or hung up). Loop thread, before `run`, or any
    /// thread holding the `DeviceLock` (the loop reads `readers` only under it; virtio adds
    /// doorbells from vCPU exits).
    public func addReader(_ fd: Int32, _ handler: @escaping () -> Void) throws(SystemError) {
        guard sdm_epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, UInt32(EPOLLIN.rawValue), UInt64(UInt32(bitPattern: fd))) == 0 else {
            throw SystemError("epoll_ctl(add \(fd))")
        }
        readers[fd] = handler
    }

    /// Same threads as `addReader`. An event already returned for `fd` finds no handler.
    public func removeReader(_ fd: Int32) {
        writers.removeValue(forKey: fd)
        guard readers.removeValue(forKey: fd) != nil else { return }
        _ = sdm_epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Calls `handler` whenever the reader `fd` can be written, until it is set to nil: for
    /// output that did not fit the socket buffer. Same threads as `addReader`.
    public func setWriter(_ fd: Int32, _ handler: (() -> Void)?) throws(SystemError) {
        guard readers[fd] != nil else { throw SystemError("epoll_ctl(writer \(fd) without a reader)", errno: EBADF) }
        guard (writers[fd] == nil) != (handler == nil) else {
            writers[fd] = handler
            return
        }
        let events = UInt32(EPOLLIN.rawValue) | (handler == nil ? 0 : UInt32(EPOLLOUT.rawValue))
        guard sdm_epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, events, UInt64(UInt32(bitPattern: fd))) == 0 else {
            throw SystemError("epoll_ctl(mod \(fd))")
        }
        writers[fd] = handler
    }

    /// Runs `work` on the loop thread, under the device lock. Safe from any thread.
    public func post(_ work: @escaping @Sendable () -> Void) {
        enqueue(locked: true, work)
    }

    /// Runs `work` on the loop thread without the device lock: for machine-level operations
    /// (pause, reset, quit) that must wait for vCPUs, which may themselves be waiting for the
    /// lock to finish an exit.
    public func postUnlocked(_ work: @escaping @Sendable () -> Void) {
        enqueue(locked: false, work)
    }

    private func enqueue(locked: Bool, _ work: @escaping @Sendable () -> Void) {
        posted.withLock { $0.append(Posted(locked: locked, work: work)) }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Tells the loop the clock was paused or resumed, so timer deadlines are recomputed.
    public func clockChanged() {
        post { [unowned self] in self.armTimerFD() }
    }

    public func run() {
        var tokens = [UInt64](repeating: 0, count: 32)
        var events = [UInt32](repeating: 0, count: 32)
        while !stopped.load(ordering: .acquiring) {
            let n = sdm_epoll_wait(epollFD, &tokens, &events, 32, -1)
            if n < 0 {
                if errno == EINTR { continue }
                GuestErrorLog.stderrSink("swiftdm: epoll_wait: \(String(cString: strerror(errno)))")
                return
            }
            for i in 0..<Int(n) {
                let fd = Int32(truncatingIfNeeded: tokens[i])
                if fd == wakeFD {
                    var value: UInt64 = 0
                    _ = read(wakeFD, &value, 8)
                    runPosted()
                } else if fd == timerFD {
                    var value: UInt64 = 0
                    _ = read(timerFD, &value, 8)
                    lock.withLock { armedHostDeadline = nil }
                } else {
                    let writable = events[i] & UInt32(EPOLLOUT.rawValue) != 0
                    let readable = events[i] & ~UInt32(EPOLLOUT.rawValue) != 0
                    lock.withLock {
                        if writable { writers[fd]?() }
                        // A writer may have closed the descriptor; its reader is gone then.
                        if readable { readers[fd]?() }
                    }
                }
            }
            lock.withLock {
                if clock.isRunning { timers.fireDue(now: clock.now()) }
                armTimerFD()
            }
        }
    }

    private func runPosted() {
        posted.withLock { swap(&$0, &running) }
        for i in running.indices {
            let item = running[i]
            if item.locked { lock.withLock { item.work() } } else { item.work() }
        }
        running.removeAll(keepingCapacity: true)
    }

    private func armTimerFD() {
        let target = clock.isRunning ? timers.nextDeadline.map { clock.hostTime(forGuestTime: $0) } : nil
        guard target != armedHostDeadline else { return }
        armedHostDeadline = target
        var spec = itimerspec()
        if let target {
            let t = max(target, 1)
            spec.it_value.tv_sec = Int(t / 1_000_000_000)
            spec.it_value.tv_nsec = Int(t % 1_000_000_000)
        }
        _ = timerfd_settime(timerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }
}
