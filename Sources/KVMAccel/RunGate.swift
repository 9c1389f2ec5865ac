#if canImport(Glibc)
import Glibc
#endif

/// Parks vCPU threads while the machine is paused, being reset or stopping, and tells the
/// pauser when every vCPU is out of the guest. A pthread mutex and condition variable, because
/// the waiters are plain threads, not tasks.
final class RunGate: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var paused: Bool
    private var stopped = false
    private var parked = 0

    init(paused: Bool) {
        self.paused = paused
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
    /// vCPU must end. `armed` runs under the gate's lock once the vCPU may run, so the
    /// "leave the guest at once" flag is cleared only while no pause can slip in between.
    func checkpoint(clearKick: () -> Void) -> Bool {
        locked {
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
