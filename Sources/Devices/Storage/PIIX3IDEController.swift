import Backends
import DMCore

/// PIIX3's IDE function (8086:7010, 00:01.1 on a PC) in legacy ("compatibility") mode: the
/// primary channel at 0x1F0-0x1F7/0x3F6 on IRQ 14, the secondary at 0x170-0x177/0x376 on
/// IRQ 15, and the bus-master DMA registers in BAR4 (16 bytes of I/O, 8 per channel).
///
/// The legacy windows are registered by the machine as regions `primaryCommandRegion` ...
/// `secondaryControlRegion`; BAR4 arrives as region 4.
public final class PIIX3IDEController: PCIDevice, StorageController, Snapshottable, Resettable, @unchecked Sendable {
    public static let primaryCommandRegion = 10
    public static let primaryControlRegion = 11
    public static let secondaryCommandRegion = 12
    public static let secondaryControlRegion = 13
    /// (command base, control port, ISA IRQ) per channel.
    public static let legacyResources: [(command: UInt64, control: UInt64, irq: UInt32)] = [(0x1F0, 0x3F6, 14), (0x170, 0x376, 15)]

    public let pci: PCIFunction
    public let channels: [ATAChannel]

    /// `drives[channel][unit]`; `irqs` are the ISA lines 14 and 15.
    public init(drives: [[ATADrive?]], irqs: [IRQLine?], memory: any GuestMemory, poster: any BlockCompletionPoster,
                log: GuestErrorLog = .shared) {
        precondition(drives.count == 2 && irqs.count == 2)
        // Class 01:01, programming interface 0x80: bus-master capable, both channels fixed in
        // compatibility mode. No interrupt pin: the channels use ISA IRQs 14 and 15.
        let config = PCIConfigSpace(vendor: 0x8086, device: 0x7010, revision: 0, classCode: 0x01_0180,
                                    status: 0x0280)
        pci = PCIFunction(name: "piix3-ide", config: config,
                          bars: [nil, nil, nil, nil, PCIBARDefinition(kind: .io, size: 16)])
        channels = (0..<2).map { i in
            ATAChannel(index: i, drives: drives[i], irq: irqs[i], memory: memory, poster: poster, log: log)
        }
    }

    /// Every drive on the controller, primary master first.
    public var drives: [ATADrive] { channels.flatMap { $0.drives.compactMap { $0 } } }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case Self.primaryCommandRegion, Self.secondaryCommandRegion:
            let channel = channels[region == Self.primaryCommandRegion ? 0 : 1]
            if offset == 0 { return channel.readData(size: size) }
            var value: UInt64 = 0
            for i in 0..<size where offset + UInt64(i) < 8 {
                value |= UInt64(channel.readRegister(Int(offset) + i)) << (8 * UInt64(i))
            }
            return value
        case Self.primaryControlRegion, Self.secondaryControlRegion:
            let channel = channels[region == Self.primaryControlRegion ? 0 : 1]
            return UInt64(channel.readAlternateStatus())
        case 4:
            var value: UInt64 = 0
            for i in 0..<size {
                let at = Int(offset) + i
                guard at < 16 else { break }
                value |= UInt64(channels[at / 8].readBusMaster(offset: at % 8)) << (8 * UInt64(i))
            }
            return value
        default:
            return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch region {
        case Self.primaryCommandRegion, Self.secondaryCommandRegion:
            let channel = channels[region == Self.primaryCommandRegion ? 0 : 1]
            if offset == 0 { return channel.writeData(size: size, value: value) }
            for i in 0..<size where offset + UInt64(i) < 8 {
                channel.writeRegister(Int(offset) + i, UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
            }
        case Self.primaryControlRegion, Self.secondaryControlRegion:
            let channel = channels[region == Self.primaryControlRegion ? 0 : 1]
            channel.writeDeviceControl(UInt8(truncatingIfNeeded: value))
        case 4:
            for i in 0..<size {
                let at = Int(offset) + i
                guard at < 16 else { break }
                channels[at / 8].writeBusMaster(offset: at % 8, UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
            }
        default:
            break
        }
    }

    /// The Xen unplug protocol (docs/misc/hvm-emulated-unplug): once PV drivers take over, the
    /// emulated disks disappear so the guest cannot use both paths to one image. CD-ROMs stay.
    /// `keepPrimaryMaster` is the protocol's bit 2 ("all IDE disks except the primary master").
    /// Returns the ids of the drives removed.
    @discardableResult
    public func unplugDisks(keepPrimaryMaster: Bool) -> [String] {
        var removed: [String] = []
        for channel in channels {
            for unit in 0..<2 {
                guard let drive = channel.drives[unit], drive.kind == .disk else { continue }
                if keepPrimaryMaster && channel.index == 0 && unit == 0 { continue }
                if channel.phase != .idle && channel.unit == unit { channel.cancelTransfer() }
                channel.drives[unit] = nil
                channel.resetDrive(unit)
                drive.removeMedium()
                removed.append(drive.id)
            }
        }
        return removed
    }

    public var stateID: String { "piix3-ide" }
    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        for channel in channels { channel.saveState(to: &w) }
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        try pci.loadState(from: &r)
        for channel in channels { try channel.loadState(from: &r, section: stateID) }
    }

    public func reset() {
        pci.reset()
        for channel in channels { channel.setPowerOnState() }
    }
}
