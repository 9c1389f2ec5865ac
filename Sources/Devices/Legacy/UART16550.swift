import Backends
import DMCore

/// A 16550A UART: eight byte-wide registers at any base (the machine registers COM1 at 0x3F8,
/// IRQ 4 and COM2 at 0x2F8, IRQ 3), 16-byte receive and transmit FIFOs.
///
/// Behaviour follows QEMU's hw/char/serial.c where guests can tell the difference:
/// - the IRQ line is `interrupt pending`, independent of MCR.OUT2 (QEMU ignores OUT2; the PC's
///   OUT2 gate is not modelled, and SeaBIOS/Linux work either way);
/// - THRE interrupt: pending when THR empties, cleared by reading IIR while it is the
///   identified source or by writing THR; re-armed when IER.THRI goes 0→1 with THR empty;
/// - transmission is instantaneous, so LSR.THRE/TEMT read back as 1 right after a THR write;
/// - receive overruns keep the FIFO contents and set LSR.OE.
///
/// Character timeout (IIR=0xC): with a `TimerService`, raised four character times after the
/// last received byte or RBR read while the FIFO holds fewer bytes than the trigger level (the
/// datasheet's rule). Without one, it is raised at once when a receive leaves the FIFO below
/// the trigger level, so a guest using trigger level 8 or 14 still sees single keystrokes.
public final class UART16550: BusDevice, Snapshottable, Resettable, CharFrontend, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1
    public static let fifoSize = 16

    private let backend: (any CharBackend)?
    private let irq: IRQLine
    private let timeoutTimer: (any DeviceTimer)?
    private let clock: VirtualClock?

    // Registers. The divisor latch and scratch are plain storage.
    private var divisor: UInt16 = 0
    private var ier: UInt8 = 0
    private var iir: UInt8 = IIR.noInterrupt
    private var fcr: UInt8 = 0
    private var lcr: UInt8 = 0
    private var mcr: UInt8 = 0
    private var lsr: UInt8 = 0
    private var msr: UInt8 = 0
    private var scr: UInt8 = 0
    /// Receive buffer in non-FIFO (16450) mode.
    private var rbr: UInt8 = 0
    private var thrInterruptPending = false
    private var timeoutInterruptPending = false
    private var receiveFIFO = ByteFIFO()
    private var irqLevel = false

    enum IER {
        static let receivedData: UInt8 = 0x01
        static let transmitEmpty: UInt8 = 0x02
        static let lineStatus: UInt8 = 0x04
        static let modemStatus: UInt8 = 0x08
    }
    enum IIR {
        static let noInterrupt: UInt8 = 0x01
        static let modemStatus: UInt8 = 0x00
        static let transmitEmpty: UInt8 = 0x02
        static let receivedData: UInt8 = 0x04
        static let lineStatus: UInt8 = 0x06
        static let characterTimeout: UInt8 = 0x0C
        static let idMask: UInt8 = 0x0F
        static let fifoEnabled: UInt8 = 0xC0
    }
    enum FCR {
        static let enable: UInt8 = 0x01
        static let clearReceive: UInt8 = 0x02
        static let clearTransmit: UInt8 = 0x04
        /// The bits that stick: enable, DMA mode, trigger level.
        static let stored: UInt8 = 0xC9
    }
    enum LCR { static let dlab: UInt8 = 0x80 }
    enum MCR {
        static let dtr: UInt8 = 0x01
        static let rts: UInt8 = 0x02
        static let out1: UInt8 = 0x04
        static let out2: UInt8 = 0x08
        static let loopback: UInt8 = 0x10
        static let writable: UInt8 = 0x1F
    }
    enum LSR {
        static let dataReady: UInt8 = 0x01
        static let overrun: UInt8 = 0x02
        static let breakInterrupt: UInt8 = 0x10
        static let thrEmpty: UInt8 = 0x20
        static let transmitterEmpty: UInt8 = 0x40
        /// OE, PE, FE, BI: the bits that raise the line-status interrupt.
        static let errorBits: UInt8 = 0x1E
    }
    enum MSR {
        static let deltaBits: UInt8 = 0x0F
        static let cts: UInt8 = 0x10
        static let dsr: UInt8 = 0x20
        static let dcd: UInt8 = 0x80
    }

    /// `timers` enables the character-timeout interrupt's four-character delay (see above).
    public init(backend: (any CharBackend)?, irq: IRQLine, stateID: String, timers: (any TimerService)? = nil) {
        self.backend = backend
        self.irq = irq
        self.stateID = stateID
        clock = timers?.clock
        var fire: (() -> Void)?
        timeoutTimer = timers?.makeTimer { fire?() }
        fire = { [weak self] in self?.characterTimeoutExpired() }
        resetRegisters()
        backend?.attach(self)
    }

    public func reset() {
        resetRegisters()
        updateIRQ()
        backend?.frontendReady()
    }

    private func resetRegisters() {
        divisor = 0x0C  // 9600 baud, as a PC BIOS leaves it
        ier = 0
        iir = IIR.noInterrupt
        fcr = 0
        lcr = 0
        mcr = MCR.out2
        lsr = LSR.thrEmpty | LSR.transmitterEmpty
        msr = MSR.dcd | MSR.dsr | MSR.cts
        scr = 0
        rbr = 0
        thrInterruptPending = false
        timeoutInterruptPending = false
        receiveFIFO.removeAll()
        timeoutTimer?.cancel()
    }

    private var fifoEnabled: Bool { fcr & FCR.enable != 0 }
    private var loopback: Bool { mcr & MCR.loopback != 0 }
    private var triggerLevel: Int {
        switch fcr >> 6 {
        case 0: return 1
        case 1: return 4
        case 2: return 8
        default: return 14
        }
    }

    /// Time for one 10-bit character at the programmed divisor (115200 baud / divisor).
    private var characterTime: UInt64 {
        let bits: UInt64 = 1 + UInt64(lcr & 0x03) + 5 + (lcr & 0x08 != 0 ? 1 : 0) + (lcr & 0x04 != 0 ? 2 : 1)
        let div = UInt64(max(divisor, 1))
        return bits * div * 1_000_000_000 / 115_200
    }

    // MARK: BusDevice

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte read at offset \(offset); the UART is byte-wide")
            return mask(size)
        }
        switch offset & 7 {
        case 0:
            if lcr & LCR.dlab != 0 { return UInt64(divisor & 0xFF) }
            return UInt64(readReceiveBuffer())
        case 1:
            if lcr & LCR.dlab != 0 { return UInt64(divisor >> 8) }
            return UInt64(ier)
        case 2:
            let value = iir
            if value & IIR.idMask == IIR.transmitEmpty {
                thrInterruptPending = false
                updateIRQ()
            }
            return UInt64(value)
        case 3:
            return UInt64(lcr)
        case 4:
            return UInt64(mcr)
        case 5:
            let value = lsr
            if lsr & (LSR.breakInterrupt | LSR.overrun) != 0 {
                lsr &= ~(LSR.breakInterrupt | LSR.overrun)
                updateIRQ()
            }
            return UInt64(value)
        case 6:
            if loopback {
                // Outputs feed the inputs: OUT2→DCD, OUT1→RI, RTS→CTS, DTR→DSR.
                return UInt64((mcr & 0x0C) << 4 | (mcr & MCR.rts) << 3 | (mcr & MCR.dtr) << 5)
            }
            let value = msr
            if msr & MSR.deltaBits != 0 {
                msr &= ~MSR.deltaBits
                updateIRQ()
            }
            return UInt64(value)
        default:
            return UInt64(scr)
        }
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte write at offset \(offset); the UART is byte-wide")
            return
        }
        let byte = UInt8(truncatingIfNeeded: value)
        switch offset & 7 {
        case 0:
            if lcr & LCR.dlab != 0 {
                divisor = divisor & 0xFF00 | UInt16(byte)
            } else {
                transmit(byte)
            }
        case 1:
            if lcr & LCR.dlab != 0 {
                divisor = divisor & 0x00FF | UInt16(byte) << 8
            } else {
                let changed = (ier ^ byte) & 0x0F
                ier = byte & 0x0F
                // Enabling THRI with THR empty raises the interrupt even if an IIR read had
                // cleared it before (Windows relies on this; QEMU and Bochs do the same).
                if changed & IER.transmitEmpty != 0 {
                    thrInterruptPending = ier & IER.transmitEmpty != 0 && lsr & LSR.thrEmpty != 0
                }
                if changed != 0 { updateIRQ() }
            }
        case 2:
            writeFIFOControl(byte)
        case 3:
            lcr = byte
        case 4:
            let wasLoopback = loopback
            mcr = byte & MCR.writable
            if wasLoopback && !loopback { backend?.frontendReady() }
        case 5, 6:
            break  // LSR and MSR are read-only
        default:
            scr = byte
        }
    }

    private func writeFIFOControl(_ value: UInt8) {
        var command = value
        // Switching the FIFOs on or off empties both.
        if (command ^ fcr) & FCR.enable != 0 { command |= FCR.clearReceive | FCR.clearTransmit }
        if command & FCR.clearReceive != 0 {
            lsr &= ~(LSR.dataReady | LSR.breakInterrupt)
            timeoutTimer?.cancel()
            timeoutInterruptPending = false
            receiveFIFO.removeAll()
        }
        if command & FCR.clearTransmit != 0 {
            // Nothing is ever queued for transmission; the register just reports empty again.
            lsr |= LSR.thrEmpty
            thrInterruptPending = true
        }
        fcr = command & FCR.stored
        if fifoEnabled { iir |= IIR.fifoEnabled } else { iir &= ~IIR.fifoEnabled }
        updateIRQ()
        if command & FCR.clearReceive != 0 { backend?.frontendReady() }
    }

    private func transmit(_ byte: UInt8) {
        // The byte leaves at once: THR empties again before the guest can look, but the
        // THRE interrupt still goes low then high so an edge-sensitive path sees a new event.
        thrInterruptPending = false
        lsr &= ~(LSR.thrEmpty | LSR.transmitterEmpty)
        updateIRQ()
        if loopback {
            receiveBytes(CollectionOfOne(byte))
        } else {
            backend?.write(byte: byte)
        }
        lsr |= LSR.thrEmpty | LSR.transmitterEmpty
        thrInterruptPending = true
        updateIRQ()
    }

    private func readReceiveBuffer() -> UInt8 {
        let hadNoRoom = receiveCapacity == 0
        let value: UInt8
        if fifoEnabled {
            value = receiveFIFO.pop() ?? 0
            if receiveFIFO.isEmpty {
                lsr &= ~(LSR.dataReady | LSR.breakInterrupt)
                timeoutTimer?.cancel()
            } else {
                armCharacterTimeout()
            }
            timeoutInterruptPending = false
        } else {
            value = rbr
            lsr &= ~(LSR.dataReady | LSR.breakInterrupt)
        }
        updateIRQ()
        if !loopback, hadNoRoom || lsr & LSR.dataReady == 0 { backend?.frontendReady() }
        return value
    }

    // MARK: Receive (CharFrontend)

    /// Free FIFO space (one byte without FIFOs); none in loopback, where the line is cut.
    public var receiveCapacity: Int {
        if loopback { return 0 }
        if fifoEnabled { return Self.fifoSize - receiveFIFO.count }
        return lsr & LSR.dataReady != 0 ? 0 : 1
    }

    public func receive(_ bytes: ArraySlice<UInt8>) {
        // A backend that ignores receiveCapacity only overruns the FIFO (LSR.OE), as a real line would.
        if bytes.isEmpty || loopback { return }
        receiveBytes(bytes)
    }

    private func receiveBytes<C: Collection<UInt8>>(_ bytes: C) {
        if fifoEnabled {
            for b in bytes {
                if !receiveFIFO.push(b) { lsr |= LSR.overrun }
            }
            lsr |= LSR.dataReady
            if receiveFIFO.count < triggerLevel {
                if timeoutTimer == nil { timeoutInterruptPending = true } else { armCharacterTimeout() }
            } else {
                armCharacterTimeout()
            }
        } else {
            for b in bytes {
                if lsr & LSR.dataReady != 0 { lsr |= LSR.overrun }
                rbr = b
                lsr |= LSR.dataReady
            }
        }
        updateIRQ()
    }

    private func armCharacterTimeout() {
        guard let timeoutTimer, let clock else { return }
        timeoutTimer.arm(at: clock.now() &+ 4 &* characterTime)
    }

    private func characterTimeoutExpired() {
        if fifoEnabled && !receiveFIFO.isEmpty {
            timeoutInterruptPending = true
            updateIRQ()
        }
    }

    // MARK: Interrupts

    /// Picks the highest-priority pending source into IIR and drives the line.
    private func updateIRQ() {
        let id: UInt8
        if ier & IER.lineStatus != 0 && lsr & LSR.errorBits != 0 {
            id = IIR.lineStatus
        } else if ier & IER.receivedData != 0 && timeoutInterruptPending {
            id = IIR.characterTimeout
        } else if ier & IER.receivedData != 0 && lsr & LSR.dataReady != 0
                    && (!fifoEnabled || receiveFIFO.count >= triggerLevel) {
            id = IIR.receivedData
        } else if ier & IER.transmitEmpty != 0 && thrInterruptPending {
            id = IIR.transmitEmpty
        } else if ier & IER.modemStatus != 0 && msr & MSR.deltaBits != 0 {
            id = IIR.modemStatus
        } else {
            id = IIR.noInterrupt
        }
        iir = id | (iir & 0xF0)
        let level = id != IIR.noInterrupt
        if level != irqLevel {
            irqLevel = level
            irq.set(level)
        }
    }

    // MARK: Snapshottable

    public func saveState(to writer: inout StateWriter) {
        writer.put(divisor)
        for r in [ier, iir, fcr, lcr, mcr, lsr, msr, scr, rbr] { writer.put(r) }
        writer.put(thrInterruptPending)
        writer.put(timeoutInterruptPending)
        writer.put(bytes: receiveFIFO.contents)
    }

    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        let newDivisor = try reader.get(UInt16.self)
        var regs: [UInt8] = []
        for _ in 0..<9 { regs.append(try reader.get(UInt8.self)) }
        let thrPending = try reader.get(Bool.self)
        let timeoutPending = try reader.get(Bool.self)
        let fifo = try reader.getBytes(maxCount: Self.fifoSize)
        let (newIER, newFCR, newMCR) = (regs[0], regs[2], regs[4])
        guard newIER & 0xF0 == 0 else { throw .invalidValue(section: stateID, field: "IER") }
        guard newFCR & ~FCR.stored == 0 else { throw .invalidValue(section: stateID, field: "FCR") }
        guard newMCR & ~MCR.writable == 0 else { throw .invalidValue(section: stateID, field: "MCR") }
        guard fifo.isEmpty || newFCR & FCR.enable != 0 else {
            throw .invalidValue(section: stateID, field: "receive FIFO without FIFO mode")
        }
        divisor = newDivisor
        ier = newIER
        fcr = newFCR
        lcr = regs[3]
        mcr = newMCR
        lsr = regs[5]
        msr = regs[6]
        scr = regs[7]
        rbr = regs[8]
        // IIR is recomputed from the state rather than trusted.
        iir = fifoEnabled ? IIR.fifoEnabled : 0
        thrInterruptPending = thrPending
        timeoutInterruptPending = timeoutPending
        receiveFIFO.removeAll()
        for b in fifo { _ = receiveFIFO.push(b) }
        if receiveFIFO.isEmpty && fifoEnabled { lsr &= ~LSR.dataReady }
        if !receiveFIFO.isEmpty { lsr |= LSR.dataReady; armCharacterTimeout() }
        updateIRQ()
        irq.set(irqLevel)
    }
}

/// A fixed 16-byte ring: no allocation after init.
struct ByteFIFO {
    private var storage = [UInt8](repeating: 0, count: UART16550.fifoSize)
    private var head = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    mutating func push(_ byte: UInt8) -> Bool {
        guard count < storage.count else { return false }
        storage[(head + count) % storage.count] = byte
        count += 1
        return true
    }

    mutating func pop() -> UInt8? {
        guard count > 0 else { return nil }
        let b = storage[head]
        head = (head + 1) % storage.count
        count -= 1
        return b
    }

    mutating func removeAll() {
        head = 0
        count = 0
    }

    var contents: [UInt8] { (0..<count).map { storage[(head + $0) % storage.count] } }
}
