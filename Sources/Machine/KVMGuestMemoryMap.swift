import DMCore
import Devices
import KVMAccel

/// Guest memory of the KVM machine: RAM and the BIOS as the layout and the PAM registers
/// place them, plus device RAM (video RAM) wherever its device's BAR puts it, all mapped into
/// KVM as memory slots so the guest reaches them without exits. It provides the devices'
/// `DeviceRAM`.
final class KVMGuestMemoryMap: DeviceRAMProvider {
    let accelerator: KVMAccelerator
    let layout: PCMemoryLayout
    let ram: HostMemory
    let bios: HostMemory
    let memory: PhysicalMemory
    var pam: [I440FXHostBridge.PAMMode] {
        didSet { apply() }
    }
    /// Device RAM the guest has mapped, by the RAM's identity.
    private var deviceRegions: [ObjectIdentifier: PhysicalMemory.Region] = [:]

    init(accelerator: KVMAccelerator, layout: PCMemoryLayout, ram: HostMemory, bios: HostMemory,
         pam: [I440FXHostBridge.PAMMode]) {
        self.accelerator = accelerator
        self.layout = layout
        self.ram = ram
        self.bios = bios
        self.pam = pam
        memory = PhysicalMemory(regions: layout.regions(ram: ram, bios: bios, pam: pam))
    }

    func makeDeviceRAM(name: String, size: Int) throws -> any DeviceRAM {
        let deviceRAM = try HostDeviceRAM(size: size)
        let key = ObjectIdentifier(deviceRAM)
        let backing = deviceRAM.memory
        // KVM's write log of the slot lands here, then is ORed into the caller's bitmap: no
        // allocation per display refresh. A new slot starts with an empty log although the
        // guest may have written the RAM elsewhere meanwhile, so its first answer is "unknown".
        var log = [UInt64](repeating: 0, count: (size / 4096 + 63) / 64)
        var slotIsNew = true
        deviceRAM.collectGuestWrites = { [weak self, weak deviceRAM] bitmap in
            guard let self, let address = deviceRAM?.mappedAddress else { return false }
            let known = accelerator.collectWrites(guestAddress: address, into: &log) && !slotIsNew
            slotIsNew = false
            guard known else { return false }
            for i in 0..<min(log.count, bitmap.count) { bitmap[i] |= log[i] }
            return true
        }
        deviceRAM.onMap = { [weak self] address in
            guard let self else { return }
            slotIsNew = true
            if let address {
                deviceRegions[key] = PhysicalMemory.Region(guestAddress: address, size: UInt64(size), backing: backing,
                                                           backingOffset: 0, writable: true)
            } else {
                deviceRegions[key] = nil
            }
            apply()
        }
        return deviceRAM
    }

    /// Rebuilds the map and the KVM slots. A BAR the guest placed over RAM, the BIOS or another
    /// device's RAM is left out (accesses there then reach the device as MMIO), as a PCI
    /// window that overlaps memory decodes to nothing useful on real hardware either.
    func apply() {
        var regions = layout.regions(ram: ram, bios: bios, pam: pam)
        for region in deviceRegions.values.sorted(by: { $0.guestAddress < $1.guestAddress }) {
            let end = region.guestAddress + region.size
            if regions.contains(where: { region.guestAddress < $0.guestAddress + $0.size && $0.guestAddress < end }) {
                GuestErrorLog.shared.report("memory", "device RAM at \(hex(region.guestAddress))+\(hex(region.size)) overlaps memory; not mapped")
                continue
            }
            regions.append(region)
        }
        memory.setRegions(regions)
        let logged = deviceRegions.values.map { ObjectIdentifier($0.backing) }
        do {
            try accelerator.setMemoryRegions(memory.currentRegions) { logged.contains(ObjectIdentifier($0.backing)) }
        } catch {
            GuestErrorLog.shared.report("memory", "memory map not applied: \(error)")
        }
    }
}
