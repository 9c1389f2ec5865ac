import XCTest
final class PlaceholderMonitorTests: XCTestCase { func testNothing() {} }
