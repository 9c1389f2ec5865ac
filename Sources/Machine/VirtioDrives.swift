import Backends
import Config
import DMCore
import Devices

/// `-device virtio-blk-pci,drive=ID[,addr=..,serial=..,disable-legacy=on|off|auto,disable-modern=on|off,bootindex=N]`.
func attachVirtioBlk(list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    func fail(_ reason: String) -> ConfigError { ConfigError(option: "-device", value: list.text, reason: reason) }
    guard let assembly = context.ide else { throw fail("no drives") }
    guard let driveID = list.take("drive") else { throw fail("drive property not set") }
    let spec: DriveSpec
    do { spec = try assembly.claimDrive(driveID) } catch {
        throw fail(error == .notFound ? "Property 'virtio-blk-pci.drive' can't find value '\(driveID)'"
                                      : "drive '\(driveID)' is already in use")
    }
    guard spec.kind == .disk else { throw fail("virtio-blk needs a disk drive (media=disk)") }
    try plugVirtioBlk(spec: spec, id: driveID, list: &list, context: &context)
}

/// Builds one virtio-blk-pci function for `spec` with the `-device` properties left in `list`
/// (none for an `if=virtio` drive) and plugs it at `addr=` or the first free slot.
func plugVirtioBlk(spec: DriveSpec, id: String, list: inout OptionList, context: inout DeviceContext) throws(ConfigError) {
    func fail(_ reason: String) -> ConfigError { ConfigError(option: "-device", value: list.text, reason: reason) }
    // QEMU's spellings: disable-legacy=auto means legacy on a conventional PCI bus (all here).
    let legacy: Bool
    switch list.take("disable-legacy") ?? "auto" {
    case "auto", "off", "false", "no": legacy = true
    case "on", "true", "yes": legacy = false
    case let other: throw fail("Parameter 'disable-legacy' does not accept value '\(other)'")
    }
    let modern = !(try list.takeBool("disable-modern") ?? false)
    guard legacy || modern else { throw fail("device cannot work as neither modern nor legacy mode is enabled") }
    let serial = list.take("serial").map { String($0.prefix(20)) } ?? ""
    let bootIndex = try list.takeUInt("bootindex", max: 1 << 30).map(Int.init)
    let medium: BlockBackend?
    do { medium = try spec.open() } catch { throw fail("\(error)") }
    guard let medium else { throw fail("drive '\(id)' has no image (file=)") }
    let disk = VirtioBlk(name: "virtio-blk-pci", id: id, qdevID: context.deviceID, serial: serial, medium: medium,
                         readOnly: spec.readOnly, mode: VirtioPCIMode(legacy: legacy, modern: modern), memory: context.memory,
                         notifications: context.notifications, poster: context.poster)
    try plugPCI(disk, list: &list, pci: context.pci)
    if let bootIndex, let assembly = context.ide {
        let slot = (0..<256).first { context.pci.functions[$0] === disk } ?? 0
        let function = slot & 7 == 0 ? "" : ",\(String(slot & 7, radix: 16))"
        guard assembly.addBootEntry(index: bootIndex, path: "/pci@i0cf8/scsi@\(String(slot >> 3, radix: 16))\(function)/disk@0,0") else {
            throw fail("bootindex \(bootIndex) is used twice")
        }
    }
    context.created.append(disk)
}

extension PCMachine {
    /// `-drive if=virtio`: one virtio-blk-pci function each, after the `-device`s (as QEMU
    /// orders them), named virtio0, virtio1, ... unless `id=` says otherwise.
    func plugVirtioDrives(_ assembly: IDEAssembly, context: inout DeviceContext) throws(ConfigError) {
        for (index, spec) in assembly.virtioDrives.enumerated() {
            // The drive's own serial= and addr= apply to its device, as in QEMU.
            var list = try OptionList(option: spec.option, text: spec.text)
            context.deviceID = nil
            try plugVirtioBlk(spec: spec, id: spec.id ?? "virtio\(index)", list: &list, context: &context)
        }
    }

    /// The virtio disks, for the monitor (call with `lock` held).
    var virtioDisks: [VirtioBlk] {
        devices.compactMap { $0 as? VirtioBlk }
    }
}
