import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Parks vCPU threads while the machine is paused, being reset or stopping, and tells the
/// pauser when every vCPU is out of the guest. A pthread mutex and condition variable, because
/// the waiters are plain threads, not tasks.
final class RunGate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var paused: Bool {
        didSet { attention.store(paused || stopped, ordering: .releasing) }
    }
    private var stopped = false {
        didSet { attention.store(paused || stopped, ordering: .releasing) }
    }
    private var parked = 0
    /// Mirrors `paused || stopped` so the per-exit check needs no lock. A pauser sets it
    /// before kicking, so a vCPU that misses it still leaves the guest at once.
    private let attention = Atomic<Bool>(true)

    init(paused: Bool) {
        self.paused = paused
        attention.store(paused, ordering: .releasing)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Called by a vCPU before entering the guest. Blocks while paused; returns false when the
    /// vCPU must end. `clearKick` runs under the gate's lock once the vCPU may run, so the
    /// "leave the guest at once" flag is cleared only while no pause can slip in between.
    /// The lock is skipped when nothing is pending, unless the vCPU was just kicked (its
    /// immediate-exit flag may still be set from a pause that has already ended).
    func checkpoint(kicked: Bool, clearKick: () -> Void) -> Bool {
        if !kicked && !attention.load(ordering: .acquiring) { return true }
        return locked {
            if paused && !stopped {
                parked += 1
                pthread_cond_broadcast(condition)
                while paused && !stopped { pthread_cond_wait(condition, mutex) }
                parked -= 1
            }
            if stopped { return false }
            clearKick()
            return true
        }
    }

    /// A vCPU that hit a reset or a fatal condition stops itself until the machine resumes.
    func pauseSelf() {
        locked { paused = true }
    }

    /// Requests a pause without waiting for it: safe from a vCPU thread in the middle of an exit.
    func requestPause(kick: () -> Void) {
        locked {
            paused = true
            kick()
        }
    }

    /// Requests a pause; `kick` is called for every vCPU under the lock (it sets the vCPU's
    /// immediate-exit flag and signals its thread). Returns once `count` vCPUs are parked.
    func pause(count: Int, kick: () -> Void) {
        locked {
            paused = true
            kick()
            while parked < count && !stopped { pthread_cond_wait(condition, mutex) }
        }
    }

    func resume() {
        locked {
            paused = false
            pthread_cond_broadcast(condition)
        }
    }

    func stop(kick: () -> Void) {
        locked {
            stopped = true
            kick()
            pthread_cond_broadcast(condition)
        }
    }

    var isPaused: Bool { locked { paused } }
}
