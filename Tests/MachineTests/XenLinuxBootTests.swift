import Config
import DMCore
@testable import Devices
import Foundation
import XCTest
@testable import Machine
@testable import XenAccel

/// Direct kernel boot on `xenfv` against the simulated hypervisor: libxl's argv plus
/// -kernel/-initrd/-append; the test plays SeaBIOS and linuxboot_dma.bin over PIO ioreqs and
/// checks that fw_cfg DMA lands in the domain's RAM through the mapcache.
extension XenMachineTests {
    func testDirectKernelBootByFwCfgDMAThroughTheMapCache() throws {
        guard FileManager.default.isReadableFile(atPath: "/usr/share/qemu/linuxboot_dma.bin") else {
            throw XCTSkip("qemu-system-data's linuxboot_dma.bin is not installed")
        }
        var kernel = SyntheticBzImage(payload: 64 << 10).bytes
        kernel[0x1F1] = 4
        let payload = Array(kernel[2560...])
        let initrd = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
        try Data(kernel).write(to: URL(fileURLWithPath: path("vmlinuz")))
        try Data(initrd).write(to: URL(fileURLWithPath: path("initrd")))
        let (machine, sim, store) = try makeMachine(libxlArguments(domain: 6) + [
            "-kernel", path("vmlinuz"), "-initrd", path("initrd"), "-append", "console=ttyS0"])
        let finished = try start(machine, store: store, domain: 6)
        func port(_ address: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
            try self.port(sim, address, size: size, write: write)
        }
        // SeaBIOS's detection: select 0, "QEMU" from 0x511, ID with the DMA bit.
        _ = try port(0x510, size: 2, write: 0)
        XCTAssertEqual(try (0..<4).map { _ in UInt8(try port(0x511, size: 1)) }, Array("QEMU".utf8))
        _ = try port(0x510, size: 2, write: 1)
        XCTAssertEqual(try port(0x511, size: 1), 3)

        // The ROM: one DMA per piece, descriptor address big-endian through 0x518.
        func dma(key: UInt16, length: Int, to address: UInt64) throws {
            var descriptor: [UInt8] = []
            for v in [(UInt32(key) << 16 | 0x08 | 0x02).bigEndian, UInt32(length).bigEndian] { withUnsafeBytes(of: v) { descriptor += $0 } }
            withUnsafeBytes(of: address.bigEndian) { descriptor += $0 }
            sim.guestWrite(descriptor, at: 0x5000)
            _ = try port(0x518, size: 4, write: UInt64(UInt32(0x5000).byteSwapped))
            XCTAssertEqual(sim.guestRead(at: 0x5000, count: 4), [0, 0, 0, 0], "control written back without error")
        }
        try dma(key: 0x18, length: 2560, to: 0x1_0000)
        let setup = sim.guestRead(at: 0x1_0000, count: 2560)
        XCTAssertEqual(le32(setup, 0x228), 0x2_0000)
        XCTAssertEqual(le32(setup, 0x21C), UInt32(initrd.count))
        try dma(key: 0x11, length: payload.count, to: 0x10_0000)
        XCTAssertEqual(sim.guestRead(at: 0x10_0000, count: payload.count), payload)
        try dma(key: 0x12, length: initrd.count, to: 0x7F_8000)  // crosses a 1 MiB mapcache bucket
        XCTAssertEqual(sim.guestRead(at: 0x7F_8000, count: initrd.count), initrd)
        try dma(key: 0x15, length: 14, to: 0x2_0000)
        XCTAssertEqual(sim.guestRead(at: 0x2_0000, count: 14), Array("console=ttyS0\u{0}".utf8))

        // The ROM and its boot entry are in the directory.
        let fwcfg = try XCTUnwrap(machine.lock.withLock { machine.devices.compactMap { $0 as? FwCfg }.first })
        let directory = try XCTUnwrap(fwcfg.itemData(key: 0x19))
        let names = (0..<Int(directory[3])).map { i -> String in
            let name = directory[4 + 64 * i + 8..<4 + 64 * (i + 1)]
            return String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
        }
        XCTAssertTrue(names.contains("genroms/linuxboot_dma.bin"), "\(names)")
        XCTAssertTrue(names.contains("bootorder"), "\(names)")
        XCTAssertFalse(names.contains("etc/e820"), "hvmloader owns the memory map under Xen")

        machine.terminate(signal: SIGTERM)
        wait(for: [finished], timeout: 10)
        machine.shutdownBackends()
    }
}
