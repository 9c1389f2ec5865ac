// libFuzzer target: random bytes as guest RAM (descriptor table, rings, indirect tables,
// request headers) plus the queue registers a driver programs, served by the split virtqueue
// and the virtio-blk request parser exactly as the device serves a notification.
// Invariants checked on every input: no crash, no access outside guest RAM (GuestMemory throws,
// ASan watches the host side), the serving loop ends (never more chains than the ring holds),
// every chain is bounded by the queue size, the segment list by seg_max, and a parsed
// request's status byte lies inside one of its device-writable buffers.
//
// Input: [flags][size exponent][nextAvail u16][desc u32][avail u32][used u32][RAM bytes...]
// flags bit0: EVENT_IDX; bit1: INDIRECT_DESC.
import DMCore
#if canImport(Glibc)
import Glibc
#endif

let ramSize = 64 * 1024
let segMax = 16

final class Harness: @unchecked Sendable {
    let ram: HostMemory
    let memory: PhysicalMemory
    var segments: [VirtqueueBuffer] = []

    init() {
        do { ram = try HostMemory(size: ramSize) } catch { fatalError("fuzz harness: \(error)") }
        memory = PhysicalMemory(regions: [.init(guestAddress: 0, size: UInt64(ramSize), backing: ram, backingOffset: 0, writable: true)])
        segments.reserveCapacity(segMax)
    }

    func run(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 16, let base = data.baseAddress else { return }
        func u16(_ at: Int) -> UInt16 { UInt16(data[at]) | UInt16(data[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        let image = data[16...]
        memset(ram.baseAddress, 0, ramSize)
        ram.baseAddress.copyMemory(from: base + 16, byteCount: min(image.count, ramSize))

        var queue = SplitVirtqueue(maxSize: 256)
        queue.eventIndex = data[0] & 1 != 0
        queue.indirect = data[0] & 2 != 0
        queue.size = UInt16(truncatingIfNeeded: 1 << Int(data[1] % 10))  // up to 512: past the maximum too
        queue.nextAvail = u16(2)
        queue.nextUsed = queue.nextAvail
        queue.signalledUsed = queue.nextAvail
        // Addresses may point past RAM (bit 17) or be misaligned.
        queue.descriptorTable = UInt64(u32(4) & 0x1FFFF)
        queue.availRing = UInt64(u32(8) & 0x1FFFF)
        queue.usedRing = UInt64(u32(12) & 0x1FFFF)
        do { try queue.validateLayout(memory) } catch { return }

        var served = 0
        while true {
            let head: UInt16?
            do { head = try queue.popAvailable(memory) } catch { return }
            guard let head else { break }
            served += 1
            precondition(served <= Int(queue.size), "served more chains than the ring holds")
            var chain = queue.chain(head: head)
            let request: VirtioBlkRequest
            do {
                request = try VirtioBlkRequest.parse(&chain, memory: memory, segments: &segments, maxSegments: segMax)
            } catch {
                return  // the device marks the queue broken and stops
            }
            precondition(segments.count <= segMax, "segment list past seg_max")
            if request.problem != .tooManySegments {
                let total = segments.reduce(UInt64(0)) { $0 + UInt64($1.length) }
                precondition(total == request.dataLength, "data length is the segments' sum")
            }
            do {
                try memory.write(UInt8(0), at: request.statusAddress)
                try queue.pushUsed(head: head, written: 1, memory)
                _ = try queue.shouldInterrupt(memory)
            } catch {
                return
            }
        }
    }
}

nonisolated(unsafe) let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    harness.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
