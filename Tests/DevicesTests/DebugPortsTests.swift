import DMCore
@testable import Devices
import XCTest

final class DebugPortsTests: XCTestCase {
    func testDebugConsoleWritesAndReadsBack() {
        let backend = RecordingCharBackend()
        let console = DebugConsole(backend: backend)
        for b in Array("SeaBIOS\n".utf8) { console.writeByte(0, b) }
        XCTAssertEqual(backend.output, Array("SeaBIOS\n".utf8))
        XCTAssertEqual(console.readByte(0), 0xE9)
        console.write(region: 0, offset: 0, size: 2, value: 0x4141)
        XCTAssertEqual(backend.output.count, 8, "wide writes are rejected, as QEMU's device does")
        XCTAssertEqual(DebugConsole(backend: nil, readback: 0x00).readByte(0), 0)
    }

    func testPOSTPort() throws {
        let port = POSTPort()
        port.writeByte(0, 0x55)
        XCTAssertEqual(port.lastValue, 0x55)
        XCTAssertEqual(port.read(region: 0, offset: 0, size: 1), 0xFF)
        XCTAssertEqual(port.read(region: 0, offset: 0, size: 2), 0xFFFF)
        let other = POSTPort()
        try roundTrip(port, into: other)
        XCTAssertEqual(other.lastValue, 0x55)
        port.reset()
        XCTAssertEqual(port.lastValue, 0)
    }

    func testDebugExitStatus() throws {
        var statuses: [Int32] = []
        let exit = try ISADebugExit(iobase: 0xF4, iosize: 4) { statuses.append($0) }
        exit.writeByte(0, 0x10)
        exit.write(region: 0, offset: 0, size: 4, value: 0x8000_0000)
        exit.write(region: 0, offset: 2, size: 2, value: 0x1)
        XCTAssertEqual(statuses, [0x21, 1, 3])
        XCTAssertEqual(exit.read(region: 0, offset: 0, size: 4), 0)
        XCTAssertEqual(exit.iobase, 0xF4)
    }

    func testDebugExitRangeValidation() {
        XCTAssertThrowsError(try ISADebugExit(iobase: 0xFFFF, iosize: 2) { _ in })
        XCTAssertThrowsError(try ISADebugExit(iobase: 0x501, iosize: 0) { _ in })
        XCTAssertThrowsError(try ISADebugExit(iobase: 0x10000, iosize: 1) { _ in })
        XCTAssertNoThrow(try ISADebugExit(iobase: 0xFFFF, iosize: 1) { _ in })
        let defaults = ISADebugExit { _ in }
        XCTAssertEqual(defaults.iobase, 0x501)
        XCTAssertEqual(defaults.iosize, 2)
    }
}

final class Port92Tests: XCTestCase {
    func testA20AndFastReset() throws {
        let port = Port92()
        var a20: [Bool] = []
        var resets = 0
        port.onA20Change = { a20.append($0) }
        port.onResetRequest = { resets += 1 }
        port.writeByte(0, 0x02)
        XCTAssertEqual(a20, [true])
        XCTAssertEqual(port.readByte(0), 0x02)
        port.writeByte(0, 0x03)
        XCTAssertEqual(resets, 1)
        port.writeByte(0, 0x03)
        XCTAssertEqual(resets, 1, "only a rising edge of bit 0 resets")
        XCTAssertEqual(a20, [true], "A20 reported on change only")
        port.reset()
        XCTAssertEqual(port.readByte(0), 0x02)
        port.writeByte(0, 0x01)
        XCTAssertEqual(resets, 2)
        XCTAssertEqual(a20, [true, false])
        let other = Port92()
        try roundTrip(port, into: other)
        XCTAssertEqual(other.readByte(0), 0x01)
    }
}
