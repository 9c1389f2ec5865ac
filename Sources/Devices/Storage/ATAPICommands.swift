import Backends
import DMCore

/// SCSI sense keys and additional sense codes the CD-ROM reports (SPC-3, MMC-5).
enum SCSISense {
    static let notReady: UInt8 = 0x02
    static let mediumError: UInt8 = 0x03
    static let illegalRequest: UInt8 = 0x05
    static let unitAttention: UInt8 = 0x06
    static let invalidOpcode: UInt8 = 0x20
    static let lbaOutOfRange: UInt8 = 0x21
    static let invalidField: UInt8 = 0x24
    static let mediumMayHaveChanged: UInt8 = 0x28
    static let savingNotSupported: UInt8 = 0x39
    static let mediumNotPresent: UInt8 = 0x3A
    static let removalPrevented: UInt8 = 0x53
}

/// The ATAPI half of the channel: the PACKET protocol (ATA-6 section 9.10) and the MMC
/// commands SeaBIOS, GRUB and Linux use on a CD-ROM.
extension ATAChannel {
    static let cdSectorSize = 2048
    /// A CD holds at most this many 2048-byte blocks; more is reported as a DVD.
    static let cdMaxBlocks: UInt64 = 359_849

    func setATAPIByteCount(_ count: Int) {
        taskFiles[unit].lbaMid = UInt8(truncatingIfNeeded: count)
        taskFiles[unit].lbaHigh = UInt8(truncatingIfNeeded: count >> 8)
    }

    /// The interrupt reason lives in the sector count register: bit 0 C/D, bit 1 I/O.
    func setInterruptReason(io: Bool, commandOrData: Bool) {
        taskFiles[unit].sectorCount = (io ? 2 : 0) | (commandOrData ? 1 : 0)
    }

    /// PACKET: DMA or PIO for the data phase, the byte count limit for PIO, then the 12-byte
    /// command through the data port (no interrupt before it, as the drive reports DRQ fast).
    func startPacketCommand(_ drive: ATADrive) {
        let tf = taskFiles[unit]
        usesDMA = tf.feature & 0x01 != 0
        var limit = Int(tf.lbaHigh) << 8 | Int(tf.lbaMid)
        if limit == 0 || limit == 0xFFFF { limit = 0xFFFE }
        blockBytes = max(limit & ~1, 2)
        buffer.allocateIfNeeded()
        operation = .atapiPacket
        pioPosition = 0
        bufferFill = 0
        sectorsLeft = 0
        setInterruptReason(io: false, commandOrData: true)
        startDataOut(length: 12, interrupt: false)
    }

    func atapiCommandComplete() {
        status = ATAStatus.ready | ATAStatus.seekComplete
        setInterruptReason(io: true, commandOrData: true)
        finishTransfer()
        setInterrupt(true)
    }

    func atapiCheckCondition(senseKey: UInt8, asc: UInt8, ascq: UInt8 = 0) {
        if let drive = drives[unit] {
            drive.senseKey = senseKey
            drive.additionalSense = asc
            drive.additionalSenseQualifier = ascq
        }
        taskFiles[unit].error = senseKey << 4 | ATAErrorBits.abort
        status = ATAStatus.ready | ATAStatus.error
        setInterruptReason(io: true, commandOrData: true)
        finishTransfer()
        bmStatus &= ~0x01
        setInterrupt(true)
    }

    private func notReady(_ drive: ATADrive) {
        atapiCheckCondition(senseKey: SCSISense.notReady, asc: SCSISense.mediumNotPresent,
                            ascq: drive.trayOpen ? 0x02 : 0x01)
    }

    /// Sends `data` (cut to `allocation` bytes) to the guest by PIO or DMA.
    private func reply(_ data: [UInt8], allocation: Int) {
        let count = min(data.count, allocation, ATATransferBuffer.capacity)
        guard count > 0 else { return atapiCommandComplete() }
        for i in 0..<count { buffer.bytes[i] = data[i] }
        operation = .atapiReply
        bufferFill = count
        pioPosition = 0
        sectorsLeft = 0
        if usesDMA { waitForDMA() } else { startDataIn(length: min(blockBytes, count)) }
    }

    private static func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
    private static func be32(_ v: UInt64) -> [UInt8] {
        [UInt8(truncatingIfNeeded: v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8),
         UInt8(truncatingIfNeeded: v)]
    }
    private func packetBE16(_ at: Int) -> Int { Int(buffer.bytes[at]) << 8 | Int(buffer.bytes[at + 1]) }
    private func packetBE32(_ at: Int) -> UInt64 { UInt64(packetBE16(at)) << 16 | UInt64(packetBE16(at + 2)) }

    /// Logical block to minutes/seconds/frames (with the 2-second lead-in).
    private static func msf(_ lba: UInt64) -> [UInt8] {
        let x = lba + 150
        return [UInt8(truncatingIfNeeded: x / 4500), UInt8((x / 75) % 60), UInt8(x % 75)]
    }

    /// Runs the packet now in buffer[0..<12].
    func executePacket() {
        guard let drive = drives[unit] else { return }
        let opcode = buffer.bytes[0]
        // Commands that report (or are unaffected by) a pending unit attention.
        let allowsAttention = opcode == 0x12 || opcode == 0x03 || opcode == 0x46 || opcode == 0x4A
        if drive.mediaChangeStage != 0 && !allowsAttention && drive.accessibleMedium != nil {
            // After a media change, report "no medium" once and then "medium may have changed",
            // so guests that poll with TEST UNIT READY see both the removal and the insertion.
            if drive.mediaChangeStage == 1 {
                drive.mediaChangeStage = 2
                return atapiCheckCondition(senseKey: SCSISense.notReady, asc: SCSISense.mediumNotPresent)
            }
            drive.mediaChangeStage = 0
            return atapiCheckCondition(senseKey: SCSISense.unitAttention, asc: SCSISense.mediumMayHaveChanged)
        }
        switch opcode {
        case 0x00:  // TEST UNIT READY
            drive.accessibleMedium == nil ? notReady(drive) : atapiCommandComplete()
        case 0x03:  // REQUEST SENSE
            var sense = [UInt8](repeating: 0, count: 18)
            sense[0] = 0x70
            sense[2] = drive.senseKey
            sense[7] = 10
            sense[12] = drive.additionalSense
            sense[13] = drive.additionalSenseQualifier
            drive.senseKey = 0
            drive.additionalSense = 0
            drive.additionalSenseQualifier = 0
            reply(sense, allocation: Int(buffer.bytes[4]))
        case 0x12:  // INQUIRY
            guard buffer.bytes[1] & 0x01 == 0 else {
                return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
            }
            var data: [UInt8] = [0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0]
            data += Array("QEMU    ".utf8) + Array("QEMU DVD-ROM    ".utf8) + Array("2.5+".utf8)
            reply(data, allocation: packetBE16(3))
        case 0x25:  // READ CAPACITY
            guard drive.accessibleMedium != nil else { return notReady(drive) }
            let blocks = drive.sectorCount
            reply(Self.be32(blocks == 0 ? 0 : blocks - 1) + Self.be32(UInt64(Self.cdSectorSize)), allocation: 8)
        case 0x28, 0xA8:  // READ (10), READ (12)
            let start = packetBE32(2)
            let count = opcode == 0x28 ? UInt64(packetBE16(7)) : packetBE32(6)
            startCDRead(drive, lba: start, count: count)
        case 0x43: readTOC(drive)
        case 0x46: getConfiguration(drive)
        case 0x1A, 0x5A: modeSense(drive, ten: opcode == 0x5A)
        case 0x4A: getEventStatus(drive)
        case 0x1B:  // START STOP UNIT
            let loadEject = buffer.bytes[4] & 0x02 != 0, start = buffer.bytes[4] & 0x01 != 0
            if loadEject {
                if start {
                    drive.closeTray(mediaChanged: false)
                } else {
                    guard !drive.locked else {
                        return atapiCheckCondition(senseKey: SCSISense.notReady, asc: SCSISense.removalPrevented, ascq: 0x02)
                    }
                    drive.openTray()
                }
            }
            atapiCommandComplete()
        case 0x1E:  // PREVENT ALLOW MEDIUM REMOVAL
            drive.locked = buffer.bytes[4] & 0x01 != 0
            atapiCommandComplete()
        case 0xBD:  // MECHANISM STATUS
            var data = [UInt8](repeating: 0, count: 8)
            data[1] = drive.trayOpen ? 0x10 : 0
            reply(data, allocation: packetBE16(8))
        case 0x51:  // READ DISC INFORMATION: one closed session with one data track
            guard drive.accessibleMedium != nil else { return notReady(drive) }
            guard buffer.bytes[1] & 0x07 == 0 else {
                return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
            }
            var info = [UInt8](repeating: 0, count: 34)
            info[1] = 32
            info[2] = 0x0E  // last session complete, disc complete
            info[3] = 1; info[4] = 1; info[5] = 1; info[6] = 1
            info[7] = 0x20  // unrestricted use
            reply(info, allocation: packetBE16(7))
        case 0x2B, 0xBB:  // SEEK, SET CD SPEED
            atapiCommandComplete()
        default:
            atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidOpcode)
        }
    }

    private func startCDRead(_ drive: ATADrive, lba start: UInt64, count: UInt64) {
        guard drive.accessibleMedium != nil else { return notReady(drive) }
        let total = drive.sectorCount
        guard start <= total, count <= total - start else {
            log.report(name, "CD read of blocks \(start)+\(count) outside the medium (\(total) blocks)")
            return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.lbaOutOfRange)
        }
        guard count > 0 else { return atapiCommandComplete() }
        operation = .atapiRead
        lba = start
        sectorsLeft = Int(count)
        sectorSize = Self.cdSectorSize
        drive.stats.readOperations += 1
        if usesDMA { waitForDMA() } else { fetch() }
    }

    private func readTOC(_ drive: ATADrive) {
        guard drive.accessibleMedium != nil else { return notReady(drive) }
        let useMSF = buffer.bytes[1] & 0x02 != 0
        var format = buffer.bytes[2] & 0x0F
        if format == 0 { format = buffer.bytes[9] >> 6 }  // the older (SFF-8020) place for it
        let startTrack = buffer.bytes[6]
        let allocation = packetBE16(7)
        let total = drive.sectorCount
        func address(_ lba: UInt64) -> [UInt8] { useMSF ? [0] + Self.msf(lba) : Self.be32(lba) }
        var data: [UInt8]
        switch format {
        case 0:
            guard startTrack <= 1 || startTrack == 0xAA else {
                return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
            }
            data = [0, 0, 1, 1]
            if startTrack <= 1 { data += [0, 0x14, 1, 0] + address(0) }
            data += [0, 0x16, 0xAA, 0] + address(total)
        case 1:  // multi-session: one session starting at track 1, block 0
            data = [0, 0, 1, 1, 0, 0x14, 1, 0] + address(0)
        case 2:  // raw TOC: points A0 (first track), A1 (last track), A2 (lead-out) and track 1
            data = [0, 0, 1, 1]
            let points: [(UInt8, [UInt8])] = [(0xA0, [1, 0, 0]), (0xA1, [1, 0, 0]), (0xA2, Self.msf(total)), (1, Self.msf(0))]
            for (point, p) in points { data += [1, 0x14, 0, point, 0, 0, 0, 0] + p }
        default:
            return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
        }
        let length = data.count - 2
        data[0] = UInt8(length >> 8)
        data[1] = UInt8(length & 0xFF)
        reply(data, allocation: allocation)
    }

    private func getConfiguration(_ drive: ATADrive) {
        let blocks = drive.sectorCount
        let isDVD = drive.accessibleMedium != nil && blocks > Self.cdMaxBlocks
        let isCD = drive.accessibleMedium != nil && !isDVD
        let profile = isDVD ? 0x10 : isCD ? 0x08 : 0
        var data: [UInt8] = [0, 0, 0, 0, 0, 0] + Self.be16(profile)
        data += [0, 0, 0x03, 8, 0x00, 0x10, isDVD ? 1 : 0, 0, 0x00, 0x08, isCD ? 1 : 0, 0]  // profile list
        data += [0, 1, 0x0B, 8, 0, 0, 0, 2, 1, 0, 0, 0]  // core: ATAPI, DBE
        data += [0, 3, 0x03, 4, 0x29, 0, 0, 0]  // removable medium: tray, eject, lock
        let length = data.count - 4
        data[2] = UInt8(length >> 8)
        data[3] = UInt8(length & 0xFF)
        reply(data, allocation: packetBE16(7))
    }

    private func modeSense(_ drive: ATADrive, ten: Bool) {
        let page = buffer.bytes[2] & 0x3F, control = buffer.bytes[2] >> 6
        let allocation = ten ? packetBE16(7) : Int(buffer.bytes[4])
        guard control != 3 else {
            return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.savingNotSupported)
        }
        let errorRecovery: [UInt8] = [0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0]
        var capabilities: [UInt8] = [0x2A, 0x14, 0x3B, 0x00, 0x71, 0x60, 0x29 | (drive.locked ? 0x02 : 0), 0x00]
        capabilities += Self.be16(706) + Self.be16(2) + Self.be16(512) + Self.be16(706)
        capabilities += [UInt8](repeating: 0, count: 22 - capabilities.count)
        var pages: [UInt8]
        switch page {
        case 0x01: pages = errorRecovery
        case 0x2A: pages = capabilities
        case 0x3F: pages = errorRecovery + capabilities
        default:
            return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
        }
        let mediumType: UInt8 = drive.accessibleMedium == nil ? 0x70 : 0x01
        var data: [UInt8]
        if ten {
            data = Self.be16(pages.count + 6) + [mediumType, 0, 0, 0, 0, 0] + pages
        } else {
            data = [UInt8(truncatingIfNeeded: pages.count + 3), mediumType, 0, 0] + pages
        }
        reply(data, allocation: allocation)
    }

    private func getEventStatus(_ drive: ATADrive) {
        guard buffer.bytes[1] & 0x01 != 0 else {  // only polled operation is supported
            return atapiCheckCondition(senseKey: SCSISense.illegalRequest, asc: SCSISense.invalidField)
        }
        let classes = buffer.bytes[4]
        var data: [UInt8] = [0, 0, 0, 0x10]  // supports the media class
        if classes & 0x10 != 0 {
            data[2] = 4
            let mediaStatus: UInt8 = (drive.trayOpen ? 1 : 0) | (drive.medium != nil ? 2 : 0)
            data += [drive.pendingMediaEvent, mediaStatus, 0, 0]
            drive.pendingMediaEvent = 0
        } else {
            data[2] = 0x80  // no event available
        }
        data[1] = UInt8(data.count - 2)
        reply(data, allocation: packetBE16(7))
    }
}
