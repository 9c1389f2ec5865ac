import Synchronization

/// What an accelerator offers devices for interrupts: level changes on a global system
/// interrupt (GSI) and message-signalled interrupts. KVM drives its in-kernel PIC/IOAPIC; Xen
/// uses dm-ops. Devices never see this directly: they hold `IRQLine`s.
public protocol InterruptSink: AnyObject, Sendable {
    func setGSI(_ gsi: UInt32, level: Bool)
    func signalMSI(_ message: MSIMessage)
}

public struct MSIMessage: Sendable, Equatable {
    public let address: UInt64
    public let data: UInt32
    public init(address: UInt64, data: UInt32) {
        self.address = address
        self.data = data
    }
}

/// Combines the sources that share a GSI: the line is asserted while any source asserts it,
/// which is how a wired-OR level-triggered line behaves (PCI INTx, shared ISA lines).
/// Each GSI keeps a 64-bit mask of asserted sources, so a level change allocates nothing.
public final class InterruptRouter: Sendable {
    public static let maxGSI: UInt32 = 1024
    public let sink: any InterruptSink
    private struct State {
        var asserted = [UInt64](repeating: 0, count: Int(InterruptRouter.maxGSI))
        var sources = [Int](repeating: 0, count: Int(InterruptRouter.maxGSI))
    }
    private let state = Mutex(State())

    public init(sink: any InterruptSink) {
        self.sink = sink
    }

    /// A new source on `gsi` (at most 64 per GSI; machines wire far fewer).
    public func line(gsi: UInt32) -> IRQLine {
        precondition(gsi < Self.maxGSI, "GSI out of range")
        let bit = state.withLock { s -> Int in
            let bit = s.sources[Int(gsi)]
            s.sources[Int(gsi)] += 1
            return bit
        }
        precondition(bit < 64, "more than 64 sources on one GSI")
        return IRQLine(router: self, gsi: gsi, bit: UInt64(1) << UInt64(bit))
    }

    fileprivate func set(gsi: UInt32, bit: UInt64, level: Bool) {
        let (before, after) = state.withLock { s -> (Bool, Bool) in
            let old = s.asserted[Int(gsi)]
            let new = level ? old | bit : old & ~bit
            s.asserted[Int(gsi)] = new
            return (old != 0, new != 0)
        }
        if before != after { sink.setGSI(gsi, level: after) }
    }

    public func isAsserted(gsi: UInt32) -> Bool {
        state.withLock { $0.asserted[Int(gsi)] != 0 }
    }
}

/// One device's connection to an interrupt line. Level-triggered devices `set` it; edge
/// semantics (ISA devices on the PIC's edge mode) are a `pulse`.
public final class IRQLine: Sendable {
    public let gsi: UInt32
    private let router: InterruptRouter
    private let bit: UInt64

    fileprivate init(router: InterruptRouter, gsi: UInt32, bit: UInt64) {
        self.router = router
        self.gsi = gsi
        self.bit = bit
    }

    public func set(_ level: Bool) { router.set(gsi: gsi, bit: bit, level: level) }
    public func raise() { set(true) }
    public func lower() { set(false) }
    public func pulse() {
        set(true)
        set(false)
    }
}
