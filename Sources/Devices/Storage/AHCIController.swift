import Backends
import DMCore

/// Port interrupt status bits (AHCI 1.3.1 section 3.3.5).
enum AHCIPortInterrupt {
    static let d2hRegisterFIS: UInt32 = 1 << 0
    static let pioSetupFIS: UInt32 = 1 << 1
    static let setDeviceBitsFIS: UInt32 = 1 << 3
    static let hostBusFatal: UInt32 = 1 << 29
    static let taskFileError: UInt32 = 1 << 30
    /// Every bit the spec defines; the rest of PxIS and PxIE reads 0.
    static let defined: UInt32 = 0xFDC0_00FF
}

/// PxCMD bits.
enum AHCIPortCommand {
    static let start: UInt32 = 1 << 0
    static let spinUp: UInt32 = 1 << 1
    static let powerOn: UInt32 = 1 << 2
    static let commandListOverride: UInt32 = 1 << 3
    static let fisReceiveEnable: UInt32 = 1 << 4
    static let fisReceiveRunning: UInt32 = 1 << 14
    static let commandListRunning: UInt32 = 1 << 15
    static let writable: UInt32 = start | spinUp | powerOn | fisReceiveEnable
}

/// One AHCI port: its registers, the command list it walks, and the drive behind it as an
/// `ATAChannel`, which runs the ATA/ATAPI protocol shared with PIIX3 IDE. The port turns a
/// command slot into task-file writes and a command, moves PIO blocks between the channel's
/// buffer and the PRDT (as the HBA does, so the guest never sees a data port), hands the
/// channel the PRDT for DMA, and reports the outcome as FISes in the receive area.
///
/// Commands run one at a time, NCQ ones included: a queued command is accepted (its CI bit
/// clears), runs, and completes with a Set Device Bits FIS, which is how a drive with queue
/// depth 32 may behave. Every guest pointer (command list, FIS area, command table, PRDT) is
/// read through `GuestMemory`; a pointer outside RAM is a host bus fatal error for the port.
final class AHCIPort: ATADMASource, @unchecked Sendable {
    static let slotCount = 32
    static let ncqQueueDepth = 32
    /// D2H register FIS with no drive attached: all status bits set but BSY (AHCI 10.1.2).
    static let noDeviceTaskFile: UInt32 = 0x7F

    let index: Int
    let channel: ATAChannel
    let memory: any GuestMemory
    let log: GuestErrorLog
    private let name: String
    /// Tells the controller that PxIS changed (`raised`: a new interrupt condition).
    var onInterruptChange: ((_ raised: Bool) -> Void)?

    // Registers.
    var commandListBase: UInt64 = 0
    var fisBase: UInt64 = 0
    var interruptStatus: UInt32 = 0
    var interruptEnable: UInt32 = 0
    var command: UInt32 = AHCIPortCommand.spinUp | AHCIPortCommand.powerOn
    var signature: UInt32 = 0xFFFF_FFFF
    var sataControl: UInt32 = 0
    var sataError: UInt32 = 0
    var active: UInt32 = 0
    var issued: UInt32 = 0
    var currentSlot = 0
    /// Set after a task file or host bus error: no command runs until software restarts the port.
    var halted = false

    // The command in progress.
    var runningSlot: Int?
    var runningTag: Int?
    var tableAddress: UInt64 = 0
    var prdtLength = 0
    var prdtNext = 0
    /// Bytes of PRDT segments handed to the channel (PRDBC once the unused rest is subtracted).
    var prdtBytes: UInt64 = 0

    /// Reused for every command FIS read and FIS written, so a command allocates nothing.
    private var fisIn = [UInt8](repeating: 0, count: 20)
    private var fisOut = [UInt8](repeating: 0, count: 20)

    init(index: Int, memory: any GuestMemory, poster: any BlockCompletionPoster, log: GuestErrorLog) {
        self.index = index
        self.memory = memory
        self.log = log
        name = "ahci.\(index)"
        let relay = AHCICompletionRelay(upstream: poster)
        channel = ATAChannel(index: index, drives: [nil, nil], irq: nil, memory: memory, poster: relay, log: log, name: name)
        channel.ncqQueueDepth = Self.ncqQueueDepth
        relay.port = self
        channel.dmaSource = self
    }

    var drive: ATADrive? { channel.drives[0] }
    var taskFile: ATATaskFile { channel.taskFiles[0] }

    // MARK: registers (offsets within the port's 0x80 bytes)

    func read(_ offset: Int) -> UInt32 {
        switch offset {
        case 0x00: return UInt32(truncatingIfNeeded: commandListBase)
        case 0x04: return UInt32(truncatingIfNeeded: commandListBase >> 32)
        case 0x08: return UInt32(truncatingIfNeeded: fisBase)
        case 0x0C: return UInt32(truncatingIfNeeded: fisBase >> 32)
        case 0x10: return interruptStatus
        case 0x14: return interruptEnable
        case 0x18:
            var value = command | UInt32(currentSlot) << 8
            if command & AHCIPortCommand.fisReceiveEnable != 0 { value |= AHCIPortCommand.fisReceiveRunning }
            if command & AHCIPortCommand.start != 0 { value |= AHCIPortCommand.commandListRunning }
            return value
        case 0x20:
            guard drive != nil else { return Self.noDeviceTaskFile }
            return UInt32(taskFile.error) << 8 | UInt32(taskFile.status)
        case 0x24: return signature
        case 0x28: return drive != nil && sataControl & 0x0F != 1 ? 0x113 : 0  // device present, Gen1, active
        case 0x2C: return sataControl
        case 0x30: return sataError
        case 0x34: return active
        case 0x38: return issued
        default: return 0
        }
    }

    func write(_ offset: Int, _ value: UInt32) {
        switch offset {
        case 0x00: commandListBase = commandListBase & ~0xFFFF_FFFF | UInt64(value & ~0x3FF)
        case 0x04: commandListBase = commandListBase & 0xFFFF_FFFF | UInt64(value) << 32
        case 0x08: fisBase = fisBase & ~0xFFFF_FFFF | UInt64(value & ~0xFF)
        case 0x0C: fisBase = fisBase & 0xFFFF_FFFF | UInt64(value) << 32
        case 0x10:
            interruptStatus &= ~value
            onInterruptChange?(false)
        case 0x14:
            let newlyEnabled = value & ~interruptEnable
            interruptEnable = value & AHCIPortInterrupt.defined
            onInterruptChange?(interruptStatus & newlyEnabled != 0)
        case 0x18: writeCommand(value)
        case 0x2C: writeSATAControl(value)
        case 0x30: sataError &= ~value
        case 0x34:
            // SACT and CI take new bits only while the port runs (AHCI 3.3.13, 3.3.14).
            guard command & AHCIPortCommand.start != 0 else { return log.report(name, "PxSACT written while stopped") }
            active |= value
        case 0x38:
            guard command & AHCIPortCommand.start != 0 else { return log.report(name, "PxCI written while stopped") }
            issued |= value
            advance()
        default:
            break
        }
    }

    private func writeCommand(_ value: UInt32) {
        let old = command
        command = old & ~AHCIPortCommand.writable | value & AHCIPortCommand.writable
        if value & AHCIPortCommand.commandListOverride != 0 {
            // CLO: the guest may issue a reset even though the device still shows BSY/DRQ.
            channel.taskFiles[0].status &= ~(ATAStatus.busy | ATAStatus.dataRequest)
        }
        if old & AHCIPortCommand.start != 0 && value & AHCIPortCommand.start == 0 {
            stop()
        } else if old & AHCIPortCommand.start == 0 && value & AHCIPortCommand.start != 0 {
            halted = false
            advance()
        }
    }

    /// ST cleared: the command list stops, CI and SACT clear, whatever ran is abandoned.
    private func stop() {
        if runningSlot != nil {
            log.report(name, "port stopped with a command in progress")
            channel.cancelTransfer()
            if drive != nil { channel.taskFiles[0].status = ATAStatus.idle }
        }
        runningSlot = nil
        runningTag = nil
        issued = 0
        active = 0
        currentSlot = 0
        halted = false
    }

    private func writeSATAControl(_ value: UInt32) {
        let oldDetect = sataControl & 0x0F
        sataControl = value & 0x0FFF
        let detect = value & 0x0F
        if detect == 1 && oldDetect != 1 {
            // COMRESET asserted: the link drops and the drive resets.
            stop()
            channel.setPowerOnState()
        } else if detect == 0 && oldDetect == 1 {
            linkUp()
        }
    }

    /// After COMRESET or HBA reset the drive sends its signature in a D2H register FIS.
    private func linkUp() {
        guard drive != nil else { return }
        let tf = taskFile
        signature = UInt32(tf.lbaHigh) << 24 | UInt32(tf.lbaMid) << 16 | UInt32(tf.lbaLow) << 8 | UInt32(tf.sectorCount)
        writeD2HFIS(interrupt: false)
    }

    /// HBA reset (GHC.HR) and power-on: registers to defaults except the list and FIS
    /// pointers, which the spec keeps across GHC.HR; the drive resets and reports its signature.
    func reset(clearPointers: Bool) {
        stop()
        if clearPointers {
            commandListBase = 0
            fisBase = 0
        }
        interruptStatus = 0
        interruptEnable = 0
        command = AHCIPortCommand.spinUp | AHCIPortCommand.powerOn
        sataControl = 0
        sataError = 0
        signature = 0xFFFF_FFFF
        channel.setPowerOnState()
        linkUp()
    }

    func raise(_ bits: UInt32) {
        interruptStatus |= bits
        onInterruptChange?(bits & interruptEnable != 0)
    }

    // MARK: command processing

    /// Runs commands until one waits for the backend or none is left. Called when CI is
    /// written, when the port starts, and after each backend completion (`AHCICompletionRelay`).
    func advance() {
        while true {
            if runningSlot == nil {
                guard startNextCommand() else { return }
                continue
            }
            switch channel.phase {
            case .busy, .dmaWait: return
            case .dataIn, .dataOut: transferPIOBlock()
            case .idle: finishCommand()
            }
        }
    }

    /// Fetches the lowest issued slot and hands it to the channel. False when nothing can run.
    private func startNextCommand() -> Bool {
        guard command & AHCIPortCommand.start != 0, !halted, issued != 0 else { return false }
        let slot = issued.trailingZeroBitCount
        currentSlot = slot
        let header = commandListBase &+ UInt64(slot * 32)
        let flags: UInt32, table: UInt64
        do {
            flags = try memory.read(UInt32.self, at: header)
            table = try memory.read(UInt64.self, at: header &+ 8)
            try memory.read(at: table & ~0x7F, into: &fisIn, count: fisIn.count)
        } catch {
            log.report(name, "command slot \(slot): \(error)")
            halted = true
            raise(AHCIPortInterrupt.hostBusFatal)
            return false
        }
        tableAddress = table & ~0x7F
        prdtLength = Int(flags >> 16)
        prdtNext = 0
        prdtBytes = 0
        channel.restartScatterGather()
        runningSlot = slot
        runningTag = nil
        guard drive != nil, fisIn[0] == 0x27 else {
            log.report(name, drive == nil ? "command issued to an empty port" : "command FIS type \(hex(fisIn[0])) is not a register FIS")
            failCommand()
            return true
        }
        if fisIn[1] & 0x80 == 0 {
            deviceControl(fisIn[15])
            return true
        }
        var opcode = fisIn[2]
        if opcode == 0x60 || opcode == 0x61 {
            // READ/WRITE FPDMA QUEUED: the count is in the features field, the tag in the
            // count field. Accepted now (CI clears); the data moves as READ/WRITE DMA EXT.
            runningTag = Int(fisIn[12] >> 3)
            issued &= ~(1 << UInt32(slot))
            loadTaskFile(count: fisIn[3], hobCount: fisIn[11])
            opcode = opcode == 0x60 ? 0x25 : 0x35
        } else {
            loadTaskFile(count: fisIn[12], hobCount: fisIn[13])
        }
        channel.executeCommand(opcode)
        return true
    }

    private func loadTaskFile(count: UInt8, hobCount: UInt8) {
        var tf = taskFile
        (tf.hobFeature, tf.feature) = (fisIn[11], fisIn[3])
        (tf.hobSectorCount, tf.sectorCount) = (hobCount, count)
        (tf.lbaLow, tf.lbaMid, tf.lbaHigh) = (fisIn[4], fisIn[5], fisIn[6])
        (tf.hobLBALow, tf.hobLBAMid, tf.hobLBAHigh) = (fisIn[8], fisIn[9], fisIn[10])
        channel.taskFiles[0] = tf
        // One device per port: the DEV bit selects nothing.
        channel.deviceRegister = fisIn[7] & ~0x10 | 0xA0
    }

    /// A control FIS (C bit clear): the device control register, i.e. software reset.
    private func deviceControl(_ value: UInt8) {
        let wasReset = channel.control & 0x04 != 0
        channel.writeDeviceControl(value)
        completeSlot()
        if wasReset && value & 0x04 == 0 { linkUp() }
    }

    /// The channel wants the current PIO block moved: the HBA does it from the PRDT (or, for
    /// the PACKET command's CDB, from the command table's ATAPI area).
    private func transferPIOBlock() {
        if channel.operation == .atapiPacket {
            let count = channel.pioBlockEnd - channel.pioPosition
            do {
                try memory.read(at: tableAddress &+ 0x40, into: &channel.buffer.bytes, offset: channel.pioPosition, count: count)
            } catch {
                log.report(name, "ATAPI command: \(error)")
                return channel.dmaFailed()
            }
            channel.pioPosition = channel.pioBlockEnd
            return channel.dataOutBlockDone()
        }
        let dataIn = channel.phase == .dataIn
        let start = channel.pioPosition, count = channel.pioBlockEnd - start
        let moved = dataIn ? channel.scatterToGuest(from: start, count: count) : channel.gatherFromGuest(into: start, count: count)
        guard moved else { return channel.dmaFailed() }
        channel.pioPosition = channel.pioBlockEnd
        dataIn ? channel.dataInBlockDone() : channel.dataOutBlockDone()
        writePIOSetupFIS(dataIn: dataIn, count: count)
        raise(AHCIPortInterrupt.pioSetupFIS)
    }

    /// The channel went idle: report the outcome and retire the slot.
    private func finishCommand() {
        guard let slot = runningSlot else { return }
        let transferred = prdtBytes &- UInt64(channel.prdSegmentLeft)
        do {
            try memory.write(UInt32(truncatingIfNeeded: transferred), at: commandListBase &+ UInt64(slot * 32 + 4))
        } catch {
            log.report(name, "PRDBC of slot \(slot): \(error)")
        }
        if taskFile.status & ATAStatus.error != 0 { return failCommand() }
        if let tag = runningTag {
            active &= ~(1 << UInt32(tag))
            runningSlot = nil
            runningTag = nil
            writeSetDeviceBitsFIS(tagBits: 1 << UInt32(tag))
            raise(AHCIPortInterrupt.setDeviceBitsFIS)
            return
        }
        completeSlot()
        writeD2HFIS(interrupt: true)
        raise(AHCIPortInterrupt.d2hRegisterFIS)
    }

    /// An error ends the command with a D2H FIS and TFES; the port halts until software
    /// restarts it (AHCI 6.2.2), leaving CI and SACT for its error handler to read.
    private func failCommand() {
        halted = true
        runningSlot = nil
        runningTag = nil
        writeD2HFIS(interrupt: true)
        raise(AHCIPortInterrupt.d2hRegisterFIS | AHCIPortInterrupt.taskFileError)
    }

    private func completeSlot() {
        if let slot = runningSlot { issued &= ~(1 << UInt32(slot)) }
        runningSlot = nil
        runningTag = nil
    }

    // MARK: PRDT

    func nextDMASegment() -> (address: UInt64, length: Int)? {
        guard prdtNext < prdtLength else {
            log.report(name, "PRDT of \(prdtLength) entries is shorter than the transfer")
            return nil
        }
        let entry = tableAddress &+ 0x80 &+ UInt64(prdtNext) * 16
        let base: UInt64, control: UInt32
        do {
            base = try memory.read(UInt64.self, at: entry)
            control = try memory.read(UInt32.self, at: entry &+ 12)
        } catch {
            log.report(name, "PRDT entry \(prdtNext): \(error)")
            return nil
        }
        prdtNext += 1
        // DBC holds the byte count minus one; bit 0 of the address and of the count must be
        // zero (word granularity), so they are forced that way.
        let length = Int(control & 0x3F_FFFE) + 2
        prdtBytes &+= UInt64(length)
        return (base & ~1, length)
    }

    // MARK: FIS delivery (received-FIS area, only while FRE is set; PxIS is set regardless,
    // so a guest polling PxIS still sees the command end)

    private func deliver(at offset: UInt64, count: Int) {
        guard command & AHCIPortCommand.fisReceiveEnable != 0 else { return }
        do {
            try memory.write(at: fisBase &+ offset, bytes: fisOut[0..<count])
        } catch {
            log.report(name, "received-FIS area: \(error)")
        }
    }

    private func putTaskFile() {
        let tf = taskFile
        for i in 0..<fisOut.count { fisOut[i] = 0 }
        fisOut[2] = tf.status
        fisOut[3] = tf.error
        (fisOut[4], fisOut[5], fisOut[6], fisOut[7]) = (tf.lbaLow, tf.lbaMid, tf.lbaHigh, channel.deviceRegister)
        (fisOut[8], fisOut[9], fisOut[10]) = (tf.hobLBALow, tf.hobLBAMid, tf.hobLBAHigh)
        (fisOut[12], fisOut[13]) = (tf.sectorCount, tf.hobSectorCount)
    }

    /// Register FIS, device to host (type 0x34) at offset 0x40.
    private func writeD2HFIS(interrupt: Bool) {
        putTaskFile()
        fisOut[0] = 0x34
        fisOut[1] = interrupt ? 0x40 : 0
        deliver(at: 0x40, count: 20)
    }

    /// PIO Setup FIS (type 0x5F) at offset 0x20: the block just moved and the status after it.
    private func writePIOSetupFIS(dataIn: Bool, count: Int) {
        let ending = taskFile.status
        putTaskFile()
        fisOut[0] = 0x5F
        fisOut[1] = 0x40 | (dataIn ? 0x20 : 0)
        fisOut[2] = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        fisOut[15] = ending
        (fisOut[16], fisOut[17]) = (UInt8(truncatingIfNeeded: count), UInt8(truncatingIfNeeded: count >> 8))
        deliver(at: 0x20, count: 20)
    }

    /// Set Device Bits FIS (type 0xA1) at offset 0x58: NCQ completions.
    private func writeSetDeviceBitsFIS(tagBits: UInt32) {
        let tf = taskFile
        for i in 0..<8 { fisOut[i] = 0 }
        fisOut[0] = 0xA1
        fisOut[1] = 0x40
        fisOut[2] = tf.status & 0x77
        fisOut[3] = tf.error
        for i in 0..<4 { fisOut[4 + i] = UInt8(truncatingIfNeeded: tagBits >> (8 * UInt32(i))) }
        deliver(at: 0x58, count: 8)
    }

    // MARK: state

    func saveState(to w: inout StateWriter) {
        w.put(commandListBase)
        w.put(fisBase)
        w.put(interruptStatus)
        w.put(interruptEnable)
        w.put(command)
        w.put(signature)
        w.put(sataControl)
        w.put(sataError)
        w.put(active)
        w.put(issued)
        w.put(UInt8(currentSlot))
        w.put(halted)
        w.put(Int8(runningSlot ?? -1))
        w.put(Int8(runningTag ?? -1))
        w.put(tableAddress)
        w.put(UInt32(prdtLength))
        w.put(UInt32(prdtNext))
        w.put(prdtBytes)
        channel.saveState(to: &w)
    }

    func loadState(from r: inout StateReader, section: String) throws(StateError) {
        let clb = try r.get(UInt64.self), fb = try r.get(UInt64.self)
        let status = try r.get(UInt32.self), enable = try r.get(UInt32.self), cmd = try r.get(UInt32.self)
        let sig = try r.get(UInt32.self), sctl = try r.get(UInt32.self), serr = try r.get(UInt32.self)
        let sact = try r.get(UInt32.self), ci = try r.get(UInt32.self)
        let slot = Int(try r.get(UInt8.self)), stopped = try r.get(Bool.self)
        let running = Int(try r.get(Int8.self)), tag = Int(try r.get(Int8.self))
        let table = try r.get(UInt64.self)
        let length = Int(try r.get(UInt32.self)), next = Int(try r.get(UInt32.self))
        let bytes = try r.get(UInt64.self)
        guard slot < Self.slotCount, (-1..<Self.slotCount).contains(running), (-1..<Self.slotCount).contains(tag),
              length <= 0xFFFF, next <= length, tag < 0 || running >= 0 else {
            throw .invalidValue(section: section, field: "port \(index) command state")
        }
        try channel.loadState(from: &r, section: section)
        commandListBase = clb & ~0x3FF
        fisBase = fb & ~0xFF
        interruptStatus = status & AHCIPortInterrupt.defined
        interruptEnable = enable & AHCIPortInterrupt.defined
        command = cmd & AHCIPortCommand.writable
        signature = sig
        sataControl = sctl & 0x0FFF
        sataError = serr
        active = sact
        issued = ci
        currentSlot = slot
        halted = stopped
        runningSlot = running < 0 ? nil : running
        runningTag = tag < 0 ? nil : tag
        tableAddress = table & ~0x7F
        prdtLength = length
        prdtNext = next
        prdtBytes = bytes
    }
}

/// Runs the channel's block completions where the machine runs them (the event loop, with
/// the device lock), then lets the port continue: deliver the FIS, start the next slot.
private final class AHCICompletionRelay: BlockCompletionPoster, @unchecked Sendable {
    let upstream: any BlockCompletionPoster
    weak var port: AHCIPort?

    init(upstream: any BlockCompletionPoster) { self.upstream = upstream }

    func post(_ work: @escaping @Sendable () -> Void) {
        upstream.post { [weak self] in
            work()
            self?.port?.advance()
        }
    }
}

/// ICH9's AHCI function as QEMU's `-device ahci` (ich9-ahci) presents it: 8086:2922, class
/// 01:06:01, six ports, the AHCI registers (ABAR) in BAR5 (4 KiB), the index/data pair in
/// BAR4 (32 bytes of I/O), INTx pin A and a single-vector MSI capability. Drives are
/// attached to ports before the machine starts (`attach`). Xen's "unplug emulated disks"
/// leaves AHCI alone, as QEMU does (it removes IDE, SCSI and NVMe disks only).
public final class AHCIController: PCIDevice, StorageController, Snapshottable, Resettable, @unchecked Sendable {
    public static let portCount = 6
    static let capabilities: UInt32 = 1 << 31 | 1 << 30 | 1 << 20 | 1 << 18
        | UInt32(AHCIPort.slotCount - 1) << 8 | UInt32(portCount - 1)  // 64-bit, NCQ, Gen1, AHCI only
    static let version: UInt32 = 0x0001_0000
    static let msiCapability = 0x80
    static let sataCapability = 0xA8
    /// The index/data pair's place in BAR4.
    static let indexRegister: UInt64 = 0x10

    public let pci: PCIFunction
    public let stateID: String
    let ports: [AHCIPort]
    private let msi: ((MSIMessage) -> Void)?
    private let log: GuestErrorLog
    var interruptEnabled = false
    var index: UInt32 = 0

    /// `msi` delivers a message-signalled interrupt (nil: INTx only).
    public init(stateID: String = "ahci", memory: any GuestMemory, poster: any BlockCompletionPoster,
                msi: ((MSIMessage) -> Void)? = nil, log: GuestErrorLog = .shared) {
        var config = PCIConfigSpace(vendor: 0x8086, device: 0x2922, revision: 2, classCode: 0x01_0601,
                                    interruptPin: 1, status: 0x0010)
        config.set8(0x0C, 0x08)  // cache line size, as ICH9 and QEMU start
        config.set8(0x34, UInt8(Self.msiCapability))
        config.set8(0x90, 0x40)  // address map: AHCI mode
        let m = Self.msiCapability, s = Self.sataCapability
        for i in m..<m + 16 { config.writeMask[i] = 0 }
        config.set8(m, 0x05)
        config.set8(m + 1, UInt8(s))
        config.set16(m + 2, 0x0080)  // 64-bit address, one vector
        config.writeMask[m + 2] = 0x71  // enable and the multiple-message enable field
        config.writeMask[m + 4] = 0xFC
        for i in m + 5..<m + 14 { config.writeMask[i] = 0xFF }
        for i in s..<s + 8 { config.writeMask[i] = 0 }
        config.set8(s, 0x12)
        config.set8(s + 2, 0x10)  // revision 1.0
        config.set8(s + 4, 0x48)  // index/data pair in BAR4 at offset 0x10
        pci = PCIFunction(name: "ahci", config: config,
                          bars: [nil, nil, nil, nil, PCIBARDefinition(kind: .io, size: 32),
                                 PCIBARDefinition(kind: .memory32(prefetchable: false), size: 4096)])
        self.stateID = stateID
        self.msi = msi
        self.log = log
        ports = (0..<Self.portCount).map { AHCIPort(index: $0, memory: memory, poster: poster, log: log) }
        for port in ports {
            port.onInterruptChange = { [weak self] raised in self?.updateInterrupt(raised: raised) }
            port.reset(clearPointers: true)
        }
    }

    /// Puts `drive` on `port` (at machine assembly).
    public func attach(_ drive: ATADrive, port: Int) {
        precondition(ports[port].drive == nil)
        ports[port].channel.drives[0] = drive
        ports[port].reset(clearPointers: true)
    }

    public var drives: [ATADrive] { ports.compactMap(\.drive) }

    public func drive(onPort port: Int) -> ATADrive? { ports.indices.contains(port) ? ports[port].drive : nil }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        pci.write(offset: offset, size: size, value: value)
        // Turning MSI on or off moves a pending interrupt between INTx and messages.
        let control = Self.msiCapability + 2
        if offset <= control && offset + size > control { updateInterrupt(raised: false) }
    }

    // MARK: interrupts

    private var msiEnabled: Bool { pci.config.get8(Self.msiCapability + 2) & 1 != 0 }

    /// IS has a bit per port with an enabled interrupt pending.
    var interruptStatus: UInt32 {
        var bits: UInt32 = 0
        for port in ports where port.interruptStatus & port.interruptEnable != 0 { bits |= 1 << UInt32(port.index) }
        return bits
    }

    private func updateInterrupt(raised: Bool) {
        let level = interruptEnabled && interruptStatus != 0
        guard msiEnabled, let msi else { return pci.setINTx(level) }
        pci.setINTx(false)
        if level && raised {
            let m = Self.msiCapability
            let address = UInt64(pci.config.get32(m + 8)) << 32 | UInt64(pci.config.get32(m + 4))
            msi(MSIMessage(address: address, data: UInt32(pci.config.get16(m + 12))))
        }
    }

    // MARK: registers

    func readRegister(_ offset: UInt64) -> UInt32 {
        switch offset {
        case 0x00: return Self.capabilities
        case 0x04: return 1 << 31 | (interruptEnabled ? 2 : 0)
        case 0x08: return interruptStatus
        case 0x0C: return (1 << UInt32(Self.portCount)) - 1
        case 0x10: return Self.version
        case 0x100..<0x100 + 0x80 * UInt64(Self.portCount):
            return ports[Int(offset - 0x100) / 0x80].read(Int(offset - 0x100) % 0x80)
        default: return 0
        }
    }

    func writeRegister(_ offset: UInt64, _ value: UInt32) {
        switch offset {
        case 0x04:
            if value & 1 != 0 {
                hbaReset()
            } else {
                let wasEnabled = interruptEnabled
                interruptEnabled = value & 2 != 0
                updateInterrupt(raised: !wasEnabled)
            }
        case 0x08:
            break  // IS follows the ports' PxIS; clearing those clears it
        case 0x100..<0x100 + 0x80 * UInt64(Self.portCount):
            ports[Int(offset - 0x100) / 0x80].write(Int(offset - 0x100) % 0x80, value)
        default:
            break
        }
    }

    /// GHC.HR: every port and the global registers back to their reset values; the PCI side
    /// is untouched. The reset completes at once, so HR reads back 0.
    private func hbaReset() {
        interruptEnabled = false
        for port in ports { port.reset(clearPointers: false) }
        updateInterrupt(raised: false)
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        switch region {
        case 5:
            if size == 8 { return UInt64(readRegister(offset)) | UInt64(readRegister(offset + 4)) << 32 }
            let value = UInt64(readRegister(offset & ~3)) >> (8 * (offset & 3))
            return value & mask(size)
        case 4:
            // Index/data pair: the index selects an ABAR register, the data port reaches it.
            switch offset {
            case Self.indexRegister: return UInt64(index) & mask(size)
            case Self.indexRegister + 4: return UInt64(readRegister(UInt64(index & 0xFFC))) & mask(size)
            default: return 0
            }
        default:
            return mask(size)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        switch region {
        case 5:
            guard offset & 3 == 0, size >= 4 else {
                return log.report("ahci", "\(size)-byte write to ABAR offset \(hex(offset)) ignored (registers are 32-bit)")
            }
            writeRegister(offset, UInt32(truncatingIfNeeded: value))
            if size == 8 { writeRegister(offset + 4, UInt32(truncatingIfNeeded: value >> 32)) }
        case 4:
            guard size == 4 else { return log.report("ahci", "\(size)-byte access to the index/data pair ignored") }
            switch offset {
            case Self.indexRegister: index = UInt32(truncatingIfNeeded: value) & 0xFFC
            case Self.indexRegister + 4: writeRegister(UInt64(index), UInt32(truncatingIfNeeded: value))
            default: break
            }
        default:
            break
        }
    }

    // MARK: state and reset

    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(interruptEnabled)
        w.put(index)
        for port in ports { port.saveState(to: &w) }
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        try pci.loadState(from: &r)
        interruptEnabled = try r.get(Bool.self)
        index = try r.get(UInt32.self) & 0xFFC
        for port in ports { try port.loadState(from: &r, section: stateID) }
        // A command whose backend request was in flight failed in the channel's load; the
        // port reports that now.
        for port in ports { port.advance() }
        updateInterrupt(raised: false)
    }

    public func reset() {
        pci.reset()
        interruptEnabled = false
        index = 0
        for port in ports { port.reset(clearPointers: true) }
    }
}
