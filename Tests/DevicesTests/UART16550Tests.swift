import Backends
import DMCore
@testable import Devices
import XCTest

final class UART16550Tests: XCTestCase {
    // Register offsets.
    let rbr: UInt64 = 0, ier: UInt64 = 1, iir: UInt64 = 2, lcr: UInt64 = 3
    let mcr: UInt64 = 4, lsr: UInt64 = 5, msr: UInt64 = 6, scr: UInt64 = 7

    var rig: LegacyTestRig!
    var backend: RecordingCharBackend!
    var uart: UART16550!

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        backend = RecordingCharBackend()
        uart = UART16550(backend: backend, irq: rig.router.line(gsi: 4), stateID: "uart@3f8", timers: rig.timers)
    }

    func testResetValues() {
        XCTAssertEqual(uart.readByte(iir), 0x01)
        XCTAssertEqual(uart.readByte(lsr), 0x60)
        XCTAssertEqual(uart.readByte(msr), 0xB0)
        XCTAssertEqual(uart.readByte(mcr), 0x08)
        XCTAssertEqual(uart.readByte(ier), 0)
        XCTAssertFalse(rig.sink.level(4))
    }

    func testTransmitGoesToBackend() {
        for b in Array("hi\n".utf8) { uart.writeByte(rbr, b) }
        XCTAssertEqual(backend.output, Array("hi\n".utf8))
        XCTAssertEqual(uart.readByte(lsr) & 0x60, 0x60)
    }

    func testDivisorLatch() {
        uart.writeByte(lcr, 0x83)
        uart.writeByte(rbr, 0x01)
        uart.writeByte(ier, 0x02)
        XCTAssertEqual(uart.readByte(rbr), 0x01)
        XCTAssertEqual(uart.readByte(ier), 0x02)
        uart.writeByte(lcr, 0x03)
        XCTAssertEqual(uart.readByte(ier), 0, "IER untouched by DLAB writes")
        XCTAssertEqual(uart.readByte(lcr), 0x03)
        XCTAssertTrue(backend.output.isEmpty, "divisor writes are not transmitted")
    }

    func testScratch() {
        uart.writeByte(scr, 0x5A)
        XCTAssertEqual(uart.readByte(scr), 0x5A)
    }

    func testTHREInterruptRaisedOnEnableAndClearedByIIRRead() {
        uart.writeByte(ier, 0x02)
        XCTAssertTrue(rig.sink.level(4))
        XCTAssertEqual(uart.readByte(iir), 0x02)
        XCTAssertFalse(rig.sink.level(4), "reading IIR clears THRE when it is the source")
        XCTAssertEqual(uart.readByte(iir), 0x01)
        // Writing THR re-raises it once the byte has gone.
        uart.writeByte(rbr, 0x41)
        XCTAssertTrue(rig.sink.level(4))
        XCTAssertEqual(rig.sink.risingEdges(4), 2)
        // Re-enabling THRI (0 → 1) re-arms it after an IIR read cleared it.
        _ = uart.readByte(iir)
        uart.writeByte(ier, 0x00)
        uart.writeByte(ier, 0x02)
        XCTAssertTrue(rig.sink.level(4))
        // Writing the same IER again does not re-arm.
        _ = uart.readByte(iir)
        uart.writeByte(ier, 0x02)
        XCTAssertFalse(rig.sink.level(4))
    }

    func testIRQIgnoresOUT2LikeQEMU() {
        uart.writeByte(mcr, 0x00)
        uart.writeByte(ier, 0x02)
        XCTAssertTrue(rig.sink.level(4))
    }

    func testReceiveWithoutFIFO() {
        uart.writeByte(ier, 0x01)
        XCTAssertEqual(uart.receiveCapacity, 1)
        backend.send([0x61, 0x62])
        XCTAssertTrue(rig.sink.level(4))
        XCTAssertEqual(uart.readByte(iir), 0x04)
        XCTAssertEqual(uart.readByte(lsr) & 0x01, 0x01)
        XCTAssertEqual(uart.readByte(rbr), 0x61)
        // The backend is told there is room and delivers the next byte.
        XCTAssertEqual(uart.readByte(rbr), 0x62)
        XCTAssertEqual(uart.readByte(lsr) & 0x01, 0)
        XCTAssertFalse(rig.sink.level(4))
    }

    func testOverrunWithoutFIFO() {
        uart.receive([1])
        uart.receive([2])
        let status = uart.readByte(lsr)
        XCTAssertEqual(status & 0x03, 0x03)
        XCTAssertEqual(uart.readByte(lsr) & 0x02, 0, "OE clears on read")
        XCTAssertEqual(uart.readByte(rbr), 2)
    }

    func testFIFOTriggerLevelAndTimeout() {
        uart.writeByte(fcr, 0x81)  // enable, trigger 8
        XCTAssertEqual(uart.readByte(iir) & 0xC0, 0xC0)
        uart.writeByte(ier, 0x01)
        backend.send(Array(0..<5))
        XCTAssertFalse(rig.sink.level(4), "below the trigger level")
        rig.advance(nanoseconds: 10_000_000)
        XCTAssertTrue(rig.sink.level(4), "character timeout")
        XCTAssertEqual(uart.readByte(iir) & 0x0F, 0x0C)
        XCTAssertEqual(uart.readByte(rbr), 0)
        XCTAssertFalse(rig.sink.level(4), "reading RBR clears the timeout")
        backend.send(Array(5..<9))
        XCTAssertTrue(rig.sink.level(4), "trigger level reached")
        XCTAssertEqual(uart.readByte(iir) & 0x0F, 0x04)
        var got: [UInt8] = []
        while uart.readByte(lsr) & 0x01 != 0 { got.append(uart.readByte(rbr)) }
        XCTAssertEqual(got, Array(1..<9))
        XCTAssertFalse(rig.sink.level(4))
    }

    var fcr: UInt64 { iir }

    func testFIFOOverrunKeepsContentsAndCapacity() {
        uart.writeByte(fcr, 0x01)
        XCTAssertEqual(uart.receiveCapacity, 16)
        uart.receive(ArraySlice(0..<20))
        XCTAssertEqual(uart.receiveCapacity, 0)
        XCTAssertEqual(uart.readByte(lsr) & 0x02, 0x02)
        var got: [UInt8] = []
        while uart.readByte(lsr) & 0x01 != 0 { got.append(uart.readByte(rbr)) }
        XCTAssertEqual(got, Array(0..<16))
        XCTAssertEqual(uart.readByte(rbr), 0, "empty FIFO reads 0")
    }

    func testFrontendReadyWhenDrained() {
        uart.writeByte(fcr, 0x01)
        backend.send(Array(repeating: 0x55, count: 40))
        XCTAssertEqual(backend.pendingInput.count, 24)
        var total = 0
        while uart.readByte(lsr) & 0x01 != 0 {
            _ = uart.readByte(rbr)
            total += 1
            XCTAssertLessThan(total, 100)
        }
        XCTAssertEqual(total, 40)
        XCTAssertTrue(backend.pendingInput.isEmpty)
    }

    func testFIFOReset() {
        uart.writeByte(fcr, 0x01)
        uart.receive([1, 2, 3])
        uart.writeByte(fcr, 0x03)
        XCTAssertEqual(uart.readByte(lsr) & 0x01, 0)
        // Disabling the FIFOs also flushes.
        uart.receive([4])
        uart.writeByte(fcr, 0x00)
        XCTAssertEqual(uart.readByte(lsr) & 0x01, 0)
        XCTAssertEqual(uart.readByte(iir) & 0xC0, 0)
    }

    func testLineStatusInterruptHasPriority() {
        uart.writeByte(ier, 0x07)
        uart.receive([1])
        uart.receive([2])  // overrun
        XCTAssertEqual(uart.readByte(iir), 0x06)
        _ = uart.readByte(lsr)
        XCTAssertEqual(uart.readByte(iir), 0x04)
        _ = uart.readByte(rbr)
        XCTAssertEqual(uart.readByte(iir), 0x02)
    }

    func testLoopback() {
        uart.writeByte(mcr, 0x10 | 0x0F)
        XCTAssertEqual(uart.readByte(msr), 0xF0)
        uart.writeByte(mcr, 0x10 | 0x01)
        XCTAssertEqual(uart.readByte(msr), 0x20)
        XCTAssertEqual(uart.receiveCapacity, 0)
        uart.writeByte(rbr, 0x99)
        XCTAssertTrue(backend.output.isEmpty, "loopback keeps bytes off the line")
        XCTAssertEqual(uart.readByte(lsr) & 0x01, 0x01)
        XCTAssertEqual(uart.readByte(rbr), 0x99)
        uart.writeByte(mcr, 0x08)
        XCTAssertEqual(uart.readByte(msr), 0xB0)
    }

    func testWideAccessesAreRejectedNotFatal() {
        XCTAssertEqual(uart.read(region: 0, offset: 0, size: 2), 0xFFFF)
        uart.write(region: 0, offset: 0, size: 4, value: 0x41424344)
        XCTAssertTrue(backend.output.isEmpty)
    }

    func testCharacterTimeoutWithoutTimers() {
        let plain = UART16550(backend: nil, irq: rig.router.line(gsi: 3), stateID: "uart@2f8")
        plain.writeByte(2, 0xC1)
        plain.writeByte(1, 0x01)
        plain.receive([0x41])
        XCTAssertTrue(rig.sink.level(3))
        XCTAssertEqual(plain.readByte(2), 0xCC)
        XCTAssertEqual(plain.readByte(0), 0x41)
        XCTAssertFalse(rig.sink.level(3))
    }

    func testStateRoundTripAndReset() throws {
        uart.writeByte(fcr, 0x41)
        uart.writeByte(lcr, 0x80)
        uart.writeByte(rbr, 0x03)
        uart.writeByte(lcr, 0x1B)
        uart.writeByte(ier, 0x05)
        uart.writeByte(scr, 0x77)
        uart.receive([9, 8, 7, 6, 5])
        XCTAssertTrue(rig.sink.level(4))
        let other = UART16550(backend: nil, irq: rig.router.line(gsi: 5), stateID: "uart@3f8")
        try roundTrip(uart, into: other)
        XCTAssertTrue(rig.sink.level(5))
        XCTAssertEqual(other.readByte(iir), 0xC4)
        XCTAssertEqual(other.readByte(lcr), 0x1B)
        XCTAssertEqual(other.readByte(scr), 0x77)
        var got: [UInt8] = []
        while other.readByte(lsr) & 0x01 != 0 { got.append(other.readByte(rbr)) }
        XCTAssertEqual(got, [9, 8, 7, 6, 5])
        other.writeByte(lcr, 0x80)
        XCTAssertEqual(other.readByte(rbr), 0x03)

        uart.reset()
        XCTAssertFalse(rig.sink.level(4))
        XCTAssertEqual(uart.readByte(iir), 0x01)
        XCTAssertEqual(uart.readByte(lsr), 0x60)
        XCTAssertEqual(uart.readByte(scr), 0)
    }

    func testLoadRejectsHostileState() {
        var w = StateWriter()
        w.put(UInt16(1))
        for r: UInt8 in [0xFF, 1, 0, 0, 0, 0x60, 0, 0, 0] { w.put(r) }
        w.put(false); w.put(false); w.put(bytes: [UInt8]())
        var r = StateReader(bytes: w.bytes, section: "uart")
        XCTAssertThrowsError(try uart.loadState(from: &r, version: 1))

        var w2 = StateWriter()
        w2.put(UInt16(1))
        for r: UInt8 in [0, 1, 0x01, 0, 0, 0x60, 0, 0, 0] { w2.put(r) }
        w2.put(false); w2.put(false); w2.put(bytes: [UInt8](repeating: 1, count: 17))
        var r2 = StateReader(bytes: w2.bytes, section: "uart")
        XCTAssertThrowsError(try uart.loadState(from: &r2, version: 1))

        var r3 = StateReader(bytes: [1, 2, 3], section: "uart")
        XCTAssertThrowsError(try uart.loadState(from: &r3, version: 1))
        var r4 = StateReader(bytes: [], section: "uart")
        XCTAssertThrowsError(try uart.loadState(from: &r4, version: 2))
    }
}
