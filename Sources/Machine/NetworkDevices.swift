import Backends
import Config
import DMCore
import Devices

/// `-device rtl8139[,netdev=ID][,mac=MAC][,id=..][,addr=..][,romfile=..]`, as libxl writes it.
func addRTL8139(list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    let backend = try takeNetdev(list: &list, driver: "rtl8139", context: &context)
    let mac = try takeMAC(list: &list, driver: "rtl8139", index: context.nicCount)
    let rom: [UInt8]
    do {
        // QEMU's default boot ROM for this NIC is iPXE's EFI+legacy image.
        rom = try FirmwareImage.optionROM(romfile: list.take("romfile"), defaultName: "efi-rtl8139.rom", device: list.text)
    } catch {
        throw ConfigError(option: "-device", value: list.text, reason: error.description)
    }
    _ = try list.takeUInt("bootindex", max: 0xFFFF)
    let name = context.deviceID ?? "rtl8139.\(context.nicCount)"
    let nic = RTL8139(mac: mac, backend: backend, memory: context.memory, timers: context.timers, rom: rom,
                      stateID: "rtl8139:\(name)")
    try plugPCI(nic, list: &list, pci: context.pci)
    context.nicCount += 1
    context.created.append(nic)
}

/// A NIC's `netdev=`: must name a `-netdev` no other NIC uses. A NIC without one (or on a
/// backend type not implemented yet) is not connected, as in QEMU.
private func takeNetdev(list: inout OptionList, driver: String,
                        context: inout DeviceContext) throws(ConfigError) -> (any NetBackend)? {
    guard let id = list.take("netdev") else {
        GuestErrorLog.stderrSink("swiftdm: warning: -device \(list.text): \(driver) has no netdev; it is not connected")
        return nil
    }
    guard let slot = context.netdevs[id] else {
        throw ConfigError(option: "-device", value: list.text, reason: "Property '\(driver).netdev' can't find value '\(id)'")
    }
    guard context.usedNetdevs.insert(id).inserted else {
        throw ConfigError(option: "-device", value: list.text, reason: "netdev '\(id)' is already used by another NIC")
    }
    return slot
}

private func takeMAC(list: inout OptionList, driver: String, index: Int) throws(ConfigError) -> MACAddress {
    guard let text = list.take("mac") else { return MACAddress.qemuDefault(index: index) }
    guard let mac = MACAddress(parsing: text) else {
        throw ConfigError(option: "-device", value: list.text, reason: "Property '\(driver).mac' doesn't take value '\(text)'")
    }
    guard !mac.isMulticast else {
        throw ConfigError(option: "-device", value: list.text, reason: "mac \(mac) is a multicast address; a NIC needs a unicast one")
    }
    return mac
}
