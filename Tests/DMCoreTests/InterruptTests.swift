import Synchronization
import XCTest
@testable import DMCore

final class RecordingSink: InterruptSink, @unchecked Sendable {
    private let log = Mutex<[(UInt32, Bool)]>([])
    private let msis = Mutex<[MSIMessage]>([])
    var changes: [(UInt32, Bool)] { log.withLock { $0 } }
    var messages: [MSIMessage] { msis.withLock { $0 } }
    func setGSI(_ gsi: UInt32, level: Bool) { log.withLock { $0.append((gsi, level)) } }
    func signalMSI(_ message: MSIMessage) { msis.withLock { $0.append(message) } }
}

final class InterruptTests: XCTestCase {
    func testSharedLineIsTheOrOfItsSources() {
        let sink = RecordingSink()
        let router = InterruptRouter(sink: sink)
        let a = router.line(gsi: 10), b = router.line(gsi: 10)
        a.raise()
        b.raise()
        a.lower()
        XCTAssertTrue(router.isAsserted(gsi: 10))
        b.lower()
        XCTAssertFalse(router.isAsserted(gsi: 10))
        XCTAssertEqual(sink.changes.map(\.1), [true, false], "the sink sees only real level changes")
    }

    func testRepeatedLevelsDoNotRetrigger() {
        let sink = RecordingSink()
        let line = InterruptRouter(sink: sink).line(gsi: 4)
        line.raise()
        line.raise()
        line.set(true)
        XCTAssertEqual(sink.changes.count, 1)
    }

    func testPulseIsARisingThenFallingEdge() {
        let sink = RecordingSink()
        let line = InterruptRouter(sink: sink).line(gsi: 1)
        line.pulse()
        XCTAssertEqual(sink.changes.map(\.0), [1, 1])
        XCTAssertEqual(sink.changes.map(\.1), [true, false])
    }

    func testLinesOnDifferentGSIsAreIndependent() {
        let sink = RecordingSink()
        let router = InterruptRouter(sink: sink)
        router.line(gsi: 3).raise()
        router.line(gsi: 4).raise()
        XCTAssertEqual(sink.changes.map(\.0), [3, 4])
    }
}
