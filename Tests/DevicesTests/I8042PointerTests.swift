import DMCore
@testable import Devices
import XCTest

/// Host input through the seams the VNC server uses: `KeyboardInput` and `PointerInput`.
final class I8042PointerTests: XCTestCase {
    var rig: LegacyTestRig!
    var kbc: I8042!

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        kbc = I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12))
    }

    var status: UInt8 { kbc.readByte(0, region: 1) }
    func mouse(_ bytes: UInt8...) {
        for b in bytes {
            kbc.writeByte(0, 0xD4, region: 1)
            kbc.writeByte(0, b, region: 0)
        }
    }
    func drain() -> [UInt8] {
        var out: [UInt8] = []
        while status & 0x01 != 0 && out.count < 200 { out.append(kbc.readByte(0, region: 0)) }
        return out
    }

    func testKeyboardInputIsTranslatedLikeTheKeyboard() {
        let input: any KeyboardInput = kbc
        input.keyboardInput(scancodes: [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75])
        XCTAssertEqual(drain(), [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75], "without translation: set 2 as sent")
        kbc.writeByte(0, 0x60, region: 1)
        kbc.writeByte(0, 0x41, region: 0)  // translation on
        input.keyboardInput(scancodes: [0x1C, 0xF0, 0x1C, 0xE0, 0x75, 0xE0, 0xF0, 0x75])
        XCTAssertEqual(drain(), [0x1E, 0x9E, 0xE0, 0x48, 0xE0, 0xC8], "set 1: A make/break, Up make/break")
    }

    func testNoPacketsUntilReportingIsOn() {
        let pointer: any PointerInput = kbc
        pointer.pointerInput(dx: 5, dy: 5, wheel: 0, buttons: 1)
        XCTAssertEqual(drain(), [])
        mouse(0xF4)
        XCTAssertEqual(drain(), [0xFA])
        pointer.pointerInput(dx: 5, dy: -3, wheel: 0, buttons: 1)
        // Left button, always-one bit; x +5; y +3 (PS/2's y grows upwards).
        XCTAssertEqual(drain(), [0x09, 5, 3])
        pointer.pointerInput(dx: -2, dy: 4, wheel: 0, buttons: 2)
        XCTAssertEqual(drain(), [0x0A | 0x10 | 0x20, 0xFE, 0xFC])
        XCTAssertTrue(rig.sink.risingEdges(12) > 0, "IRQ 12 for mouse bytes")
    }

    func testLargeMotionIsSplitAndKeptWhenTheQueueIsFull() {
        mouse(0xF4)
        _ = drain()
        kbc.pointerInput(dx: 1000, dy: 0, wheel: 0, buttons: 0)
        var total = 0
        var packets = 0
        let bytes = drain()
        XCTAssertEqual(bytes.count % 3, 0)
        for i in stride(from: 0, to: bytes.count, by: 3) {
            XCTAssertEqual(bytes[i] & 0xC0, 0, "no overflow bits")
            total += Int(bytes[i + 1])
            packets += 1
        }
        XCTAssertEqual(total, 1000, "every step arrives, in \(packets) packets, as the queue drains")
    }

    func testIntelliMouseKnockEnablesTheWheel() {
        mouse(0xF2)
        XCTAssertEqual(drain(), [0xFA, 0x00], "a plain mouse")
        kbc.pointerInput(dx: 0, dy: 0, wheel: 1, buttons: 0)
        mouse(0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF2)
        XCTAssertEqual(drain(), [0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0x03])
        mouse(0xF4)
        _ = drain()
        kbc.pointerInput(dx: 1, dy: 0, wheel: 1, buttons: 0)
        XCTAssertEqual(drain(), [0x08, 1, 0, 1], "four-byte packets with the wheel")
        kbc.pointerInput(dx: 0, dy: 0, wheel: -1, buttons: 0)
        XCTAssertEqual(drain(), [0x08, 0, 0, 0xFF])
        // The mode survives a snapshot and ends with a reset.
        let other = I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12))
        var writer = StateWriter()
        kbc.saveState(to: &writer)
        var reader = StateReader(bytes: writer.bytes, section: "i8042")
        XCTAssertNoThrow(try other.loadState(from: &reader, version: 2))
        other.writeByte(0, 0xD4, region: 1)
        other.writeByte(0, 0xF2, region: 0)
        XCTAssertEqual(other.readByte(0), 0xFA)
        XCTAssertEqual(other.readByte(0), 0x03)
        mouse(0xFF, 0xF2)
        XCTAssertEqual(drain(), [0xFA, 0xAA, 0x00, 0xFA, 0x00])
    }
}
