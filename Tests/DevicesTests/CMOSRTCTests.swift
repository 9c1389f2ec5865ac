import DMCore
@testable import Devices
import XCTest

final class CMOSRTCTests: XCTestCase {
    var rig: LegacyTestRig!
    var rtc: CMOSRTC!
    /// 2024-02-29 23:59:58.000 UTC at the rig's start (its clock starts at 1 s).
    let epochAtStart: Int64 = 1_709_251_198 * 1_000_000_000

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        let time = rig.time
        let base = epochAtStart - 1_000_000_000
        rtc = CMOSRTC(irq: rig.router.line(gsi: 8), timers: rig.timers, wallClock: { base + Int64(time.now) })
    }

    func reg(_ i: UInt8) -> UInt8 {
        rtc.writeByte(0, i)
        return rtc.readByte(1)
    }
    func setReg(_ i: UInt8, _ v: UInt8) {
        rtc.writeByte(0, i)
        rtc.writeByte(1, v)
    }

    func testReadsHostTimeInBCD() {
        XCTAssertEqual(reg(0x00), 0x58)
        XCTAssertEqual(reg(0x02), 0x59)
        XCTAssertEqual(reg(0x04), 0x23)
        XCTAssertEqual(reg(0x06), 0x05, "Thursday")
        XCTAssertEqual(reg(0x07), 0x29)
        XCTAssertEqual(reg(0x08), 0x02)
        XCTAssertEqual(reg(0x09), 0x24)
        XCTAssertEqual(reg(0x32), 0x20)
        rig.advance(nanoseconds: 2_000_000_000)
        XCTAssertEqual(reg(0x00), 0x00)
        XCTAssertEqual(reg(0x07), 0x01)
        XCTAssertEqual(reg(0x08), 0x03, "2024 is a leap year; March follows Feb 29")
        XCTAssertEqual(reg(0x06), 0x06)
    }

    func testBinaryAnd12HourFormats() {
        setReg(0x0B, 0x04)  // binary, 12-hour
        XCTAssertEqual(reg(0x00), 58)
        XCTAssertEqual(reg(0x04), 0x80 | 11, "11 PM")
        XCTAssertEqual(reg(0x09), 24)
        setReg(0x0B, 0x00)  // BCD, 12-hour
        XCTAssertEqual(reg(0x04), 0x91)
    }

    func testRegisterDefaultsAndPorts() {
        XCTAssertEqual(reg(0x0A), 0x26)
        XCTAssertEqual(reg(0x0B), 0x02)
        XCTAssertEqual(reg(0x0C), 0x00)
        XCTAssertEqual(reg(0x0D), 0x80)
        XCTAssertEqual(rtc.readByte(0), 0xFF)
        setReg(0x80 | 0x40, 0xAB)  // NMI-mask bit ignored
        XCTAssertEqual(reg(0x40), 0xAB)
        XCTAssertEqual(rtc.cmosByte(0x40), 0xAB)
        setReg(0x0D, 0x00)
        XCTAssertEqual(reg(0x0D), 0x80, "D is read-only")
    }

    func testWordAccessSplitsIntoIndexAndData() {
        rtc.write(region: 0, offset: 0, size: 2, value: 0x7750)
        XCTAssertEqual(rtc.cmosByte(0x50), 0x77)
    }

    func testUpdateInProgressWindow() {
        XCTAssertEqual(reg(0x0A) & 0x80, 0)
        rig.advance(nanoseconds: 999_800_000)
        XCTAssertEqual(reg(0x0A) & 0x80, 0x80)
        XCTAssertEqual(reg(0x00), 0x58, "registers still show the old second during UIP")
        rig.advance(nanoseconds: 300_000)
        XCTAssertEqual(reg(0x0A) & 0x80, 0)
        XCTAssertEqual(reg(0x00), 0x59)
    }

    func testGuestSetsTimeWithSETBit() {
        setReg(0x0B, 0x82)
        XCTAssertEqual(reg(0x0B), 0x82)
        setReg(0x09, 0x01); setReg(0x32, 0x20); setReg(0x08, 0x02); setReg(0x07, 0x03)
        setReg(0x04, 0x04); setReg(0x02, 0x05); setReg(0x00, 0x06)
        rig.advance(nanoseconds: 5_000_000_000)
        XCTAssertEqual(reg(0x00), 0x06, "frozen while SET")
        XCTAssertEqual(reg(0x0A) & 0x80, 0, "no UIP while SET")
        setReg(0x0B, 0x02)
        rig.advance(nanoseconds: 2_000_000_000)
        XCTAssertEqual(reg(0x00), 0x08)
        XCTAssertEqual(reg(0x02), 0x05)
        XCTAssertEqual(reg(0x09), 0x01)
        XCTAssertEqual(reg(0x06), 0x07, "2001-02-03 was a Saturday")
    }

    func testWriteWhileRunningAdjustsClock() {
        setReg(0x02, 0x30)
        XCTAssertEqual(reg(0x02), 0x30)
        XCTAssertEqual(reg(0x04), 0x23)
        rig.advance(nanoseconds: 1_000_000_000)
        XCTAssertEqual(reg(0x00), 0x59)
        XCTAssertEqual(reg(0x02), 0x30)
    }

    func testHostileTimeValuesAreClamped() {
        setReg(0x0B, 0x82)
        setReg(0x08, 0xFF); setReg(0x07, 0x00); setReg(0x04, 0x99); setReg(0x32, 0xFF)
        setReg(0x0B, 0x02)
        _ = reg(0x00)
        XCTAssertEqual(reg(0x08), 0x12)
        XCTAssertEqual(reg(0x32), 0x21)
    }

    func testPeriodicInterrupt() {
        setReg(0x0A, 0x26)  // 1024 Hz
        XCTAssertFalse(rig.sink.level(8))
        setReg(0x0B, 0x42)
        rig.advance(nanoseconds: 1_000_000)
        XCTAssertTrue(rig.sink.level(8))
        XCTAssertEqual(reg(0x0C), 0xC0)
        XCTAssertFalse(rig.sink.level(8), "reading C lowers IRQ 8")
        XCTAssertEqual(reg(0x0C), 0x00)
        rig.advance(nanoseconds: 1_000_000)
        XCTAssertTrue(rig.sink.level(8))
        setReg(0x0B, 0x02)
        _ = reg(0x0C)
        rig.advance(nanoseconds: 10_000_000)
        XCTAssertFalse(rig.sink.level(8))
    }

    func testUpdateEndedInterrupt() {
        setReg(0x0B, 0x12)
        rig.advance(nanoseconds: 999_000_000)
        XCTAssertFalse(rig.sink.level(8))
        rig.advance(nanoseconds: 1_000_000)
        XCTAssertTrue(rig.sink.level(8))
        XCTAssertEqual(reg(0x0C) & 0xF0, 0x90)
        XCTAssertEqual(reg(0x00), 0x59)
    }

    func testUpdateFlagSetWithoutInterrupt() {
        rig.advance(nanoseconds: 1_000_000_000)
        XCTAssertFalse(rig.sink.level(8))
        XCTAssertEqual(reg(0x0C) & 0x10, 0x10)
        // Enabling UIE with UF already set would interrupt at once.
        rig.advance(nanoseconds: 1_000_000_000)
        setReg(0x0B, 0x12)
        XCTAssertTrue(rig.sink.level(8))
    }

    func testAlarmWithDontCare() {
        _ = reg(0x0C)
        setReg(0x01, 0x01)  // second 01 of any minute and hour
        setReg(0x03, 0xC0)
        setReg(0x05, 0xFF)
        setReg(0x0B, 0x22)
        rig.advance(nanoseconds: 2_000_000_000)
        XCTAssertFalse(rig.sink.level(8), "second 00")
        rig.advance(nanoseconds: 1_000_000_000)
        XCTAssertTrue(rig.sink.level(8))
        XCTAssertEqual(reg(0x0C) & 0xF0, 0xB0, "IRQF, AF and UF")
        rig.advance(nanoseconds: 1_000_000_000)
        XCTAssertFalse(rig.sink.level(8), "no match at second 02")
    }

    func testDividerResetDelaysFirstUpdateHalfASecond() {
        setReg(0x0A, 0x76)
        rig.advance(nanoseconds: 3_000_000_000)
        XCTAssertEqual(reg(0x00), 0x58, "frozen in divider reset")
        setReg(0x0A, 0x26)
        rig.advance(nanoseconds: 400_000_000)
        XCTAssertEqual(reg(0x00), 0x58)
        rig.advance(nanoseconds: 200_000_000)
        XCTAssertEqual(reg(0x00), 0x59)
    }

    func testMachineHelpers() throws {
        rtc.setMemorySizes(belowFourGiB: 64 << 20, aboveFourGiB: 1 << 30)
        XCTAssertEqual([0x15, 0x16].map(rtc.cmosByte), [0x80, 0x02])
        XCTAssertEqual([0x17, 0x18, 0x30, 0x31].map(rtc.cmosByte), [0x00, 0xFC, 0x00, 0xFC])
        XCTAssertEqual([0x34, 0x35].map(rtc.cmosByte), [0x00, 0x03])
        XCTAssertEqual([0x5B, 0x5C, 0x5D].map(rtc.cmosByte), [0x00, 0x40, 0x00])
        rtc.setMemorySizes(belowFourGiB: 3 << 30, aboveFourGiB: 0)
        XCTAssertEqual([0x17, 0x18].map(rtc.cmosByte), [0xFF, 0xFF], "capped at 65535 KiB")
        XCTAssertEqual([0x34, 0x35].map(rtc.cmosByte), [0x00, 0xBF])
        rtc.setMemorySizes(belowFourGiB: 512 << 10, aboveFourGiB: 0)
        XCTAssertEqual([0x15, 0x16, 0x17].map(rtc.cmosByte), [0x00, 0x02, 0x00])

        rtc.setCPUCount(4)
        XCTAssertEqual(rtc.cmosByte(0x5F), 3)
        rtc.setCPUCount(300)
        XCTAssertEqual(rtc.cmosByte(0x5F), 0)

        try rtc.setBootOrder("cdn")
        XCTAssertEqual(rtc.cmosByte(0x3D), 0x32)
        XCTAssertEqual(rtc.cmosByte(0x38), 0x40)
        try rtc.setBootOrder("a", checkFloppySignature: false)
        XCTAssertEqual(rtc.cmosByte(0x3D), 0x01)
        XCTAssertEqual(rtc.cmosByte(0x38), 0x01)
        XCTAssertThrowsError(try rtc.setBootOrder("cdna"))
        XCTAssertThrowsError(try rtc.setBootOrder("x"))

        rtc.setEquipment()
        XCTAssertEqual(rtc.cmosByte(0x14), 0x06)
        rtc.setCMOSByte(0x10, 0xFF)
        rtc.setCMOSByte(0x2D, 0x02)
        rtc.updateChecksum()
        let sum = (0x10...0x2D).reduce(0) { $0 + Int(rtc.cmosByte($1)) }
        XCTAssertEqual(Int(rtc.cmosByte(0x2E)) << 8 | Int(rtc.cmosByte(0x2F)), sum)
        rtc.setCMOSByte(500, 1)
        XCTAssertEqual(rtc.cmosByte(-1), 0xFF)
    }

    func testResetKeepsCMOSAndTime() {
        rtc.setCMOSByte(0x40, 0x12)
        setReg(0x0B, 0x62)
        rig.advance(nanoseconds: 1_000_000)
        XCTAssertTrue(rig.sink.level(8))
        rtc.reset()
        XCTAssertFalse(rig.sink.level(8))
        XCTAssertEqual(reg(0x0B), 0x02)
        XCTAssertEqual(rtc.cmosByte(0x40), 0x12)
        XCTAssertEqual(reg(0x00), 0x58)
    }

    func testStateRoundTrip() throws {
        setReg(0x0B, 0x82)
        setReg(0x00, 0x33)
        rtc.setCMOSByte(0x70, 0x44)
        let base = epochAtStart - 1_000_000_000
        let time = rig.time
        let other = CMOSRTC(irq: rig.router.line(gsi: 9), timers: rig.timers, wallClock: { base + Int64(time.now) })
        try roundTrip(rtc, into: other)
        XCTAssertEqual(other.cmosByte(0x70), 0x44)
        XCTAssertEqual(other.cmosByte(0x00), 0x33)
        other.writeByte(0, 0x0B)
        other.writeByte(1, 0x02)
        rig.advance(nanoseconds: 1_000_000_000)
        XCTAssertEqual(other.cmosByte(0x00), 0x34)

        var w = StateWriter()
        w.put(bytes: [UInt8](repeating: 0, count: 127))
        w.put(UInt8(0)); w.put(Int64(0))
        var r = StateReader(bytes: w.bytes, section: "rtc")
        XCTAssertThrowsError(try other.loadState(from: &r, version: 1))
        var w2 = StateWriter()
        w2.put(bytes: [UInt8](repeating: 0, count: 128))
        w2.put(UInt8(200)); w2.put(Int64(0))
        var r2 = StateReader(bytes: w2.bytes, section: "rtc")
        XCTAssertThrowsError(try other.loadState(from: &r2, version: 1))
    }

    func testCalendarArithmetic() {
        XCTAssertEqual(days(fromCivilYear: 1970, month: 1, day: 1), 0)
        XCTAssertEqual(days(fromCivilYear: 2000, month: 3, day: 1), 11017)
        for d: Int64 in [-800_000, -1, 0, 59, 11016, 19_782, 2_932_896] {
            let c = civilDate(fromDays: d)
            XCTAssertEqual(days(fromCivilYear: c.year, month: c.month, day: c.day), d)
        }
    }
}

extension CMOSRTCTests {
    func testPS2CenturyByteAliasesCentury() {
        rtc.writeByte(0, 0x37)
        XCTAssertEqual(rtc.readByte(1), 0x20)
        XCTAssertEqual(rtc.readByte(1), 0x20, "the index now points at 0x32")
    }
}
