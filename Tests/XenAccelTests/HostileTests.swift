import DMCore
import XCTest
@testable import XenAccel

/// Requests and rings a malicious guest or a confused hypervisor could produce: each must be
/// logged and refused (the vCPU still released), never crash, never touch memory it should not.
final class HostileTests: XCTestCase {
    private func assertRefused(_ request: Ioreq, expecting fragment: String, file: StaticString = #filePath,
                               line: UInt = #line) throws {
        let rig = try Rig()
        let response = rig.roundTrip(request)
        XCTAssertEqual(response, request.isRead ? UInt64.max : request.data, "vCPU must still be released", file: file, line: line)
        XCTAssertTrue(rig.portDevice.accesses.isEmpty && rig.mmioDevice.accesses.isEmpty && rig.pciAccesses.isEmpty,
                      "no device may see it", file: file, line: line)
        XCTAssertEqual(rig.server.counters.refused, 1, file: file, line: line)
        XCTAssertTrue(rig.errorLines.contains { $0.contains(fragment) }, "\(rig.errorLines)", file: file, line: line)
        XCTAssertFalse(rig.server.hasFailed, file: file, line: line)
    }

    func testBadSizes() throws {
        try assertRefused(pio(0x1000, size: 3, read: true), expecting: "size 3")
        try assertRefused(pio(0x1000, size: 8, read: true), expecting: "size 8")
        try assertRefused(copy(Rig.mmioBase, size: 16, read: false, data: 1), expecting: "size 16")
        try assertRefused(copy(Rig.mmioBase, size: 0, read: true), expecting: "size 0")
    }

    func testPortsBeyond64K() throws {
        try assertRefused(pio(0x1_0000, size: 1, read: true), expecting: "beyond 0xFFFF")
        try assertRefused(pio(0xFFFF, size: 2, read: false, data: 1), expecting: "beyond 0xFFFF")
        try assertRefused(pio(UInt64.max, size: 4, read: true), expecting: "beyond 0xFFFF")
    }

    func testHugeAndZeroCounts() throws {
        try assertRefused(pio(0x1000, size: 1, read: true, count: UInt32.max), expecting: "count 4294967295")
        try assertRefused(copy(Rig.mmioBase, size: 8, read: true, data: 0x1000, count: 4097, ptr: true), expecting: "count 4097")
        try assertRefused(pio(0x1000, size: 1, read: false, data: 0, count: 0), expecting: "count 0")
    }

    func testUnknownTypeAndBadPCIConfig() throws {
        try assertRefused(Ioreq(isRead: true, type: 3), expecting: "unknown ioreq type 3")
        try assertRefused(Ioreq(isRead: true, type: 0xFF), expecting: "unknown ioreq type 255")
        let pci = Ioreq.Kind.pciConfig.rawValue
        try assertRefused(Ioreq(addr: 0xFFE, count: 1, size: 4, isRead: true, type: pci), expecting: "beyond 4 KiB")
        try assertRefused(Ioreq(addr: 0, count: 2, size: 4, isRead: true, type: pci), expecting: "count 2")
        try assertRefused(Ioreq(addr: 0, count: 1, size: 4, dataIsPointer: true, isRead: true, type: pci), expecting: "data_is_ptr")
    }

    func testSlotNotReadyIsSkippedAndNeverMovedBackwards() throws {
        let rig = try Rig()
        for state: UInt8 in [0, 2, 3, 9] {
            rig.sim.setSlotState(0, state)
            rig.sim.raise(rig.sim.vcpuPorts[0])
            rig.server.handlePendingEvents()
            XCTAssertEqual(rig.sim.slot(0).state, state)
        }
        XCTAssertEqual(rig.server.counters.skippedSlots, 4)
        XCTAssertTrue(rig.sim.notified.isEmpty)
        XCTAssertTrue(rig.events.fatal.isEmpty)
    }

    func testEventOnUnknownPort() throws {
        let rig = try Rig()
        rig.sim.raise(999)
        rig.server.handlePendingEvents()
        XCTAssertTrue(rig.errorLines.contains { $0.contains("port 999") })
    }

    func testStateFlippedWhileTheDeviceRunsIsFatalForTheDomainOnly() throws {
        let rig = try Rig()
        let sim = rig.sim
        rig.portDevice.duringAccess = { sim.setSlotState(0, Ioreq.State.ready.rawValue) }
        rig.sim.send(pio(0x1000, size: 1, read: true))
        rig.server.handlePendingEvents()
        XCTAssertEqual(rig.events.fatal.count, 1)
        XCTAssertTrue(rig.events.fatal[0].contains("moved to state 1"), rig.events.fatal[0])
        XCTAssertTrue(rig.server.hasFailed)
        XCTAssertTrue(rig.sim.notified.isEmpty, "no response is posted on a broken slot")
        // The server serves nothing more, and does not crash.
        rig.portDevice.duringAccess = nil
        rig.sim.send(pio(0x1000, size: 1, read: true))
        rig.server.handlePendingEvents()
        XCTAssertEqual(rig.portDevice.accesses.count, 1)
    }

    func testStateFlippedFromAnotherThreadNeverCrashes() throws {
        // A racing writer hammers the state nibble while requests are served: whatever the
        // interleaving, we either serve, skip or fail the domain, and never go backwards.
        let rig = try Rig()
        let sim = rig.sim
        let done = Mutex(false)
        let hammer = Thread {
            var s: UInt8 = 0
            while !done.withLock({ $0 }) {
                sim.setSlotState(0, s & 3)
                s &+= 1
            }
        }
        hammer.start()
        for _ in 0..<2000 where !rig.server.hasFailed {
            rig.sim.send(pio(0x1000, size: 1, read: true))
            rig.server.handlePendingEvents()
        }
        done.withLock { $0 = true }
        XCTAssertLessThanOrEqual(rig.events.fatal.count, 1)
    }

    func testDataPointerOutsideGuestMemory() throws {
        let rig = try Rig(ramSize: 1 << 20)
        // rep insb into an address beyond RAM: the port is read once, the store refused, the
        // rest of the request abandoned, the vCPU released.
        XCTAssertNotNil(rig.roundTrip(pio(0x1000, size: 1, read: true, data: 0x7000_0000, count: 16, ptr: true)))
        XCTAssertEqual(rig.portDevice.accesses.count, 1)
        // A pointer that wraps around 2^64 going down.
        XCTAssertNotNil(rig.roundTrip(copy(Rig.mmioBase + 0x100, size: 8, read: false, data: 8, count: 4, ptr: true, df: true)))
        XCTAssertEqual(rig.mmioDevice.accesses.filter(\.write).count, 2, "items at 8 and 0, then 2^64-8 is refused")
        XCTAssertTrue(rig.errorLines.contains { $0.contains("data pointer") })
        // A hole inside RAM.
        rig.sim.punchHole(gfn: 0x20)
        rig.mapCache.invalidate()
        XCTAssertNotNil(rig.roundTrip(pio(0x1000, size: 4, read: false, data: 0x20_000, count: 1, ptr: true)))
        XCTAssertFalse(rig.server.hasFailed)
    }
}

import Synchronization
import Foundation
