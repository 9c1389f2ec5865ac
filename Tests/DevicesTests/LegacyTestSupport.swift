import Backends
import DMCore
import Synchronization
import XCTest

/// Records GSI levels as an interrupt controller would see them.
final class RecordingInterruptSink: InterruptSink {
    private let levels = Mutex<[UInt32: Bool]>([:])
    private let edges = Mutex<[UInt32: Int]>([:])

    func setGSI(_ gsi: UInt32, level: Bool) {
        levels.withLock { $0[gsi] = level }
        if level { edges.withLock { $0[gsi, default: 0] += 1 } }
    }
    func signalMSI(_ message: MSIMessage) {}

    func level(_ gsi: UInt32) -> Bool { levels.withLock { $0[gsi] ?? false } }
    /// How many times `gsi` went high.
    func risingEdges(_ gsi: UInt32) -> Int { edges.withLock { $0[gsi] ?? 0 } }
}

/// A clock the test moves by hand.
final class ManualTime: Sendable {
    private let nanoseconds = Atomic<UInt64>(1_000_000_000)
    var now: UInt64 { nanoseconds.load(ordering: .relaxed) }
    func advance(by delta: UInt64) { nanoseconds.add(delta, ordering: .relaxed) }
}

/// Interrupts, timers and guest memory for one device under test.
final class LegacyTestRig {
    let sink = RecordingInterruptSink()
    let router: InterruptRouter
    let time = ManualTime()
    let clock: VirtualClock
    let timers: TimerList
    let ram: HostMemory
    let memory: PhysicalMemory

    init(ramSize: Int = 1 << 20) throws {
        router = InterruptRouter(sink: sink)
        let time = self.time
        clock = VirtualClock(source: { time.now })
        timers = TimerList(clock: clock)
        ram = try HostMemory(size: ramSize)
        memory = PhysicalMemory(regions: [
            .init(guestAddress: 0, size: UInt64(ramSize), backing: ram, backingOffset: 0, writable: true),
        ])
    }

    /// Moves guest time forward, firing due timers.
    func advance(nanoseconds: UInt64) {
        time.advance(by: nanoseconds)
        timers.fireDue(now: clock.now())
    }
}

/// A backend that records output and lets the test push input respecting receiveCapacity.
final class RecordingCharBackend: CharBackend {
    let id = "test"
    let filename = "test"
    var output: [UInt8] = []
    var pendingInput: [UInt8] = []
    var readyCalls = 0
    weak var frontend: (any CharFrontend)?

    func attach(_ frontend: any CharFrontend) { self.frontend = frontend }
    func write(byte: UInt8) { output.append(byte) }
    func frontendReady() {
        readyCalls += 1
        deliver()
    }

    func send(_ bytes: [UInt8]) {
        pendingInput += bytes
        deliver()
    }

    private func deliver() {
        guard let frontend else { return }
        let n = min(frontend.receiveCapacity, pendingInput.count)
        guard n > 0 else { return }
        let chunk = pendingInput[..<n]
        pendingInput.removeFirst(n)
        frontend.receive(chunk)
    }
}

extension BusDevice {
    func readByte(_ offset: UInt64, region: Int = 0) -> UInt8 {
        UInt8(truncatingIfNeeded: read(region: region, offset: offset, size: 1))
    }
    func writeByte(_ offset: UInt64, _ value: UInt8, region: Int = 0) {
        write(region: region, offset: offset, size: 1, value: UInt64(value))
    }
}

func roundTrip<D: Snapshottable>(_ source: D, into target: D) throws {
    var writer = StateWriter()
    source.saveState(to: &writer)
    var reader = StateReader(bytes: writer.bytes, section: target.stateID)
    try target.loadState(from: &reader, version: source.stateVersion)
    XCTAssertTrue(reader.isAtEnd)
}
