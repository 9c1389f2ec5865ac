import DMCore
import XCTest
@testable import XenAccel

/// Video RAM under Xen: populated at home, relocated to the BAR with physmap keys, found again
/// by a restored device model, dirty pages from Xen and from the device.
final class XenDeviceRAMTests: XCTestCase {
    let home: UInt64 = 0x40_0000      // past the rig's "RAM", as QEMU's ram_addr
    let bar: UInt64 = 0x80_0000
    let size = 64 << 10
    let dm = "device-model/1"

    private func make(_ rig: Rig, store: MemoryXenStore, incoming: Bool = false) throws -> XenDeviceRAM {
        try XenDeviceRAM(hypervisor: rig.sim, store: store, mapCache: rig.mapCache, deviceModelPath: dm,
                         name: "vga.vram", size: size, homeAddress: home, incoming: incoming, errors: rig.errors)
    }

    func testPopulatesAtHomeAndRelocatesToTheBARWithPhysmapKeys() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let store = MemoryXenStore()
        let vram = try make(rig, store: store)
        XCTAssertTrue(rig.sim.dmOps.contains(.populate(home >> 12, size / 4096)))
        vram.withBytes { $0.storeBytes(of: UInt32(0xC0FF_EE00), toByteOffset: 0x1000, as: UInt32.self) }
        XCTAssertEqual(rig.sim.guestRead(at: Int(home) + 0x1000, count: 4), [0x00, 0xEE, 0xFF, 0xC0])

        vram.map(at: bar)
        XCTAssertEqual(vram.location, bar)
        XCTAssertTrue(rig.sim.dmOps.contains(.relocate(count: UInt32(size / 4096), from: home >> 12, to: bar >> 12)))
        XCTAssertTrue(rig.sim.dmOps.contains(.pinCacheattr(bar >> 12, (bar + UInt64(size) - 1) >> 12, 6)))
        XCTAssertEqual(store.read("\(dm)/physmap/400000/start_addr"), "800000")
        XCTAssertEqual(store.read("\(dm)/physmap/400000/size"), "10000")
        XCTAssertEqual(store.read("\(dm)/physmap/400000/name"), "vga.vram")
        // The guest sees the device's bytes at the BAR, and the device sees the guest's.
        XCTAssertEqual(rig.sim.guestRead(at: Int(bar) + 0x1000, count: 4), [0x00, 0xEE, 0xFF, 0xC0])
        rig.sim.guestWrite([0xAB], at: Int(bar) + 0x2000)
        XCTAssertEqual(vram.withBytes { $0[0x2000] }, 0xAB)

        vram.map(at: nil)
        XCTAssertEqual(vram.location, home)
        XCTAssertNil(store.read("\(dm)/physmap/400000/start_addr"), "no record once the frames are home")
        XCTAssertEqual(vram.withBytes { $0[0x2000] }, 0xAB)
    }

    func testRestoredDeviceModelFindsItsFramesThroughPhysmapAndPopulatesNothing() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let store = MemoryXenStore()
        try store.write("\(dm)/physmap/400000/start_addr", "800000")
        try store.write("\(dm)/physmap/400000/size", "10000")
        rig.sim.guestWrite([0x5A], at: Int(bar) + 5)
        let vram = try make(rig, store: store, incoming: true)
        XCTAssertEqual(vram.location, bar)
        XCTAssertEqual(vram.withBytes { $0[5] }, 0x5A)
        XCTAssertFalse(rig.sim.dmOps.contains { if case .populate = $0 { return true } else { return false } })
        // The restored PCI config maps the BAR where it already is: nothing moves.
        vram.map(at: bar)
        XCTAssertFalse(rig.sim.dmOps.contains { if case .relocate = $0 { return true } else { return false } })
    }

    func testRestoreWithoutARecordFindsTheFramesAtTheRestoredBAR() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let store = MemoryXenStore()
        rig.sim.guestWrite([0x77], at: Int(bar) + 9)
        let vram = try make(rig, store: store, incoming: true)
        XCTAssertTrue(rig.sim.dmOps.isEmpty, "nothing populated, nothing moved: the saved image has the frames")
        vram.map(at: bar)
        XCTAssertEqual(vram.location, bar)
        XCTAssertEqual(vram.withBytes { $0[9] }, 0x77)
        XCTAssertFalse(rig.sim.dmOps.contains { if case .relocate = $0 { return true } else { return false } })
        XCTAssertEqual(store.read("\(dm)/physmap/400000/start_addr"), "800000")

        // A guest that never mapped its BAR before the save: the frames are at home.
        rig.sim.guestWrite([0x66], at: Int(home) + 3)
        let other = try make(rig, store: MemoryXenStore(), incoming: true)
        XCTAssertEqual(other.withBytes { $0[3] }, 0x66)
        XCTAssertEqual(other.location, home)
    }

    func testARecordOfAnotherSizeIsIgnored() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let store = MemoryXenStore()
        try store.write("\(dm)/physmap/400000/start_addr", "800000")
        try store.write("\(dm)/physmap/400000/size", "zz")
        let vram = try make(rig, store: store)
        XCTAssertEqual(vram.location, home)
    }

    func testDirtyPagesComeFromXenWhenMappedAndFromTheDeviceAlways() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let vram = try make(rig, store: MemoryXenStore())
        var bitmap: [UInt64] = []
        XCTAssertTrue(vram.collectDirtyPages(into: &bitmap), "at home only the device writes")
        XCTAssertEqual(bitmap[0] & 0xFFFF, 0xFFFF, "everything starts dirty")
        bitmap = [0]
        XCTAssertTrue(vram.collectDirtyPages(into: &bitmap))
        XCTAssertEqual(bitmap, [0])

        vram.map(at: bar)
        bitmap = [0]
        _ = vram.collectDirtyPages(into: &bitmap)  // relocation dirtied everything
        rig.sim.guestWroteFrame((bar >> 12) + 3)
        vram.deviceWrote(offset: 0x5000, length: 1)
        bitmap = [0]
        XCTAssertTrue(vram.collectDirtyPages(into: &bitmap))
        XCTAssertEqual(bitmap, [1 << 3 | 1 << 5])
        XCTAssertTrue(rig.sim.dmOps.contains(.trackDirtyVRAM(bar >> 12, UInt32(size / 4096))))

        rig.sim.setFailDMOps(true)
        XCTAssertFalse(vram.collectDirtyPages(into: &bitmap), "Xen cannot tell: redraw everything")
    }

    func testDeviceWritesAreReportedDuringMigration() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let vram = try make(rig, store: MemoryXenStore())
        vram.map(at: bar)
        rig.mapCache.globalDirtyLogging = true
        rig.sim.clearRecords()
        vram.deviceWrote(offset: 0x1FFF, length: 2)
        XCTAssertEqual(rig.sim.dmOps, [.modifiedMemory((bar >> 12) + 1, 2)])
    }

    func testHostileBARAddressesLeaveTheFramesWhereTheyAre() throws {
        let rig = try Rig(ramSize: 16 << 20)
        let vram = try make(rig, store: MemoryXenStore())
        vram.map(at: bar + 0x800)  // not page-aligned
        XCTAssertEqual(vram.location, home)
        vram.map(at: 0xFFFF_F000)  // Xen refuses (beyond the simulated RAM)
        XCTAssertEqual(vram.location, home)
        XCTAssertFalse(rig.errorLines.isEmpty)
        vram.withBytes { $0[0] = 1 }  // still usable
    }
}
