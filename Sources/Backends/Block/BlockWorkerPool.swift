#if canImport(Glibc)
import Glibc
#endif

/// A few pthreads taking closures from a bounded FIFO. Block I/O runs here so that the vCPU,
/// ioreq and event-loop threads never block on the disk. Threads start on first use.
public final class BlockWorkerPool: @unchecked Sendable {
    private let threadCount: Int
    private let capacity: Int
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let notEmpty: UnsafeMutablePointer<pthread_cond_t>
    private let notFull: UnsafeMutablePointer<pthread_cond_t>
    /// A closure wrapped in a struct: stored at its own abstraction level, so queueing it needs
    /// no reabstraction thunk (a heap allocation per request in unoptimised builds).
    private struct Work {
        let run: @Sendable () -> Void
    }
    // Guarded by `mutex`. A ring of `capacity` slots, allocated on first use, so a steady
    // stream of requests allocates nothing here.
    private var ring: [Work?] = []
    private var head = 0
    private var pending = 0
    private var started = false
    private var stopping = false
    private var threads: [pthread_t] = []

    init(threads: Int, capacity: Int) {
        threadCount = max(1, threads)
        self.capacity = max(1, capacity)
        mutex = .allocate(capacity: 1)
        notEmpty = .allocate(capacity: 1)
        notFull = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(notEmpty, nil)
        pthread_cond_init(notFull, nil)
    }

    deinit {
        shutdown()
        pthread_mutex_destroy(mutex)
        pthread_cond_destroy(notEmpty)
        pthread_cond_destroy(notFull)
        mutex.deallocate()
        notEmpty.deallocate()
        notFull.deallocate()
    }

    func enqueue(_ work: @escaping @Sendable () -> Void) {
        pthread_mutex_lock(mutex)
        if !started { startThreads() }
        while pending >= capacity && !stopping { pthread_cond_wait(notFull, mutex) }
        if stopping {
            pthread_mutex_unlock(mutex)
            work()  // after shutdown, run inline rather than lose the completion
            return
        }
        if ring.isEmpty { ring = [Work?](repeating: nil, count: capacity) }
        ring[(head + pending) % capacity] = Work(run: work)
        pending += 1
        pthread_cond_signal(notEmpty)
        pthread_mutex_unlock(mutex)
    }

    private func startThreads() {
        started = true
        for _ in 0..<threadCount {
            var thread = pthread_t()
            let context = Unmanaged.passRetained(self).toOpaque()
            let rc = pthread_create(&thread, nil, { argument in
                guard let argument else { return nil }
                let pool = Unmanaged<BlockWorkerPool>.fromOpaque(argument).takeRetainedValue()
                pool.workerLoop()
                return nil
            }, context)
            if rc == 0 {
                threads.append(thread)
            } else {
                Unmanaged<BlockWorkerPool>.fromOpaque(context).release()
            }
        }
    }

    private func workerLoop() {
        while true {
            pthread_mutex_lock(mutex)
            while pending == 0 && !stopping { pthread_cond_wait(notEmpty, mutex) }
            if pending == 0 && stopping {
                pthread_mutex_unlock(mutex)
                return
            }
            let work = ring[head]
            ring[head] = nil
            head = (head + 1) % capacity
            pending -= 1
            pthread_cond_signal(notFull)
            pthread_mutex_unlock(mutex)
            work?.run()
        }
    }

    /// Finishes queued work and joins the threads, leaving the driver open. Idempotent.
    public func shutdownWorkers() { shutdown() }

    /// Finishes queued work and joins the threads. Idempotent.
    func shutdown() {
        pthread_mutex_lock(mutex)
        stopping = true
        let joining = threads
        threads = []
        pthread_cond_broadcast(notEmpty)
        pthread_cond_broadcast(notFull)
        pthread_mutex_unlock(mutex)
        let me = pthread_self()
        for thread in joining where pthread_equal(thread, me) == 0 { pthread_join(thread, nil) }
    }
}
