import DMCore
import XCTest
@testable import Devices

final class ChipsetTests: XCTestCase {
    func testPIIX3RoutesLinksToISAIRQsAndSharesThem() throws {
        let rig = try LegacyTestRig()
        let piix3 = PIIX3ISABridge(router: rig.router)
        XCTAssertEqual(piix3.pci.config.get32(0x60), 0x8080_8080)
        // Slot 3 INTA -> link (0 + 3 - 1) & 3 = 2 = PIRQC.
        XCTAssertEqual(PIIX3ISABridge.link(slot: 3, pin: 0), 2)
        piix3.setINTx(slot: 3, pin: 0, level: true)
        XCTAssertFalse(rig.sink.level(11), "link disabled: nothing raised")
        piix3.configWrite(offset: 0x62, size: 1, value: 11)
        XCTAssertTrue(rig.sink.level(11))
        // Slot 7 INTA -> (7 - 1) & 3 = 2, the same link.
        piix3.setINTx(slot: 7, pin: 0, level: true)
        piix3.setINTx(slot: 3, pin: 0, level: false)
        XCTAssertTrue(rig.sink.level(11), "still asserted by slot 7")
        // Re-routing moves the level.
        piix3.configWrite(offset: 0x62, size: 1, value: 10)
        XCTAssertFalse(rig.sink.level(11))
        XCTAssertTrue(rig.sink.level(10))
        piix3.setINTx(slot: 7, pin: 0, level: false)
        XCTAssertFalse(rig.sink.level(10))
        // Reserved IRQs and hostile indices are refused.
        piix3.configWrite(offset: 0x62, size: 1, value: 2)
        piix3.setINTx(slot: 7, pin: 0, level: true)
        XCTAssertFalse(rig.sink.level(2))
        piix3.setINTx(slot: 99, pin: 7, level: true)
    }

    func testResetControlRegister() throws {
        let rig = try LegacyTestRig()
        let piix3 = PIIX3ISABridge(router: rig.router)
        var resets = 0
        piix3.onResetRequest = { resets += 1 }
        piix3.resetControlRegister.write(region: 0, offset: 0, size: 1, value: 0x02)
        XCTAssertEqual(piix3.resetControlRegister.read(region: 0, offset: 0, size: 1), 0x02)
        XCTAssertEqual(resets, 0)
        piix3.resetControlRegister.write(region: 0, offset: 0, size: 1, value: 0x06)
        XCTAssertEqual(resets, 1)
    }

    func testI440FXPAMDecoding() {
        let bridge = I440FXHostBridge()
        var seen: [[I440FXHostBridge.PAMMode]] = []
        bridge.onMemoryMapChange = { seen.append($0) }
        XCTAssertTrue(bridge.pamModes.allSatisfy { $0 == .romOrPCI })
        bridge.configWrite(offset: 0x59, size: 1, value: 0x30)
        XCTAssertEqual(bridge.pamModes[0], .readWriteRAM)
        bridge.configWrite(offset: 0x5A, size: 1, value: 0x21)
        XCTAssertEqual(bridge.pamModes[1], .readRAM)   // 0xC0000
        XCTAssertEqual(bridge.pamModes[2], .writeRAM)  // 0xC4000
        XCTAssertEqual(seen.count, 2)
        bridge.configWrite(offset: 0x3C, size: 1, value: 5)
        XCTAssertEqual(seen.count, 2, "unrelated registers do not remap memory")
        bridge.reset()
        XCTAssertEqual(seen.last?[0], .romOrPCI)
        XCTAssertEqual(I440FXHostBridge.pamSegments[1].base, 0xC0000)
        XCTAssertEqual(I440FXHostBridge.pamSegments[12].base, 0xEC000)
    }

    func testPIIX4PMWindowTimerSCIAndSleep() throws {
        let rig = try LegacyTestRig()
        let ports = Bus(name: "io", unassignedValue: .max)
        let pci = PCIBus(portBus: ports, mmioBus: Bus(name: "mmio", unassignedValue: 0))
        let pm = PIIX4PowerManagement(sci: rig.router.line(gsi: 9), timers: rig.timers)
        try pci.plug(pm, slot: 1, function: 3)
        XCTAssertEqual(pm.pci.config.get32(0x90), 0xB101)
        pci.configWrite(devfn: 0x0B, offset: 0x40, size: 4, value: 0x601)
        XCTAssertNil(ports.mapping(containing: 0x608), "not until PMIOSE")
        pci.configWrite(devfn: 0x0B, offset: 0x80, size: 1, value: 1)
        XCTAssertNotNil(ports.mapping(containing: 0x608))

        let t0 = ports.read(0x608, size: 4)
        rig.advance(nanoseconds: 1_000_000)  // 1 ms = 3579.545 ticks
        let t1 = ports.read(0x608, size: 4)
        XCTAssertEqual((t1 &- t0) & 0xFF_FFFF, 3579, accuracy: 1)

        // Power button: status latches, SCI follows status & enable.
        pm.pressPowerButton()
        XCTAssertFalse(rig.sink.level(9))
        ports.write(0x602, size: 2, value: 0x100)
        XCTAssertTrue(rig.sink.level(9))
        XCTAssertEqual(ports.read(0x600, size: 2) & 0x100, 0x100)
        ports.write(0x600, size: 2, value: 0x100)
        XCTAssertFalse(rig.sink.level(9))

        // Timer overflow at the next flip of bit 23.
        ports.write(0x602, size: 2, value: 0x1)
        rig.advance(nanoseconds: 2_400_000_000)
        XCTAssertTrue(rig.sink.level(9))
        XCTAssertEqual(ports.read(0x600, size: 4) & 0x1_0001, 0x1_0001, "32-bit read: status and enable")

        var sleeps: [UInt8] = []
        pm.onSleepRequest = { sleeps.append($0) }
        ports.write(0x604, size: 2, value: 0x2001)
        ports.write(0x604, size: 2, value: 0x1 | 5 << 10)
        XCTAssertEqual(sleeps, [0])
        XCTAssertEqual(ports.read(0x604, size: 2), 0x1 | 5 << 10, "SLP_EN reads as zero")

        // Moving the base moves the window; disabling removes it.
        pci.configWrite(devfn: 0x0B, offset: 0x40, size: 4, value: 0xB001)
        XCTAssertNil(ports.mapping(containing: 0x600))
        XCTAssertNotNil(ports.mapping(containing: 0xB000))
        pci.configWrite(devfn: 0x0B, offset: 0x80, size: 1, value: 0)
        XCTAssertNil(ports.mapping(containing: 0xB000))

        // APM: ACPI_ENABLE/ACPI_DISABLE on 0xB2 toggle SCI_EN; 0xB3 is a scratch byte.
        pci.configWrite(devfn: 0x0B, offset: 0x80, size: 1, value: 1)
        try ports.register(pm, base: 0xB2, length: 2, region: PIIX4PowerManagement.apmRegion, name: "APM")
        ports.write(0xB2, size: 1, value: 0xF1)
        XCTAssertEqual(ports.read(0xB004, size: 2) & 1, 1)
        ports.write(0xB2, size: 2, value: 0x5AF0)
        XCTAssertEqual(ports.read(0xB004, size: 2) & 1, 0)
        XCTAssertEqual(ports.read(0xB2, size: 2), 0x5AF0)

        // GPE0 at 0xAFE0: status reads clear (no source), enable is read-write, status is
        // write-one-to-clear and cannot be set by the guest.
        ports.write(0xB002, size: 2, value: 0)  // PM1 enables off: the SCI is the GPEs' alone
        XCTAssertFalse(rig.sink.level(9))
        try ports.register(pm, base: 0xAFE0, length: 4, region: PIIX4PowerManagement.gpeRegion, name: "GPE0")
        XCTAssertEqual(ports.read(0xAFE0, size: 4), 0)
        ports.write(0xAFE2, size: 2, value: 0x0106)
        ports.write(0xAFE0, size: 2, value: 0xFFFF)
        XCTAssertEqual(ports.read(0xAFE0, size: 4), 0x0106_0000)
        XCTAssertEqual(ports.read(0xAFE3, size: 1), 0x01)
        XCTAssertFalse(rig.sink.level(9))

        var w = StateWriter()
        pm.saveState(to: &w)
        var r = StateReader(bytes: w.bytes, section: pm.stateID)
        try pm.loadState(from: &r, version: pm.stateVersion)
        XCTAssertTrue(r.isAtEnd)
        XCTAssertEqual(ports.read(0xB3, size: 1), 0x5A)
        XCTAssertEqual(ports.read(0xAFE2, size: 2), 0x0106)
    }

    func testPMTimerArithmeticNeverOverflows() {
        XCTAssertEqual(PIIX4PowerManagement.ticks(atNanoseconds: 1_000_000_000), 3_579_545)
        _ = PIIX4PowerManagement.ticks(atNanoseconds: .max)
    }
}
