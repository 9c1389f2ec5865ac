import DMCore
@testable import Devices
import XCTest

final class FwCfgTests: XCTestCase {
    var rig: LegacyTestRig!
    var fwcfg: FwCfg!

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        fwcfg = FwCfg(memory: rig.memory)
    }

    func select(_ key: UInt16) { fwcfg.write(region: 0, offset: 0, size: 2, value: UInt64(key)) }
    func readData(_ count: Int) -> [UInt8] { (0..<count).map { _ in fwcfg.readByte(1) } }

    /// Writes a DMA descriptor at `at` and starts it the way SeaBIOS does (byte-swapped outl).
    func dma(control: UInt32, length: UInt32, address: UInt64, descriptor at: UInt64 = 0x1000) throws -> UInt32 {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: control.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: length.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: address.bigEndian) { bytes += $0 }
        try rig.memory.write(at: at, bytes: bytes)
        fwcfg.write(region: 0, offset: 4, size: 4, value: UInt64(UInt32(at >> 32).byteSwapped))
        fwcfg.write(region: 0, offset: 8, size: 4, value: UInt64(UInt32(truncatingIfNeeded: at).byteSwapped))
        return UInt32(bigEndian: try rig.memory.read(UInt32.self, at: at))
    }

    func testSignatureSelectedAtReset() {
        XCTAssertEqual(readData(4), Array("QEMU".utf8))
        XCTAssertEqual(readData(2), [0, 0], "reads past the end return 0")
        fwcfg.reset()
        XCTAssertEqual(readData(4), Array("QEMU".utf8))
    }

    func testIDAdvertisesDMA() {
        select(FwCfg.Key.id)
        XCTAssertEqual(readData(4), [3, 0, 0, 0])
    }

    func testDMACanBeDisabledAsInQemuXen() throws {
        let pio = FwCfg(memory: rig.memory, dmaEnabled: false)
        pio.write(region: 0, offset: 0, size: 2, value: UInt64(FwCfg.Key.id))
        XCTAssertEqual((0..<4).map { _ in pio.readByte(1) }, [1, 0, 0, 0], "ID: port interface only")
        XCTAssertEqual(pio.read(region: 0, offset: 4, size: 4), 0xFFFF_FFFF, "no DMA signature")
        // A DMA start does nothing at all: the descriptor stays as written.
        let key = try pio.addFile(name: "f", data: [1, 2, 3, 4])
        var bytes: [UInt8] = []
        for v in [(UInt32(key) << 16 | 0x0A).bigEndian, UInt32(4).bigEndian] { withUnsafeBytes(of: v) { bytes += $0 } }
        withUnsafeBytes(of: UInt64(0x3000).bigEndian) { bytes += $0 }
        try rig.memory.write(at: 0x1000, bytes: bytes)
        pio.write(region: 0, offset: 8, size: 4, value: UInt64(UInt32(0x1000).byteSwapped))
        XCTAssertEqual(try rig.memory.readBytes(at: 0x1000, count: 16), bytes)
        XCTAssertEqual(try rig.memory.readBytes(at: 0x3000, count: 4), [0, 0, 0, 0])
    }

    func testSelectResetsOffsetAndPortZeroReadsData() {
        select(0)
        _ = readData(2)
        select(0)
        XCTAssertEqual(fwcfg.readByte(0), UInt8(ascii: "Q"), "QEMU's combined port reads data at 0x510 too")
    }

    func testDMASignatureRegister() {
        XCTAssertEqual(fwcfg.read(region: 0, offset: 4, size: 4), 0x554D_4551)  // "QEMU" in port order
        XCTAssertEqual(fwcfg.read(region: 0, offset: 8, size: 4), 0x4746_4320)  // " CFG"
        XCTAssertEqual(fwcfg.read(region: 0, offset: 4, size: 8), 0x4746_4320_554D_4551)
        XCTAssertEqual(fwcfg.readByte(11), UInt8(ascii: "G"))
        XCTAssertEqual(fwcfg.readByte(2), 0xFF, "0x512 is not decoded")
    }

    func testItemsAndWriteChannelBit() throws {
        try fwcfg.addItem(key: 0x0005, data: [4, 0])
        try fwcfg.addItem(key: 0x8003, data: [1, 2, 3])
        select(0x4005)
        XCTAssertEqual(readData(3), [4, 0, 0])
        select(0x8003)
        XCTAssertEqual(readData(3), [1, 2, 3])
        select(0x1234)
        XCTAssertEqual(readData(2), [0, 0], "unknown keys read as zeros")
        XCTAssertThrowsError(try fwcfg.addItem(key: 0x19, data: []))
        XCTAssertThrowsError(try fwcfg.addItem(key: 0x25, data: []))
        XCTAssertThrowsError(try fwcfg.addItem(key: 0x4005, data: []))
    }

    func testFileDirectoryLayout() throws {
        let zKey = try fwcfg.addFile(name: "etc/z", data: [1, 2, 3])
        let bootKey = try fwcfg.addFile(name: "bootorder", data: Array("/pci@i0cf8/*@1\n".utf8))
        XCTAssertEqual(zKey, 0x20)
        XCTAssertEqual(bootKey, 0x21)
        select(FwCfg.Key.fileDirectory)
        let count = readData(4)
        XCTAssertEqual(count, [0, 0, 0, 2])
        let first = readData(64)
        let second = readData(64)
        XCTAssertEqual(Array(first[0..<4]), [0, 0, 0, 15])
        XCTAssertEqual(Array(first[4..<6]), [0, 0x21])
        XCTAssertEqual(Array(first[6..<8]), [0, 0])
        XCTAssertEqual(Array(first[8..<17]), Array("bootorder".utf8))
        XCTAssertTrue(first[17...].allSatisfy { $0 == 0 })
        XCTAssertEqual(Array(second[0..<8]), [0, 0, 0, 3, 0, 0x20, 0, 0])
        XCTAssertEqual(Array(second[8..<13]), Array("etc/z".utf8))
        select(zKey)
        XCTAssertEqual(readData(3), [1, 2, 3])
    }

    func testFileNameValidation() throws {
        try fwcfg.addFile(name: String(repeating: "a", count: 55), data: [])
        XCTAssertThrowsError(try fwcfg.addFile(name: String(repeating: "b", count: 56), data: [])) {
            XCTAssertEqual($0 as? FwCfgError, .fileNameTooLong(String(repeating: "b", count: 56)))
        }
        try fwcfg.addFile(name: "x", data: [])
        XCTAssertThrowsError(try fwcfg.addFile(name: "x", data: [1])) {
            XCTAssertEqual($0 as? FwCfgError, .duplicateFile("x"))
        }
        XCTAssertThrowsError(try fwcfg.addFile(name: "", data: []))
        XCTAssertThrowsError(try fwcfg.addFile(name: "a\u{0}b", data: []))
        // Multi-byte UTF-8 counts in bytes.
        XCTAssertThrowsError(try fwcfg.addFile(name: String(repeating: "é", count: 28), data: []))
    }

    func testDMAReadWithSelectThenZeroFillPastEnd() throws {
        let key = try fwcfg.addFile(name: "etc/e820", data: Array(1...10))
        try rig.memory.fill(at: 0x2000, count: 32, byte: 0xAA)
        let status = try dma(control: UInt32(key) << 16 | FwCfg.DMAControl.select | FwCfg.DMAControl.read,
                             length: 16, address: 0x2000)
        XCTAssertEqual(status, 0)
        XCTAssertEqual(try rig.memory.readBytes(at: 0x2000, count: 17), Array(1...10) + [0, 0, 0, 0, 0, 0, 0xAA])
    }

    func testDMASkipThenReadAndPIOContinues() throws {
        let key = try fwcfg.addFile(name: "f", data: Array(0..<100))
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | FwCfg.DMAControl.select | FwCfg.DMAControl.skip,
                               length: 10, address: 0), 0)
        XCTAssertEqual(try dma(control: FwCfg.DMAControl.read, length: 5, address: 0x3000), 0)
        XCTAssertEqual(try rig.memory.readBytes(at: 0x3000, count: 5), [10, 11, 12, 13, 14])
        XCTAssertEqual(readData(2), [15, 16], "PIO continues from the DMA offset")
    }

    func testDMAHugeLengthIsClampedAndBounded() throws {
        let key = try fwcfg.addFile(name: "small", data: [7, 7])
        // Skip with a 4 GiB length just consumes the item.
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.skip, length: .max, address: 0), 0)
        // Read with 4 GiB: the item fits, the zero-fill runs off the end of our 1 MiB RAM.
        let status = try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.read, length: .max, address: 0x4000)
        XCTAssertEqual(status, FwCfg.DMAControl.error)
        XCTAssertEqual(try rig.memory.readBytes(at: 0x4000, count: 2), [7, 7])
        // Like QEMU, the zero-fill still reaches the end of RAM.
        try rig.memory.fill(at: 0x8000, count: 0x1000, byte: 0xAA)
        try rig.memory.fill(at: (1 << 20) - 16, count: 16, byte: 0xAA)
        try rig.memory.write(UInt8(0x5A), at: 0x7FFF)
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.read, length: 0x0800_0000,
                               address: 0x8000), FwCfg.DMAControl.error)
        XCTAssertEqual(try rig.memory.readBytes(at: 0x8000, count: 4), [7, 7, 0, 0])
        XCTAssertEqual(try rig.memory.readBytes(at: (1 << 20) - 16, count: 16), [UInt8](repeating: 0, count: 16))
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: 0x7FFF), 0x5A)
    }

    func testDMAWriteRules() throws {
        let ro = try fwcfg.addFile(name: "ro", data: [0, 0])
        let rw = try fwcfg.addFile(name: "rw", data: [0, 0, 0], writable: true)
        try rig.memory.write(at: 0x5000, bytes: [9, 8, 7, 6])
        XCTAssertEqual(try dma(control: UInt32(ro) << 16 | 0x08 | FwCfg.DMAControl.write, length: 2, address: 0x5000),
                       FwCfg.DMAControl.error)
        XCTAssertEqual(fwcfg.itemData(key: ro), [0, 0])
        XCTAssertEqual(try dma(control: UInt32(rw) << 16 | 0x08 | FwCfg.DMAControl.write, length: 4, address: 0x5000),
                       FwCfg.DMAControl.error, "a write must fit the item")
        XCTAssertEqual(try dma(control: UInt32(rw) << 16 | 0x08 | FwCfg.DMAControl.write, length: 3, address: 0x5000), 0)
        XCTAssertEqual(fwcfg.itemData(key: rw), [9, 8, 7])
        XCTAssertEqual(try dma(control: FwCfg.DMAControl.write, length: 1, address: 0x5000), FwCfg.DMAControl.error,
                       "writing past the end fails")
    }

    func testDMABadAddresses() throws {
        let key = try fwcfg.addFile(name: "f", data: [1, 2, 3, 4])
        // Destination outside RAM.
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.read, length: 4,
                               address: 0xFFFF_FFFF_FFFF_FFF0), FwCfg.DMAControl.error)
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.read, length: 4,
                               address: UInt64(1 << 20) - 2), FwCfg.DMAControl.error)
        // Descriptor outside RAM: nothing to write back, and nothing crashes.
        let before = GuestErrorLog.shared.count
        fwcfg.write(region: 0, offset: 4, size: 4, value: UInt64(UInt32(0x1).byteSwapped))
        fwcfg.write(region: 0, offset: 8, size: 4, value: 0)
        XCTAssertGreaterThan(GuestErrorLog.shared.count, before)
        // A descriptor with no operation just completes.
        XCTAssertEqual(try dma(control: 0, length: 100, address: 0x6000), 0)
    }

    func testDMAWith64BitWrite() throws {
        let key = try fwcfg.addFile(name: "f", data: [5])
        var bytes: [UInt8] = []
        withUnsafeBytes(of: (UInt32(key) << 16 | 0x0A).bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(1).bigEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt64(0x7000).bigEndian) { bytes += $0 }
        try rig.memory.write(at: 0x1000, bytes: bytes)
        fwcfg.write(region: 0, offset: 4, size: 8, value: UInt64(0x1000).byteSwapped)
        XCTAssertEqual(try rig.memory.read(UInt8.self, at: 0x7000), 5)
        XCTAssertEqual(try rig.memory.read(UInt32.self, at: 0x1000), 0)
    }

    func testStateRoundTrip() throws {
        let key = try fwcfg.addFile(name: "rw", data: [0, 0], writable: true)
        try rig.memory.write(at: 0x5000, bytes: [4, 2])
        XCTAssertEqual(try dma(control: UInt32(key) << 16 | 0x08 | FwCfg.DMAControl.write, length: 2, address: 0x5000), 0)
        select(0)
        _ = readData(2)
        let other = FwCfg(memory: rig.memory)
        try other.addFile(name: "rw", data: [0, 0], writable: true)
        try roundTrip(fwcfg, into: other)
        XCTAssertEqual(other.itemData(key: key), [4, 2])
        XCTAssertEqual(other.readByte(1), UInt8(ascii: "M"))

        // Hostile: offset beyond the item.
        var w = StateWriter()
        w.put(UInt16(0)); w.put(UInt32(99)); w.put(UInt64(0)); w.put(UInt32(1)); w.put(key); w.put(bytes: [1, 2])
        var r = StateReader(bytes: w.bytes, section: "fw_cfg")
        XCTAssertThrowsError(try other.loadState(from: &r, version: 1))
        // Hostile: a writable item of the wrong size.
        var w2 = StateWriter()
        w2.put(UInt16(0)); w2.put(UInt32(0)); w2.put(UInt64(0)); w2.put(UInt32(1)); w2.put(key); w2.put(bytes: [1, 2, 3])
        var r2 = StateReader(bytes: w2.bytes, section: "fw_cfg")
        XCTAssertThrowsError(try other.loadState(from: &r2, version: 1))
        XCTAssertEqual(other.itemData(key: key), [4, 2], "a failed load changes nothing")
    }
}
