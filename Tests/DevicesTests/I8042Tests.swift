import DMCore
@testable import Devices
import XCTest

final class I8042Tests: XCTestCase {
    var rig: LegacyTestRig!
    var kbc: I8042!
    var resets = 0
    var a20: [Bool] = []

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        kbc = I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12))
        kbc.onResetRequest = { [unowned self] in self.resets += 1 }
        kbc.onA20Change = { [unowned self] in self.a20.append($0) }
    }

    var status: UInt8 { kbc.readByte(0, region: 1) }
    func command(_ c: UInt8) { kbc.writeByte(0, c, region: 1) }
    func data(_ d: UInt8) { kbc.writeByte(0, d, region: 0) }
    /// Reads every byte currently available.
    func drain() -> [UInt8] {
        var out: [UInt8] = []
        while status & 0x01 != 0 && out.count < 100 { out.append(kbc.readByte(0, region: 0)) }
        return out
    }

    func testSelfTestAndInterfaceTests() {
        XCTAssertEqual(status & 0x01, 0)
        command(0xAA)
        XCTAssertEqual(status & 0x05, 0x05, "output full and system flag")
        XCTAssertEqual(drain(), [0x55])
        command(0xAB)
        XCTAssertEqual(drain(), [0x00])
        command(0xA9)
        XCTAssertEqual(drain(), [0x00])
        XCTAssertEqual(status & 0x08, 0x08, "last write was a command")
        data(0xF4)
        XCTAssertEqual(status & 0x08, 0)
    }

    func testCommandByte() {
        command(0x20)
        XCTAssertEqual(drain(), [0x03])
        command(0x60)
        data(0x65)
        command(0x20)
        XCTAssertEqual(drain(), [0x65])
        XCTAssertEqual(status & 0x04, 0x04)
    }

    func testKeyboardResetRaisesIRQ1PerByte() {
        data(0xFF)
        XCTAssertTrue(rig.sink.level(1))
        XCTAssertEqual(kbc.readByte(0), 0xFA)
        XCTAssertTrue(rig.sink.level(1), "next byte loaded")
        XCTAssertEqual(rig.sink.risingEdges(1), 2, "a fresh edge for the second byte")
        XCTAssertEqual(kbc.readByte(0), 0xAA)
        XCTAssertFalse(rig.sink.level(1))
        XCTAssertEqual(kbc.readByte(0), 0xAA, "empty buffer reads the last byte")
        XCTAssertFalse(rig.sink.level(12))
    }

    func testKeyboardIRQMaskedByCommandByte() {
        command(0x60)
        data(0x00)
        data(0xEE)
        XCTAssertEqual(status & 0x01, 0x01)
        XCTAssertFalse(rig.sink.level(1))
        XCTAssertEqual(drain(), [0xEE])
    }

    func testIdentifyWithAndWithoutTranslation() {
        data(0xF2)
        XCTAssertEqual(drain(), [0xFA, 0xAB, 0x83])
        command(0x60)
        data(0x43)
        data(0xF2)
        XCTAssertEqual(drain(), [0xFA, 0xAB, 0x41])
    }

    func testKeyboardCommandsWithArguments() {
        data(0xED); data(0x07)
        XCTAssertEqual(drain(), [0xFA, 0xFA])
        data(0xF3); data(0x20)
        XCTAssertEqual(drain(), [0xFA, 0xFA])
        data(0xF0); data(0x00)
        XCTAssertEqual(drain(), [0xFA, 0xFA, 0x02])
        data(0xF0); data(0x01)
        data(0xF0); data(0x00)
        XCTAssertEqual(drain(), [0xFA, 0xFA, 0xFA, 0xFA, 0x01])
        data(0xF0); data(0x09)
        XCTAssertEqual(drain(), [0xFA, 0xFE])
        data(0xEE)
        XCTAssertEqual(drain(), [0xEE])
        data(0x12)
        XCTAssertEqual(drain(), [0xFE], "unknown keyboard command")
        data(0xF6)
        XCTAssertEqual(drain(), [0xFA])
        data(0xF8)
        XCTAssertEqual(drain(), [0xFA], "set-3 key-type commands are acknowledged")
        command(0x60)
        data(0x43)
        data(0xF0); data(0x00)
        XCTAssertEqual(drain(), [0xFA, 0xFA, 0x41], "set 2 reported through the translator, as QEMU")
    }

    func testScanningAndTranslation() {
        kbc.keyboardInput(scancodes: [0x1C, 0xF0, 0x1C])
        XCTAssertEqual(drain(), [0x1C, 0xF0, 0x1C], "set 2 untranslated")
        command(0x60)
        data(0x47)  // translate, both interrupts, system
        kbc.keyboardInput(scancodes: [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75])
        XCTAssertEqual(drain(), [0x1E, 0x9E, 0xE0, 0x48, 0xE0, 0xC8])
        data(0xF5)
        XCTAssertEqual(drain(), [0xFA])
        kbc.keyboardInput(scancodes: [0x1C])
        XCTAssertEqual(drain(), [], "scanning disabled")
        data(0xF4)
        XCTAssertEqual(drain(), [0xFA])
        kbc.keyboardInput(scancodes: [0x29])
        XCTAssertEqual(drain(), [0x39])
    }

    func testHostInputIsBounded() {
        kbc.keyboardInput(scancodes: [UInt8](repeating: 0x1C, count: 200))
        XCTAssertEqual(drain().count, 16, "at most 16 bytes of host input are queued")
        // Replies still fit after a flood.
        kbc.keyboardInput(scancodes: [UInt8](repeating: 0x1C, count: 200))
        data(0xEE)
        XCTAssertEqual(drain().last, 0xEE)
    }

    func testDisabledKeyboardHoldsBytes() {
        command(0xAD)
        kbc.keyboardInput(scancodes: [0x1C])
        XCTAssertEqual(status & 0x01, 0)
        command(0xAE)
        XCTAssertEqual(drain(), [0x1C])
    }

    func testMouseThroughAuxPort() {
        command(0xD4); data(0xFF)
        XCTAssertEqual(status & 0x21, 0x21, "aux output full")
        XCTAssertTrue(rig.sink.level(12))
        XCTAssertFalse(rig.sink.level(1))
        XCTAssertEqual(drain(), [0xFA, 0xAA, 0x00])
        XCTAssertFalse(rig.sink.level(12))
        command(0xD4); data(0xF2)
        XCTAssertEqual(drain(), [0xFA, 0x00])
        command(0xD4); data(0xE8)
        command(0xD4); data(0x03)
        command(0xD4); data(0xF3)
        command(0xD4); data(200)
        command(0xD4); data(0xF4)
        command(0xD4); data(0xE9)
        XCTAssertEqual(drain(), [0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0x20, 0x03, 200])
        command(0xD4); data(0x00)
        XCTAssertEqual(drain(), [0xFE])
    }

    func testAuxDisableHoldsMouseBytes() {
        command(0xD4); data(0xF2)
        command(0xA7)
        XCTAssertEqual(drain(), [0xFA], "the byte already in the buffer stays readable")
        XCTAssertEqual(status & 0x01, 0, "the rest is held back")
        command(0xA8)
        XCTAssertEqual(drain(), [0x00])
        command(0xA7)
        command(0xD4); data(0xF2)
        XCTAssertEqual(drain(), [0xFA, 0x00], "writing to the mouse re-enables its interface (QEMU)")
    }

    func testVectraA20Commands() {
        command(0xDD)
        command(0xDF)
        XCTAssertEqual(a20, [false, true])
        XCTAssertEqual(resets, 0)
    }

    func testWriteToOutputBuffers() {
        command(0xD2); data(0x42)
        XCTAssertTrue(rig.sink.level(1))
        XCTAssertEqual(status & 0x20, 0)
        XCTAssertEqual(drain(), [0x42])
        command(0xD3); data(0x43)
        XCTAssertTrue(rig.sink.level(12))
        XCTAssertEqual(status & 0x20, 0x20)
        XCTAssertEqual(drain(), [0x43])
    }

    func testOutputPortA20AndReset() {
        command(0xD0)
        XCTAssertEqual(drain(), [0xCF])
        command(0xD1); data(0xCD)
        XCTAssertEqual(a20, [false])
        command(0xD1); data(0xCF)
        XCTAssertEqual(a20, [false, true])
        XCTAssertEqual(resets, 0)
        command(0xD1); data(0xCE)
        XCTAssertEqual(resets, 1)
        command(0xFF)
        XCTAssertEqual(resets, 1, "pulse with bit 0 set does not reset")
        command(0xFE)
        XCTAssertEqual(resets, 2)
        command(0xD2); data(0x11)
        command(0xD0)
        XCTAssertEqual(drain(), [0x11, 0xDE], "bit 4 shows the keyboard byte still waiting")
    }

    func testUnknownCommandAndWideAccess() {
        let before = GuestErrorLog.shared.count
        command(0x55)
        XCTAssertGreaterThan(GuestErrorLog.shared.count, before)
        XCTAssertEqual(kbc.read(region: 0, offset: 0, size: 2), 0xFFFF)
        kbc.write(region: 1, offset: 0, size: 2, value: 0xFEFE)
        XCTAssertEqual(resets, 0)
    }

    func testStateRoundTripAndReset() throws {
        command(0x60); data(0x47)
        data(0xF2)
        command(0xD4)
        let other = I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12))
        try roundTrip(kbc, into: other)
        XCTAssertEqual(other.readByte(0), 0xFA)
        XCTAssertEqual(other.readByte(0), 0xAB)
        XCTAssertEqual(other.readByte(0), 0x41)
        other.writeByte(0, 0xF2)  // pending 0xD4 survived: this goes to the mouse
        XCTAssertEqual(other.readByte(0, region: 1) & 0x20, 0x20)

        kbc.reset()
        XCTAssertEqual(status & 0x01, 0)
        command(0x20)
        XCTAssertEqual(drain(), [0x03])

        var w = StateWriter()
        for b: UInt8 in [3] { w.put(b) }
        w.put(false); w.put(false); w.put(UInt8(0xCF)); w.put(UInt8(0x99))
        var r = StateReader(bytes: w.bytes, section: "i8042")
        XCTAssertThrowsError(try other.loadState(from: &r, version: 1))
        var r2 = StateReader(bytes: [], section: "i8042")
        XCTAssertThrowsError(try other.loadState(from: &r2, version: 7))
    }
}
