import XCTest
@testable import Monitor

/// `info block` as QEMU 7.2's HMP prints it; the Xen lab's cd-eject check greps for
/// "not inserted".
final class HumanMonitorTests: XCTestCase {
    func testInfoBlockParagraphs() {
        let disk: JSONValue = .object(JSONObject([
            ("device", "ide0-hd0"), ("qdev", "ide0-hd0"), ("locked", false), ("removable", false),
            ("inserted", .object(JSONObject([("file", "/img/disk.img"), ("ro", false), ("drv", "raw"),
                                             ("cache", .object(JSONObject([("writeback", true), ("direct", false), ("no-flush", false)])))]))),
        ]))
        XCTAssertEqual(HumanMonitor.describeBlock(disk),
                       "ide0-hd0: /img/disk.img (raw)\n    Attached to:      ide0-hd0\n    Cache mode:       writeback\n")
        let emptyCD: JSONValue = .object(JSONObject([
            ("device", "ide-5632"), ("qdev", "ide-5632"), ("locked", false), ("removable", true), ("tray_open", true),
        ]))
        XCTAssertEqual(HumanMonitor.describeBlock(emptyCD),
                       "ide-5632: [not inserted]\n    Attached to:      ide-5632\n    Removable device: not locked, tray open\n")
        let cd: JSONValue = .object(JSONObject([
            ("device", "ide1-cd0"), ("qdev", "ide1-cd0"), ("locked", true), ("removable", true), ("tray_open", false),
            ("inserted", .object(JSONObject([("file", "/dev/fdset/1"), ("ro", true), ("drv", "raw")]))),
        ]))
        XCTAssertEqual(HumanMonitor.describeBlock(cd),
                       "ide1-cd0: /dev/fdset/1 (raw, read-only)\n    Attached to:      ide1-cd0\n    Removable device: locked, tray closed\n")
    }
}
