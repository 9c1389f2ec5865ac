import Backends
import DMCore
@testable import Devices
import XCTest

/// Random register traffic of every width against every legacy device: nothing may crash,
/// hang or touch memory outside the guest, and state must still save and load afterwards.
final class LegacyHostileAccessTests: XCTestCase {
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    func hammer(_ device: BusDevice, regions: [(region: Int, length: UInt64)], rig: LegacyTestRig,
                seed: UInt64, rounds: Int = 20_000) {
        var rng = SplitMix(state: seed)
        for _ in 0..<rounds {
            let (region, length) = regions[Int.random(in: 0..<regions.count, using: &rng)]
            let size = [1, 1, 1, 2, 4, 8].randomElement(using: &rng) ?? 1
            guard UInt64(size) <= length else { continue }
            let offset = UInt64.random(in: 0...(length - UInt64(size)), using: &rng)
            if Bool.random(using: &rng) {
                _ = device.read(region: region, offset: offset, size: size)
            } else {
                device.write(region: region, offset: offset, size: size, value: rng.next() & mask(size))
            }
            if UInt8.random(in: 0...255, using: &rng) == 0 { rig.advance(nanoseconds: rng.next() % 2_000_000_000) }
        }
    }

    func check<D: Snapshottable & Resettable>(_ device: D, _ fresh: D) throws {
        try roundTrip(device, into: fresh)
        device.reset()
        try roundTrip(device, into: fresh)
    }

    func testUART() throws {
        let rig = try LegacyTestRig()
        let backend = RecordingCharBackend()
        let uart = UART16550(backend: backend, irq: rig.router.line(gsi: 4), stateID: "u", timers: rig.timers)
        for seed in 1...4 as ClosedRange<UInt64> {
            hammer(uart, regions: [(0, 8)], rig: rig, seed: seed)
            backend.send(Array(repeating: 0x5A, count: 40))
        }
        try check(uart, UART16550(backend: nil, irq: rig.router.line(gsi: 4), stateID: "u"))
    }

    func testRTC() throws {
        let rig = try LegacyTestRig()
        let rtc = CMOSRTC(irq: rig.router.line(gsi: 8), timers: rig.timers)
        for seed in 1...4 as ClosedRange<UInt64> { hammer(rtc, regions: [(0, 2)], rig: rig, seed: seed) }
        try check(rtc, CMOSRTC(irq: rig.router.line(gsi: 8), timers: rig.timers))
    }

    func testI8042() throws {
        let rig = try LegacyTestRig()
        let kbc = I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12))
        for seed in 1...4 as ClosedRange<UInt64> {
            hammer(kbc, regions: [(0, 1), (1, 1)], rig: rig, seed: seed)
            kbc.keyboardInput(scancodes: (0...255).map { UInt8($0) })
        }
        try check(kbc, I8042(keyboardIRQ: rig.router.line(gsi: 1), mouseIRQ: rig.router.line(gsi: 12)))
    }

    func testFwCfg() throws {
        let rig = try LegacyTestRig(ramSize: 1 << 16)
        let fwcfg = FwCfg(memory: rig.memory)
        try fwcfg.addFile(name: "etc/rw", data: [UInt8](repeating: 1, count: 100), writable: true)
        try fwcfg.addFile(name: "etc/ro", data: [UInt8](repeating: 2, count: 5000))
        // Point random descriptors at RAM too, not only at garbage addresses.
        for seed in 1...4 as ClosedRange<UInt64> {
            var rng = SplitMix(state: seed)
            for _ in 0..<500 {
                var bytes = [UInt8](repeating: 0, count: 16)
                for i in 0..<16 { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
                if Bool.random(using: &rng) { bytes[4] = 0; bytes[5] = 0 }  // shorter lengths
                if Bool.random(using: &rng) { for i in 8..<14 { bytes[i] = 0 } }  // addresses in RAM
                let at = UInt64.random(in: 0...UInt64((1 << 16) - 16), using: &rng)
                try rig.memory.write(at: at, bytes: bytes)
                fwcfg.write(region: 0, offset: 4, size: 4, value: 0)
                fwcfg.write(region: 0, offset: 8, size: 4, value: UInt64(UInt32(at).byteSwapped))
            }
            hammer(fwcfg, regions: [(0, 12)], rig: rig, seed: seed, rounds: 2000)
        }
        let fresh = FwCfg(memory: rig.memory)
        try fresh.addFile(name: "etc/rw", data: [UInt8](repeating: 0, count: 100), writable: true)
        try fresh.addFile(name: "etc/ro", data: [UInt8](repeating: 2, count: 5000))
        try check(fwcfg, fresh)
    }

    func testSmallPorts() throws {
        let rig = try LegacyTestRig()
        let port92 = Port92()
        hammer(port92, regions: [(0, 1)], rig: rig, seed: 7)
        try check(port92, Port92())
        let post = POSTPort()
        hammer(post, regions: [(0, 1)], rig: rig, seed: 8)
        try check(post, POSTPort())
        let console = DebugConsole(backend: RecordingCharBackend())
        hammer(console, regions: [(0, 1)], rig: rig, seed: 9)
        var exits = 0
        let exit = try ISADebugExit(iobase: 0xF4, iosize: 4) { _ in exits += 1 }
        hammer(exit, regions: [(0, 4)], rig: rig, seed: 10, rounds: 1000)
        XCTAssertGreaterThan(exits, 0)
    }
}
