import XCTest
@testable import DMCore

final class GuestMemoryTests: XCTestCase {
    func makeMemory() throws -> (PhysicalMemory, HostMemory) {
        let ram = try HostMemory(size: 0x20000)
        let rom = try HostMemory(size: 0x1000)
        rom.load([0xEA, 0x5B, 0xE0, 0x00, 0xF0], at: 0)
        let memory = PhysicalMemory(regions: [
            .init(guestAddress: 0, size: 0x10000, backing: ram, backingOffset: 0, writable: true),
            .init(guestAddress: 0x100000, size: 0x10000, backing: ram, backingOffset: 0x10000, writable: true),
            .init(guestAddress: 0xFFFF_F000, size: 0x1000, backing: rom, backingOffset: 0, writable: false),
        ])
        return (memory, ram)
    }

    func testTypedAccessIsLittleEndian() throws {
        let (memory, _) = try makeMemory()
        try memory.write(UInt32(0x1122_3344), at: 0x10)
        XCTAssertEqual(try memory.readBytes(at: 0x10, count: 4), [0x44, 0x33, 0x22, 0x11])
        XCTAssertEqual(try memory.read(UInt16.self, at: 0x11), 0x2233)
        try memory.write(UInt64.max, at: 0xFFF8)
        XCTAssertEqual(try memory.read(UInt64.self, at: 0xFFF8), .max)
    }

    func testRegionsMapToTheirBackingOffsets() throws {
        let (memory, _) = try makeMemory()
        try memory.write(at: 0x100000, bytes: [1, 2, 3])
        XCTAssertEqual(try memory.readBytes(at: 0x100000, count: 3), [1, 2, 3])
        XCTAssertEqual(try memory.readBytes(at: 0, count: 3), [0, 0, 0])
        XCTAssertEqual(try memory.read(UInt8.self, at: 0xFFFF_F000), 0xEA)
    }

    func testAccessesOutsideOrAcrossRegionsFail() throws {
        let (memory, _) = try makeMemory()
        XCTAssertThrowsError(try memory.read(UInt32.self, at: 0xFFFE)) { error in
            XCTAssertEqual((error as? GuestMemoryError)?.reason, .unmapped)
        }
        XCTAssertThrowsError(try memory.readBytes(at: 0x10000, count: 1))
        XCTAssertThrowsError(try memory.readBytes(at: 0xFFFF_FFFF, count: 2))
        XCTAssertThrowsError(try memory.readBytes(at: .max, count: 1))
        XCTAssertThrowsError(try memory.fill(at: 0, count: 0x10001, byte: 0))
        XCTAssertThrowsError(try memory.withBytes(at: 0, length: -1, forWriting: false) { _ in })
        XCTAssertThrowsError(try memory.withBytes(at: 0, length: Int.max, forWriting: false) { _ in })
    }

    func testReadOnlyRegionsRefuseWrites() throws {
        let (memory, _) = try makeMemory()
        XCTAssertThrowsError(try memory.write(UInt8(0), at: 0xFFFF_F000)) { error in
            XCTAssertEqual((error as? GuestMemoryError)?.reason, .readOnly)
        }
        XCTAssertEqual(try memory.read(UInt8.self, at: 0xFFFF_F000), 0xEA)
    }

    func testReadIntoAnOffsetOfAHostBuffer() throws {
        let (memory, _) = try makeMemory()
        try memory.write(at: 0x200, bytes: [9, 8, 7, 6])
        var buffer = [UInt8](repeating: 0, count: 8)
        try memory.read(at: 0x200, into: &buffer, offset: 2, count: 4)
        XCTAssertEqual(buffer, [0, 0, 9, 8, 7, 6, 0, 0])
        try memory.read(at: 0x200, into: &buffer, offset: 8, count: 0)
    }

    func testRemappingTakesEffectForLaterAccesses() throws {
        let (memory, ram) = try makeMemory()
        try memory.write(UInt8(0x55), at: 0x100)
        memory.setRegions([.init(guestAddress: 0x40000, size: 0x1000, backing: ram, backingOffset: 0, writable: false)])
        XCTAssertEqual(try memory.read(UInt8.self, at: 0x40100), 0x55)
        XCTAssertThrowsError(try memory.read(UInt8.self, at: 0x100))
    }
}
