import Backends
import DMCore
@testable import Devices
import XCTest

/// A wire for one NIC: what it sends is recorded (and, with `loopsBack`, comes straight back);
/// frames injected from the "host" wait, in order, while the NIC has no room.
final class LoopbackNetBackend: NetBackend {
    let id = "loopback"
    weak var frontend: (any NetFrontend)?
    var queued: [[UInt8]] = []
    var sent: [[UInt8]] = []
    var loopsBack = false
    var readyCalls = 0

    func attach(_ frontend: (any NetFrontend)?) { self.frontend = frontend }

    func send(frame: UnsafeRawBufferPointer) -> Bool {
        sent.append(Array(frame))
        if loopsBack { inject(Array(frame)) }
        return true
    }

    func inject(_ frame: [UInt8]) {
        queued.append(frame)
        drain()
    }

    func frontendReady() {
        readyCalls += 1
        drain()
    }

    private func drain() {
        while let frontend, frontend.canReceive, !queued.isEmpty {
            let frame = queued.removeFirst()
            frame.withUnsafeBytes { frontend.receive(frame: $0) }
        }
    }
}

final class RTL8139Tests: XCTestCase {
    static let mac = MACAddress((0x00, 0x16, 0x3E, 0x12, 0x34, 0x56))
    static let ring: UInt32 = 0x10000
    static let tx: UInt32 = 0x40000

    var rig: LegacyTestRig!
    var wire: LoopbackNetBackend!
    var nic: RTL8139!

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        wire = LoopbackNetBackend()
        nic = RTL8139(mac: Self.mac, backend: wire, memory: rig.memory, timers: rig.timers)
    }

    func r8(_ o: UInt64) -> UInt8 { UInt8(nic.read(region: 0, offset: o, size: 1)) }
    func r16(_ o: UInt64) -> UInt16 { UInt16(nic.read(region: 0, offset: o, size: 2)) }
    func r32(_ o: UInt64) -> UInt32 { UInt32(nic.read(region: 0, offset: o, size: 4)) }
    func w8(_ o: UInt64, _ v: UInt8) { nic.write(region: 0, offset: o, size: 1, value: UInt64(v)) }
    func w16(_ o: UInt64, _ v: UInt16) { nic.write(region: 0, offset: o, size: 2, value: UInt64(v)) }
    func w32(_ o: UInt64, _ v: UInt32) { nic.write(region: 0, offset: o, size: 4, value: UInt64(v)) }
    var intx: Bool { nic.pci.config.get8(0x06) & 0x08 != 0 }

    /// What 8139too does: reset, ring, accept filter, interrupts, RE|TE.
    func start(rcr: UInt32 = 0x8E, imr: UInt16 = 0x1F) {
        nic.configWrite(offset: 0x04, size: 2, value: 0x0005)  // I/O decoding, bus master
        w8(0x37, 0x10)
        w32(0x30, Self.ring)
        w32(0x44, rcr)
        w16(0x3C, imr)
        w8(0x37, 0x0C)
    }

    func frame(to dst: [UInt8], length: Int = 100, fill: UInt8 = 0xA5) -> [UInt8] {
        let f = dst + [0x02, 0, 0, 0, 0, 1, 0x08, 0x00]
        return Array((f + [UInt8](repeating: fill, count: max(length - f.count, 0))).prefix(length))
    }

    func transmit(_ f: [UInt8], slot: UInt64 = 0) throws {
        try rig.memory.write(at: UInt64(Self.tx), bytes: f)
        w32(0x20 + 4 * slot, Self.tx)
        w32(0x10 + 4 * slot, UInt32(f.count))
    }

    /// The ring entry at `offset`: status, length (with CRC) and the frame with its CRC.
    func entry(at offset: UInt32) throws -> (status: UInt16, length: Int, frame: [UInt8]) {
        let header = try rig.memory.read(UInt32.self, at: UInt64(Self.ring + offset))
        let length = Int(header >> 16)
        let bytes = try rig.memory.readBytes(at: UInt64(Self.ring + offset + 4), count: length)
        return (UInt16(header & 0xFFFF), length, bytes)
    }

    func testIdentityAndDefaults() {
        XCTAssertEqual(nic.pci.config.get32(0), 0x8139_10EC)
        XCTAssertEqual(nic.pci.config.get32(8), 0x0200_0010)
        XCTAssertEqual((0..<6).map { r8(UInt64($0)) }, [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56])
        XCTAssertEqual(r8(0x37), 0x01, "BUFE after reset")
        XCTAssertEqual(r32(0x40) & 0x7CC0_0000, 0x7400_0000, "RTL8139C in TCR")
        XCTAssertEqual(r16(0x60), 0x000F, "all four descriptors host-owned")
        XCTAssertEqual(r16(0x64) & 0x0024, 0x0024, "link up, autonegotiation complete")
        XCTAssertEqual(r8(0x58) & 0x04, 0)
        XCTAssertEqual(r16(0x38), 0xFFF0, "CAPR reads the read pointer minus 16")
        XCTAssertEqual(MACAddress.qemuDefault(index: 1).description, "52:54:00:12:34:57")
        XCTAssertEqual(MACAddress(parsing: "00:16:3E:01:02:0a"), MACAddress((0, 0x16, 0x3E, 1, 2, 0x0A)))
        XCTAssertNil(MACAddress(parsing: "00:16:3e:01:02"))
        XCTAssertNil(MACAddress(parsing: "00:16:3e:01:02:100"))
        XCTAssertNil(MACAddress(parsing: "g0:16:3e:01:02:03"))
    }

    /// The 93C46 read sequence 8139too uses (start bit, opcode 10, 6 address bits, 16 bits out).
    func eepromRead(_ word: UInt32, addressBits: Int = 6) -> UInt16 {
        let command = (UInt32(0b110) << UInt32(addressBits)) | word
        w8(0x50, 0x80)
        w8(0x50, 0x88)
        for i in stride(from: addressBits + 2, through: 0, by: -1) {
            let di: UInt8 = command >> UInt32(i) & 1 != 0 ? 0x02 : 0
            w8(0x50, 0x88 | di)
            w8(0x50, 0x8C | di)
        }
        w8(0x50, 0x88)
        var value: UInt16 = 0
        for _ in 0..<16 {
            w8(0x50, 0x8C)
            value = value << 1 | UInt16(r8(0x50) & 1)
            w8(0x50, 0x88)
        }
        w8(0x50, 0)
        return value
    }

    func testEEPROMReadsAsLinuxProbesIt() {
        XCTAssertEqual(eepromRead(0), 0x8129)
        XCTAssertEqual(eepromRead(1), 0x10EC)
        XCTAssertEqual(eepromRead(2), 0x8139)
        XCTAssertEqual([eepromRead(7), eepromRead(8), eepromRead(9)], [0x1600, 0x123E, 0x5634])
        // 8139too's first probe assumes a 93C56 (8 address bits): a 93C46 must not answer 0x8129.
        XCTAssertNotEqual(eepromRead(0, addressBits: 8), 0x8129)
        XCTAssertEqual(eepromRead(7), 0x1600, "a fresh chip select starts over")
    }

    func testEEPROMWriteNeedsEnableAndAutoloadReloadsTheAddress() {
        var e = EEPROM93C46(words: RTL8139.eepromImage(Self.mac))
        func command(_ bits: [Bool]) {
            e.drive(chipSelect: false, clock: false, dataIn: false)
            e.drive(chipSelect: true, clock: false, dataIn: false)
            for b in bits {
                e.drive(chipSelect: true, clock: false, dataIn: b)
                e.drive(chipSelect: true, clock: true, dataIn: b)
            }
            e.drive(chipSelect: false, clock: false, dataIn: false)
        }
        func bits(_ v: UInt32, _ n: Int) -> [Bool] { (0..<n).reversed().map { v >> UInt32($0) & 1 != 0 } }
        let write7 = [true] + bits(0b01, 2) + bits(7, 6) + bits(0xBEEF, 16)
        command(write7)
        XCTAssertEqual(e.words[7], 0x1600, "write without EWEN is ignored")
        command([true] + bits(0b00, 2) + bits(0b110000, 6))  // EWEN
        command(write7)
        XCTAssertEqual(e.words[7], 0xBEEF)

        // Through the NIC: program word 7, then 9346CR auto-load brings it into IDR0-1.
        for step in [[true] + bits(0b00, 2) + bits(0b110000, 6), write7] {
            w8(0x50, 0x80)
            w8(0x50, 0x88)
            for b in step {
                w8(0x50, 0x88 | (b ? 2 : 0))
                w8(0x50, 0x8C | (b ? 2 : 0))
            }
            w8(0x50, 0x80)
        }
        w8(0x50, 0x40)
        XCTAssertEqual(r8(0x50), 0, "auto-load returns to normal mode")
        XCTAssertEqual([r8(0), r8(1)], [0xEF, 0xBE])
    }

    func testLoopbackTransmitReceiveAndInterrupts() throws {
        wire.loopsBack = true
        start()
        XCTAssertFalse(intx)
        let f = frame(to: [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56])
        try transmit(f)
        XCTAssertEqual(wire.sent, [f])
        XCTAssertEqual(r32(0x10) & 0xA000, 0xA000, "OWN and TOK")
        XCTAssertEqual(r16(0x60) & 0x1001, 0x1001)
        XCTAssertEqual(r16(0x3E), 0x0005, "TOK and ROK")
        XCTAssertTrue(intx)
        let e = try entry(at: 0)
        XCTAssertEqual(e.status, 0x4001, "ROK, physical match")
        XCTAssertEqual(e.length, f.count + 4)
        XCTAssertEqual(Array(e.frame.prefix(f.count)), f)
        let fcs = f.withUnsafeBytes { ethernetFCS($0) }
        XCTAssertEqual(Array(e.frame.suffix(4)), [UInt8(fcs & 0xFF), UInt8(fcs >> 8 & 0xFF), UInt8(fcs >> 16 & 0xFF), UInt8(fcs >> 24)])
        XCTAssertEqual(r16(0x3A), UInt16((4 + f.count + 4 + 3) & ~3), "CBR after one entry")
        XCTAssertEqual(r8(0x37) & 1, 0, "not empty")
        w16(0x3E, 0x0004)
        XCTAssertEqual(r16(0x3E), 0x0001, "ISR is write-1-to-clear")
        XCTAssertTrue(intx)
        w16(0x3E, 0xFFFF)
        XCTAssertFalse(intx)
        w16(0x38, r16(0x3A) &- 16)
        XCTAssertEqual(r8(0x37) & 1, 1, "empty once CAPR catches up")
        // Masked: ISR still records, INTx stays low.
        w16(0x3C, 0)
        try transmit(f, slot: 1)
        XCTAssertEqual(r16(0x3E), 0x0005)
        XCTAssertFalse(intx)
        w16(0x3C, 0x0001)
        XCTAssertTrue(intx)
    }

    func testTransmitterOffAndTCRLoopback() throws {
        start()
        w8(0x37, 0x08)  // RE only
        let f = frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        try transmit(f)
        XCTAssertEqual(wire.sent.count, 0)
        XCTAssertEqual(r32(0x10) & 0x2000, 0, "still the NIC's until TE")
        w8(0x37, 0x0C)
        w32(0x40, 0x0006_0000)  // internal loopback: never reaches the wire
        try transmit(f, slot: 1)
        XCTAssertEqual(wire.sent.count, 0)
        XCTAssertEqual(try entry(at: 0).status, 0x2001, "broadcast")
    }

    func testAcceptFilters() throws {
        start(rcr: 0)
        let mine = frame(to: [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56])
        let other = frame(to: [0x00, 0x16, 0x3E, 0x99, 0x99, 0x99])
        let broadcast = frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        let group: [UInt8] = [0x01, 0x00, 0x5E, 0x00, 0x00, 0xFB]
        let multicast = frame(to: group)
        for f in [mine, other, broadcast, multicast] { wire.inject(f) }
        XCTAssertEqual(r16(0x3A), 0, "RCR 0 accepts nothing")

        func accepted(_ rcr: UInt32, _ f: [UInt8]) throws -> UInt16? {
            w8(0x37, 0x10)
            start(rcr: rcr)
            wire.inject(f)
            return r16(0x3A) == 0 ? nil : try entry(at: 0).status
        }
        XCTAssertEqual(try accepted(0x02, mine), 0x4001)
        XCTAssertNil(try accepted(0x02, other))
        XCTAssertNil(try accepted(0x02, broadcast))
        XCTAssertEqual(try accepted(0x08, broadcast), 0x2001)
        XCTAssertEqual(try accepted(0x01, other), 0x0001, "promiscuous")
        XCTAssertNil(try accepted(0x04, multicast), "multicast needs its hash bit")
        let bit = Int(group.withUnsafeBytes { RTL8139.multicastHash($0) })
        w8(0x37, 0x10)
        start(rcr: 0x04)
        w8(0x08 + UInt64(bit >> 3), 1 << UInt8(bit & 7))
        wire.inject(multicast)
        XCTAssertEqual(try entry(at: 0).status, 0x8001)
        // 01:00:5e:00:00:fb (mDNS): bitrev32(~zlib.crc32(addr)) >> 26, Linux's ether_crc >> 26.
        XCTAssertEqual(bit, 15)
    }

    func testShortFramesArePaddedAndRingWraps() throws {
        start(rcr: 0x0A)  // no WRAP: entries split at the ring's end
        let big = frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 1500)
        // Five 1508-byte entries, each consumed as a driver would, put the write pointer at 7540.
        for _ in 0..<5 {
            wire.inject(big)
            let cbr = UInt32(r16(0x3A))
            w16(0x38, UInt16(truncatingIfNeeded: cbr &- 16))
        }
        let at = UInt32(r16(0x3A))  // 5 * 1508 = 7540
        XCTAssertEqual(at, 7540)
        wire.inject(big)
        let head = try rig.memory.readBytes(at: UInt64(Self.ring + at + 4), count: 8192 - Int(at) - 4)
        let tail = try rig.memory.readBytes(at: UInt64(Self.ring), count: 1504 - head.count)
        XCTAssertEqual(Array((head + tail).prefix(1500)), big)
        XCTAssertEqual(UInt32(r16(0x3A)), (at + 1508) % 8192)

        // A runt is padded to 60 bytes (+ CRC).
        w8(0x37, 0x10)
        start(rcr: 0x0A)
        wire.inject(Array(big.prefix(20)))
        XCTAssertEqual(try entry(at: 0).length, 64)
    }

    func testWrapModeWritesPastTheEnd() throws {
        start(rcr: 0x8A)
        let big = frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 1500)
        for _ in 0..<5 {
            wire.inject(big)
            w16(0x38, UInt16(truncatingIfNeeded: UInt32(r16(0x3A)) &- 16))
        }
        wire.inject(big)
        XCTAssertEqual(Array(try entry(at: 7540).frame.prefix(1500)), big, "contiguous past the ring's end")
    }

    func testBackpressureAndOverflow() throws {
        start(rcr: 0x0A, imr: 0x0001)
        let big = frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: 1500)
        for _ in 0..<10 { wire.inject(big) }
        // The NIC stops taking frames while it lacks room for the largest one (five 1508-byte
        // entries leave 652 of 8192 bytes); the rest wait on the wire.
        XCTAssertFalse(nic.canReceive)
        XCTAssertEqual(10 - wire.queued.count, 5)
        XCTAssertEqual(r32(0x4C), 0, "nothing lost")
        w16(0x38, UInt16(truncatingIfNeeded: UInt32(r16(0x3A)) &- 16))
        XCTAssertEqual(wire.queued.count, 0, "CAPR made room: the wire resumes")
        XCTAssertGreaterThan(wire.readyCalls, 0)
    }

    func testHostileDescriptorsNeverCrash() throws {
        start()
        wire.loopsBack = true
        // Oversized, zero and unmapped transmit descriptors abort with TER.
        for (address, size) in [(Self.tx, UInt32(0x1FFF)), (Self.tx, 0), (0xFFFF_F000, 1000), (0x000F_FF00, 1000)] {
            w16(0x3E, 0xFFFF)
            w32(0x20, address)
            w32(0x10, size)
            XCTAssertEqual(r32(0x10) & 0x4000_2000, 0x4000_2000, "TABT|OWN for \(hex(address)) size \(size)")
            XCTAssertEqual(r16(0x3E) & 0x0008, 0x0008)
        }
        XCTAssertEqual(wire.sent.count, 0)
        // Without bus mastering nothing moves: transmits abort, frames are missed.
        nic.configWrite(offset: 0x04, size: 2, value: 0x0001)
        w16(0x3E, 0xFFFF)
        try transmit(frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), slot: 2)
        XCTAssertEqual(r32(0x18) & 0x4000_0000, 0x4000_0000)
        wire.inject(frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
        XCTAssertEqual(r32(0x4C), 1)
        XCTAssertEqual(wire.sent.count, 0)
        nic.configWrite(offset: 0x04, size: 2, value: 0x0005)
        w32(0x4C, 0)
        // A receive ring outside RAM drops frames and counts them.
        w32(0x30, 0xFFFF_FF00)
        wire.inject(frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
        XCTAssertEqual(r32(0x4C), 1)
        XCTAssertEqual(r16(0x3A), 0)
        // Oversized frames from the host are dropped.
        w32(0x30, Self.ring)
        wire.inject([UInt8](repeating: 0xFF, count: 4000))
        XCTAssertEqual(r32(0x4C), 2)
        // Random register traffic, every width and offset, both BARs.
        var seed: UInt64 = 0x5EED_8139
        func next() -> UInt64 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return seed >> 17
        }
        for _ in 0..<20000 {
            let offset = next() % 260
            let size = [1, 2, 4, 8][Int(next() % 4)]
            let region = Int(next() % 3)
            if next() % 2 == 0 {
                nic.write(region: region, offset: offset, size: size, value: next())
            } else {
                _ = nic.read(region: region, offset: offset, size: size)
            }
            if next() % 64 == 0 { wire.inject(frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], length: Int(next() % 1800) + 1)) }
        }
    }

    func testStateRoundTrip() throws {
        wire.loopsBack = true
        start()
        w8(0x0A, 0x42)
        try transmit(frame(to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
        var w = StateWriter()
        nic.saveState(to: &w)
        let other = RTL8139(mac: Self.mac, backend: nil, memory: rig.memory, timers: rig.timers)
        var r = StateReader(bytes: w.bytes, section: "rtl8139")
        try other.loadState(from: &r, version: 1)
        XCTAssertTrue(r.isAtEnd)
        for offset in [0x00, 0x08, 0x10, 0x20, 0x30, 0x37, 0x38, 0x3A, 0x3C, 0x3E, 0x40, 0x44, 0x4C, 0x60, 0x62] {
            XCTAssertEqual(other.read(region: 0, offset: UInt64(offset), size: 4), nic.read(region: 0, offset: UInt64(offset), size: 4),
                           "register \(hex(offset))")
        }
        var again = StateWriter()
        other.saveState(to: &again)
        XCTAssertEqual(again.bytes, w.bytes)

        // Truncated or out-of-range streams are refused.
        var truncated = StateReader(bytes: Array(w.bytes.dropLast()), section: "rtl8139")
        XCTAssertThrowsError(try other.loadState(from: &truncated, version: 1))
        var bad = w.bytes
        // rxRead sits after PCI config (4 + 256 + 1), IDR (4 + 6), MAR (4 + 8), TSD/TSAD (2 * (4 + 16)), RBSTART.
        let rxReadOffset = 261 + 10 + 12 + 40 + 4
        bad.replaceSubrange(rxReadOffset..<rxReadOffset + 4, with: [0xFF, 0xFF, 0x01, 0x00])
        var hostile = StateReader(bytes: bad, section: "rtl8139")
        XCTAssertThrowsError(try other.loadState(from: &hostile, version: 1))
    }

    /// Run through fuzz/ioreq/alloc-check.sh BUNDLE DevicesTests.RTL8139Tests/testHotPathAllocatesNothing:
    /// transmit to the wire, receive from it, consume and acknowledge, 400 times.
    func testHotPathAllocatesNothing() throws {
        guard let symbol = dlsym(nil, "sdm_alloc_count") else {  // RTLD_DEFAULT is NULL on glibc
            throw XCTSkip("run through fuzz/ioreq/alloc-check.sh BUNDLE DevicesTests.RTL8139Tests/testHotPathAllocatesNothing")
        }
        let allocations = unsafeBitCast(symbol, to: (@convention(c) () -> UInt64).self)
        final class CountingWire: NetBackend {
            let id = "count"
            var sent = 0
            func attach(_ frontend: (any NetFrontend)?) {}
            func send(frame: UnsafeRawBufferPointer) -> Bool { sent += 1; return true }
            func frontendReady() {}
        }
        let counting = CountingWire()
        nic = RTL8139(mac: Self.mac, backend: counting, memory: rig.memory, timers: rig.timers)
        start()
        let f = frame(to: [0x00, 0x16, 0x3E, 0x12, 0x34, 0x56], length: 1000)
        try rig.memory.write(at: UInt64(Self.tx), bytes: f)
        for n in 0..<4 { w32(0x20 + 4 * UInt64(n), Self.tx) }
        var before: UInt64 = 0
        for i in 0..<420 {
            if i == 20 { before = allocations() }
            w32(0x10 + 4 * UInt64(i % 4), UInt32(f.count))
            f.withUnsafeBytes { nic.receive(frame: $0) }
            w16(0x38, r16(0x3A) &- 16)
            w16(0x3E, r16(0x3E))
        }
        let after = allocations()
        XCTAssertEqual(counting.sent, 420)
        XCTAssertEqual(after - before, 0, "allocations on the TX/RX path")
    }

    func testTimerCountsAndRaisesTimeout() {
        start(imr: 0x4000)
        w32(0x48, 0)  // TCTR restarts
        rig.advance(nanoseconds: 1_000_000)
        XCTAssertEqual(r32(0x48), 33_000, "33 MHz")
        w32(0x54, 66_000)  // TimerInt: 2 ms after the restart
        rig.advance(nanoseconds: 900_000)
        XCTAssertEqual(r16(0x3E) & 0x4000, 0)
        rig.advance(nanoseconds: 200_000)
        XCTAssertEqual(r16(0x3E) & 0x4000, 0x4000, "TimeOut once TCTR reaches TimerInt")
        XCTAssertTrue(intx)
        w16(0x3E, 0x4000)
        rig.advance(nanoseconds: 10_000_000)
        XCTAssertEqual(r16(0x3E) & 0x4000, 0, "next time only after the counter wraps")
        w32(0x54, 0)
        w32(0x48, 0)
        rig.advance(nanoseconds: 200_000_000_000)
        XCTAssertEqual(r16(0x3E) & 0x4000, 0, "TimerInt 0 disables")
    }

    func testResetRestoresPowerOn() throws {
        start()
        w8(0x00, 0xEE)
        w8(0x08, 0xFF)
        nic.reset()
        XCTAssertEqual(r8(0x00), 0x00)
        XCTAssertEqual(r8(0x08), 0x00)
        XCTAssertEqual(r8(0x37), 0x01)
        XCTAssertEqual(r16(0x3C), 0)
    }
}
