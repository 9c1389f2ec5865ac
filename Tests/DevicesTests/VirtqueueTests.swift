import DMCore
import Devices
import XCTest

/// The split virtqueue against well-formed and hostile rings.
final class VirtqueueTests: XCTestCase {
    var rig: LegacyTestRig!
    var driver: RingDriver!

    override func setUpWithError() throws {
        rig = try LegacyTestRig()
        driver = RingDriver(memory: rig.memory)
    }

    func walk(_ queue: SplitVirtqueue, _ head: UInt16) throws(VirtqueueError) -> [VirtqueueBuffer] {
        var chain = queue.chain(head: head)
        var out: [VirtqueueBuffer] = []
        while let buffer = try chain.next(rig.memory) { out.append(buffer) }
        return out
    }

    func expect(_ error: VirtqueueError, _ body: () throws -> Void, line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { XCTAssertEqual($0 as? VirtqueueError, error, line: line) }
    }

    func testChainPopPushAndInterrupt() throws {
        var queue = driver.queue
        XCTAssertNil(try queue.popAvailable(rig.memory))
        let head = driver.submit([(0x40000, 16, false), (0x41000, 512, true), (0x42000, 1, true)])
        XCTAssertEqual(try queue.popAvailable(rig.memory), head)
        XCTAssertNil(try queue.popAvailable(rig.memory))
        XCTAssertEqual(try walk(queue, head), [VirtqueueBuffer(address: 0x40000, length: 16, writable: false),
                                               VirtqueueBuffer(address: 0x41000, length: 512, writable: true),
                                               VirtqueueBuffer(address: 0x42000, length: 1, writable: true)])
        try queue.pushUsed(head: head, written: 513, rig.memory)
        XCTAssertEqual(driver.usedIndex, 1)
        XCTAssertEqual(driver.usedElement(0).id, UInt32(head))
        XCTAssertEqual(driver.usedElement(0).length, 513)
        XCTAssertTrue(try queue.shouldInterrupt(rig.memory))
        XCTAssertFalse(try queue.shouldInterrupt(rig.memory), "nothing new since the last interrupt")
        // VIRTQ_AVAIL_F_NO_INTERRUPT suppresses it.
        driver.setAvailFlags(1)
        try queue.pushUsed(head: head, written: 0, rig.memory)
        XCTAssertFalse(try queue.shouldInterrupt(rig.memory))
    }

    func testEventIndexSuppressionAndAvailEvent() throws {
        var queue = driver.queue
        queue.eventIndex = true
        for _ in 0..<3 { driver.submit([(0x40000, 1, true)]) }
        for _ in 0..<3 {
            let head = try XCTUnwrap(try queue.popAvailable(rig.memory))
            try queue.pushUsed(head: head, written: 1, rig.memory)
        }
        XCTAssertEqual(driver.availEvent, 3, "avail_event follows what we consumed")
        // The driver wants to hear only when used passes index 5 (used_event = 4).
        driver.setUsedEvent(4)
        XCTAssertFalse(try queue.shouldInterrupt(rig.memory))
        for _ in 0..<2 {
            driver.submit([(0x40000, 1, true)])
            let head = try XCTUnwrap(try queue.popAvailable(rig.memory))
            try queue.pushUsed(head: head, written: 1, rig.memory)
        }
        XCTAssertTrue(try queue.shouldInterrupt(rig.memory))
    }

    func testIndicesWrapAround() throws {
        var queue = driver.queue
        queue.nextAvail = 0xFFFE
        driver.availIndex = 0xFFFE
        for _ in 0..<4 { driver.submit([(0x40000, 1, true)]) }
        var heads: [UInt16] = []
        while let head = try queue.popAvailable(rig.memory) { heads.append(head) }
        XCTAssertEqual(heads.count, 4)
        XCTAssertEqual(queue.nextAvail, 2)
    }

    func testLoopInNextIsCaught() {
        let queue = driver.queue
        driver.setDescriptor(0, address: 0x40000, length: 1, flags: 1, next: 1)
        driver.setDescriptor(1, address: 0x40000, length: 1, flags: 1, next: 0)
        expect(.chainTooLong) { _ = try walk(queue, 0) }
        // A self-loop too.
        driver.setDescriptor(2, address: 0x40000, length: 1, flags: 1, next: 2)
        expect(.chainTooLong) { _ = try walk(queue, 2) }
    }

    func testNextOutOfRange() {
        driver.setDescriptor(0, address: 0x40000, length: 1, flags: 1, next: 8)
        expect(.descriptorIndex(8)) { _ = try walk(driver.queue, 0) }
    }

    func testHeadOutOfRangeInAvailRing() {
        var queue = driver.queue
        driver.makeAvailable(200)
        expect(.descriptorIndex(200)) { _ = try queue.popAvailable(rig.memory) }
    }

    func testAvailIndexJumpingMoreThanTheRing() {
        var queue = driver.queue
        driver.setAvailIndex(9)
        expect(.availIndexJump(available: 9, seen: 0)) { _ = try queue.popAvailable(rig.memory) }
        driver.setAvailIndex(0xFFFF)  // "behind" us is a jump too
        expect(.availIndexJump(available: 0xFFFF, seen: 0)) { _ = try queue.popAvailable(rig.memory) }
        driver.setAvailIndex(8)  // exactly a ring's worth is fine
        XCTAssertNoThrow(try queue.popAvailable(rig.memory))
    }

    func testBufferWrappingTheAddressSpace() {
        driver.setDescriptor(0, address: UInt64.max - 10, length: 100)
        expect(.bufferWraps(address: UInt64.max - 10, length: 100)) { _ = try walk(driver.queue, 0) }
        // Ending exactly at the top is not a wrap.
        driver.setDescriptor(0, address: UInt64.max - 99, length: 100)
        XCTAssertNoThrow(try walk(driver.queue, 0))
    }

    func testRingsOutsideGuestMemory() {
        var queue = driver.queue
        queue.usedRing = 0xFFFF0  // 1 MiB of RAM: the used ring runs past its end
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue = driver.queue
        queue.descriptorTable = 0x4000_0000
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        // A queue whose avail ring moved out of RAM after validation fails with a memory error.
        queue = driver.queue
        queue.availRing = 0x4000_0000
        XCTAssertThrowsError(try queue.popAvailable(rig.memory)) { error in
            guard case VirtqueueError.memory = error else { return XCTFail("\(error)") }
        }
        // A descriptor table entry outside RAM through an indirect table.
        queue = driver.queue
        queue.indirect = true
        driver.setDescriptor(0, address: 0x4000_0000, length: 32, flags: 4)
        XCTAssertThrowsError(try walk(queue, 0))
    }

    func testLayoutRules() {
        var queue = driver.queue
        XCTAssertNoThrow(try queue.validateLayout(rig.memory))
        queue.size = 6
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue.size = 512
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue = driver.queue
        queue.descriptorTable += 8
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue = driver.queue
        queue.availRing += 1
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue = driver.queue
        queue.usedRing += 2
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
        queue = driver.queue
        queue.size = 0
        expect(.invalidLayout) { try queue.validateLayout(rig.memory) }
    }

    func testIndirectTable() throws {
        var queue = driver.queue
        queue.indirect = true
        let head = driver.submitIndirect([(0x40000, 16, false), (0x41000, 4096, true), (0x42000, 1, true)])
        XCTAssertEqual(try queue.popAvailable(rig.memory), head)
        XCTAssertEqual(try walk(queue, head).map(\.length), [16, 4096, 1])
    }

    func testIndirectNotNegotiated() {
        driver.submitIndirect([(0x40000, 16, false)])
        expect(.badIndirect) { _ = try walk(driver.queue, 0) }
    }

    func testIndirectInsideIndirect() {
        var queue = driver.queue
        queue.indirect = true
        driver.setDescriptor(0, address: 0x40000, length: 16, flags: 1, next: 1, table: 0x30000)
        driver.setDescriptor(1, address: 0x31000, length: 16, flags: 4, table: 0x30000)
        driver.setDescriptor(0, address: 0x30000, length: 32, flags: 4)
        expect(.nestedIndirect) { _ = try walk(queue, 0) }
    }

    func testMalformedIndirectDescriptors() {
        var queue = driver.queue
        queue.indirect = true
        for (length, flags) in [(UInt32(0), UInt16(4)), (24, 4), (32, 4 | 1)] {
            driver.setDescriptor(0, address: 0x30000, length: length, flags: flags, next: 1)
            expect(.badIndirect) { _ = try walk(queue, 0) }
        }
    }

    func testIndirectTableLoopAndIndexAreBounded() {
        var queue = driver.queue
        queue.indirect = true
        // Two entries pointing at each other.
        driver.setDescriptor(0, address: 0x40000, length: 1, flags: 1, next: 1, table: 0x30000)
        driver.setDescriptor(1, address: 0x40000, length: 1, flags: 1, next: 0, table: 0x30000)
        driver.setDescriptor(0, address: 0x30000, length: 32, flags: 4)
        expect(.chainTooLong) { _ = try walk(queue, 0) }
        // `next` beyond the table's own length.
        driver.setDescriptor(1, address: 0x40000, length: 1, flags: 1, next: 2, table: 0x30000)
        expect(.descriptorIndex(2)) { _ = try walk(queue, 0) }
        // A huge table cannot make the chain longer than the queue.
        for i in 0..<16 {
            driver.setDescriptor(UInt16(i), address: 0x40000, length: 1, flags: 1, next: UInt16(i + 1), table: 0x30000)
        }
        driver.setDescriptor(0, address: 0x30000, length: 16 * 16, flags: 4)
        expect(.chainTooLong) { _ = try walk(queue, 0) }
    }

    func testResetKeepsTheMaximum() {
        var queue = SplitVirtqueue(maxSize: 128)
        queue.size = 16
        queue.ready = true
        queue.nextAvail = 5
        queue.reset()
        XCTAssertEqual(queue, SplitVirtqueue(maxSize: 128))
    }
}
