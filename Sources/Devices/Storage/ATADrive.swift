import Backends
import DMCore

/// Counters behind QMP's query-blockstats, kept by the device that issues the requests.
public struct BlockDeviceStats: Sendable, Equatable {
    public var readBytes: UInt64 = 0
    public var writtenBytes: UInt64 = 0
    public var readOperations: UInt64 = 0
    public var writeOperations: UInt64 = 0
    public var flushOperations: UInt64 = 0
    public var failedReadOperations: UInt64 = 0
    public var failedWriteOperations: UInt64 = 0
    public var failedFlushOperations: UInt64 = 0
    /// Wall-clock time spent in the backend, in nanoseconds (QMP's *_total_time_ns).
    public var readTotalNanoseconds: UInt64 = 0
    public var writeTotalNanoseconds: UInt64 = 0
    public var flushTotalNanoseconds: UInt64 = 0
    public init() {}
}

/// What query-block reports for one drive.
public struct BlockDeviceInfo: Sendable, Equatable {
    public var id: String
    public var qdevID: String?
    public var isCDROM: Bool
    public var removable: Bool
    public var locked: Bool
    public var trayOpen: Bool?
    /// nil when the drive has no medium.
    public var path: String?
    public var format: String?
    public var readOnly: Bool
    public var size: UInt64
    public var stats: BlockDeviceStats
}

public enum ATAMediaError: Error, Equatable, CustomStringConvertible {
    case notRemovable(id: String)
    /// The guest locked the tray; the guest was asked to eject (QEMU's answer, too).
    case locked(id: String)
    case trayClosed(id: String)
    case mediumPresent(id: String)
    case open(BlockError)

    public var description: String {
        switch self {
        case .notRemovable(let id): return "Device '\(id)' is not removable"
        case .locked(let id): return "Device '\(id)' is locked and force was not specified, wait for tray to open and try again"
        case .trayClosed(let id): return "Tray of device '\(id)' is not open"
        case .mediumPresent(let id): return "There already is a medium in device '\(id)'"
        case .open(let error): return error.description
        }
    }
}

/// One IDE drive: a hard disk or a CD-ROM, its medium, tray and lock, the identity strings the
/// guest sees, and the I/O counters. The ATA/ATAPI protocol lives in `ATAChannel`.
///
/// The monitor calls the media API with the machine's `DeviceLock` held, like every other
/// entry point into a device.
public final class ATADrive: @unchecked Sendable {
    public enum Kind: Sendable, Equatable { case disk, cdrom }

    public let kind: Kind
    /// The drive's `-drive id=` (`ide0-hd0`, `ide1-cd0` when none was given).
    public let id: String
    /// The `-device ... id=`, if any.
    public let qdevID: String?
    public let serial: String
    public private(set) var medium: BlockBackend?
    public private(set) var trayOpen = false
    /// PREVENT ALLOW MEDIUM REMOVAL's state.
    public internal(set) var locked = false
    public internal(set) var stats = BlockDeviceStats()
    /// Called when the tray opens or closes (QMP's DEVICE_TRAY_MOVED), with the new state.
    public var onTrayMoved: ((_ drive: ATADrive, _ open: Bool) -> Void)?
    /// Opening a medium for `changeMedium`; tests replace it.
    let readOnlyMedia: Bool

    // ATAPI media-change protocol (see `ATAChannel.atapiMediaChangeGate`).
    /// 1: the next command reports "medium not present", 2: then "medium may have changed".
    var mediaChangeStage: UInt8 = 0
    /// GET EVENT STATUS NOTIFICATION's pending media event (0 none, 1 eject request, 2 new media, 3 removal).
    var pendingMediaEvent: UInt8 = 0
    // REQUEST SENSE data.
    var senseKey: UInt8 = 0
    var additionalSense: UInt8 = 0
    var additionalSenseQualifier: UInt8 = 0

    // Per-drive ATA settings a guest can change.
    var multipleSectors = 0
    var writeCacheEnabled = true
    /// SET FEATURES transfer mode: 0x08-0x0F PIO, 0x20-0x22 MWDMA, 0x40-0x46 UDMA.
    var transferMode: UInt8 = 0x45
    /// INITIALIZE DEVICE PARAMETERS' translation (heads, sectors per track) for CHS commands.
    var chsHeads: Int
    var chsSectors: Int

    public init(kind: Kind, medium: BlockBackend?, id: String, qdevID: String? = nil, serial: String,
                readOnly: Bool = false) {
        self.kind = kind
        self.medium = medium
        self.id = id
        self.qdevID = qdevID
        self.serial = serial
        readOnlyMedia = readOnly || kind == .cdrom
        let geometry = Self.geometry(sectors: (medium?.size ?? 0) / 512)
        chsHeads = geometry.heads
        chsSectors = geometry.sectors
    }

    public var isRemovable: Bool { kind == .cdrom }
    /// The medium the guest can reach: present and the tray closed.
    var accessibleMedium: BlockBackend? { trayOpen ? nil : medium }

    /// 512-byte sectors (disks) or 2048-byte blocks (CDs) of the accessible medium.
    var sectorCount: UInt64 {
        guard let medium = accessibleMedium else { return 0 }
        return medium.size / UInt64(kind == .cdrom ? 2048 : 512)
    }

    /// QEMU's default translation: 16 heads, 63 sectors, at most 16383 cylinders.
    static func geometry(sectors: UInt64) -> (cylinders: Int, heads: Int, sectors: Int) {
        let cylinders = min(sectors / (16 * 63), 16383)
        return (Int(max(cylinders, 1)), 16, 63)
    }

    // MARK: media API (monitor)

    /// Opens the tray and removes the medium. A guest-locked tray is not opened unless `force`;
    /// the guest is sent an eject request instead and the call fails, as in QEMU.
    public func eject(force: Bool) throws(ATAMediaError) {
        guard isRemovable else { throw .notRemovable(id: id) }
        if locked && !force {
            pendingMediaEvent = 1
            throw .locked(id: id)
        }
        locked = false
        openTray()
        removeMedium()
    }

    /// Puts `backend` into the drive and closes the tray; the guest sees a media change.
    public func insertMedium(_ backend: BlockBackend) throws(ATAMediaError) {
        guard isRemovable else { throw .notRemovable(id: id) }
        if !trayOpen { openTray() }
        removeMedium()
        medium = backend
        closeTray()
    }

    /// blockdev-insert-medium: the tray must be open and empty, and stays open (closing it
    /// later shows the guest the new medium).
    public func putMedium(_ backend: BlockBackend) throws(ATAMediaError) {
        guard isRemovable else { throw .notRemovable(id: id) }
        guard trayOpen else { throw .trayClosed(id: id) }
        guard medium == nil else { throw .mediumPresent(id: id) }
        medium = backend
    }

    /// blockdev-change-medium: opens `path` (raw unless `format` says otherwise) and inserts it.
    /// `opener` resolves names the monitor owns (`/dev/fdset/N`).
    public func changeMedium(path: String, format: BlockFormat = .raw, readOnly: Bool = true,
                             opener: BlockFileOpener? = nil) throws(ATAMediaError) {
        guard isRemovable else { throw .notRemovable(id: id) }
        if locked { pendingMediaEvent = 1; throw .locked(id: id) }
        let backend: BlockBackend
        do {
            var options = BlockOpenOptions(format: format, readOnly: readOnly || readOnlyMedia)
            options.opener = opener
            backend = try BlockBackend(path: path, options: options, workers: 1)
        } catch {
            throw .open(error)
        }
        try insertMedium(backend)
    }

    public func openTray() {
        guard !trayOpen else { return }
        trayOpen = true
        pendingMediaEvent = 3
        onTrayMoved?(self, true)
    }

    /// Closes the tray; `mediaChanged` (a medium was inserted meanwhile) makes the guest see a
    /// media change. A guest closing its own tray changes nothing it did not already know.
    public func closeTray(mediaChanged: Bool = true) {
        guard trayOpen else { return }
        trayOpen = false
        if mediaChanged && medium != nil {
            mediaChangeStage = 1
            pendingMediaEvent = 2
        }
        onTrayMoved?(self, false)
    }

    public func removeMedium() {
        guard let old = medium else { return }
        medium = nil
        // Closing waits for queued requests; an in-flight request keeps its own reference.
        try? old.close()
    }

    public var info: BlockDeviceInfo {
        BlockDeviceInfo(id: id, qdevID: qdevID, isCDROM: kind == .cdrom, removable: isRemovable, locked: locked,
                        trayOpen: isRemovable ? trayOpen : nil, path: medium?.path, format: medium?.format.rawValue,
                        readOnly: medium?.isReadOnly ?? readOnlyMedia, size: medium?.size ?? 0, stats: stats)
    }

    // MARK: state

    func resetSettings() {
        multipleSectors = 0
        writeCacheEnabled = true
        transferMode = 0x45
        let geometry = Self.geometry(sectors: (medium?.size ?? 0) / 512)
        chsHeads = geometry.heads
        chsSectors = geometry.sectors
        senseKey = 0
        additionalSense = 0
        additionalSenseQualifier = 0
        locked = false
    }

    func saveState(to w: inout StateWriter) {
        w.put(trayOpen)
        w.put(locked)
        w.put(mediaChangeStage)
        w.put(pendingMediaEvent)
        w.put(senseKey)
        w.put(additionalSense)
        w.put(additionalSenseQualifier)
        w.put(UInt8(multipleSectors))
        w.put(writeCacheEnabled)
        w.put(transferMode)
        w.put(UInt8(chsHeads))
        w.put(UInt8(chsSectors))
    }

    func loadState(from r: inout StateReader, section: String) throws(StateError) {
        let tray = try r.get(Bool.self)
        let lock = try r.get(Bool.self)
        let stage = try r.get(UInt8.self)
        let event = try r.get(UInt8.self)
        let key = try r.get(UInt8.self), asc = try r.get(UInt8.self), ascq = try r.get(UInt8.self)
        let multiple = Int(try r.get(UInt8.self))
        let cache = try r.get(Bool.self)
        let mode = try r.get(UInt8.self)
        let heads = Int(try r.get(UInt8.self)), sectors = Int(try r.get(UInt8.self))
        guard stage <= 2, event <= 3, key <= 0x0F, multiple <= ATAChannel.maxMultipleSectors,
              multiple & (multiple &- 1) == 0, (1...16).contains(heads), (1...255).contains(sectors) else {
            throw .invalidValue(section: section, field: "drive \(id)")
        }
        guard kind == .cdrom || !tray else { throw .invalidValue(section: section, field: "tray of disk \(id)") }
        trayOpen = tray
        locked = lock
        mediaChangeStage = stage
        pendingMediaEvent = event
        senseKey = key
        additionalSense = asc
        additionalSenseQualifier = ascq
        multipleSectors = multiple
        writeCacheEnabled = cache
        transferMode = mode
        chsHeads = heads
        chsSectors = sectors
    }
}
