import XCTest
@testable import DMCore

final class RecordingDevice: BusDevice {
    var registers = [UInt64: UInt64]()
    var accesses: [(region: Int, offset: UInt64, size: Int, write: Bool)] = []
    func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        accesses.append((region, offset, size, false))
        return registers[offset] ?? (0xA0 + offset)
    }
    func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        accesses.append((region, offset, size, true))
        registers[offset] = value
    }
}

final class BusTests: XCTestCase {
    func testRegistrationRejectsOverlaps() throws {
        let bus = Bus(name: "io", unassignedValue: .max)
        let a = RecordingDevice(), b = RecordingDevice()
        try bus.register(a, base: 0x3F8, length: 8, name: "uart")
        XCTAssertThrowsError(try bus.register(b, base: 0x3FF, length: 1, name: "late")) { error in
            XCTAssertEqual(error as? BusError, .overlap(name: "late", base: 0x3FF, length: 1, existing: "uart"))
        }
        XCTAssertThrowsError(try bus.register(b, base: 0x3F0, length: 9, name: "early"))
        XCTAssertThrowsError(try bus.register(b, base: 0x3F8, length: 8, name: "same"))
        XCTAssertThrowsError(try bus.register(b, base: 0, length: 0, name: "empty"))
        XCTAssertThrowsError(try bus.register(b, base: .max, length: 2, name: "wraps"))
        try bus.register(b, base: 0x3F0, length: 8, name: "below")
        try bus.register(b, base: 0x400, length: 1, name: "above")
        XCTAssertEqual(bus.mappings.map(\.name), ["below", "uart", "above"])
    }

    func testDispatchPassesOffsetsRegionsAndSizes() throws {
        let bus = Bus(name: "io", unassignedValue: .max)
        let dev = RecordingDevice()
        try bus.register(dev, base: 0x60, length: 1, region: 0, name: "data")
        try bus.register(dev, base: 0x64, length: 1, region: 1, name: "cmd")
        bus.write(0x64, size: 1, value: 0xAA)
        XCTAssertEqual(dev.accesses.last?.region, 1)
        XCTAssertEqual(dev.accesses.last?.offset, 0)
        XCTAssertEqual(dev.registers[0], 0xAA)
        _ = bus.read(0x60, size: 1)
        XCTAssertEqual(dev.accesses.last?.region, 0)
        XCTAssertEqual(dev.accesses.last?.write, false)
    }

    func testUnassignedAccessesReturnTheBusValueAndAreReported() {
        let bus = Bus(name: "io", unassignedValue: .max)
        var reported: [(UInt64, Bool)] = []
        bus.onUnassigned = { address, _, write, _ in reported.append((address, write)) }
        XCTAssertEqual(bus.read(0x1234, size: 1), 0xFF)
        XCTAssertEqual(bus.read(0x1234, size: 2), 0xFFFF)
        XCTAssertEqual(bus.read(0x1234, size: 4), 0xFFFF_FFFF)
        bus.write(0x1234, size: 4, value: 7)
        XCTAssertEqual(reported.count, 4)
        XCTAssertEqual(reported.last?.1, true)
        let mmio = Bus(name: "mmio", unassignedValue: 0)
        XCTAssertEqual(mmio.read(0xE000_0000, size: 8), 0)
    }

    func testAccessStraddlingAWindowIsSplitIntoBytes() throws {
        let bus = Bus(name: "io", unassignedValue: .max)
        let dev = RecordingDevice()
        try bus.register(dev, base: 0x100, length: 2, name: "two")
        // 0xFF (unassigned), 0x100, 0x101 (device), 0x102 (unassigned)
        XCTAssertEqual(bus.read(0xFF, size: 4), 0xFF_A1_A0_FF)
        XCTAssertTrue(dev.accesses.allSatisfy { $0.size == 1 && $0.offset < 2 })
        bus.write(0x101, size: 2, value: 0xBBCC)
        XCTAssertEqual(dev.registers[1], 0xCC)
        XCTAssertEqual(dev.accesses.count, 3)
    }

    func testUnregisterRemovesOnlyThatRegion() throws {
        let bus = Bus(name: "mmio", unassignedValue: 0)
        let dev = RecordingDevice()
        try bus.register(dev, base: 0x1000, length: 0x100, region: 0, name: "bar0")
        try bus.register(dev, base: 0x2000, length: 0x100, region: 1, name: "bar1")
        bus.unregister(dev, region: 0)
        XCTAssertNil(bus.mapping(containing: 0x1000))
        XCTAssertNotNil(bus.mapping(containing: 0x20FF))
        try bus.register(RecordingDevice(), base: 0x1000, length: 0x100, name: "reuse")
    }

    func testLookupAtTheEdgesOfTheAddressSpace() throws {
        let bus = Bus(name: "mmio", unassignedValue: 0)
        let dev = RecordingDevice()
        try bus.register(dev, base: UInt64.max - 0xF, length: 0x10, name: "top")
        XCTAssertEqual(bus.mapping(containing: .max)?.name, "top")
        _ = bus.read(.max - 3, size: 4)
        XCTAssertEqual(dev.accesses.last?.offset, 0xC)
        // 8 bytes from the last address: must not wrap into offset 0 of anything.
        _ = bus.read(.max, size: 8)
    }

    func testMaskWidths() {
        XCTAssertEqual(mask(1), 0xFF)
        XCTAssertEqual(mask(2), 0xFFFF)
        XCTAssertEqual(mask(4), 0xFFFF_FFFF)
        XCTAssertEqual(mask(8), .max)
    }
}
