@testable import Backends
import DMCore
import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A hand-run stand-in for the event loop: poll(2) over the registered descriptors, and a
/// timer list on a clock the test moves.
final class ManualNanoseconds: Sendable {
    let value = Atomic<UInt64>(1_000_000_000)
}

final class ManualLoop: CharBackendLoop {
    private let nanoseconds = ManualNanoseconds()
    let clock: VirtualClock
    let timers: TimerList
    private(set) var readers: [Int32: () -> Void] = [:]

    init() {
        let counter = nanoseconds
        clock = VirtualClock(source: { counter.value.load(ordering: .relaxed) })
        timers = TimerList(clock: clock)
    }

    func addReader(_ fd: Int32, _ handler: @escaping () -> Void) throws(SystemError) {
        // epoll refuses regular files; mimic it.
        var info = stat()
        if fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFREG { throw SystemError("epoll_ctl", errno: EPERM) }
        readers[fd] = handler
    }

    func removeReader(_ fd: Int32) { readers[fd] = nil }

    func makeTimer(_ fire: @escaping () -> Void) -> any DeviceTimer { timers.makeTimer(fire) }

    func advance(nanoseconds delta: UInt64) {
        nanoseconds.value.add(delta, ordering: .relaxed)
        timers.fireDue(now: clock.now())
    }

    /// One round: waits up to `timeout` ms, then runs the handler of each readable descriptor.
    @discardableResult
    func runOnce(timeout: Int32 = 20) -> Int {
        var entries = readers.keys.sorted().map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard !entries.isEmpty else { usleep(UInt32(timeout) * 1000); return 0 }
        let n = poll(&entries, nfds_t(entries.count), timeout)
        guard n > 0 else { return 0 }
        var ran = 0
        for entry in entries where entry.revents != 0 {
            if let handler = readers[entry.fd] {
                handler()
                ran += 1
            }
        }
        return ran
    }

    /// Runs rounds until `condition` holds (or about two seconds pass).
    func run(until condition: () -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        for _ in 0..<100 {
            if condition() { return }
            runOnce()
        }
        XCTAssertTrue(condition(), "timed out", file: file, line: line)
    }
}

/// A frontend with an adjustable amount of room.
final class RecordingFrontend: CharFrontend {
    var received: [UInt8] = []
    var capacity = 1024
    var receiveCapacity: Int { max(0, capacity - received.count) }
    func receive(_ bytes: ArraySlice<UInt8>) { received += bytes }
}

func temporaryPath(_ name: String) -> String {
    "/tmp/swiftdm-test-\(getpid())-\(name)"
}

func readAll(fd: Int32, count: Int, timeoutMs: Int32 = 2000) -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 256)
    while out.count < count {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, timeoutMs) == 1 else { break }
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return out
}
