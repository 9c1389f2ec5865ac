import Backends
import DMCore

/// Realtek RTL8139C Fast Ethernet controller (10ec:8139) in its normal ("C") mode: four
/// transmit descriptors (TSD/TSAD) and one receive ring buffer at RBSTART that the NIC fills
/// with [status, length][frame][CRC] entries, 32-bit aligned.
///
/// We report PCI revision 0x10 and the RTL8139C hardware version in TCR: Linux then binds
/// 8139too, which uses this mode (it leaves revision >= 0x20, QEMU's RTL8139C+, to 8139cp and
/// its descriptor rings, which are not emulated). iPXE and SeaBIOS-era drivers use this mode too.
///
/// Registers are reached through BAR0 (256 I/O ports) and BAR1 (the same 256 bytes as MMIO),
/// with any access width at any offset: a wide access is the sequence of registers it covers.
public final class RTL8139: PCIDevice, NetFrontend, Snapshottable, Resettable, @unchecked Sendable {
    public static let vendorID: UInt16 = 0x10EC
    public static let deviceID: UInt16 = 0x8139
    public static let revision: UInt8 = 0x10
    /// TCR bits 30-26, 23-22: RTL8139C.
    static let hardwareVersion: UInt32 = 0x7400_0000
    /// The largest frame either direction (8139too's MAX_ETH_FRAME_SIZE), without CRC.
    public static let maxFrame = 1792
    static let minFrame = 60

    enum Reg {
        static let idr = 0x00, mar = 0x08, tsd = 0x10, tsad = 0x20, rbstart = 0x30, erbcr = 0x34, ersr = 0x36
        static let cr = 0x37, capr = 0x38, cbr = 0x3A, imr = 0x3C, isr = 0x3E, tcr = 0x40, rcr = 0x44
        static let tctr = 0x48, mpc = 0x4C, cfg9346 = 0x50, config0 = 0x51, config1 = 0x52, timerInt = 0x54
        static let msr = 0x58, config3 = 0x59, config4 = 0x5A, mulint = 0x5C, rerid = 0x5E, tsadAll = 0x60
        static let bmcr = 0x62, bmsr = 0x64, anar = 0x66, anlpar = 0x68, aner = 0x6A, config5 = 0xD8
    }

    enum Command {
        static let reset: UInt8 = 0x10, rxEnable: UInt8 = 0x08, txEnable: UInt8 = 0x04, bufferEmpty: UInt8 = 0x01
    }

    public enum Interrupt {
        public static let rxOK: UInt16 = 0x0001, rxError: UInt16 = 0x0002, txOK: UInt16 = 0x0004
        public static let txError: UInt16 = 0x0008, rxOverflow: UInt16 = 0x0010, linkChange: UInt16 = 0x0020
        public static let fifoOverflow: UInt16 = 0x0040, timeout: UInt16 = 0x4000, systemError: UInt16 = 0x8000
        static let implemented: UInt16 = 0xE07F
    }

    enum TxStatus {
        static let sizeMask: UInt32 = 0x1FFF, own: UInt32 = 0x2000, underrun: UInt32 = 0x4000
        static let ok: UInt32 = 0x8000, abort: UInt32 = 0x4000_0000
        /// Size, OWN and the early-TX threshold are the driver's; status bits clear on write.
        static let writable: UInt32 = 0x003F_3FFF
    }

    public enum RxConfig {
        public static let acceptAllPhysical: UInt32 = 0x01, acceptPhysicalMatch: UInt32 = 0x02
        public static let acceptMulticast: UInt32 = 0x04, acceptBroadcast: UInt32 = 0x08
        /// WRAP: an entry may run past the ring's end (the driver allocated the slack).
        public static let wrap: UInt32 = 0x80
        static let writable: UInt32 = 0x0F03_FFBF
    }

    enum RxStatus {
        static let ok: UInt16 = 0x0001, broadcast: UInt16 = 0x2000, physical: UInt16 = 0x4000, multicast: UInt16 = 0x8000
    }

    static let tcrWritable: UInt32 = 0x0307_07F0
    static let tcrLoopback: UInt32 = 0x0006_0000

    public let pci: PCIFunction
    public let stateID: String
    public var stateVersion: UInt32 { 1 }
    private let memory: any GuestMemory
    private let clock: VirtualClock
    /// Fires when TCTR reaches TimerInt (ISR TimeOut), once per counter period.
    private var timeoutTimer: (any DeviceTimer)?
    private let backend: (any NetBackend)?
    /// The address `mac=` gave (or QEMU's default): what the EEPROM holds at power-on.
    public let configuredMAC: MACAddress

    // Registers.
    private var idr = [UInt8](repeating: 0, count: 6)
    private var mar = [UInt8](repeating: 0, count: 8)
    private var tsd = [UInt32](repeating: TxStatus.own, count: 4)
    private var tsad = [UInt32](repeating: 0, count: 4)
    private var rbstart: UInt32 = 0
    /// The driver's read position (CAPR + 16) and the NIC's write position (CBR).
    private var rxRead: UInt32 = 0
    private var rxWrite: UInt32 = 0
    private var command: UInt8 = 0
    private var imr: UInt16 = 0
    private var isr: UInt16 = 0
    private var tcr: UInt32 = 0
    private var rcr: UInt32 = 0
    private var missedPackets: UInt32 = 0
    private var timerInterval: UInt32 = 0
    /// Guest time (ns) at which TCTR was last zeroed; it counts at the 33 MHz PCI clock.
    private var timerEpoch: UInt64 = 0
    /// 9346CR as written: the operating mode (bits 7-6) and the EEPROM lines (CS, SK, DI).
    private var cfg9346: UInt8 = 0
    private var config1: UInt8 = 0
    private var config3: UInt8 = 0
    private var config4: UInt8 = 0
    private var config5: UInt8 = 0
    private var multipleInterrupt: UInt16 = 0
    private var bmcr: UInt16 = 0x3100
    private var anar: UInt16 = 0x05E1
    public private(set) var eeprom: EEPROM93C46
    /// Whether the cable is plugged in (BMSR, MSR, ANLPAR follow it; frames are dropped while
    /// it is out). Always in for now: QMP set_link is not implemented.
    public var linkUp = true

    /// Reused per frame: one transmit, one receive entry (header + largest frame + CRC).
    private var txBuffer = [UInt8](repeating: 0, count: RTL8139.maxFrame)
    private var rxEntry = [UInt8](repeating: 0, count: 4 + RTL8139.maxFrame + 4)

    public init(mac: MACAddress, backend: (any NetBackend)?, memory: any GuestMemory, timers: any TimerService,
                rom: [UInt8] = [], stateID: String = "rtl8139") {
        let config = PCIConfigSpace(vendor: Self.vendorID, device: Self.deviceID, revision: Self.revision,
                                    classCode: 0x02_0000, interruptPin: 1)
        pci = PCIFunction(name: stateID, config: config,
                          bars: [PCIBARDefinition(kind: .io, size: 256),
                                 PCIBARDefinition(kind: .memory32(prefetchable: false), size: 256)],
                          rom: rom)
        self.stateID = stateID
        self.memory = memory
        clock = timers.clock
        self.backend = backend
        configuredMAC = mac
        eeprom = EEPROM93C46(words: Self.eepromImage(mac))
        softReset()
        timeoutTimer = timers.makeTimer { [weak self] in self?.timerExpired() }
        backend?.attach(self)
    }

    /// What the serial EEPROM holds: the signature 8139too and Windows drivers check, the PCI
    /// IDs, and the station address in words 7-9 (low byte first).
    static func eepromImage(_ mac: MACAddress) -> [UInt16] {
        var words = [UInt16](repeating: 0, count: EEPROM93C46.wordCount)
        words[0] = 0x8129
        words[1] = vendorID
        words[2] = deviceID
        words[3] = PCIConfigSpace.qemuSubsystemVendor
        words[4] = PCIConfigSpace.qemuSubsystem
        for i in 0..<3 { words[7 + i] = UInt16(mac[2 * i]) | UInt16(mac[2 * i + 1]) << 8 }
        return words
    }

    // MARK: Register access

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        if region == PCIFunction.romRegion { return pci.readROM(offset: offset, size: size) }
        guard region < 2 else { return 0 }
        var value: UInt64 = 0
        for i in 0..<size {
            let at = Int(offset) + i
            guard at < 256 else { break }
            let (start, _) = Self.layout(at)
            let byte = (registerValue(start) >> UInt32(8 * (at - start))) & 0xFF
            value |= UInt64(byte) << UInt64(8 * i)
        }
        return value
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard region < 2 else { return }
        var i = 0
        while i < size {
            let at = Int(offset) + i
            guard at < 256 else { return }
            let (start, width) = Self.layout(at)
            let first = at - start
            let count = min(width - first, size - i)
            var mask: UInt32 = 0
            var bits: UInt32 = 0
            for k in 0..<count {
                mask |= 0xFF << UInt32(8 * (first + k))
                bits |= UInt32(truncatingIfNeeded: value >> UInt64(8 * (i + k)) & 0xFF) << UInt32(8 * (first + k))
            }
            let merged = (registerValue(start) & ~mask) | bits
            setRegister(start, merged, written: mask)
            i += count
        }
    }

    /// Which register (start offset, width) holds byte `offset`; unlisted offsets are single
    /// bytes that read 0 and ignore writes.
    static func layout(_ offset: Int) -> (start: Int, width: Int) {
        let entry = layoutTable[offset]
        return (Int(entry.start), Int(entry.width))
    }

    private static let layoutTable: [(start: UInt8, width: UInt8)] = {
        var table = (0..<256).map { (start: UInt8($0), width: UInt8(1)) }
        func reg(_ start: Int, _ width: Int) {
            for i in start..<start + width { table[i] = (UInt8(start), UInt8(width)) }
        }
        for n in 0..<4 {
            reg(Reg.tsd + 4 * n, 4)
            reg(Reg.tsad + 4 * n, 4)
        }
        for r in [Reg.rbstart, Reg.tcr, Reg.rcr, Reg.tctr, Reg.mpc, Reg.timerInt] { reg(r, 4) }
        for r in [Reg.erbcr, Reg.capr, Reg.cbr, Reg.imr, Reg.isr, Reg.mulint, Reg.tsadAll, Reg.bmcr, Reg.bmsr,
                  Reg.anar, Reg.anlpar, Reg.aner] { reg(r, 2) }
        return table
    }()

    private func registerValue(_ start: Int) -> UInt32 {
        switch start {
        case Reg.idr..<Reg.idr + 6: return UInt32(idr[start - Reg.idr])
        case Reg.mar..<Reg.mar + 8: return UInt32(mar[start - Reg.mar])
        case Reg.tsd, Reg.tsd + 4, Reg.tsd + 8, Reg.tsd + 12: return tsd[(start - Reg.tsd) / 4]
        case Reg.tsad, Reg.tsad + 4, Reg.tsad + 8, Reg.tsad + 12: return tsad[(start - Reg.tsad) / 4]
        case Reg.rbstart: return rbstart
        case Reg.cr: return UInt32(command | (rxBufferEmpty ? Command.bufferEmpty : 0))
        case Reg.capr: return (rxRead &- 16) & 0xFFFF
        case Reg.cbr: return rxWrite & 0xFFFF
        case Reg.imr: return UInt32(imr)
        case Reg.isr: return UInt32(isr)
        case Reg.tcr: return tcr | Self.hardwareVersion
        case Reg.rcr: return rcr
        case Reg.tctr: return timerCount
        case Reg.mpc: return missedPackets
        case Reg.cfg9346:
            // In programming mode the EEPROM lines read back, with data-out in bit 0.
            if cfg9346 & 0xC0 == 0x80 { return UInt32(cfg9346 & 0xCE) | (eeprom.dataOut ? 1 : 0) }
            return UInt32(cfg9346 & 0xC0)
        case Reg.config0: return 0
        case Reg.config1: return UInt32(config1)
        case Reg.timerInt: return timerInterval
        case Reg.msr: return linkUp ? 0 : 0x04  // LINKB is active low; bit 3 clear: 100 Mb/s
        case Reg.config3: return UInt32(config3)
        case Reg.config4: return UInt32(config4)
        case Reg.config5: return UInt32(config5)
        case Reg.mulint: return UInt32(multipleInterrupt)
        case Reg.rerid: return UInt32(Self.revision)
        case Reg.tsadAll: return transmitStatusSummary
        case Reg.bmcr: return UInt32(bmcr)
        case Reg.bmsr: return linkUp ? 0x782D : 0x7809  // 10/100, autonegotiation done, link
        case Reg.anar: return UInt32(anar)
        case Reg.anlpar: return linkUp ? 0x05E1 : 0
        case Reg.aner: return 0x0001
        default: return 0
        }
    }

    private func setRegister(_ start: Int, _ value: UInt32, written mask: UInt32) {
        switch start {
        case Reg.idr..<Reg.idr + 6: idr[start - Reg.idr] = UInt8(truncatingIfNeeded: value)
        case Reg.mar..<Reg.mar + 8: mar[start - Reg.mar] = UInt8(truncatingIfNeeded: value)
        case Reg.tsd, Reg.tsd + 4, Reg.tsd + 8, Reg.tsd + 12:
            let n = (start - Reg.tsd) / 4
            tsd[n] = value & TxStatus.writable
            // Clearing OWN hands the descriptor to the NIC.
            if mask & TxStatus.own != 0, value & TxStatus.own == 0 { transmit(n) }
        case Reg.tsad, Reg.tsad + 4, Reg.tsad + 8, Reg.tsad + 12: tsad[(start - Reg.tsad) / 4] = value
        case Reg.rbstart: rbstart = value
        case Reg.cr: writeCommand(UInt8(truncatingIfNeeded: value))
        case Reg.capr:
            rxRead = (value &+ 16) & (ringSize - 1)
            backend?.frontendReady()
        case Reg.imr:
            imr = UInt16(truncatingIfNeeded: value) & Interrupt.implemented
            updateInterrupt()
        case Reg.isr:
            isr &= ~UInt16(truncatingIfNeeded: value & mask)
            updateInterrupt()
        case Reg.tcr: tcr = value & Self.tcrWritable
        case Reg.rcr:
            rcr = value & RxConfig.writable
            rxRead &= ringSize - 1
            rxWrite &= ringSize - 1
            backend?.frontendReady()
        case Reg.tctr:
            timerEpoch = clock.now()
            armTimeout()
        case Reg.mpc: missedPackets = 0
        case Reg.cfg9346: writeEEPROMControl(UInt8(truncatingIfNeeded: value))
        case Reg.config1: if configWritable { config1 = UInt8(truncatingIfNeeded: value) }
        case Reg.config3: if configWritable { config3 = UInt8(truncatingIfNeeded: value) }
        case Reg.config4: if configWritable { config4 = UInt8(truncatingIfNeeded: value) }
        case Reg.config5: if configWritable { config5 = UInt8(truncatingIfNeeded: value) }
        case Reg.timerInt:
            timerInterval = value
            armTimeout()
        case Reg.mulint: multipleInterrupt = UInt16(truncatingIfNeeded: value) & 0x0FFF
        case Reg.bmcr:
            // Reset (bit 15) and restart-autonegotiation (bit 9) complete at once.
            bmcr = value & 0x8000 != 0 ? 0x3100 : UInt16(truncatingIfNeeded: value) & 0x3100
        case Reg.anar: anar = UInt16(truncatingIfNeeded: value) & 0x3FFF | 0x0001
        default: break
        }
    }

    /// CONFIG1/3/4/5 accept writes only in 9346CR's "config register write enable" mode.
    private var configWritable: Bool { cfg9346 & 0xC0 == 0xC0 }

    private func writeCommand(_ value: UInt8) {
        if value & Command.reset != 0 {
            softReset()
            return
        }
        let wasReceiving = command & Command.rxEnable != 0
        command = value & (Command.rxEnable | Command.txEnable)
        if !wasReceiving, command & Command.rxEnable != 0 { backend?.frontendReady() }
    }

    private func writeEEPROMControl(_ value: UInt8) {
        switch value & 0xC0 {
        case 0x40:
            // Auto-load: the station address comes back from the EEPROM, then normal mode.
            loadAddressFromEEPROM()
            cfg9346 = 0
        case 0x80:
            cfg9346 = value & 0xCE
            eeprom.drive(chipSelect: value & 0x08 != 0, clock: value & 0x04 != 0, dataIn: value & 0x02 != 0)
        default:
            cfg9346 = value & 0xC0
        }
    }

    private func loadAddressFromEEPROM() {
        for i in 0..<3 {
            let word = eeprom.words[7 + i]
            idr[2 * i] = UInt8(truncatingIfNeeded: word)
            idr[2 * i + 1] = UInt8(truncatingIfNeeded: word >> 8)
        }
    }

    private var timerCount: UInt32 {
        let elapsed = clock.now() &- timerEpoch
        return UInt32(truncatingIfNeeded: elapsed / 1000 &* 33 &+ (elapsed % 1000) &* 33 / 1000)
    }

    /// TCTR counts 33 MHz PCI clocks from `timerEpoch` and wraps at 2^32 (about 130 s).
    static func nanoseconds(ticks: UInt64) -> UInt64 { ticks / 33 * 1000 + ticks % 33 * 1000 / 33 }
    static let counterPeriod = nanoseconds(ticks: 1 << 32)

    /// Arms the timer for the next time TCTR equals TimerInt; 0 disables it.
    private func armTimeout() {
        guard let timeoutTimer else { return }
        guard timerInterval != 0 else {
            timeoutTimer.cancel()
            return
        }
        let now = clock.now()
        let elapsed = (now &- timerEpoch) % Self.counterPeriod
        let target = Self.nanoseconds(ticks: UInt64(timerInterval))
        let wait = target > elapsed ? target - elapsed : Self.counterPeriod - elapsed + target
        timeoutTimer.arm(at: now &+ max(wait, 1))
    }

    private func timerExpired() {
        raise(Interrupt.timeout)
        armTimeout()
    }

    /// TSAD (0x60): TOK in bits 15-12, TUN 11-8, TABT 7-4, OWN 3-0, one bit per descriptor.
    private var transmitStatusSummary: UInt32 {
        var summary: UInt32 = 0
        for n in 0..<4 {
            let s = tsd[n]
            if s & TxStatus.ok != 0 { summary |= 0x1000 << UInt32(n) }
            if s & TxStatus.underrun != 0 { summary |= 0x100 << UInt32(n) }
            if s & TxStatus.abort != 0 { summary |= 0x10 << UInt32(n) }
            if s & TxStatus.own != 0 { summary |= 1 << UInt32(n) }
        }
        return summary
    }

    // MARK: Interrupts

    private func raise(_ bits: UInt16) {
        isr |= bits
        updateInterrupt()
    }

    private func updateInterrupt() {
        pci.setINTx(isr & imr != 0)
    }


    // MARK: Transmit

    private func transmit(_ n: Int) {
        guard command & Command.txEnable != 0 else { return }
        let size = Int(tsd[n] & TxStatus.sizeMask)
        guard pci.config.busMasterEnabled else {
            GuestErrorLog.shared.report(stateID, "TSD\(n) written with bus mastering off")
            abortTransmit(n)
            return
        }
        guard size > 0, size <= Self.maxFrame else {
            GuestErrorLog.shared.report(stateID, "TSD\(n) frame size \(size) out of range 1...\(Self.maxFrame)")
            abortTransmit(n)
            return
        }
        do throws(GuestMemoryError) {
            try memory.read(at: UInt64(tsad[n]), into: &txBuffer, count: size)
        } catch {
            GuestErrorLog.shared.report(stateID, "TSD\(n) frame at TSAD \(hex(tsad[n])): \(error)")
            abortTransmit(n)
            return
        }
        tsd[n] |= TxStatus.own
        txBuffer.withUnsafeBytes { bytes in
            let frame = UnsafeRawBufferPointer(rebasing: bytes[0..<size])
            if tcr & Self.tcrLoopback == Self.tcrLoopback {
                deliver(frame)
            } else {
                backend?.send(frame: frame)
            }
        }
        tsd[n] |= TxStatus.ok
        raise(Interrupt.txOK)
    }

    private func abortTransmit(_ n: Int) {
        tsd[n] |= TxStatus.own | TxStatus.abort
        raise(Interrupt.txError)
    }

    // MARK: Receive

    /// 8, 16, 32 or 64 KiB, from RCR's RBLEN.
    private var ringSize: UInt32 { 8192 << ((rcr >> 11) & 3) }

    private var rxBufferEmpty: Bool { rxRead == rxWrite }

    /// Free bytes between the write position and the driver's read position.
    private var ringFree: UInt32 {
        let free = (rxRead &- rxWrite) & (ringSize - 1)
        return free == 0 ? ringSize : free
    }

    /// The space an entry takes in the ring: header, frame, CRC, aligned to 4 bytes.
    private static func entrySize(frame: Int) -> UInt32 { UInt32((4 + max(frame, minFrame) + 4 + 3) & ~3) }

    /// Room for the largest frame (frames are taken and dropped while the receiver is off,
    /// as the chip does).
    public var canReceive: Bool {
        command & Command.rxEnable == 0 || ringFree > Self.entrySize(frame: Self.maxFrame) + 4
    }

    public func receive(frame: UnsafeRawBufferPointer) {
        guard linkUp else { return }
        deliver(frame)
    }

    private func deliver(_ frame: UnsafeRawBufferPointer) {
        guard command & Command.rxEnable != 0, frame.count >= 6 else { return }
        // Without bus mastering the NIC may not write memory: the frame is missed.
        guard pci.config.busMasterEnabled else {
            missedPackets &+= 1
            return
        }
        guard let status = acceptance(frame) else { return }
        guard frame.count <= Self.maxFrame else {
            missedPackets &+= 1
            return
        }
        let entry = Self.entrySize(frame: frame.count)
        // The write position must never catch up with the read position (that means empty).
        guard entry + 4 < ringFree else {
            missedPackets &+= 1
            raise(Interrupt.rxOverflow)
            return
        }
        let padded = max(frame.count, Self.minFrame)
        let length = 4 + padded + 4
        rxEntry.withUnsafeMutableBytes { out in
            out.storeBytes(of: status.littleEndian, toByteOffset: 0, as: UInt16.self)
            out.storeBytes(of: UInt16(padded + 4).littleEndian, toByteOffset: 2, as: UInt16.self)
            UnsafeMutableRawBufferPointer(rebasing: out[4..<4 + frame.count]).copyMemory(from: frame)
            for i in 4 + frame.count..<4 + padded { out[i] = 0 }
            let fcs = ethernetFCS(UnsafeRawBufferPointer(rebasing: out[4..<4 + padded]))
            out.storeBytes(of: fcs.littleEndian, toByteOffset: 4 + padded, as: UInt32.self)
        }
        let size = ringSize
        let offset = rxWrite
        let base = UInt64(rbstart)
        do throws(GuestMemoryError) {
            let room = Int(size - offset)
            // With WRAP (RCR bit 7) the driver reserved space past the ring's end; a 64 KiB ring
            // always wraps.
            if length <= room || (rcr & RxConfig.wrap != 0 && size < 65536) {
                try memory.write(at: base + UInt64(offset), bytes: rxEntry[0..<length])
            } else {
                try memory.write(at: base + UInt64(offset), bytes: rxEntry[0..<room])
                try memory.write(at: base, bytes: rxEntry[room..<length])
            }
        } catch {
            GuestErrorLog.shared.report(stateID, "receive ring at RBSTART \(hex(rbstart))+\(hex(offset)): \(error)")
            missedPackets &+= 1
            return
        }
        rxWrite = (offset + entry) & (size - 1)
        raise(Interrupt.rxOK)
    }

    /// The RX status bits a frame earns, or nil when RCR filters it out.
    private func acceptance(_ frame: UnsafeRawBufferPointer) -> UInt16? {
        let promiscuous = rcr & RxConfig.acceptAllPhysical != 0
        // The destination and our address as 48-bit values, first octet lowest.
        let destination = UInt64(frame.loadUnaligned(as: UInt32.self)) | UInt64(frame.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) << 32
        var station: UInt64 = 0
        for i in 0..<6 { station |= UInt64(idr[i]) << UInt64(8 * i) }
        if destination == 0xFFFF_FFFF_FFFF {
            return rcr & RxConfig.acceptBroadcast != 0 || promiscuous ? RxStatus.ok | RxStatus.broadcast : nil
        }
        if frame[0] & 1 != 0 {
            if promiscuous { return RxStatus.ok | RxStatus.multicast }
            guard rcr & RxConfig.acceptMulticast != 0 else { return nil }
            let bit = Int(Self.multicastHash(frame))
            return mar[bit >> 3] & (1 << UInt8(bit & 7)) != 0 ? RxStatus.ok | RxStatus.multicast : nil
        }
        if destination == station {
            return rcr & RxConfig.acceptPhysicalMatch != 0 || promiscuous ? RxStatus.ok | RxStatus.physical : nil
        }
        return promiscuous ? RxStatus.ok : nil
    }

    /// The MAR bit (0-63) for a destination: the top 6 bits of the big-endian CRC-32 of the
    /// address, as the chip (and 8139too's mc_filter) compute it.
    static func multicastHash(_ frame: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for i in 0..<6 {
            var byte = frame[i]
            for _ in 0..<8 {
                let carry = (crc >> 31) ^ UInt32(byte & 1)
                crc <<= 1
                byte >>= 1
                if carry != 0 { crc ^= 0x04C1_1DB7 }
            }
        }
        return crc >> 26
    }

    // MARK: Reset and state

    /// CR.RST: registers to their defaults; the station address reloads from the EEPROM.
    private func softReset() {
        loadAddressFromEEPROM()
        for n in 0..<4 {
            tsd[n] = TxStatus.own
            tsad[n] = 0
        }
        rbstart = 0
        rxRead = 0
        rxWrite = 0
        command = 0
        imr = 0
        isr = 0
        tcr = 0
        rcr = 0
        missedPackets = 0
        timerInterval = 0
        timerEpoch = clock.now()
        timeoutTimer?.cancel()
        multipleInterrupt = 0
        bmcr = 0x3100
        anar = 0x05E1
        updateInterrupt()
    }

    public func reset() {
        pci.reset()
        eeprom = EEPROM93C46(words: Self.eepromImage(configuredMAC))
        for i in 0..<8 { mar[i] = 0 }
        cfg9346 = 0
        config1 = 0
        config3 = 0
        config4 = 0
        config5 = 0
        softReset()
    }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(bytes: idr)
        w.put(bytes: mar)
        w.put(array: tsd)
        w.put(array: tsad)
        for v in [rbstart, rxRead, rxWrite, tcr, rcr, missedPackets, timerInterval, timerCount] { w.put(v) }
        w.put(command)
        w.put(imr)
        w.put(isr)
        for v in [cfg9346, config1, config3, config4, config5] { w.put(v) }
        w.put(multipleInterrupt)
        w.put(bmcr)
        w.put(anar)
        eeprom.saveState(to: &w)
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        try pci.loadState(from: &r)
        let newIDR = try r.getBytes(exactly: 6)
        let newMAR = try r.getBytes(exactly: 8)
        let newTSD = try r.getArray(of: UInt32.self, exactly: 4)
        let newTSAD = try r.getArray(of: UInt32.self, exactly: 4)
        var words: [UInt32] = []
        for _ in 0..<8 { words.append(try r.get(UInt32.self)) }
        let newCommand = try r.get(UInt8.self)
        let newIMR = try r.get(UInt16.self)
        let newISR = try r.get(UInt16.self)
        var configs: [UInt8] = []
        for _ in 0..<5 { configs.append(try r.get(UInt8.self)) }
        let newMulint = try r.get(UInt16.self)
        let newBMCR = try r.get(UInt16.self)
        let newANAR = try r.get(UInt16.self)
        var newEEPROM = eeprom
        try newEEPROM.loadState(from: &r)
        let newRCR = words[4] & RxConfig.writable
        let size = UInt32(8192) << ((newRCR >> 11) & 3)
        guard words[1] < size, words[2] < size, words[2] & 3 == 0 else {
            throw .invalidValue(section: stateID, field: "receive ring positions")
        }
        guard newCommand & ~(Command.rxEnable | Command.txEnable) == 0 else {
            throw .invalidValue(section: stateID, field: "command register")
        }
        idr = newIDR
        mar = newMAR
        tsd = newTSD.map { $0 & (TxStatus.writable | TxStatus.ok | TxStatus.underrun | TxStatus.abort | 0xBF00_0000) }
        tsad = newTSAD
        rbstart = words[0]
        rxRead = words[1]
        rxWrite = words[2]
        tcr = words[3] & Self.tcrWritable
        rcr = newRCR
        missedPackets = words[5]
        timerInterval = words[6]
        timerEpoch = clock.now() &- Self.nanoseconds(ticks: UInt64(words[7]))
        command = newCommand
        imr = newIMR & Interrupt.implemented
        isr = newISR & Interrupt.implemented
        cfg9346 = configs[0] & 0xCE
        config1 = configs[1]
        config3 = configs[2]
        config4 = configs[3]
        config5 = configs[4]
        multipleInterrupt = newMulint & 0x0FFF
        bmcr = newBMCR & 0x3100
        anar = newANAR
        eeprom = newEEPROM
        armTimeout()
        updateInterrupt()
        backend?.frontendReady()
    }
}

/// The Ethernet frame check sequence (CRC-32, reflected, as sent on the wire little-endian).
func ethernetFCS(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes { crc = crc32Table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
    return ~crc
}

private let crc32Table: [UInt32] = (0..<256).map { (n: UInt32) -> UInt32 in
    var c = n
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}
