import Config
import DMCore
import Foundation
import XCTest
@testable import Machine
@testable import XenAccel

/// virtio-blk on the Xen machine, which has no ioeventfd/irqfd: the function and its BARs are
/// claimed from Xen, the doorbell arrives as an MMIO ioreq, the data moves through the mapcache
/// on the backend's worker, and the completion is an MSI injected through the dm-op.
extension XenMachineTests {
    func testVirtioBlkServesARequestThroughIoreqsAndInjectsAnMSI() throws {
        var disk = Data(count: 1 << 20)
        disk.replaceSubrange(3 * 512..<4 * 512, with: [UInt8](repeating: 0x33, count: 512))
        try disk.write(to: URL(fileURLWithPath: path("virtio.img")))
        let (machine, sim, store) = try makeMachine(libxlArguments() + [
            "-drive", "if=none,id=vd0,file=\(path("virtio.img")),format=raw",
            "-device", "virtio-blk-pci,drive=vd0,addr=5,disable-legacy=on"])
        XCTAssertTrue(machine.notifications is ExitNotifications)
        XCTAssertTrue(sim.dmOps.contains(.mapPCI(PCIAddress(device: 5, function: 0))))
        let finished = try start(machine, store: store, domain: 4)

        func request(_ r: Ioreq) throws -> UInt64 { try answer(sim, r) }
        func config(_ offset: UInt64, size: UInt32, write: UInt64) throws {
            let sbdf = UInt64(PCIAddress(device: 5, function: 0).sbdf)
            _ = try request(Ioreq(addr: sbdf << 32 | offset, data: write, size: size, isRead: false,
                                  type: Ioreq.Kind.pciConfig.rawValue))
        }
        func mmio(_ address: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
            try request(Ioreq(addr: address, data: write ?? 0, size: size, isRead: write == nil, type: Ioreq.Kind.copy.rawValue))
        }
        let msix: UInt64 = 0xF000_0000, modern: UInt64 = 0xF100_0000
        try config(0x14, size: 4, write: msix)
        try config(0x20, size: 4, write: modern)
        try config(0x04, size: 2, write: 0x0006)
        XCTAssertTrue(sim.dmOps.contains(.mapRange(.mmio, modern, modern + 0x3FFF)), "modern BAR claimed")
        // MSI-X vector 0 for the queue.
        _ = try mmio(msix, size: 4, write: 0xFEE0_0000)
        _ = try mmio(msix + 8, size: 4, write: 0x45)
        _ = try mmio(msix + 12, size: 4, write: 0)
        try config(0x98 + 2, size: 2, write: 0x8000)
        // Driver start: features VERSION_1 only, one queue of 8 at 1 MiB.
        _ = try mmio(modern + 0x14, size: 1, write: 3)
        _ = try mmio(modern + 0x08, size: 4, write: 1)
        _ = try mmio(modern + 0x0C, size: 4, write: 1)
        _ = try mmio(modern + 0x14, size: 1, write: 0x0B)
        XCTAssertEqual(try mmio(modern + 0x14, size: 1), 0x0B)
        let ring: UInt64 = 0x10_0000
        _ = try mmio(modern + 0x18, size: 2, write: 8)
        _ = try mmio(modern + 0x1A, size: 2, write: 0)
        _ = try mmio(modern + 0x20, size: 4, write: ring)
        _ = try mmio(modern + 0x28, size: 4, write: ring + 0x1000)
        _ = try mmio(modern + 0x30, size: 4, write: ring + 0x2000)
        _ = try mmio(modern + 0x1C, size: 2, write: 1)
        _ = try mmio(modern + 0x14, size: 1, write: 0x0F)

        // One read of sector 3: header, 512-byte buffer, status, written through the mapcache.
        let memory = machine.memory
        try memory.write(UInt32(0), at: 0x20_0000)
        try memory.write(UInt32(0), at: 0x20_0004)
        try memory.write(UInt64(3), at: 0x20_0008)
        for (i, d) in [(UInt64(0x20_0000), UInt32(16), UInt16(1)), (0x20_1000, 512, 3), (0x20_2000, 1, 2)].enumerated() {
            try memory.write(d.0, at: ring + 16 * UInt64(i))
            try memory.write(d.1, at: ring + 16 * UInt64(i) + 8)
            try memory.write(d.2, at: ring + 16 * UInt64(i) + 12)
            try memory.write(UInt16(i + 1), at: ring + 16 * UInt64(i) + 14)
        }
        try memory.write(UInt8(0xEE), at: 0x20_2000)
        try memory.write(UInt16(0), at: ring + 0x1004)
        try memory.write(UInt16(1), at: ring + 0x1002)
        _ = try mmio(modern + 0x3000, size: 2, write: 0)
        try waitFor("used ring") { (try? memory.read(UInt16.self, at: ring + 0x2002)) == 1 }
        XCTAssertEqual(try memory.read(UInt8.self, at: 0x20_2000), 0)
        XCTAssertEqual(try memory.readBytes(at: 0x20_1000, count: 512), [UInt8](repeating: 0x33, count: 512))
        try waitFor("MSI") { sim.dmOps.contains(.msi(0xFEE0_0000, 0x45)) }

        machine.terminate(signal: SIGHUP)
        wait(for: [finished], timeout: 10)
        machine.shutdownBackends()
    }
}
