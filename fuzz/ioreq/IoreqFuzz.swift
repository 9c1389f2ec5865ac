// libFuzzer target: random bytes as the contents of a vCPU's ioreq slot and of the buffered
// ring (pointers and entries), served by IoreqServer against SimulatedXenHypervisor with
// devices everywhere and a small mapcache. Invariants checked on every input: no crash, no
// out-of-bounds access (ASan), the slot's state never moves backwards (READY → IORESP_READY,
// anything else untouched), the ring is never read past its pointers, and no more than one
// ring's worth of entries is served per event.
//
// Input: [flags][32 bytes slot][4 bytes read ptr][4 bytes write ptr][ring entries, 8 bytes each...]
// flags bit0: force the slot READY; bit1: raise the vCPU port; bit2: raise the buffered port;
//       bit3: confine data pointers to guest RAM; bit4: flip the slot state from a device.
import DMCore
import XenAccel

final class AnyDevice: BusDevice, @unchecked Sendable {
    var onAccess: (() -> Void)?
    func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        onAccess?()
        return offset &* 0x9E37_79B9_7F4A_7C15
    }
    func write(region: Int, offset: UInt64, size: Int, value: UInt64) { onAccess?() }
}

final class NullEvents: AcceleratorEvents, @unchecked Sendable {
    var fatal = 0
    func resetRequested(cause: ShutdownCause) {}
    func shutdownRequested(cause: ShutdownCause) {}
    func fatalError(_ message: String) { fatal += 1 }
}

final class Harness: @unchecked Sendable {
    let sim: SimulatedXenHypervisor
    let device = AnyDevice()
    let events = NullEvents()
    let dispatcher: IODispatcher
    let cache: XenMapCache
    let errors = GuestErrorLog(burst: 0) { _ in }
    var server: IoreqServer

    init() {
        do {
            sim = try SimulatedXenHypervisor(vcpus: 1, buffered: true, ramSize: 2 << 20)
            let ports = Bus(name: "io", unassignedValue: .max)
            let mmio = Bus(name: "mmio", unassignedValue: .max)
            try ports.register(device, base: 0, length: 0x1_0000, name: "all-ports")
            try mmio.register(device, base: 0, length: 1 << 52, name: "all-mmio")
            dispatcher = IODispatcher(lock: DeviceLock(), ports: ports, mmio: mmio)
            cache = XenMapCache(hypervisor: sim, maxBuckets: 2, errors: errors)
            server = try Self.makeServer(sim, dispatcher, cache, events, errors)
        } catch {
            fatalError("fuzz harness setup: \(error)")
        }
    }

    static func makeServer(_ sim: SimulatedXenHypervisor, _ d: IODispatcher, _ c: XenMapCache, _ e: NullEvents,
                           _ errors: GuestErrorLog) throws -> IoreqServer {
        try IoreqServer(hypervisor: sim, dispatcher: d, memory: c, events: e, errors: errors,
                        pciConfig: { _, offset, _, _, _ in offset }, invalidateMapCache: { c.invalidate() })
    }

    func run(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 1 + 32 + 8 else { return }
        if server.hasFailed {
            server = try! Self.makeServer(sim, dispatcher, cache, events, errors)
        }
        let flags = data[0]
        var slot = Array(data[1..<33])
        if flags & 1 != 0 { slot[30] = (slot[30] & 0xF0) | 1 }
        if flags & 8 != 0 {
            // Keep data pointers inside guest RAM to reach the memory paths, not only the refusals.
            slot[10] = 0; slot[11] = 0; slot[12] = 0; slot[13] = 0; slot[14] = 0; slot[15] = 0
            slot[10] &= 0x1F
        }
        sim.writeRawSlot(slot)
        let stateBefore = slot[30] & 0x0F
        func u32(_ at: Int) -> UInt32 {
            UInt32(data[at]) | UInt32(data[at + 1]) << 8 | UInt32(data[at + 2]) << 16 | UInt32(data[at + 3]) << 24
        }
        let read = u32(33), write = u32(37)
        var index = read
        var offset = 41
        while offset + 8 <= data.count, index &- read < 511 {
            var word: UInt64 = 0
            for i in 0..<8 { word |= UInt64(data[offset + i]) << (8 * UInt64(i)) }
            sim.storeRingSlot(word, index: index)
            index &+= 1
            offset += 8
        }
        sim.setRingPointers(read: read, write: write)
        if flags & 16 != 0 {
            let sim = self.sim
            device.onAccess = { sim.setSlotState(0, 1) }
        } else {
            device.onAccess = nil
        }
        if flags & 2 != 0 { sim.raise(sim.vcpuPorts[0]) }
        if flags & 4 != 0 { sim.raise(sim.bufferedPort!) }
        let failedBefore = events.fatal
        server.handlePendingEvents()
        while sim.pendingPort() != nil {}

        let stateAfter = sim.slot(0).state
        if flags & 2 != 0 && stateBefore == 1 {
            precondition(stateAfter == 3 || events.fatal > failedBefore || flags & 16 != 0,
                         "a READY slot must end IORESP_READY (or the domain be failed)")
        } else if flags & 16 == 0 {
            precondition(stateAfter == stateBefore, "a slot not READY must never be touched")
        }
        let after = sim.ringPointers
        let pendingBefore = write &- read
        let consumed = after.read &- read
        if pendingBefore <= 511 {
            precondition(consumed <= pendingBefore, "the ring was read past its write pointer")
        } else if flags & 4 != 0 || (flags & 2 != 0 && stateBefore == 1) {
            precondition(after.read == write, "a hostile ring is resynced")
        }
        _ = sim.takeResponse(0)
        sim.clearRecords()
    }
}

nonisolated(unsafe) let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    harness.run(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
