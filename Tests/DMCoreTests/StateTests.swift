import XCTest
@testable import DMCore

final class Counter: Snapshottable {
    let stateID: String
    var stateVersion: UInt32 = 2
    var value: UInt32 = 0
    var name = ""
    init(_ id: String) { stateID = id }
    func saveState(to w: inout StateWriter) {
        w.put(value)
        w.put(name)
    }
    func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        value = try r.get(UInt32.self)
        name = version >= 2 ? try r.getString(maxCount: 16) : ""
    }
}

final class StateTests: XCTestCase {
    func testRoundTripAcrossDevices() throws {
        let a = Counter("a"), b = Counter("b")
        a.value = 7
        b.value = 9
        b.name = "bee"
        let blob = DeviceStateStream.save([a, b])
        let a2 = Counter("a"), b2 = Counter("b")
        try DeviceStateStream.load(blob, into: [b2, a2])
        XCTAssertEqual(a2.value, 7)
        XCTAssertEqual(b2.value, 9)
        XCTAssertEqual(b2.name, "bee")
    }

    func testRefusesStreamsThatDoNotDescribeThisMachine() {
        let a = Counter("a")
        let blob = DeviceStateStream.save([a])
        XCTAssertThrowsError(try DeviceStateStream.load(blob, into: [Counter("a"), Counter("b")])) {
            XCTAssertEqual($0 as? StateError, .missingSection("b"))
        }
        XCTAssertThrowsError(try DeviceStateStream.load(blob, into: [Counter("z")])) {
            XCTAssertEqual($0 as? StateError, .unknownSection("a"))
        }
        let older = Counter("a")
        older.stateVersion = 1
        XCTAssertThrowsError(try DeviceStateStream.load(blob, into: [older])) {
            XCTAssertEqual($0 as? StateError, .unsupportedVersion(section: "a", version: 2))
        }
        XCTAssertThrowsError(try DeviceStateStream.load(Array(blob.dropLast()), into: [Counter("a")]))
        XCTAssertThrowsError(try DeviceStateStream.load(blob + [0], into: [Counter("a")]))
        var bad = blob
        bad[0] ^= 0xFF
        XCTAssertThrowsError(try DeviceStateStream.load(bad, into: [Counter("a")])) {
            XCTAssertEqual($0 as? StateError, .badMagic)
        }
    }

    func testAFailedLoadLeavesDevicesUntouched() {
        let a = Counter("a"), b = Counter("b")
        a.value = 1
        let blob = DeviceStateStream.save([a])
        let target = Counter("a")
        target.value = 42
        XCTAssertThrowsError(try DeviceStateStream.load(blob, into: [target, b]))
        XCTAssertEqual(target.value, 42)
    }

    func testReaderBoundsEveryField() {
        var r = StateReader(bytes: [1, 0, 0], section: "s")
        XCTAssertThrowsError(try r.get(UInt32.self))
        var lengthBomb = StateReader(bytes: [0xFF, 0xFF, 0xFF, 0x7F], section: "s")
        XCTAssertThrowsError(try lengthBomb.getBytes(maxCount: 1 << 30))
        var tooLong = StateReader(bytes: [4, 0, 0, 0, 1, 2, 3, 4], section: "s")
        XCTAssertThrowsError(try tooLong.getBytes(maxCount: 3))
        var boolean = StateReader(bytes: [2], section: "s")
        XCTAssertThrowsError(try boolean.get(Bool.self))
    }

    func testRandomStreamsNeverCrashTheLoader() {
        var generator = SystemRandomNumberGenerator()
        let valid = DeviceStateStream.save([Counter("a")])
        for _ in 0..<2_000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count))) }
            _ = try? DeviceStateStream.load(bytes, into: [Counter("a")])
        }
    }
}
