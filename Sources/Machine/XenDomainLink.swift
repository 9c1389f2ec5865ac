import Config
import DMCore
import Devices
import XenAccel

/// What runs the guest, decided by the machine type and its `accel=` property, as QEMU
/// decides it: `pc` on KVM; `xenfv` (with the Xen platform device) and `pc,accel=xen` (without,
/// libxl's `xen_platform_pci=0`) as the device model of a Xen HVM domain; `none`, the empty
/// machine of libxl's capability probe.
public enum MachinePlatform: Equatable, Sendable {
    case kvm
    case xen(domain: UInt16, platformDevice: Bool)
    case none

    public init(config: VMConfig) throws(MachineError) {
        let type = config.machineType
        let accel = config.machineProperties.last(where: { $0.key == "accel" })?.value
        func needDomain() throws(MachineError) -> UInt16 {
            guard let domain = config.xenDomainID else {
                throw MachineError("-machine \(type): a Xen machine needs -xen-domid (libxl passes it)")
            }
            return domain
        }
        switch type {
        case "xenfv", "xenfv-3.1", "xenfv-4.2":
            guard accel == nil || accel == "xen" else { throw MachineError("-machine \(type),accel=\(accel ?? ""): xenfv runs on Xen only") }
            self = .xen(domain: try needDomain(), platformDevice: true)
        case "pc", _ where type.hasPrefix("pc-i440fx"):
            switch accel ?? "kvm" {
            case "kvm": self = .kvm
            case "xen": self = .xen(domain: try needDomain(), platformDevice: false)
            default: throw MachineError("-machine accel=\(accel ?? ""): only kvm and xen are supported")
            }
        case "none":
            guard accel == nil || accel == "kvm" || accel == "xen" else {
                throw MachineError("-machine accel=\(accel ?? ""): only kvm and xen are supported")
            }
            self = .none
        case "xenpv":
            throw MachineError("-machine xenpv: PV guests' backends (console, qdisk, vfb/vkbd) are not implemented yet")
        default:
            throw MachineError("-machine \(type): unsupported machine type (use -machine help)")
        }
        if case .kvm = self, config.xenDomainID != nil {
            throw MachineError("-xen-domid: needs a Xen machine (-machine xenfv or pc,accel=xen)")
        }
    }

    public var isXen: Bool {
        if case .xen = self { return true }
        return false
    }
}

/// The device model's ties to its Xen domain: the accelerator (ioreq server, mapcache,
/// interrupts), the xenstore connection, and the claims that make Xen forward exactly what our
/// devices decode. Built before the devices; `claim` runs once they are all in place.
final class XenDomainLink: DeviceRAMProvider {
    let domain: UInt16
    let accelerator: XenAccelerator
    let store: any XenStoreAccess
    /// PCI INTx goes to Xen's own PIIX3 model; the bus only keeps a weak reference.
    let intxRouter: XenPCIINTxRouter
    /// `$QEMU` of xen-contract.md §A.4, relative to our own domain (dom0's home).
    var deviceModelPath: String { "device-model/\(domain)" }
    /// The guest address the next device RAM region calls home (QEMU's next `ram_addr`).
    private var nextDeviceRAMAddress: UInt64
    /// Under `-incoming` the saved memory image already holds device RAM frames.
    private let incoming: Bool

    init(domain: UInt16, vcpus: Int, dispatcher: IODispatcher, events: any AcceleratorEvents,
         hypervisor: (any XenHypervisor)?, store: (any XenStoreAccess)?, deviceRAMBase: UInt64, incoming: Bool,
         pciConfig: @escaping IoreqServer.PCIConfigHandler) throws(MachineError) {
        self.domain = domain
        nextDeviceRAMAddress = Self.ramBlockAligned(deviceRAMBase)
        self.incoming = incoming
        do throws(XenError) {
            var libraries: XenLibraries?
            func loaded() throws(XenError) -> XenLibraries {
                if let libraries { return libraries }
                let l = try XenLibraries.load()
                libraries = l
                return l
            }
            let hv: any XenHypervisor
            if let hypervisor { hv = hypervisor } else { hv = try LibXenHypervisor(libraries: try loaded(), domid: domain, vcpus: vcpus) }
            if let store { self.store = store } else { self.store = try LibXenStore(libraries: try loaded()) }
            accelerator = try XenAccelerator(hypervisor: hv, dispatcher: dispatcher, events: events, vcpus: vcpus,
                                             pciConfig: pciConfig)
        } catch {
            throw MachineError("Xen domain \(domain): \(error)")
        }
        intxRouter = XenPCIINTxRouter(sink: accelerator.sink)
    }

    /// Claims every port and MMIO window and PCI function the machine has, follows later
    /// changes (BARs the guest moves), and announces our PV backends — none yet, so an empty
    /// `backends` directory tells libxl not to expect QEMU's defaults.
    func claim(ports: Bus, mmio: Bus, pci: PCIBus) throws {
        let accelerator = accelerator
        do throws(XenError) {
            for mapping in ports.mappings { try accelerator.claim(.port, mapping.base...mapping.last) }
            for mapping in mmio.mappings { try accelerator.claim(.mmio, mapping.base...mapping.last) }
            for (devfn, function) in pci.functions.enumerated() where function != nil {
                try accelerator.claimPCIFunction(PCIAddress(device: UInt8(devfn >> 3), function: UInt8(devfn & 7)))
            }
            try store.makeDirectory("\(deviceModelPath)/backends")
        } catch {
            throw MachineError("Xen domain \(domain): \(error)")
        }
        func follow(_ kind: XenIORangeKind) -> (Bus.Mapping, Bool) -> Void {
            { mapping, added in
                if added {
                    do throws(XenError) { try accelerator.claim(kind, mapping.base...mapping.last) } catch {
                        GuestErrorLog.shared.report("xen", "claiming \(mapping.name) at \(hex(mapping.base)): \(error)")
                    }
                } else {
                    accelerator.release(kind, mapping.base...mapping.last)
                }
            }
        }
        ports.onMappingChange = follow(.port)
        mmio.onMappingChange = follow(.mmio)
    }

    /// QEMU places RAM blocks on 256 KiB boundaries (a long's worth of 4 KiB pages).
    private static func ramBlockAligned(_ address: UInt64) -> UInt64 { (address + 0x3_FFFF) & ~0x3_FFFF }

    func makeDeviceRAM(name: String, size: Int) throws -> any DeviceRAM {
        let home = nextDeviceRAMAddress
        let ram = try XenDeviceRAM(hypervisor: accelerator.hypervisor, store: store, mapCache: accelerator.mapCache,
                                   deviceModelPath: deviceModelPath, name: name, size: size, homeAddress: home,
                                   incoming: incoming)
        nextDeviceRAMAddress = Self.ramBlockAligned(home + UInt64(size))
        return ram
    }

    /// `-xen-domid-restrict`: after setup, every Xen handle we hold may touch only our domain.
    /// Xenstore may then refuse our writes; `recordRunning` tolerates that, as QEMU does.
    func restrict() throws(MachineError) {
        guard accelerator.hypervisor is LibXenHypervisor else { return }  // the simulator has no handles
        do throws(XenError) { try XenLibraries.restrictAll(to: domain) } catch {
            throw MachineError("-xen-domid-restrict: \(error)")
        }
    }

    /// `$QEMU/state = running`, libxl's readiness signal, written whenever the VM starts
    /// running. A restricted device model may not be allowed to; QEMU tolerates that too.
    func recordRunning() {
        do throws(XenError) { try store.write("\(deviceModelPath)/state", "running") } catch {
            GuestErrorLog.stderrSink("swiftdm: xenstore \(deviceModelPath)/state: \(error)")
        }
    }
}

/// PCI INTx under Xen: the hypervisor's PIIX3 model swizzles pins onto links and routes links
/// to IRQs, so the bus hands every pin change straight to `set_pci_intx_level`.
final class XenPCIINTxRouter: PCIINTxRouter {
    let sink: XenInterruptSink
    init(sink: XenInterruptSink) { self.sink = sink }
    func setINTx(slot: Int, pin: Int, level: Bool) {
        sink.setPCIIntxLevel(device: UInt8(truncatingIfNeeded: slot), intx: UInt8(truncatingIfNeeded: pin), level: level)
    }
}

/// The `none` machine's accelerator: no vCPUs, nothing to run.
final class NoAccelerator: Accelerator, InterruptSink, @unchecked Sendable {
    var interrupts: any InterruptSink { self }
    func setGSI(_ gsi: UInt32, level: Bool) {}
    func signalMSI(_ message: MSIMessage) {}
    func start(paused: Bool) throws {}
    func pause() {}
    func resume() {}
    func requestPause() {}
    func reset() throws {}
    func stop() {}
    var vcpuThreadIDs: [Int32] { [] }
    func registerDump(cpu: Int) -> String? { nil }
    func forwardPowerRequest(reboot: Bool) -> Bool { false }
}

extension PCMachine {
    /// Restricts the Xen handles to the guest's domain (`-xen-domid-restrict`; a no-op off Xen).
    public func restrictXenHandles() throws(MachineError) {
        try xen?.restrict()
    }

    /// The Xen platform device at the first free slot (2, as under QEMU: it is created with
    /// the machine, before `-device` devices), with its fixed ports 0x10-0x1F. Unplug requests
    /// remove the emulated disks and NICs the guest's PV drivers take over.
    func assembleXenPlatformDevice() throws {
        let platform = XenPlatformDevice()
        try pci.plug(platform, slot: try pci.freeSlot())
        try ports.register(platform, base: XenPlatformDevice.fixedPortBase, length: XenPlatformDevice.fixedPortLength,
                           region: XenPlatformDevice.fixedPortRegion, name: "xen-platform fixed ports")
        platform.onUnplug = { [weak self] request in
            guard let self else { return }
            if request.contains(.allDisks) || request.contains(.auxDisks) {
                let removed = self.devices.compactMap { $0 as? PIIX3IDEController }
                    .flatMap { $0.unplugDisks(keepPrimaryMaster: !request.contains(.allDisks)) }
                GuestErrorLog.stderrSink("swiftdm: xen-platform: guest unplugged emulated disks: "
                                         + (removed.isEmpty ? "none" : removed.joined(separator: ", ")))
            }
            if request.contains(.nics) { self.unplugEmulatedNICs() }
        }
        append(devices: [platform])
    }

    /// The guest's PV network driver takes over (platform unplug bit 1): the emulated NICs leave
    /// the PCI bus, as in QEMU, so the guest does not see each MAC twice. Reset first, so a NIC
    /// stops receiving (its tap is then no longer read) and drops its interrupt.
    func unplugEmulatedNICs() {
        let nics = devices.compactMap { $0 as? RTL8139 }
        for nic in nics {
            nic.reset()
            if let devfn = pci.devfn(of: nic) { pci.unplug(slot: devfn >> 3, function: devfn & 7) }
        }
        GuestErrorLog.stderrSink("swiftdm: xen-platform: guest unplugged emulated NICs: "
                                 + (nics.isEmpty ? "none" : "\(nics.count)"))
    }
}
