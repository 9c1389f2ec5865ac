import DMCore
import XCTest
@testable import Devices

/// Drives the PCI bus the way a guest does: through 0xCF8/0xCFC on a port bus.
final class PCIRig {
    let ports = Bus(name: "io", unassignedValue: .max)
    let mmio = Bus(name: "mmio", unassignedValue: 0)
    let pci: PCIBus
    let host: PCIHostBridgeConfigPorts

    init() throws {
        pci = PCIBus(portBus: ports, mmioBus: mmio)
        host = PCIHostBridgeConfigPorts(bus: pci)
        try ports.register(host, base: 0xCF8, length: 8, name: "cf8")
    }

    func address(_ devfn: Int, _ offset: Int) -> UInt64 { 0x8000_0000 | UInt64(devfn) << 8 | UInt64(offset) }

    func read(_ devfn: Int, _ offset: Int, size: Int = 4) -> UInt64 {
        ports.write(0xCF8, size: 4, value: address(devfn, offset & ~3))
        return ports.read(0xCFC + UInt64(offset & 3), size: size)
    }

    func write(_ devfn: Int, _ offset: Int, _ value: UInt64, size: Int = 4) {
        ports.write(0xCF8, size: 4, value: address(devfn, offset & ~3))
        ports.write(0xCFC + UInt64(offset & 3), size: size, value: value)
    }
}

final class PCITests: XCTestCase {
    func testConfigMechanismOneReachesFunctionsAndReportsAbsentOnesAsAllOnes() throws {
        let rig = try PCIRig()
        try rig.pci.plug(PCITestDevice(), slot: 3)
        XCTAssertEqual(rig.read(3 << 3, 0), 0x0005_1B36)
        XCTAssertEqual(rig.read(3 << 3, 2, size: 2), 0x0005)
        XCTAssertEqual(rig.read(4 << 3, 0), 0xFFFF_FFFF)
        XCTAssertEqual(rig.read(3 << 3 | 1, 0), 0xFFFF_FFFF)
        // Enable bit clear: all ones.
        rig.ports.write(0xCF8, size: 4, value: 3 << 11)
        XCTAssertEqual(rig.ports.read(0xCFC, size: 4), 0xFFFF_FFFF)
        // Bus 1 does not exist.
        rig.ports.write(0xCF8, size: 4, value: 0x8001_0000)
        XCTAssertEqual(rig.ports.read(0xCFC, size: 4), 0xFFFF_FFFF)
    }

    func testLatchKeepsAll32BitsAndOnlyDwordWritesLatch() throws {
        let rig = try PCIRig()
        try rig.pci.plug(PCITestDevice(), slot: 0)
        rig.ports.write(0xCF8, size: 4, value: 0x8000_0002)
        XCTAssertEqual(rig.ports.read(0xCF8, size: 4), 0x8000_0002)
        // As QEMU: latch low bits add to the register offset.
        XCTAssertEqual(rig.ports.read(0xCFC, size: 2), 0x0005)
        XCTAssertEqual(rig.ports.read(0xCFD, size: 1), 0x00)
        rig.ports.write(0xCF8, size: 2, value: 0)
        XCTAssertEqual(rig.ports.read(0xCF8, size: 4), 0x8000_0002)
        // Reserved bits 30:24 are ignored.
        rig.ports.write(0xCF8, size: 4, value: 0xFF00_0000)
        XCTAssertEqual(rig.ports.read(0xCFC, size: 4), 0x0005_1B36)
    }

    func testWriteMasksProtectIdentityAndStatusIsWriteOneToClear() throws {
        let rig = try PCIRig()
        let dev = PCITestDevice()
        try rig.pci.plug(dev, slot: 2)
        rig.write(2 << 3, 0, 0xFFFF_FFFF)
        XCTAssertEqual(rig.read(2 << 3, 0), 0x0005_1B36)
        rig.write(2 << 3, 4, 0xFFFF, size: 2)
        XCTAssertEqual(rig.read(2 << 3, 4, size: 2), 0x0507)
        rig.write(2 << 3, 0x0D, 0xFF, size: 1)
        XCTAssertEqual(rig.read(2 << 3, 0x0D, size: 1), 0, "latency timer is read-only as in QEMU")
        rig.write(2 << 3, 0x3C, 0x0B, size: 1)
        XCTAssertEqual(rig.read(2 << 3, 0x3C, size: 1), 0x0B)
        dev.pci.config.set16(0x06, 0xF900)
        rig.write(2 << 3, 6, 0x8100, size: 2)
        XCTAssertEqual(rig.read(2 << 3, 6, size: 2), 0x7800)
    }

    func testBARSizingAndDecodingFollowTheCommandRegister() throws {
        let rig = try PCIRig()
        let dev = PCITestDevice()
        try rig.pci.plug(dev, slot: 4)
        let fn = 4 << 3
        rig.write(fn, 0x10, 0xFFFF_FFFF)
        rig.write(fn, 0x14, 0xFFFF_FFFF)
        XCTAssertEqual(rig.read(fn, 0x10), 0xFFFF_F000)
        XCTAssertEqual(rig.read(fn, 0x14), 0xFFFF_FF01)
        XCTAssertEqual(rig.read(fn, 0x18), 0)
        rig.write(fn, 0x10, 0xE000_0000)
        rig.write(fn, 0x14, 0xC000)
        XCTAssertNil(rig.mmio.mapping(containing: 0xE000_0000), "no decoding before the command register enables it")
        rig.write(fn, 0x04, 0x3, size: 2)
        XCTAssertEqual(rig.mmio.mapping(containing: 0xE000_0FFF)?.region, 0)
        XCTAssertEqual(rig.ports.mapping(containing: 0xC0FF)?.region, 1)
        rig.write(fn, 0x10, 0xE010_0000)
        XCTAssertNil(rig.mmio.mapping(containing: 0xE000_0000))
        XCTAssertNotNil(rig.mmio.mapping(containing: 0xE010_0000))
        rig.write(fn, 0x04, 0x1, size: 2)
        XCTAssertNil(rig.mmio.mapping(containing: 0xE010_0000))
        XCTAssertNotNil(rig.ports.mapping(containing: 0xC000))
    }

    func testABAROverAnotherDeviceIsNotMappedButTheVMCarriesOn() throws {
        let rig = try PCIRig()
        let dev = PCITestDevice()
        try rig.pci.plug(dev, slot: 4)
        rig.write(4 << 3, 0x14, 0xCF8)
        rig.write(4 << 3, 0x04, 0x1, size: 2)
        XCTAssertTrue(rig.ports.mapping(containing: 0xCF8)?.device === rig.host)
        XCTAssertNil(dev.pci.mapped[1])
        XCTAssertEqual(rig.read(4 << 3, 0), 0x0005_1B36, "config space still works")
    }

    func testUnalignedAndPastTheEndConfigAccesses() throws {
        let rig = try PCIRig()
        try rig.pci.plug(PCITestDevice(), slot: 1)
        XCTAssertEqual(rig.pci.configRead(devfn: 8, offset: 1, size: 2), 0x051B, "bytes 1-2: vendor high, device low")
        XCTAssertEqual(rig.pci.configRead(devfn: 8, offset: 255, size: 4), 0)
        XCTAssertEqual(rig.pci.configRead(devfn: 8, offset: 256, size: 4), 0xFFFF_FFFF)
        rig.pci.configWrite(devfn: 8, offset: 254, size: 4, value: 0xFFFF_FFFF)
        XCTAssertEqual(rig.pci.configRead(devfn: 8, offset: 254, size: 2), 0xFFFF)
    }

    func testSlotsAreExclusiveAndValidated() throws {
        let rig = try PCIRig()
        try rig.pci.plug(PCITestDevice(), slot: 5)
        XCTAssertThrowsError(try rig.pci.plug(PCITestDevice(), slot: 5))
        XCTAssertThrowsError(try rig.pci.plug(PCITestDevice(), slot: 32))
        XCTAssertThrowsError(try rig.pci.plug(PCITestDevice(), slot: 0, function: 8))
        XCTAssertEqual(try rig.pci.freeSlot(from: 5), 6)
    }

    func testExpansionROMDecodesOnlyWhenEnabled() throws {
        let rig = try PCIRig()
        let function = PCIFunction(name: "rom", config: PCIConfigSpace(vendor: 1, device: 2, revision: 0, classCode: 0),
                                   rom: [0x55, 0xAA, 0x01])
        final class ROMDevice: PCIDevice {
            let pci: PCIFunction
            init(_ pci: PCIFunction) { self.pci = pci }
            func read(region: Int, offset: UInt64, size: Int) -> UInt64 { pci.readROM(offset: offset, size: size) }
            func write(region: Int, offset: UInt64, size: Int, value: UInt64) {}
        }
        try rig.pci.plug(ROMDevice(function), slot: 6)
        rig.write(6 << 3, 0x30, 0xFFFF_FFFF)
        XCTAssertEqual(rig.read(6 << 3, 0x30), 0xFFFF_F801, "2 KiB ROM")
        rig.write(6 << 3, 0x30, 0xFEB0_0001)
        XCTAssertNil(rig.mmio.mapping(containing: 0xFEB0_0000), "memory decoding is off")
        rig.write(6 << 3, 4, 2, size: 2)
        XCTAssertEqual(rig.mmio.read(0xFEB0_0000, size: 2), 0xAA55)
        XCTAssertEqual(rig.mmio.read(0xFEB0_07FF, size: 1), 0)
        rig.write(6 << 3, 0x30, 0xFEB0_0000)
        XCTAssertNil(rig.mmio.mapping(containing: 0xFEB0_0000))
    }

    func testPCITestDeviceCountsMatchingWritesOnly() throws {
        let rig = try PCIRig()
        let dev = PCITestDevice()
        try rig.pci.plug(dev, slot: 3)
        rig.write(3 << 3, 0x10, 0xE000_0000)
        rig.write(3 << 3, 0x04, 2, size: 2)
        rig.mmio.write(0xE000_0000, size: 1, value: 0)
        XCTAssertEqual(rig.mmio.read(0xE000_0004, size: 4), 2048)
        for _ in 0..<3 { rig.mmio.write(0xE000_0800, size: 1, value: 0xFA) }
        rig.mmio.write(0xE000_0800, size: 1, value: 0x11)
        XCTAssertEqual(rig.mmio.read(0xE000_000C, size: 4), 3)
        rig.mmio.write(0xE000_0000, size: 1, value: 9)
        XCTAssertEqual(rig.mmio.read(0xE000_0004, size: 4), 0)
        var w = StateWriter()
        dev.saveState(to: &w)
        var r = StateReader(bytes: w.bytes, section: dev.stateID)
        try dev.loadState(from: &r, version: 1)
    }
}
