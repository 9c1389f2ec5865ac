import DMCore
import Synchronization
import XCTest
@testable import XenAccel

/// A device that records accesses and answers reads with a pattern, with an optional hook that
/// runs inside an access (to misbehave from "Xen's side" while a device is busy).
final class ProbeDevice: BusDevice, @unchecked Sendable {
    struct Access: Equatable {
        var offset: UInt64
        var size: Int
        var write: Bool
        var value: UInt64
    }
    var accesses: [Access] = []
    var readValue: (UInt64) -> UInt64 = { 0x1122_3344_5566_7788 &+ $0 }
    var duringAccess: (() -> Void)?
    var record = true

    func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        duringAccess?()
        let v = readValue(offset) & mask(size)
        guard record else { return v }
        accesses.append(Access(offset: offset, size: size, write: false, value: v))
        return v
    }

    func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        duringAccess?()
        guard record else { return }
        accesses.append(Access(offset: offset, size: size, write: true, value: value))
    }
}

final class LineSink: Sendable {
    private let storage = Mutex<[String]>([])
    func append(_ line: String) { storage.withLock { $0.append(line) } }
    var lines: [String] { storage.withLock { $0 } }
}

final class RecordingEvents: AcceleratorEvents, @unchecked Sendable {
    let log = Mutex<[String]>([])
    func resetRequested(cause: ShutdownCause) { log.withLock { $0.append("reset \(cause)") } }
    func shutdownRequested(cause: ShutdownCause) { log.withLock { $0.append("shutdown \(cause)") } }
    func fatalError(_ message: String) { log.withLock { $0.append("fatal \(message)") } }
    var fatal: [String] { log.withLock { $0.filter { $0.hasPrefix("fatal") } } }
}

/// A simulated domain wired to an ioreq server: ports 0x1000-0x10FF and MMIO 0xF000_0000 +
/// 64 KiB go to probe devices, guest RAM is the simulator's, seen through a mapcache.
final class Rig {
    let sim: SimulatedXenHypervisor
    let lock = DeviceLock()
    let ports = Bus(name: "io", unassignedValue: .max)
    let mmio = Bus(name: "mmio", unassignedValue: .max)
    let portDevice = ProbeDevice()
    let mmioDevice = ProbeDevice()
    let events = RecordingEvents()
    let guestErrors = LineSink()
    let errors: GuestErrorLog
    let mapCache: XenMapCache
    var server: IoreqServer!
    var pciAccesses: [(PCIAddress, UInt32, Int, Bool, UInt32)] = []
    var invalidations = 0

    static let portBase: UInt64 = 0x1000
    static let mmioBase: UInt64 = 0xF000_0000

    init(vcpus: Int = 2, buffered: Bool = true, ramSize: Int = 4 << 20, maxBuckets: Int = 8) throws {
        sim = try SimulatedXenHypervisor(vcpus: vcpus, buffered: buffered, ramSize: ramSize)
        let sink = guestErrors
        errors = GuestErrorLog(burst: 10_000) { line in sink.append(line) }
        mapCache = XenMapCache(hypervisor: sim, maxBuckets: maxBuckets, errors: errors)
        try ports.register(portDevice, base: Self.portBase, length: 0x100, name: "probe-io")
        try mmio.register(mmioDevice, base: Self.mmioBase, length: 0x1_0000, name: "probe-mmio")
        let dispatcher = IODispatcher(lock: lock, ports: ports, mmio: mmio)
        server = try IoreqServer(
            hypervisor: sim, dispatcher: dispatcher, memory: mapCache, events: events, errors: errors,
            pciConfig: { [unowned self] address, offset, size, write, value in
                pciAccesses.append((address, offset, size, write, value))
                return write ? 0 : 0xCAFE_0000 | offset
            },
            invalidateMapCache: { [unowned self] in
                invalidations += 1
                mapCache.invalidate()
            })
    }

    /// Sends `request` on `vcpu`, serves pending events, and returns the posted data (nil if
    /// no response was posted).
    @discardableResult
    func roundTrip(_ request: Ioreq, vcpu: Int = 0) -> UInt64? {
        sim.send(request, vcpu: vcpu)
        server.handlePendingEvents()
        return sim.takeResponse(vcpu)
    }

    var errorLines: [String] { guestErrors.lines }
}

func pio(_ port: UInt64, size: UInt32, read: Bool, data: UInt64 = 0, count: UInt32 = 1, ptr: Bool = false,
         df: Bool = false) -> Ioreq {
    Ioreq(addr: port, data: data, count: count, size: size, dataIsPointer: ptr, isRead: read, decrementing: df,
          type: Ioreq.Kind.pio.rawValue)
}

func copy(_ addr: UInt64, size: UInt32, read: Bool, data: UInt64 = 0, count: UInt32 = 1, ptr: Bool = false,
          df: Bool = false) -> Ioreq {
    Ioreq(addr: addr, data: data, count: count, size: size, dataIsPointer: ptr, isRead: read, decrementing: df,
          type: Ioreq.Kind.copy.rawValue)
}
