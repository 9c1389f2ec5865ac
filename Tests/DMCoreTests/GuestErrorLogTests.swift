import Synchronization
import XCTest
@testable import DMCore

final class GuestErrorLogTests: XCTestCase {
    func testBurstsAreCappedAndTheRestCounted() {
        let lines = Mutex<[String]>([])
        let log = GuestErrorLog(burst: 5) { line in lines.withLock { $0.append(line) } }
        for i in 0..<1_000 { log.report("dev", "error \(i)") }
        XCTAssertEqual(lines.withLock { $0.count }, 5)
        XCTAssertEqual(log.count, 1_000)
        XCTAssertTrue(lines.withLock { $0[0] }.contains("dev: error 0"))
    }
}
