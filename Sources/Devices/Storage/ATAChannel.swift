import Backends
import DMCore

/// ATA status and error register bits.
enum ATAStatus {
    static let error: UInt8 = 0x01
    static let dataRequest: UInt8 = 0x08
    static let seekComplete: UInt8 = 0x10
    static let deviceFault: UInt8 = 0x20
    static let ready: UInt8 = 0x40
    static let busy: UInt8 = 0x80
    static let idle: UInt8 = ready | seekComplete
}

enum ATAErrorBits {
    static let abort: UInt8 = 0x04
}

/// The command-block registers as one drive sees them. Both drives on a channel receive every
/// register write (they share the cable); each answers reads with its own copy, which is how
/// the two reset signatures can differ. `hob*` are the previous values (LBA48's high bytes).
struct ATATaskFile: Equatable {
    var feature: UInt8 = 0, hobFeature: UInt8 = 0
    var sectorCount: UInt8 = 0, hobSectorCount: UInt8 = 0
    var lbaLow: UInt8 = 0, hobLBALow: UInt8 = 0
    var lbaMid: UInt8 = 0, hobLBAMid: UInt8 = 0
    var lbaHigh: UInt8 = 0, hobLBAHigh: UInt8 = 0
    var status: UInt8 = 0
    var error: UInt8 = 0

    static let fieldCount = 12
    var fields: [UInt8] {
        [feature, hobFeature, sectorCount, hobSectorCount, lbaLow, hobLBALow, lbaMid, hobLBAMid,
         lbaHigh, hobLBAHigh, status, error]
    }
    init() {}
    init(fields f: [UInt8]) {
        (feature, hobFeature, sectorCount, hobSectorCount) = (f[0], f[1], f[2], f[3])
        (lbaLow, hobLBALow, lbaMid, hobLBAMid, lbaHigh, hobLBAHigh, status, error) = (f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11])
    }
}

/// Where a channel's DMA data lives when it is not PIIX3's PRD table: an AHCI command's PRDT.
/// With a source attached, DMA commands start at once (an AHCI port has no bus-master start
/// bit) and the source hands out the scatter/gather segments.
protocol ATADMASource: AnyObject {
    /// The next segment, or nil when the list ended or cannot be read.
    func nextDMASegment() -> (address: UInt64, length: Int)?
}

/// One IDE channel (cable): up to two drives, their task files, the device control register,
/// the interrupt, the bus-master DMA registers of this channel, and the one transfer the
/// channel can have in progress. ATA commands are here; ATAPI packets in `ATAPICommands`.
/// An AHCI port drives one channel too (`AHCIPort`): it loads the task file from the command
/// FIS, supplies the PRDT as `dmaSource` and moves PIO blocks itself.
///
/// Every guest value is hostile: sector counts and LBAs are checked against the medium before
/// any I/O (and again by `BlockBackend`), PRD tables are walked with a bound on entries and
/// every byte copied through `GuestMemory`, the PIO data port never leaves the current DRQ
/// block. Block I/O runs on the backend's workers; the channel shows BSY until the completion
/// comes back through `poster` (the event loop).
public final class ATAChannel: @unchecked Sendable {
    static let maxMultipleSectors = 16
    /// A PRD table lives in one 64 KiB region (ATA host adapter spec): at most 8192 entries.
    static let maxPRDEntries = 8192

    public let index: Int
    public internal(set) var drives: [ATADrive?]
    let name: String
    let irq: IRQLine?
    let memory: any GuestMemory
    let poster: any BlockCompletionPoster
    let log: GuestErrorLog

    var taskFiles = [ATATaskFile(), ATATaskFile()]
    /// Device/head register (shared: bit 4 selects the drive).
    var deviceRegister: UInt8 = 0xA0
    /// Device control: bit 1 nIEN, bit 2 SRST, bit 7 HOB.
    var control: UInt8 = 0
    /// INTRQ as the drive drives it; the line also depends on nIEN.
    var interruptPending = false

    // Bus-master DMA registers (BAR4) of this channel.
    var bmCommand: UInt8 = 0
    var bmStatus: UInt8 = 0
    var bmPRDTable: UInt32 = 0
    // PRD cursor of the running DMA transfer.
    var prdNext: UInt64 = 0
    var prdEntries = 0
    var prdSegmentAddress: UInt64 = 0
    var prdSegmentLeft = 0
    var prdEndOfTable = false

    // The transfer in progress.
    enum Operation: UInt8 { case none, identify, ataRead, ataWrite, atapiPacket, atapiRead, atapiReply }
    enum Phase: UInt8 {
        case idle
        /// PIO: the guest reads buffer[pioPosition..<pioBlockEnd].
        case dataIn
        /// PIO: the guest writes buffer[pioPosition..<pioBlockEnd].
        case dataOut
        /// A backend request is in flight.
        case busy
        /// A DMA command waits for the bus master to start.
        case dmaWait
    }
    var operation = Operation.none
    var phase = Phase.idle
    var unit = 0
    var lba: UInt64 = 0
    /// Sectors still to fetch (reads) or still to receive from the guest (writes).
    var sectorsLeft = 0
    var sectorSize = 512
    var usesDMA = false
    /// ATA PIO: bytes per DRQ block. ATAPI PIO: the byte count limit.
    var blockBytes = 512
    var pioPosition = 0
    var pioBlockEnd = 0
    var bufferFill = 0
    var buffer = ATATransferBuffer()
    var generation: UInt64 = 0
    var requestStart: UInt64 = 0
    /// An AHCI port's PRDT; nil on PIIX3, whose bus master reads PRD tables.
    weak var dmaSource: (any ATADMASource)?
    /// NCQ queue depth IDENTIFY advertises (0: none, as on PIIX3).
    var ncqQueueDepth = 0

    init(index: Int, drives: [ATADrive?], irq: IRQLine?, memory: any GuestMemory,
         poster: any BlockCompletionPoster, log: GuestErrorLog, name: String? = nil) {
        precondition(drives.count == 2)
        self.index = index
        self.drives = drives
        self.irq = irq
        self.memory = memory
        self.poster = poster
        self.log = log
        self.name = name ?? "ide.\(index)"
        setPowerOnState()
    }

    var selectedUnit: Int { Int((deviceRegister >> 4) & 1) }
    var inFlight: Bool { phase == .busy }

    // MARK: register access (legacy ports)

    /// Command block register `register` (0-7); the data port is `readData`.
    func readRegister(_ register: Int) -> UInt8 {
        let selected = selectedUnit
        let present = drives[selected] != nil
        if register == 6 { return drives[0] == nil && drives[1] == nil ? 0 : deviceRegister }
        guard present else { return 0 }
        let tf = taskFiles[selected]
        let hob = control & 0x80 != 0
        switch register {
        case 1: return hob ? tf.hobFeature : tf.error
        case 2: return hob ? tf.hobSectorCount : tf.sectorCount
        case 3: return hob ? tf.hobLBALow : tf.lbaLow
        case 4: return hob ? tf.hobLBAMid : tf.lbaMid
        case 5: return hob ? tf.hobLBAHigh : tf.lbaHigh
        case 7:
            setInterrupt(false)
            return tf.status
        default: return 0
        }
    }

    func readAlternateStatus() -> UInt8 {
        drives[selectedUnit] == nil ? 0 : taskFiles[selectedUnit].status
    }

    func writeRegister(_ register: Int, _ value: UInt8) {
        // Any command-block write clears HOB.
        control &= 0x7F
        if register == 7 {
            executeCommand(value)
            return
        }
        // Writes while the selected drive is busy are ignored (the registers belong to it).
        guard taskFiles[selectedUnit].status & ATAStatus.busy == 0 else { return }
        for u in 0..<2 {
            switch register {
            case 1: taskFiles[u].hobFeature = taskFiles[u].feature; taskFiles[u].feature = value
            case 2: taskFiles[u].hobSectorCount = taskFiles[u].sectorCount; taskFiles[u].sectorCount = value
            case 3: taskFiles[u].hobLBALow = taskFiles[u].lbaLow; taskFiles[u].lbaLow = value
            case 4: taskFiles[u].hobLBAMid = taskFiles[u].lbaMid; taskFiles[u].lbaMid = value
            case 5: taskFiles[u].hobLBAHigh = taskFiles[u].lbaHigh; taskFiles[u].lbaHigh = value
            default: break
            }
        }
        if register == 6 { deviceRegister = value | 0xA0 }
    }

    func writeDeviceControl(_ value: UInt8) {
        let old = control
        control = value
        if old & 0x04 == 0 && value & 0x04 != 0 {
            // SRST asserted: abandon whatever runs, both drives busy until it is released.
            cancelTransfer()
            for u in 0..<2 { taskFiles[u].status = ATAStatus.busy | ATAStatus.seekComplete; taskFiles[u].error = 0x01 }
        } else if old & 0x04 != 0 && value & 0x04 == 0 {
            for u in 0..<2 { resetDrive(u) }
            deviceRegister = 0xA0
        }
        updateLine()
    }

    // MARK: data port

    /// A data port read of `size` bytes (2, or 4 with 32-bit PIO; 1 is tolerated).
    @inline(__always)
    func readData(size: Int) -> UInt64 {
        guard phase == .dataIn, drives[unit] != nil else {
            log.report(name, "data port read with no data request")
            return mask(size)
        }
        let count = min(size, pioBlockEnd - pioPosition)
        var value: UInt64 = 0
        for i in 0..<count { value |= UInt64(buffer.bytes[pioPosition + i]) << (8 * UInt64(i)) }
        pioPosition += count
        if pioPosition >= pioBlockEnd { dataInBlockDone() }
        return value
    }

    @inline(__always)
    func writeData(size: Int, value: UInt64) {
        guard phase == .dataOut, drives[unit] != nil else {
            log.report(name, "data port write with no data request")
            return
        }
        let count = min(size, pioBlockEnd - pioPosition)
        for i in 0..<count { buffer.bytes[pioPosition + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
        pioPosition += count
        if pioPosition >= pioBlockEnd { dataOutBlockDone() }
    }

    // MARK: interrupts and status

    func setInterrupt(_ pending: Bool) {
        interruptPending = pending
        if pending { bmStatus |= 0x04 }
        updateLine()
    }

    func updateLine() {
        irq?.set(interruptPending && control & 0x02 == 0)
    }

    var status: UInt8 {
        get { taskFiles[unit].status }
        set { taskFiles[unit].status = newValue }
    }

    /// Ends a command with ABRT, as drives answer anything they cannot do.
    func abortCommand() {
        taskFiles[unit].error = ATAErrorBits.abort
        status = ATAStatus.ready | ATAStatus.error
        finishTransfer()
        setInterrupt(true)
    }

    func completeCommand(interrupt: Bool = true) {
        status = ATAStatus.idle
        finishTransfer()
        if interrupt { setInterrupt(true) }
    }

    func finishTransfer() {
        operation = .none
        phase = .idle
        usesDMA = false
        pioPosition = 0
        pioBlockEnd = 0
        bufferFill = 0
    }

    /// Drops the transfer in progress; a late backend completion is ignored, and its buffer is
    /// left to the worker (a new one is allocated on next use).
    func cancelTransfer() {
        if phase == .busy { buffer = ATATransferBuffer() }
        generation &+= 1
        finishTransfer()
        bmStatus &= ~0x01
    }

    /// The state after power-on, SRST or DEVICE RESET: the signature that tells a disk from
    /// a packet device (ATA-6 9.12).
    func resetDrive(_ u: Int) {
        var tf = ATATaskFile()
        tf.sectorCount = 1
        tf.lbaLow = 1
        tf.error = 0x01
        switch drives[u]?.kind {
        case .cdrom?:
            tf.lbaMid = 0x14
            tf.lbaHigh = 0xEB
            tf.status = 0
        case .disk?:
            tf.status = ATAStatus.idle
        case nil:
            tf.lbaMid = 0xFF
            tf.lbaHigh = 0xFF
        }
        taskFiles[u] = tf
    }

    func setPowerOnState() {
        cancelTransfer()
        control = 0
        deviceRegister = 0xA0
        interruptPending = false
        bmCommand = 0
        bmStatus = 0
        bmPRDTable = 0
        for u in 0..<2 {
            resetDrive(u)
            drives[u]?.resetSettings()
        }
        updateLine()
    }

    // MARK: commands

    func executeCommand(_ command: UInt8) {
        let selected = selectedUnit
        guard let drive = drives[selected] else { return }  // commands to an absent drive go nowhere
        let tf = taskFiles[selected]
        if tf.status & (ATAStatus.busy | ATAStatus.dataRequest) != 0 && command != 0x08 { return }
        if phase != .idle { cancelTransfer() }
        unit = selected
        setInterrupt(false)
        taskFiles[selected].error = 0
        if drive.kind == .cdrom {
            executeCDROMCommand(command, drive)
            return
        }
        switch command {
        case 0xEC: startIdentify(identifyDiskData(drive))
        case 0x20, 0x21: startRead(drive, lba48: false, dma: false, multiple: false)
        case 0x24: startRead(drive, lba48: true, dma: false, multiple: false)
        case 0xC4: startRead(drive, lba48: false, dma: false, multiple: true)
        case 0x29: startRead(drive, lba48: true, dma: false, multiple: true)
        case 0xC8, 0xC9: startRead(drive, lba48: false, dma: true, multiple: false)
        case 0x25: startRead(drive, lba48: true, dma: true, multiple: false)
        case 0x30, 0x31: startWrite(drive, lba48: false, dma: false, multiple: false)
        case 0x34: startWrite(drive, lba48: true, dma: false, multiple: false)
        case 0xC5: startWrite(drive, lba48: false, dma: false, multiple: true)
        case 0x39: startWrite(drive, lba48: true, dma: false, multiple: true)
        case 0xCA, 0xCB: startWrite(drive, lba48: false, dma: true, multiple: false)
        case 0x35: startWrite(drive, lba48: true, dma: true, multiple: false)
        case 0x40, 0x41, 0x42:  // READ VERIFY (EXT): check the range, transfer nothing
            verify(drive, lba48: command == 0x42)
        case 0xC6:  // SET MULTIPLE MODE
            let count = Int(tf.sectorCount)
            guard count <= Self.maxMultipleSectors, count & (count &- 1) == 0 else { return abortCommand() }
            drive.multipleSectors = count
            completeCommand()
        case 0xEF: setFeatures(drive, tf)
        case 0xE7, 0xEA: flush(drive)
        case 0x91:  // INITIALIZE DEVICE PARAMETERS: the CHS translation
            let sectors = Int(tf.sectorCount), heads = Int(deviceRegister & 0x0F) + 1
            guard sectors > 0 else { return abortCommand() }
            drive.chsSectors = sectors
            drive.chsHeads = heads
            completeCommand()
        case 0x10...0x1F, 0x70, 0xE0, 0xE1, 0xE2, 0xE3, 0xE6, 0x90:
            // RECALIBRATE, SEEK, STANDBY/IDLE (IMMEDIATE), SLEEP; EXECUTE DEVICE DIAGNOSTIC.
            if command == 0x90 { resetDrive(unit); taskFiles[unit].error = 0x01 }
            completeCommand()
        case 0xE5:  // CHECK POWER MODE: active
            for u in 0..<2 { taskFiles[u].sectorCount = 0xFF }
            completeCommand()
        case 0xF8, 0x27: readNativeMaxAddress(drive, lba48: command == 0x27)
        default:
            abortCommand()
        }
    }

    private func executeCDROMCommand(_ command: UInt8, _ drive: ATADrive) {
        switch command {
        case 0xA1: startIdentify(identifyPacketData(drive))
        case 0xA0: startPacketCommand(drive)
        case 0x08:  // DEVICE RESET: the signature again, no interrupt
            cancelTransfer()
            resetDrive(unit)
        case 0xEF:
            setFeatures(drive, taskFiles[unit])
        case 0xE5:
            for u in 0..<2 { taskFiles[u].sectorCount = 0xFF }
            completeCommand()
        case 0xE0, 0xE1, 0xE2, 0xE3, 0xE6, 0x00:
            command == 0x00 ? abortCommand() : completeCommand()
        case 0x90:
            resetDrive(unit)
            setInterrupt(true)
        default:
            // IDENTIFY DEVICE and the read/write commands: a packet device answers with its
            // signature and ABRT, which is how drivers find out what it is.
            let keepStatus = taskFiles[unit].status
            resetDrive(unit)
            taskFiles[unit].status = keepStatus
            abortCommand()
        }
    }

    private func startIdentify(_ words: [UInt16]) {
        buffer.allocateIfNeeded()
        for (i, word) in words.enumerated() {
            buffer.bytes[2 * i] = UInt8(word & 0xFF)
            buffer.bytes[2 * i + 1] = UInt8(word >> 8)
        }
        operation = .identify
        bufferFill = 512
        sectorsLeft = 0
        blockBytes = 512
        startDataIn(length: 512)
    }

    /// The LBA and count a read/write command names, or nil for a bad CHS address.
    func addressedRange(_ drive: ATADrive, lba48: Bool) -> (lba: UInt64, count: Int)? {
        let tf = taskFiles[unit]
        let count: Int
        let lba: UInt64
        if lba48 {
            let n = Int(tf.hobSectorCount) << 8 | Int(tf.sectorCount)
            count = n == 0 ? 65536 : n
            lba = UInt64(tf.hobLBAHigh) << 40 | UInt64(tf.hobLBAMid) << 32 | UInt64(tf.hobLBALow) << 24
                | UInt64(tf.lbaHigh) << 16 | UInt64(tf.lbaMid) << 8 | UInt64(tf.lbaLow)
        } else {
            count = tf.sectorCount == 0 ? 256 : Int(tf.sectorCount)
            if deviceRegister & 0x40 != 0 {
                lba = UInt64(deviceRegister & 0x0F) << 24 | UInt64(tf.lbaHigh) << 16 | UInt64(tf.lbaMid) << 8
                    | UInt64(tf.lbaLow)
            } else {
                let cylinder = Int(tf.lbaHigh) << 8 | Int(tf.lbaMid)
                let head = Int(deviceRegister & 0x0F), sector = Int(tf.lbaLow)
                guard sector >= 1, sector <= drive.chsSectors, head < drive.chsHeads else { return nil }
                lba = UInt64((cylinder * drive.chsHeads + head) * drive.chsSectors + sector - 1)
            }
        }
        return (lba, count)
    }

    /// The range must lie inside the medium; anything else is ABRT before any I/O.
    private func checkedRange(_ drive: ATADrive, lba48: Bool) -> (lba: UInt64, count: Int)? {
        guard drive.accessibleMedium != nil, let (lba, count) = addressedRange(drive, lba48: lba48) else { return nil }
        let total = drive.sectorCount
        guard lba <= total, UInt64(count) <= total - lba else {
            log.report(name, "sectors \(lba)+\(count) outside the disk (\(total) sectors)")
            return nil
        }
        return (lba, count)
    }

    private func pioBlockSectors(_ drive: ATADrive, multiple: Bool) -> Int? {
        guard multiple else { return 1 }
        return drive.multipleSectors == 0 ? nil : drive.multipleSectors
    }

    private func startRead(_ drive: ATADrive, lba48: Bool, dma: Bool, multiple: Bool) {
        guard let (start, count) = checkedRange(drive, lba48: lba48),
              let blockSectors = pioBlockSectors(drive, multiple: multiple) else { return abortCommand() }
        operation = .ataRead
        lba = start
        sectorsLeft = count
        sectorSize = 512
        usesDMA = dma
        blockBytes = blockSectors * 512
        drive.stats.readOperations += 1
        if dma { waitForDMA() } else { fetch() }
    }

    private func startWrite(_ drive: ATADrive, lba48: Bool, dma: Bool, multiple: Bool) {
        guard let (start, count) = checkedRange(drive, lba48: lba48),
              let blockSectors = pioBlockSectors(drive, multiple: multiple) else { return abortCommand() }
        guard drive.medium?.isReadOnly == false else { return abortCommand() }
        operation = .ataWrite
        lba = start
        sectorsLeft = count
        sectorSize = 512
        usesDMA = dma
        blockBytes = blockSectors * 512
        drive.stats.writeOperations += 1
        buffer.allocateIfNeeded()
        bufferFill = 0
        if dma {
            waitForDMA()
        } else {
            // The first block is requested at once, without an interrupt.
            startDataOut(length: min(blockBytes, sectorsLeft * 512), interrupt: false)
        }
    }

    private func verify(_ drive: ATADrive, lba48: Bool) {
        guard checkedRange(drive, lba48: lba48) != nil else { return abortCommand() }
        completeCommand()
    }

    private func readNativeMaxAddress(_ drive: ATADrive, lba48: Bool) {
        guard drive.accessibleMedium != nil else { return abortCommand() }
        let last = drive.sectorCount == 0 ? 0 : drive.sectorCount - 1
        setTaskFileLBA(last, lba48: lba48)
        completeCommand()
    }

    func setTaskFileLBA(_ value: UInt64, lba48: Bool) {
        for u in 0..<2 {
            taskFiles[u].lbaLow = UInt8(truncatingIfNeeded: value)
            taskFiles[u].lbaMid = UInt8(truncatingIfNeeded: value >> 8)
            taskFiles[u].lbaHigh = UInt8(truncatingIfNeeded: value >> 16)
            if lba48 {
                taskFiles[u].hobLBALow = UInt8(truncatingIfNeeded: value >> 24)
                taskFiles[u].hobLBAMid = UInt8(truncatingIfNeeded: value >> 32)
                taskFiles[u].hobLBAHigh = UInt8(truncatingIfNeeded: value >> 40)
            }
        }
        if !lba48 { deviceRegister = (deviceRegister & 0xF0) | UInt8(truncatingIfNeeded: (value >> 24) & 0x0F) }
    }

    private func setFeatures(_ drive: ATADrive, _ tf: ATATaskFile) {
        switch tf.feature {
        case 0x02: drive.writeCacheEnabled = true
        case 0x82: drive.writeCacheEnabled = false
        case 0x03:
            let mode = tf.sectorCount
            switch mode >> 3 {
            case 0, 1: drive.transferMode = mode   // PIO default / PIO flow control modes
            case 4: guard mode & 7 <= 2 else { return abortCommand() }; drive.transferMode = mode
            case 8: guard mode & 7 <= 5 else { return abortCommand() }; drive.transferMode = mode
            default: return abortCommand()
            }
        case 0xAA, 0x55, 0xCC, 0x66, 0x42, 0xC2, 0x31, 0x95, 0x05, 0x85:
            break  // look-ahead, reverting defaults, AAM, APM, media status: accepted, nothing to change
        default:
            return abortCommand()
        }
        completeCommand()
    }

    private func flush(_ drive: ATADrive) {
        guard let medium = drive.accessibleMedium else { return completeCommand() }
        drive.stats.flushOperations += 1
        phase = .busy
        status = ATAStatus.busy | ATAStatus.seekComplete
        let generation = generation
        let start = monotonicNanoseconds()
        medium.submit(.flush) { [weak self] result in
            let elapsed = monotonicNanoseconds() &- start
            self?.poster.post { [weak self] in
                guard let self, self.generation == generation, let drive = self.drives[self.unit] else { return }
                drive.stats.flushTotalNanoseconds &+= elapsed
                if case .failure(let error) = result {
                    drive.stats.failedFlushOperations += 1
                    self.log.report(self.name, "flush failed: \(error)")
                    self.abortCommand()
                } else {
                    self.completeCommand()
                }
            }
        }
    }

    // MARK: PIO engine

    /// Presents `length` bytes of the buffer from `pioPosition` to the guest.
    func startDataIn(length: Int) {
        phase = .dataIn
        pioBlockEnd = pioPosition + length
        if operation == .atapiRead || operation == .atapiReply {
            setATAPIByteCount(length)
            setInterruptReason(io: true, commandOrData: false)
        }
        status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        setInterrupt(true)
    }

    func startDataOut(length: Int, interrupt: Bool) {
        phase = .dataOut
        pioBlockEnd = pioPosition + length
        status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        if interrupt { setInterrupt(true) }
    }

    func dataInBlockDone() {
        if operation == .identify { return completeCommand(interrupt: false) }
        if pioPosition < bufferFill {
            startDataIn(length: min(blockBytes, bufferFill - pioPosition))
        } else if sectorsLeft > 0 {
            fetch()
        } else if operation == .atapiRead || operation == .atapiReply {
            atapiCommandComplete()
        } else {
            // The last block of a PIO read raises no interrupt of its own.
            completeCommand(interrupt: false)
        }
    }

    func dataOutBlockDone() {
        if operation == .atapiPacket {
            phase = .idle
            return executePacket()
        }
        guard operation == .ataWrite else { return }
        sectorsLeft -= (pioPosition - bufferFill) / 512
        bufferFill = pioPosition
        let next = min(blockBytes, sectorsLeft * 512)
        if sectorsLeft > 0 && bufferFill + next <= ATATransferBuffer.capacity {
            startDataOut(length: next, interrupt: true)
        } else {
            store()
        }
    }

    // MARK: backend requests

    /// Reads the next chunk into the buffer, then hands it to PIO or DMA.
    func fetch() {
        guard let drive = drives[unit], let medium = drive.accessibleMedium else { return failIO("no medium") }
        buffer.allocateIfNeeded()
        let count = min(sectorsLeft, ATATransferBuffer.capacity / sectorSize)
        let bytes = count * sectorSize
        let offset = lba &* UInt64(sectorSize)
        phase = .busy
        status = ATAStatus.busy | ATAStatus.seekComplete
        let generation = generation, buffer = buffer
        let start = monotonicNanoseconds()
        medium.submitWork { [weak self] in
            let failure = buffer.read(from: medium, at: offset, count: bytes)
            let elapsed = monotonicNanoseconds() &- start
            self?.poster.post { [weak self] in
                guard let self, self.generation == generation else { return }
                self.fetched(count: count, failure: failure, elapsed: elapsed)
            }
        }
    }

    private func fetched(count: Int, failure: BlockError?, elapsed: UInt64) {
        guard let drive = drives[unit] else { return }
        drive.stats.readTotalNanoseconds &+= elapsed
        if let failure {
            drive.stats.failedReadOperations += 1
            return failIO("read at sector \(lba) failed: \(failure)")
        }
        drive.stats.readBytes &+= UInt64(count * sectorSize)
        lba += UInt64(count)
        sectorsLeft -= count
        bufferFill = count * sectorSize
        pioPosition = 0
        if usesDMA {
            guard scatterToGuest(from: 0, count: bufferFill) else { return dmaFailed() }
            if sectorsLeft > 0 { fetch() } else { dmaDone() }
        } else {
            if operation == .ataRead { setTaskFileLBA(lba &- 1, lba48: true) }
            startDataIn(length: min(blockBytes, bufferFill))
        }
    }

    /// Writes buffer[0..<bufferFill] at `lba`.
    func store() {
        guard let drive = drives[unit], let medium = drive.accessibleMedium else { return failIO("no medium") }
        let bytes = bufferFill
        let offset = lba &* UInt64(sectorSize)
        phase = .busy
        status = ATAStatus.busy | ATAStatus.seekComplete
        let generation = generation, buffer = buffer
        let start = monotonicNanoseconds()
        // With the write cache turned off (SET FEATURES 0x82) a write completes only once stable.
        let writeThrough = !drive.writeCacheEnabled
        medium.submitWork { [weak self] in
            var failure = buffer.write(to: medium, at: offset, count: bytes)
            if failure == nil && writeThrough {
                do throws(BlockError) { try medium.flush() } catch { failure = error }
            }
            let outcome = failure
            let elapsed = monotonicNanoseconds() &- start
            self?.poster.post { [weak self] in
                guard let self, self.generation == generation else { return }
                self.stored(bytes: bytes, failure: outcome, elapsed: elapsed)
            }
        }
    }

    private func stored(bytes: Int, failure: BlockError?, elapsed: UInt64) {
        guard let drive = drives[unit] else { return }
        drive.stats.writeTotalNanoseconds &+= elapsed
        if let failure {
            drive.stats.failedWriteOperations += 1
            return failIO("write at sector \(lba) failed: \(failure)")
        }
        drive.stats.writtenBytes &+= UInt64(bytes)
        lba += UInt64(bytes / sectorSize)
        bufferFill = 0
        pioPosition = 0
        if usesDMA {
            if sectorsLeft > 0 { gatherAndStore() } else { dmaDone() }
        } else if sectorsLeft > 0 {
            startDataOut(length: min(blockBytes, sectorsLeft * 512), interrupt: true)
        } else {
            setTaskFileLBA(lba &- 1, lba48: true)
            completeCommand()
        }
    }

    private func failIO(_ why: String) {
        log.report(name, why)
        if usesDMA { bmStatus = (bmStatus | 0x02) & ~0x01 }
        if operation == .atapiRead || operation == .atapiReply {
            return atapiCheckCondition(senseKey: 0x03, asc: 0x11)  // MEDIUM ERROR, unrecovered read error
        }
        abortCommand()
    }

    // MARK: bus-master DMA

    func waitForDMA() {
        phase = .dmaWait
        status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        if dmaSource != nil || bmCommand & 0x01 != 0 { runDMA() }
    }

    /// Starts the transfer the command set up, once the bus master is running.
    func runDMA() {
        guard phase == .dmaWait else { return }
        status = ATAStatus.busy | ATAStatus.seekComplete
        switch operation {
        case .ataRead, .atapiRead: fetch()
        case .ataWrite: gatherAndStore()
        case .atapiReply:
            guard scatterToGuest(from: 0, count: bufferFill) else { return dmaFailed() }
            dmaDone()
        default: dmaFailed()
        }
    }

    private func gatherAndStore() {
        let count = min(sectorsLeft, ATATransferBuffer.capacity / sectorSize)
        guard gatherFromGuest(into: 0, count: count * sectorSize) else { return dmaFailed() }
        sectorsLeft -= count
        bufferFill = count * sectorSize
        store()
    }

    func bmStart() {
        restartScatterGather()
        prdNext = UInt64(bmPRDTable)
        bmStatus |= 0x01
        if phase == .dmaWait { runDMA() }
    }

    func bmStop() {
        // Stopping the engine mid-transfer abandons the command (the guest is recovering).
        if usesDMA && phase != .idle {
            log.report(name, "bus master stopped during a DMA transfer")
            cancelTransfer()
            status = ATAStatus.idle
        }
        bmStatus &= ~0x01
    }

    /// Forgets the segment cursor: the next transfer starts at the list's first entry.
    func restartScatterGather() {
        prdEntries = 0
        prdSegmentLeft = 0
        prdEndOfTable = false
    }

    /// The next PRD segment, or false when the table ended, is unreadable or runs too long.
    private func nextSegment() -> Bool {
        if let dmaSource {
            guard let segment = dmaSource.nextDMASegment() else { return false }
            prdSegmentAddress = segment.address
            prdSegmentLeft = segment.length
            return true
        }
        guard !prdEndOfTable, prdEntries < Self.maxPRDEntries else { return false }
        let address: UInt32, control: UInt32
        do {
            address = try memory.read(UInt32.self, at: prdNext)
            control = try memory.read(UInt32.self, at: prdNext &+ 4)
        } catch {
            log.report(name, "PRD table at \(hex(prdNext)) unreadable: \(error)")
            return false
        }
        prdNext &+= 8
        prdEntries += 1
        prdSegmentAddress = UInt64(address & ~1)
        let count = Int(control & 0xFFFE)
        prdSegmentLeft = count == 0 ? 0x10000 : count
        prdEndOfTable = control & 0x8000_0000 != 0
        return true
    }

    /// Copies buffer[start..<start + count] into the PRD segments.
    func scatterToGuest(from start: Int, count: Int) -> Bool {
        var done = start
        while done < start + count {
            if prdSegmentLeft == 0 {
                guard nextSegment() else {
                    log.report(name, "PRD table too short or invalid for the transfer")
                    return false
                }
            }
            let n = min(prdSegmentLeft, start + count - done)
            do {
                try memory.write(at: prdSegmentAddress, bytes: buffer.bytes[done..<done + n])
            } catch {
                log.report(name, "DMA write to \(error)")
                return false
            }
            done += n
            prdSegmentAddress &+= UInt64(n)
            prdSegmentLeft -= n
        }
        return true
    }

    /// Fills buffer[start..<start + count] from the PRD segments.
    func gatherFromGuest(into start: Int, count: Int) -> Bool {
        buffer.allocateIfNeeded()
        var done = start
        while done < start + count {
            if prdSegmentLeft == 0 {
                guard nextSegment() else {
                    log.report(name, "PRD table too short or invalid for the transfer")
                    return false
                }
            }
            let n = min(prdSegmentLeft, start + count - done)
            do {
                try memory.read(at: prdSegmentAddress, into: &buffer.bytes, offset: done, count: n)
            } catch {
                log.report(name, "DMA read from \(error)")
                return false
            }
            done += n
            prdSegmentAddress &+= UInt64(n)
            prdSegmentLeft -= n
        }
        return true
    }

    private func dmaDone() {
        bmStatus &= ~0x01
        if operation == .atapiRead || operation == .atapiReply {
            atapiCommandComplete()
        } else {
            setTaskFileLBA(lba &- 1, lba48: true)
            completeCommand()
        }
    }

    /// The data could not reach (or come from) guest memory: ABRT, or CHECK CONDITION for ATAPI.
    func dmaFailed() {
        bmStatus = (bmStatus | 0x02) & ~0x01
        if operation == .atapiRead || operation == .atapiReply {
            atapiCheckCondition(senseKey: 0x05, asc: 0x24)  // ILLEGAL REQUEST, invalid field
        } else {
            abortCommand()
        }
    }

    // MARK: bus-master registers (BAR4, 8 bytes per channel)

    func readBusMaster(offset: Int) -> UInt8 {
        switch offset {
        case 0: return bmCommand
        case 2:
            // Bits 5/6: "drive can DMA", set by the BIOS; bit 7 (simplex) stays clear.
            return bmStatus
        case 4...7: return UInt8(truncatingIfNeeded: bmPRDTable >> (8 * UInt32(offset - 4)))
        default: return 0
        }
    }

    func writeBusMaster(offset: Int, _ value: UInt8) {
        switch offset {
        case 0:
            let old = bmCommand
            bmCommand = value & 0x09
            if old & 0x01 == 0 && value & 0x01 != 0 { bmStart() }
            if old & 0x01 != 0 && value & 0x01 == 0 { bmStop() }
        case 2:
            bmStatus = (bmStatus & 0x01) | (bmStatus & 0x06 & ~value) | (value & 0x60)
        case 4...7:
            let shift = 8 * UInt32(offset - 4)
            bmPRDTable = (bmPRDTable & ~(0xFF << shift)) | (UInt32(value) << shift)
            bmPRDTable &= ~3
        default:
            break
        }
    }
}

// MARK: state

extension ATAChannel {
    func saveState(to w: inout StateWriter) {
        for tf in taskFiles { w.put(bytes: tf.fields) }
        w.put(deviceRegister)
        w.put(control)
        w.put(interruptPending)
        w.put(bmCommand)
        w.put(bmStatus)
        w.put(bmPRDTable)
        w.put(prdNext)
        w.put(UInt32(prdEntries))
        w.put(prdSegmentAddress)
        w.put(UInt32(prdSegmentLeft))
        w.put(prdEndOfTable)
        w.put(operation.rawValue)
        w.put(phase.rawValue)
        w.put(UInt8(unit))
        w.put(lba)
        w.put(UInt32(sectorsLeft))
        w.put(UInt32(sectorSize))
        w.put(usesDMA)
        w.put(UInt32(blockBytes))
        w.put(UInt32(pioPosition))
        w.put(UInt32(pioBlockEnd))
        w.put(UInt32(bufferFill))
        let used = max(pioBlockEnd, bufferFill)
        w.put(bytes: phase == .busy || buffer.bytes.isEmpty ? [] : Array(buffer.bytes[0..<used]))
        for drive in drives {
            w.put(drive != nil)
            drive?.saveState(to: &w)
        }
    }

    func loadState(from r: inout StateReader, section: String) throws(StateError) {
        func invalid(_ field: String) -> StateError { .invalidValue(section: section, field: field) }
        var files: [ATATaskFile] = []
        for _ in 0..<2 { files.append(ATATaskFile(fields: try r.getBytes(exactly: ATATaskFile.fieldCount))) }
        let device = try r.get(UInt8.self), ctrl = try r.get(UInt8.self), pending = try r.get(Bool.self)
        let command = try r.get(UInt8.self), bmStat = try r.get(UInt8.self), table = try r.get(UInt32.self)
        let next = try r.get(UInt64.self), entries = Int(try r.get(UInt32.self))
        let segment = try r.get(UInt64.self), segmentLeft = Int(try r.get(UInt32.self)), eot = try r.get(Bool.self)
        guard let op = Operation(rawValue: try r.get(UInt8.self)) else { throw invalid("operation") }
        guard var ph = Phase(rawValue: try r.get(UInt8.self)) else { throw invalid("phase") }
        let u = Int(try r.get(UInt8.self))
        let lbaValue = try r.get(UInt64.self)
        let left = Int(try r.get(UInt32.self)), size = Int(try r.get(UInt32.self))
        let dma = try r.get(Bool.self)
        let block = Int(try r.get(UInt32.self)), position = Int(try r.get(UInt32.self))
        let end = Int(try r.get(UInt32.self)), fill = Int(try r.get(UInt32.self))
        let data = try r.getBytes(maxCount: ATATransferBuffer.capacity)
        let cap = ATATransferBuffer.capacity
        guard u < 2, size == 512 || size == 2048, entries <= Self.maxPRDEntries, segmentLeft <= 0x10000,
              (2...cap).contains(block) || ph == .idle, position <= end, end <= cap, fill <= cap,
              data.count >= max(end, fill) || ph == .busy || ph == .idle, left <= 65536 * 4 else {
            throw invalid("transfer state")
        }
        guard (ph == .idle) == (op == .none) || ph == .busy else { throw invalid("phase") }
        if ph != .idle && drives[u] == nil { throw invalid("active drive") }
        for (i, drive) in drives.enumerated() {
            guard try r.get(Bool.self) == (drive != nil) else { throw invalid("drive \(i) presence") }
            try drive?.loadState(from: &r, section: section)
        }
        cancelTransfer()
        taskFiles = files
        deviceRegister = device
        control = ctrl
        interruptPending = pending
        bmCommand = command & 0x09
        bmStatus = bmStat & 0x67
        bmPRDTable = table & ~3
        prdNext = next
        prdEntries = entries
        prdSegmentAddress = segment
        prdSegmentLeft = segmentLeft
        prdEndOfTable = eot
        operation = op
        unit = u
        lba = lbaValue
        sectorsLeft = left
        sectorSize = size
        usesDMA = dma
        blockBytes = block
        pioPosition = position
        pioBlockEnd = end
        bufferFill = fill
        if !data.isEmpty {
            buffer.allocateIfNeeded()
            for (i, b) in data.enumerated() { buffer.bytes[i] = b }
        }
        if ph == .busy {
            // A backend request was in flight when the state was saved; it cannot be resumed
            // here, so the command fails and the guest's driver retries it.
            ph = .idle
            phase = .idle
            if op == .atapiRead || op == .atapiReply { atapiCheckCondition(senseKey: SCSISense.mediumError, asc: 0x11) }
            else { abortCommand() }
        }
        phase = ph
        updateLine()
    }
}
