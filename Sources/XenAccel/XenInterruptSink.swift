import DMCore

/// Interrupts under Xen: the machine's `InterruptRouter` drives ISA lines through
/// `set_isa_irq_level`, emulated MSIs go out with `inject_msi`, and the PCI host bridge calls
/// `setPCIIntxLevel`/`setPCILinkRoute` directly, because Xen's virtual PIIX3 does the INTx
/// swizzle and PIRQ routing itself (QEMU's `xen_set_pci_intx_level`, `xen_set_pci_link_route`).
/// A failed dm-op is a host problem, logged rate-limited; devices never see it.
public final class XenInterruptSink: InterruptSink, Sendable {
    private let hypervisor: any XenHypervisor
    private let errors: GuestErrorLog

    public init(hypervisor: any XenHypervisor, errors: GuestErrorLog = .shared) {
        self.hypervisor = hypervisor
        self.errors = errors
    }

    /// ISA IRQs 0-15 only: Xen has no dm-op for a bare GSI on x86; PCI lines use
    /// `setPCIIntxLevel`.
    public func setGSI(_ gsi: UInt32, level: Bool) {
        guard gsi < 16 else {
            errors.report("xen-irq", "GSI \(gsi) has no Xen dm-op; PCI devices must use INTx")
            return
        }
        do throws(XenError) {
            try hypervisor.setISAIRQLevel(UInt8(gsi), level: level)
        } catch {
            errors.report("xen-irq", "set_isa_irq_level(\(gsi), \(level)): \(error)")
        }
    }

    public func signalMSI(_ message: MSIMessage) {
        do throws(XenError) {
            try hypervisor.injectMSI(address: message.address, data: message.data)
        } catch {
            errors.report("xen-irq", "inject_msi(\(hex(message.address)), \(hex(message.data))): \(error)")
        }
    }

    /// Asserts or deasserts INTx pin `intx` (0 = INTA ... 3 = INTD) of PCI slot `device`.
    public func setPCIIntxLevel(segment: UInt16 = 0, bus: UInt8 = 0, device: UInt8, intx: UInt8, level: Bool) {
        guard device < 32, intx < 4 else {
            errors.report("xen-irq", "PCI INTx \(intx) of device \(device) out of range")
            return
        }
        do throws(XenError) {
            try hypervisor.setPCIIntxLevel(segment: segment, bus: bus, device: device, intx: intx, level: level)
        } catch {
            errors.report("xen-irq", "set_pci_intx_level(\(device), \(intx), \(level)): \(error)")
        }
    }

    /// Mirrors a PIIX3 PIRQ route register (config 0x60-0x63) write: `link` 0-3, `value` as
    /// written (bit 7 disables the route, which Xen expresses as IRQ 0).
    public func setPCILinkRoute(link: UInt8, routeRegister value: UInt8) {
        guard link < 4 else {
            errors.report("xen-irq", "PCI link \(link) out of range")
            return
        }
        let irq = value & 0x80 != 0 ? 0 : value & 0x0F
        do throws(XenError) {
            try hypervisor.setPCILinkRoute(link: link, irq: irq)
        } catch {
            errors.report("xen-irq", "set_pci_link_route(\(link), \(irq)): \(error)")
        }
    }
}
