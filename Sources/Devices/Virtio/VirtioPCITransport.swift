import DMCore

/// What a virtio device (block, later net) tells its transport, and hears from it.
public protocol VirtioDevice: AnyObject {
    func readConfig(offset: Int) -> UInt8
    func writeConfig(offset: Int, value: UInt8)
    /// The driver made buffers available on `queue` (a doorbell, or a queue already holding
    /// requests when it was enabled).
    func queueNotified(_ queue: Int)
    /// Device reset (status 0, a system reset): drop in-flight work; completions of requests
    /// issued before must change nothing.
    func resetDevice()
}

/// virtio-pci's feature and status bits (virtio 1.x §2.1, §6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
}

/// The device status bits the transport acts on (ACKNOWLEDGE, DRIVER and FAILED are only stored).
public enum VirtioStatus {
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 0x40
}

/// Which virtio-pci interfaces a function offers (QEMU's `disable-legacy`/`disable-modern`).
public struct VirtioPCIMode: Sendable, Equatable {
    public var legacy: Bool
    public var modern: Bool
    public init(legacy: Bool, modern: Bool) {
        precondition(legacy || modern, "a virtio-pci function needs an interface")
        self.legacy = legacy
        self.modern = modern
    }
}

/// The virtio-pci transport: a PCI function with the modern (1.0) interface — vendor
/// capabilities pointing at common config, notify, ISR and device config in a 64-bit memory
/// BAR, plus the PCI-config access window — and/or the legacy (0.9.5) I/O BAR, and an MSI-X
/// table. It owns the virtqueues' registers; the device behind it (`VirtioDevice`) serves the
/// requests.
///
/// BARs as QEMU lays them out: 0 legacy I/O, 1 MSI-X (table at 0, PBA at 2 KiB), 4+5 the
/// modern memory BAR (common 0x0000, ISR 0x1000, device 0x2000, notify 0x3000, 4 KiB each).
public final class VirtioPCITransport {
    public static let noVector: UInt16 = 0xFFFF
    static let legacyBAR = 0, msixBAR = 1, modernBAR = 4
    static let commonOffset: UInt64 = 0x0000, isrOffset: UInt64 = 0x1000
    static let deviceOffset: UInt64 = 0x2000, notifyOffset: UInt64 = 0x3000
    static let modernBARSize: UInt64 = 0x4000
    static let notifyMultiplier: UInt32 = 4
    static let pbaOffset = 0x800
    static let commonSize = 0x38
    /// Where the PCI-config access capability sits (fixed, so `configWrite` can spot it).
    static let pciCfgCap = 0x84
    static let msixCap = 0x98

    public let pci: PCIFunction
    public let mode: VirtioPCIMode
    public let memory: any GuestMemory
    public weak var device: (any VirtioDevice)?
    let log: GuestErrorLog
    private let notifications: any NotificationProvider
    private let name: String
    private let offeredFeatures: UInt64
    private let configSize: Int

    public private(set) var queues: [SplitVirtqueue]
    private var queueVectors: [UInt16]
    public private(set) var status: UInt8 = 0
    public private(set) var driverFeatures: UInt64 = 0
    private var deviceFeatureSelect: UInt32 = 0
    private var driverFeatureSelect: UInt32 = 0
    private var queueSelect: UInt16 = 0
    private var configVector = VirtioPCITransport.noVector
    private var isr: UInt8 = 0
    private var configGeneration: UInt8 = 0
    /// The driver used the legacy BAR (no FEATURES_OK step, no VERSION_1).
    private var legacyDriver = false
    public private(set) var msix: MSIXTable
    private var doorbells: [(Doorbell, any DoorbellRegistration)] = []

    /// `deviceID` is the virtio device type (2 for block); `deviceFeatures` the device's own
    /// bits (the transport adds VERSION_1, INDIRECT_DESC and EVENT_IDX); `configSize` the size of
    /// its configuration structure. The device attaches itself as `device` afterwards.
    public init(name: String, deviceID id: UInt16, deviceFeatures: UInt64, queueMaxSizes: [UInt16], configSize: Int,
                mode: VirtioPCIMode, classCode: UInt32,
                memory: any GuestMemory, notifications: any NotificationProvider, log: GuestErrorLog = .shared) {
        // Transitional functions keep the 0.9.5 IDs (0x1000 + n, subsystem = device type, which
        // legacy drivers match on); modern-only ones take 0x1040 + type and revision 1.
        var config = PCIConfigSpace(vendor: 0x1AF4, device: mode.legacy ? 0x0FFF + id : 0x1040 + id,
                                    revision: mode.legacy ? 0 : 1, classCode: classCode,
                                    subsystem: mode.legacy ? id : PCIConfigSpace.qemuSubsystem,
                                    interruptPin: 1, status: 0x0010)
        let queueCount = queueMaxSizes.count
        Self.buildCapabilities(&config, modern: mode.modern, vectors: queueCount + 1)
        let legacySize = Self.nextPowerOfTwo(0x18 + configSize)
        self.configSize = configSize
        var bars = [PCIBARDefinition?](repeating: nil, count: 6)
        if mode.legacy { bars[Self.legacyBAR] = PCIBARDefinition(kind: .io, size: UInt64(legacySize)) }
        bars[Self.msixBAR] = PCIBARDefinition(kind: .memory32(prefetchable: false), size: 0x1000)
        if mode.modern { bars[Self.modernBAR] = PCIBARDefinition(kind: .memory64(prefetchable: true), size: Self.modernBARSize) }
        pci = PCIFunction(name: name, config: config, bars: bars)
        self.name = name
        self.mode = mode
        self.memory = memory
        self.notifications = notifications
        self.log = log
        offeredFeatures = deviceFeatures | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex
            | (mode.modern ? VirtioFeature.version1 : 0)
        queues = queueMaxSizes.map { SplitVirtqueue(maxSize: $0) }
        queueVectors = [UInt16](repeating: Self.noVector, count: queueCount)
        msix = MSIXTable(count: queueCount + 1, notifications: notifications)
    }

    static func nextPowerOfTwo(_ n: Int) -> Int {
        var size = 4
        while size < n { size *= 2 }
        return size
    }

    /// The capability list: the virtio vendor capabilities (modern only) and MSI-X. Nothing
    /// in it is writable through the generic masks; `configWrite` handles the few live fields.
    private static func buildCapabilities(_ config: inout PCIConfigSpace, modern: Bool, vectors: Int) {
        for i in 0x40..<PCIConfigSpace.size { config.writeMask[i] = 0 }
        func vendorCap(_ at: Int, next: Int, length: Int, type: UInt8, bar: UInt8, offset: UInt64, size: UInt32) {
            config.set8(at, 0x09)
            config.set8(at + 1, UInt8(next))
            config.set8(at + 2, UInt8(length))
            config.set8(at + 3, type)
            config.set8(at + 4, bar)
            config.set32(at + 8, UInt32(offset))
            config.set32(at + 12, size)
        }
        if modern {
            config.set8(0x34, 0x40)
            vendorCap(0x40, next: 0x50, length: 16, type: 1, bar: UInt8(modernBAR), offset: commonOffset, size: 0x1000)
            vendorCap(0x50, next: 0x60, length: 16, type: 3, bar: UInt8(modernBAR), offset: isrOffset, size: 0x1000)
            vendorCap(0x60, next: 0x70, length: 16, type: 4, bar: UInt8(modernBAR), offset: deviceOffset, size: 0x1000)
            vendorCap(0x70, next: pciCfgCap, length: 20, type: 2, bar: UInt8(modernBAR), offset: notifyOffset, size: 0x1000)
            config.set32(0x70 + 16, notifyMultiplier)
            // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data are the driver's to write.
            vendorCap(pciCfgCap, next: msixCap, length: 20, type: 5, bar: 0, offset: 0, size: 0)
            config.writeMask[pciCfgCap + 4] = 0xFF
            for i in 8..<20 { config.writeMask[pciCfgCap + i] = 0xFF }
        } else {
            config.set8(0x34, UInt8(msixCap))
        }
        config.set8(msixCap, 0x11)
        config.set8(msixCap + 1, 0)
        config.set16(msixCap + 2, UInt16(vectors - 1))
        config.set32(msixCap + 4, UInt32(msixBAR))                       // table at BAR1 + 0
        config.set32(msixCap + 8, UInt32(pbaOffset) | UInt32(msixBAR))  // PBA at BAR1 + 2 KiB
    }

    // MARK: PCI configuration space

    public func configRead(offset: Int, size: Int) -> UInt32 {
        if mode.modern, let window = pciCfgWindow(offset: offset, size: size) {
            return UInt32(truncatingIfNeeded: windowAccess(window) { o, s in read(region: Self.modernBAR, offset: o, size: s) })
        }
        return pci.config.read(offset: offset, size: size)
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        if mode.modern, let window = pciCfgWindow(offset: offset, size: size) {
            _ = windowAccess(window) { o, s in
                write(region: Self.modernBAR, offset: o, size: s, value: UInt64(value))
                return 0
            }
            return
        }
        let controlByte = Self.msixCap + 3
        pci.write(offset: offset, size: size, value: value)
        if offset <= controlByte && controlByte < offset + size {
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(controlByte - offset)))
            msix.setControl(enable: byte & 0x80 != 0, functionMask: byte & 0x40 != 0)
            pci.config.set16(Self.msixCap + 2, msix.control)
            updateINTx()
        }
        updateDoorbells()
    }

    /// The PCI-config access window: an access to `pci_cfg_data` becomes an access of
    /// `cap.length` bytes at `cap.offset` in BAR `cap.bar`. Only the modern BAR is reachable,
    /// with naturally aligned 1, 2 or 4-byte accesses inside it (the spec's rules); anything
    /// else reads zeros and writes nothing.
    private func pciCfgWindow(offset: Int, size: Int) -> (offset: UInt64, size: Int)? {
        let data = Self.pciCfgCap + 16
        guard (data..<data + 4).contains(offset) else { return nil }
        return (UInt64(pci.config.get32(Self.pciCfgCap + 8)), Int(pci.config.get32(Self.pciCfgCap + 12)))
    }

    private func windowAccess(_ window: (offset: UInt64, size: Int), _ body: (UInt64, Int) -> UInt64) -> UInt64 {
        guard Int(pci.config.get8(Self.pciCfgCap + 4)) == Self.modernBAR, [1, 2, 4].contains(window.size),
              window.offset % UInt64(window.size) == 0, window.offset + UInt64(window.size) <= Self.modernBARSize else {
            log.report(name, "PCI-config window access to BAR \(pci.config.get8(Self.pciCfgCap + 4)) offset \(hex(window.offset)) length \(window.size) refused")
            return 0
        }
        return body(window.offset, window.size)
    }

    // MARK: BAR accesses

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case Self.legacyBAR where mode.legacy: return legacyRead(offset: Int(offset), size: size)
        case Self.msixBAR:
            return offset < UInt64(Self.pbaOffset) ? msix.readTable(offset: Int(offset), size: size)
                                                   : msix.readPBA(offset: Int(offset) - Self.pbaOffset, size: size)
        case Self.modernBAR where mode.modern:
            switch offset {
            case Self.commonOffset..<Self.isrOffset: return commonRead(offset: Int(offset - Self.commonOffset), size: size)
            case Self.isrOffset..<Self.deviceOffset: return offset == Self.isrOffset ? UInt64(readISR()) : 0
            case Self.deviceOffset..<Self.notifyOffset: return configBytes(Int(offset - Self.deviceOffset), size)
            default: return 0
            }
        default: return 0
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch region {
        case Self.legacyBAR where mode.legacy: legacyWrite(offset: Int(offset), size: size, value: value)
        case Self.msixBAR:
            guard offset < UInt64(msix.tableSize) else { return }
            msix.writeTable(offset: Int(offset), size: size, value: value)
        case Self.modernBAR where mode.modern:
            switch offset {
            case Self.commonOffset..<Self.isrOffset: commonWrite(offset: Int(offset - Self.commonOffset), size: size, value: value)
            case Self.deviceOffset..<Self.notifyOffset: writeConfigBytes(Int(offset - Self.deviceOffset), size, value)
            case Self.notifyOffset...:
                // notify_off of queue n is n: the doorbell address names the queue; the value
                // written does not matter (without VIRTIO_F_NOTIFICATION_DATA).
                let relative = offset - Self.notifyOffset
                guard relative % UInt64(Self.notifyMultiplier) == 0 else { return }
                notify(queue: Int(relative / UInt64(Self.notifyMultiplier)))
            default: break
            }
        default: break
        }
    }

    private func configBytes(_ offset: Int, _ size: Int) -> UInt64 {
        guard let device else { return 0 }
        var value: UInt64 = 0
        for i in 0..<size where offset + i < configSize {
            value |= UInt64(device.readConfig(offset: offset + i)) << (8 * UInt64(i))
        }
        return value
    }

    private func writeConfigBytes(_ offset: Int, _ size: Int, _ value: UInt64) {
        guard let device else { return }
        for i in 0..<size where offset + i < configSize {
            device.writeConfig(offset: offset + i, value: UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
        }
    }

    private func readISR() -> UInt8 {
        // Reading acknowledges: the bits clear and INTx drops.
        defer {
            isr = 0
            updateINTx()
        }
        return isr
    }

    // MARK: common configuration (modern)

    /// Fields of `virtio_pci_common_cfg` by offset and width; the 64-bit queue addresses are
    /// two 32-bit halves, which the spec lets drivers write separately. Accesses of any width
    /// and alignment are assembled from these byte by byte, so a hostile width can only ever
    /// touch real fields.
    private static let commonFields: [(offset: Int, width: Int)] = [
        (0x00, 4), (0x04, 4), (0x08, 4), (0x0C, 4), (0x10, 2), (0x12, 2), (0x14, 1), (0x15, 1), (0x16, 2),
        (0x18, 2), (0x1A, 2), (0x1C, 2), (0x1E, 2), (0x20, 4), (0x24, 4), (0x28, 4), (0x2C, 4), (0x30, 4), (0x34, 4),
    ]

    private static func field(containing offset: Int) -> (offset: Int, width: Int)? {
        commonFields.last { $0.offset <= offset && offset < $0.offset + $0.width }
    }

    private func commonRead(offset: Int, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size {
            guard let field = Self.field(containing: offset + i) else { continue }
            let byte = (commonField(field.offset) >> (8 * UInt64(offset + i - field.offset))) & 0xFF
            value |= byte << (8 * UInt64(i))
        }
        return value
    }

    private func commonWrite(offset: Int, size: Int, value: UInt64) {
        var at = offset
        while at < offset + size {
            guard let field = Self.field(containing: at) else {
                at += 1
                continue
            }
            // Merge the bytes of this access that fall into the field with its current value.
            var merged = commonField(field.offset)
            while at < offset + size && at < field.offset + field.width {
                let shift = UInt64(8 * (at - field.offset))
                let byte = (value >> UInt64(8 * (at - offset))) & 0xFF
                merged = (merged & ~(0xFF << shift)) | (byte << shift)
                at += 1
            }
            setCommonField(field.offset, UInt32(truncatingIfNeeded: merged))
        }
    }

    private var selectedQueue: Int? { Int(queueSelect) < queues.count ? Int(queueSelect) : nil }

    private func commonField(_ offset: Int) -> UInt64 {
        let q = selectedQueue
        switch offset {
        case 0x00: return UInt64(deviceFeatureSelect)
        case 0x04: return deviceFeatureSelect < 2 ? (offeredFeatures >> (32 * UInt64(deviceFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x08: return UInt64(driverFeatureSelect)
        case 0x0C: return driverFeatureSelect < 2 ? (driverFeatures >> (32 * UInt64(driverFeatureSelect))) & 0xFFFF_FFFF : 0
        case 0x10: return UInt64(configVector)
        case 0x12: return UInt64(queues.count)
        case 0x14: return UInt64(status)
        case 0x15: return UInt64(configGeneration)
        case 0x16: return UInt64(queueSelect)
        // An unselectable queue reads size 0: "not available".
        case 0x18: return q.map { UInt64(queues[$0].size) } ?? 0
        case 0x1A: return q.map { UInt64(queueVectors[$0]) } ?? UInt64(Self.noVector)
        case 0x1C: return q.map { queues[$0].ready ? 1 : 0 } ?? 0
        case 0x1E: return q.map(UInt64.init) ?? 0
        case 0x20: return q.map { queues[$0].descriptorTable & 0xFFFF_FFFF } ?? 0
        case 0x24: return q.map { queues[$0].descriptorTable >> 32 } ?? 0
        case 0x28: return q.map { queues[$0].availRing & 0xFFFF_FFFF } ?? 0
        case 0x2C: return q.map { queues[$0].availRing >> 32 } ?? 0
        case 0x30: return q.map { queues[$0].usedRing & 0xFFFF_FFFF } ?? 0
        case 0x34: return q.map { queues[$0].usedRing >> 32 } ?? 0
        default: return 0
        }
    }

    private func setCommonField(_ offset: Int, _ value: UInt32) {
        switch offset {
        case 0x00: deviceFeatureSelect = value
        case 0x08: driverFeatureSelect = value
        case 0x0C:
            // Features are fixed once FEATURES_OK was accepted.
            guard status & VirtioStatus.featuresOK == 0, driverFeatureSelect < 2 else { return }
            let shift = 32 * UInt64(driverFeatureSelect)
            driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
        case 0x10: configVector = validVector(value)
        case 0x14: writeStatus(UInt8(truncatingIfNeeded: value))
        case 0x16: queueSelect = UInt16(truncatingIfNeeded: value)
        case 0x1A: if let q = selectedQueue { queueVectors[q] = validVector(value) }
        case 0x1C: if let q = selectedQueue, value & 1 == 1 { enableQueue(q) }
        default:
            // Queue layout: ignored for an absent or already enabled queue (the spec forbids
            // changing a live queue, and we never serve one whose rings move under us).
            guard let q = selectedQueue, !queues[q].ready else { return }
            switch offset {
            case 0x18: queues[q].size = UInt16(truncatingIfNeeded: value)
            case 0x20: queues[q].descriptorTable = (queues[q].descriptorTable & ~0xFFFF_FFFF) | UInt64(value)
            case 0x24: queues[q].descriptorTable = (queues[q].descriptorTable & 0xFFFF_FFFF) | UInt64(value) << 32
            case 0x28: queues[q].availRing = (queues[q].availRing & ~0xFFFF_FFFF) | UInt64(value)
            case 0x2C: queues[q].availRing = (queues[q].availRing & 0xFFFF_FFFF) | UInt64(value) << 32
            case 0x30: queues[q].usedRing = (queues[q].usedRing & ~0xFFFF_FFFF) | UInt64(value)
            case 0x34: queues[q].usedRing = (queues[q].usedRing & 0xFFFF_FFFF) | UInt64(value) << 32
            default: break
            }
        }
    }

    /// A vector number the table has, or NO_VECTOR (which is how the driver learns that the
    /// device refused it).
    private func validVector(_ value: UInt32) -> UInt16 {
        value < UInt32(msix.count) ? UInt16(value) : Self.noVector
    }

    // MARK: legacy interface (0.9.5, I/O BAR 0)

    /// Legacy registers: host features, guest features, queue PFN, queue size, queue select,
    /// queue notify, status, ISR; with MSI-X enabled also config and queue vectors, then device
    /// config (which therefore moves from 0x14 to 0x18).
    private var legacyConfigOffset: Int { msix.enabled ? 0x18 : 0x14 }

    private func legacyRead(offset: Int, size: Int) -> UInt64 {
        if offset >= legacyConfigOffset { return configBytes(offset - legacyConfigOffset, size) }
        let q = selectedQueue
        let value: UInt64
        let fieldOffset: Int
        switch offset {
        case 0x00..<0x04: (fieldOffset, value) = (0x00, offeredFeatures & 0xFFFF_FFFF)
        case 0x04..<0x08: (fieldOffset, value) = (0x04, driverFeatures & 0xFFFF_FFFF)
        case 0x08..<0x0C: (fieldOffset, value) = (0x08, q.map { queues[$0].ready ? queues[$0].descriptorTable >> 12 : 0 } ?? 0)
        case 0x0C..<0x0E: (fieldOffset, value) = (0x0C, q.map { UInt64(queues[$0].maxSize) } ?? 0)
        case 0x0E..<0x10: (fieldOffset, value) = (0x0E, UInt64(queueSelect))
        case 0x10..<0x12: (fieldOffset, value) = (0x10, 0)
        case 0x12: (fieldOffset, value) = (0x12, UInt64(status))
        case 0x13: (fieldOffset, value) = (0x13, UInt64(readISR()))
        case 0x14..<0x16: (fieldOffset, value) = (0x14, UInt64(configVector))
        case 0x16..<0x18: (fieldOffset, value) = (0x16, q.map { UInt64(queueVectors[$0]) } ?? UInt64(Self.noVector))
        default: return 0
        }
        return (value >> UInt64(8 * (offset - fieldOffset))) & mask(size)
    }

    private func legacyWrite(offset: Int, size: Int, value: UInt64) {
        if offset >= legacyConfigOffset {
            writeConfigBytes(offset - legacyConfigOffset, size, value)
            return
        }
        legacyDriver = true
        let v32 = UInt32(truncatingIfNeeded: value)
        switch (offset, size) {
        case (0x04, 4):
            // A legacy driver cannot see or take VERSION_1.
            driverFeatures = UInt64(v32) & offeredFeatures
        case (0x08, 4):
            guard let q = selectedQueue else { return }
            if v32 == 0 {
                resetAll()
            } else if !queues[q].ready {
                // Legacy layout: descriptors at the page, the avail ring right after them, the
                // used ring on the next 4 KiB boundary; the size is the maximum.
                let size = UInt64(queues[q].maxSize)
                let base = UInt64(v32) << 12
                queues[q].size = queues[q].maxSize
                queues[q].descriptorTable = base
                queues[q].availRing = base + 16 * size
                queues[q].usedRing = (base + 16 * size + 6 + 2 * size + 4095) & ~4095
                enableQueue(q)
            }
        case (0x0E, 2): queueSelect = UInt16(truncatingIfNeeded: v32)
        case (0x10, 2): notify(queue: Int(UInt16(truncatingIfNeeded: v32)))
        case (0x12, 1): writeStatus(UInt8(truncatingIfNeeded: v32))
        case (0x14, 2) where msix.enabled: configVector = validVector(v32 & 0xFFFF)
        case (0x16, 2) where msix.enabled: if let q = selectedQueue { queueVectors[q] = validVector(v32 & 0xFFFF) }
        default:
            log.report(name, "legacy register write at \(hex(offset)) size \(size) ignored")
        }
    }

    // MARK: status, queues, interrupts

    private func writeStatus(_ value: UInt8) {
        if value == 0 {
            resetAll()
            return
        }
        var new = value | (status & VirtioStatus.needsReset)
        if new & VirtioStatus.featuresOK != 0 && status & VirtioStatus.featuresOK == 0 && !featuresAcceptable {
            // Refusing FEATURES_OK is how a device says no: the driver reads the bit back.
            log.report(name, "driver features \(hex(driverFeatures)) refused (offered \(hex(offeredFeatures)))")
            new &= ~VirtioStatus.featuresOK
        }
        status = new
        updateDoorbells()
    }

    /// Only features we offered, and a modern driver must accept VERSION_1 (without it the
    /// device would have to speak legacy on the modern interface, which it does not).
    private var featuresAcceptable: Bool {
        driverFeatures & ~offeredFeatures == 0 && (legacyDriver || driverFeatures & VirtioFeature.version1 != 0)
    }

    private func enableQueue(_ q: Int) {
        queues[q].eventIndex = driverFeatures & VirtioFeature.eventIndex != 0
        queues[q].indirect = driverFeatures & VirtioFeature.indirectDescriptors != 0
        do {
            try queues[q].validateLayout(memory)
        } catch {
            queueFailed(q, error)
            return
        }
        queues[q].ready = true
        updateDoorbells()
    }

    private func notify(queue q: Int) {
        // Without bus mastering the function may not touch memory, so it does not look at the
        // rings (the driver kicks again after enabling it).
        guard q < queues.count, queues[q].ready, status & VirtioStatus.needsReset == 0, pci.config.busMasterEnabled else {
            return
        }
        device?.queueNotified(q)
    }

    /// Access to a queue for the device (under the DeviceLock). Returns nil once the device
    /// needs a reset, so a broken queue is left alone.
    public func withQueue<R>(_ q: Int, _ body: (inout SplitVirtqueue) throws(VirtqueueError) -> R) -> R? {
        guard q < queues.count, queues[q].ready, status & VirtioStatus.needsReset == 0 else { return nil }
        do {
            return try body(&queues[q])
        } catch {
            queueFailed(q, error)
            return nil
        }
    }

    /// The driver broke queue `q`: stop serving the device and tell the driver (NEEDS_RESET plus
    /// a configuration-change interrupt), as the spec asks instead of failing silently.
    public func queueFailed(_ q: Int, _ error: some CustomStringConvertible) {
        log.report(name, "queue \(q): \(error); device needs reset")
        status |= VirtioStatus.needsReset
        isr |= 2
        configGeneration &+= 1
        raise(vector: configVector)
    }

    /// Interrupts the driver for queue `q` if the ring's suppression rules say it wants one.
    public func interruptQueue(_ q: Int) {
        guard withQueue(q, { (queue) throws(VirtqueueError) in try queue.shouldInterrupt(memory) }) == true else { return }
        isr |= 1
        raise(vector: queueVectors[q])
    }

    private func raise(vector: UInt16) {
        if msix.enabled {
            if vector != Self.noVector { msix.signal(Int(vector)) }
        } else {
            updateINTx()
        }
    }

    private func updateINTx() {
        pci.setINTx(!msix.enabled && isr != 0)
    }

    // MARK: doorbells

    /// Keeps the accelerator's doorbells equal to the notify addresses of the enabled queues at
    /// the BARs' current places, once the driver is up. Recomputed after every config write and
    /// status change; unchanged sets cost a comparison.
    private func updateDoorbells() {
        var wanted: [Doorbell] = []
        if status & VirtioStatus.driverOK != 0 && status & VirtioStatus.needsReset == 0 {
            for q in queues.indices where queues[q].ready {
                if let base = pci.mapped[Self.modernBAR] {
                    wanted.append(Doorbell(space: .memory, address: base + Self.notifyOffset + UInt64(Self.notifyMultiplier) * UInt64(q),
                                           length: 2))
                }
                if let base = pci.mapped[Self.legacyBAR] {
                    wanted.append(Doorbell(space: .port, address: base + 0x10, length: 2, value: UInt64(q)))
                }
            }
        }
        guard wanted != doorbells.map(\.0) else { return }
        for (_, registration) in doorbells { registration.cancel() }
        doorbells = []
        for doorbell in wanted {
            let q = doorbell.space == .port ? Int(doorbell.value ?? 0)
                : Int((doorbell.address - Self.notifyOffset - (pci.mapped[Self.modernBAR] ?? 0)) / UInt64(Self.notifyMultiplier))
            let registration = notifications.addDoorbell(doorbell) { [weak self] in self?.notify(queue: q) }
            if let registration { doorbells.append((doorbell, registration)) }
        }
    }

    // MARK: reset and state

    /// Device reset (status 0, legacy PFN 0): queues, features, vectors, ISR; the device drops
    /// what is in flight. MSI-X table and PCI config belong to the function and stay.
    private func resetAll() {
        device?.resetDevice()
        for q in queues.indices { queues[q].reset() }
        queueVectors = queueVectors.map { _ in Self.noVector }
        status = 0
        driverFeatures = 0
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        queueSelect = 0
        configVector = Self.noVector
        isr = 0
        legacyDriver = false
        updateINTx()
        updateDoorbells()
    }

    /// System reset: the function too.
    public func reset() {
        resetAll()
        msix.reset()
        pci.reset()
        configGeneration = 0
        updateDoorbells()
    }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        msix.saveState(to: &w)
        w.put(status)
        w.put(driverFeatures)
        w.put(deviceFeatureSelect)
        w.put(driverFeatureSelect)
        w.put(queueSelect)
        w.put(configVector)
        w.put(isr)
        w.put(configGeneration)
        w.put(legacyDriver)
        w.put(UInt32(queues.count))
        for (q, queue) in queues.enumerated() {
            w.put(queue.size)
            w.put(queue.ready)
            w.put(queue.descriptorTable)
            w.put(queue.availRing)
            w.put(queue.usedRing)
            w.put(queue.nextAvail)
            w.put(queue.nextUsed)
            w.put(queue.signalledUsed)
            w.put(queueVectors[q])
        }
    }

    public func loadState(from r: inout StateReader) throws(StateError) {
        func invalid(_ field: String) -> StateError { .invalidValue(section: r.section, field: field) }
        try pci.loadState(from: &r)
        try msix.loadState(from: &r)
        pci.config.set16(Self.msixCap + 2, msix.control)
        let newStatus = try r.get(UInt8.self)
        let features = try r.get(UInt64.self)
        guard features & ~offeredFeatures == 0 else { throw invalid("features") }
        deviceFeatureSelect = try r.get(UInt32.self)
        driverFeatureSelect = try r.get(UInt32.self)
        queueSelect = try r.get(UInt16.self)
        configVector = validVector(UInt32(try r.get(UInt16.self)))
        isr = try r.get(UInt8.self) & 3
        configGeneration = try r.get(UInt8.self)
        legacyDriver = try r.get(Bool.self)
        guard Int(try r.get(UInt32.self)) == queues.count else { throw invalid("queue count") }
        status = newStatus
        driverFeatures = features
        for q in queues.indices {
            var queue = SplitVirtqueue(maxSize: queues[q].maxSize)
            queue.size = try r.get(UInt16.self)
            queue.ready = try r.get(Bool.self)
            queue.descriptorTable = try r.get(UInt64.self)
            queue.availRing = try r.get(UInt64.self)
            queue.usedRing = try r.get(UInt64.self)
            queue.nextAvail = try r.get(UInt16.self)
            queue.nextUsed = try r.get(UInt16.self)
            queue.signalledUsed = try r.get(UInt16.self)
            queue.eventIndex = features & VirtioFeature.eventIndex != 0
            queue.indirect = features & VirtioFeature.indirectDescriptors != 0
            queueVectors[q] = validVector(UInt32(try r.get(UInt16.self)))
            if queue.ready {
                // The restored rings are checked like a driver's enable: a bad stream must not
                // give the data path a layout it would reject.
                do { try queue.validateLayout(memory) } catch { throw invalid("queue \(q) layout") }
            }
            queues[q] = queue
        }
        updateINTx()
        updateDoorbells()
    }
}
