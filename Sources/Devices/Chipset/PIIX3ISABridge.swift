import DMCore

/// The PIIX3 PCI-to-ISA bridge (8086:7000) at 01.0: the PIRQ router that steers the four PCI
/// interrupt links to ISA IRQs (registers 0x60-0x63), and the reset control register at 0xCF9.
///
/// The 8259 PICs and their ELCR (0x4D0/0x4D1) belong to this chip on real hardware, but under
/// KVM they live in the kernel's irqchip and under Xen in the hypervisor's vPIC, so the device
/// model never sees those ports.
public final class PIIX3ISABridge: PCIDevice, PCIINTxRouter, Snapshottable, Resettable, @unchecked Sendable {
    public let pci: PCIFunction
    /// One line per (link, ISA IRQ), so that moving a link lowers the old IRQ and raises the new
    /// one without disturbing other sources that share either IRQ.
    private let lines: [[IRQLine]]
    /// INTx levels by slot and pin.
    private var asserted = [Bool](repeating: false, count: 32 * 4)
    private var linkLevel = [Bool](repeating: false, count: 4)
    private var routedIRQ = [UInt8?](repeating: nil, count: 4)
    private var resetControl: UInt8 = 0
    public var onResetRequest: (() -> Void)?
    /// Told when the guest routes a link (Xen mirrors this with a dm-op).
    public var onLinkRouteChange: ((_ link: Int, _ irq: UInt8?) -> Void)?

    public init(router: InterruptRouter) {
        var config = PCIConfigSpace(vendor: 0x8086, device: 0x7000, revision: 0x00, classCode: 0x06_0100,
                                    headerType: 0x80, status: 0x0200)
        for link in 0..<4 { config.set8(0x60 + link, 0x80) }  // all links disabled
        config.set8(0x4C, 0x4D)  // ISA I/O recovery timer
        config.set8(0x4E, 0x03)  // X-bus chip select
        config.set8(0x69, 0x02)  // top of memory
        config.set8(0x70, 0x80)  // motherboard IRQ routing, disabled
        config.set8(0x76, 0x0C)  // DMA channel configuration
        config.set8(0x77, 0x0C)
        config.set8(0x78, 0x02)
        config.set8(0xA0, 0x08)  // SMI control
        config.set8(0xA8, 0x0F)
        pci = PCIFunction(name: "PIIX3", config: config)
        lines = (0..<4).map { _ in (0..<16).map { router.line(gsi: UInt32($0)) } }
    }

    /// The swizzle PIIX boards use: slot N's INTA goes to link (N - 1) mod 4.
    public static func link(slot: Int, pin: Int) -> Int { (pin + slot - 1) & 3 }

    public func setINTx(slot: Int, pin: Int, level: Bool) {
        guard (0..<32).contains(slot), (0..<4).contains(pin) else { return }
        asserted[slot * 4 + pin] = level
        updateLink(Self.link(slot: slot, pin: pin))
    }

    private func updateLink(_ link: Int) {
        var level = false
        for slot in 0..<32 {
            for pin in 0..<4 where asserted[slot * 4 + pin] && Self.link(slot: slot, pin: pin) == link {
                level = true
            }
        }
        linkLevel[link] = level
        if let irq = routedIRQ[link] { lines[link][Int(irq)].set(level) }
    }

    /// Bit 7 disables a link; IRQs 0-2, 8 and 13 are reserved and cannot be routed.
    private static func decodeRoute(_ value: UInt8) -> UInt8? {
        let irq = value & 0x0F
        guard value & 0x80 == 0, ![0, 1, 2, 8, 13].contains(irq) else { return nil }
        return irq
    }

    private func applyRoutes() {
        for link in 0..<4 {
            let new = Self.decodeRoute(pci.config.get8(0x60 + link))
            guard new != routedIRQ[link] else { continue }
            if let old = routedIRQ[link] { lines[link][Int(old)].lower() }
            routedIRQ[link] = new
            if let new { lines[link][Int(new)].set(linkLevel[link]) }
            onLinkRouteChange?(link, new)
        }
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        pci.write(offset: offset, size: size, value: value)
        if offset < 0x64 && offset + size > 0x60 { applyRoutes() }
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 { mask(size) }
    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {}

    /// The reset control register (0xCF9): bit 2 resets the system, bit 1 selects a hard reset.
    public lazy var resetControlRegister: any BusDevice = ResetControlRegister(owner: self)

    final class ResetControlRegister: BusDevice {
        unowned let owner: PIIX3ISABridge
        init(owner: PIIX3ISABridge) { self.owner = owner }
        func read(region: Int, offset: UInt64, size: Int) -> UInt64 { UInt64(owner.resetControl) }
        func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
            if value & 0x4 != 0 {
                owner.onResetRequest?()
            } else {
                owner.resetControl = UInt8(value & 0x2)
            }
        }
    }

    public var stateID: String { "piix3" }
    public var stateVersion: UInt32 { 1 }
    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(resetControl)
        w.put(array: asserted.map { UInt8($0 ? 1 : 0) })
    }
    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        resetControl = try r.get(UInt8.self) & 0x2
        let levels = try r.getArray(of: UInt8.self, exactly: 32 * 4)
        asserted = levels.map { $0 != 0 }
        applyRoutes()
        for link in 0..<4 { updateLink(link) }
    }
    public func reset() {
        pci.reset()
        resetControl = 0
        applyRoutes()
    }
}
