import XCTest
@testable import DMCore

final class HostDeviceRAMTests: XCTestCase {
    /// Unmapped, the device's own writes are the whole truth; mapped, the guest's writes come
    /// from the platform's write log (KVM's), or are unknown without one.
    func testDirtyPagesComeFromTheDeviceAndThePlatformLog() throws {
        let ram = try HostDeviceRAM(size: 256 << 10)
        var bitmap = [UInt64](repeating: 0, count: 1)
        XCTAssertTrue(ram.collectDirtyPages(into: &bitmap))
        XCTAssertEqual(bitmap, [.max], "everything is new at first")

        bitmap = [0]
        ram.deviceWrote(offset: 4096 * 3 + 10, length: 4096)
        XCTAssertTrue(ram.collectDirtyPages(into: &bitmap))
        XCTAssertEqual(bitmap, [0b11000])

        ram.map(at: 0xE000_0000)
        bitmap = [0]
        XCTAssertFalse(ram.collectDirtyPages(into: &bitmap), "the guest's writes are unknown without a log")

        var logAnswers = [false, true]
        ram.collectGuestWrites = { bitmap in
            bitmap[0] |= 1 << 40
            return logAnswers.removeFirst()
        }
        XCTAssertFalse(ram.collectDirtyPages(into: &bitmap))
        bitmap = [0]
        ram.deviceWrote(offset: 0, length: 1)
        XCTAssertTrue(ram.collectDirtyPages(into: &bitmap))
        XCTAssertEqual(bitmap, [1 | 1 << 40], "the device's and the guest's writes together")
    }
}
