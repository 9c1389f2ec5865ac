import DMCore
#if canImport(Glibc)
import Glibc
#endif

public enum CMOSRTCError: Error, Equatable, CustomStringConvertible {
    case invalidBootOrder(String, reason: String)

    public var description: String {
        switch self {
        case let .invalidBootOrder(order, reason): return "boot order '\(order)': \(reason)"
        }
    }
}

/// Host wall-clock time in nanoseconds since the Unix epoch (UTC).
public func hostRealtimeNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec)
}

/// The MC146818 real-time clock and its 128 bytes of CMOS RAM, at ports 0x70 (index; bit 7 is
/// the NMI mask and ignored, as QEMU does) and 0x71 (data), registered as one 2-port window.
///
/// Time of day follows the host's wall clock in UTC (QEMU's default `-rtc base=utc,clock=host`)
/// plus an offset the guest changes by setting the time, so it keeps running across pauses and
/// migrations like QEMU's. Registers 0-9 and the century byte (0x32) are computed on read in
/// the format register B selects (BCD or binary, 12- or 24-hour). While B.SET is set, or the
/// divider (A bits 4-6) is held in reset, the clock is frozen and those bytes are plain storage;
/// releasing SET keeps the sub-second phase, releasing the divider starts the next second half
/// a second later (the datasheet's rule, which QEMU follows). A.UIP reads 1 during the last
/// 244 µs before each second edge (QEMU's window).
///
/// Interrupts (IRQ 8, level; register C reads clear it): periodic at the rate in A (rates 1-2
/// behave as 8-9), update-ended at each second edge, alarm with 0xC0-0xFF as "don't care".
/// As in QEMU, PF is only set while B.PIE is on (the periodic timer idles otherwise), and index
/// 0x37 (the PS/2 century byte) is redirected to 0x32. Not modelled: lost-tick compensation
/// (QEMU's `lost_tick_policy=slew`), daylight saving (DSE), the square-wave output.
public final class CMOSRTC: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1

    enum Index {
        static let seconds = 0x00, secondsAlarm = 0x01, minutes = 0x02, minutesAlarm = 0x03
        static let hours = 0x04, hoursAlarm = 0x05, weekday = 0x06, day = 0x07, month = 0x08, year = 0x09
        static let a = 0x0A, b = 0x0B, c = 0x0C, d = 0x0D
        static let shutdownStatus = 0x0F
        static let century = 0x32
        /// PS/2 machines kept the century here; QEMU redirects it to 0x32.
        static let ps2Century = 0x37
    }
    enum A {
        static let updateInProgress: UInt8 = 0x80
        static let dividerMask: UInt8 = 0x70
        static let rateMask: UInt8 = 0x0F
    }
    enum B {
        static let set: UInt8 = 0x80
        static let periodicEnable: UInt8 = 0x40
        static let alarmEnable: UInt8 = 0x20
        static let updateEnable: UInt8 = 0x10
        static let squareWave: UInt8 = 0x08
        static let binary: UInt8 = 0x04
        static let twentyFourHour: UInt8 = 0x02
    }
    enum C {
        static let irq: UInt8 = 0x80
        static let periodic: UInt8 = 0x40
        static let alarm: UInt8 = 0x20
        static let update: UInt8 = 0x10
        static let sources: UInt8 = 0x70
    }
    static let nanosecondsPerSecond: Int64 = 1_000_000_000
    /// A.UIP is set this long before each second edge (8 cycles of the 32.768 kHz clock).
    static let updateInProgressWindow: Int64 = 8 * 1_000_000_000 / 32768

    private let irq: IRQLine
    private let clock: VirtualClock
    private let wallClock: () -> Int64
    private let periodicTimer: any DeviceTimer
    private let updateTimer: any DeviceTimer

    private var cmos = [UInt8](repeating: 0, count: 128)
    private var index = 0
    /// RTC time = wall clock + offset, in nanoseconds since the epoch (meaningful while running).
    private var offset: Int64 = 0
    /// The second the update timer was armed for, so a fire a hair early still advances.
    private var pendingEdgeSecond: Int64?
    private var irqLevel = false

    /// `wallClock` returns UTC nanoseconds since the epoch; tests inject one.
    public init(irq: IRQLine, timers: any TimerService, stateID: String = "rtc",
                wallClock: @escaping () -> Int64 = hostRealtimeNanoseconds) {
        self.irq = irq
        self.clock = timers.clock
        self.wallClock = wallClock
        self.stateID = stateID
        var firePeriodic: (() -> Void)?
        var fireUpdate: (() -> Void)?
        periodicTimer = timers.makeTimer { firePeriodic?() }
        updateTimer = timers.makeTimer { fireUpdate?() }
        firePeriodic = { [weak self] in self?.periodicTick() }
        fireUpdate = { [weak self] in self?.secondEdge() }
        cmos[Index.a] = 0x26
        cmos[Index.b] = B.twentyFourHour
        cmos[Index.d] = 0x80
        armUpdateTimer()
    }

    // MARK: Machine API

    public func setCMOSByte(_ index: Int, _ value: UInt8) {
        guard cmos.indices.contains(index) else { return }
        cmos[index] = value
    }

    /// Entering ACPI S3: shutdown status 0xFE (index 0x0F) sends the firmware, when the CPUs
    /// restart at the reset vector, down its resume path to the OS's waking vector.
    public func recordSuspendToRAM() {
        setCMOSByte(Index.shutdownStatus, 0xFE)
    }

    public func cmosByte(_ index: Int) -> UInt8 {
        guard cmos.indices.contains(index) else { return 0xFF }
        if isTimeRegister(index) && isRunning { refreshTimeRegisters() }
        return cmos[index]
    }

    /// Stores the standard checksum of bytes 0x10-0x2D at 0x2E (high) and 0x2F (low).
    public func updateChecksum() {
        let sum = cmos[0x10...0x2D].reduce(UInt16(0)) { $0 &+ UInt16($1) }
        cmos[0x2E] = UInt8(sum >> 8)
        cmos[0x2F] = UInt8(sum & 0xFF)
    }

    /// The memory-size bytes as QEMU's pc_cmos_init writes them: 0x15/0x16 base memory in KiB
    /// (at most 640), 0x17/0x18 and 0x30/0x31 KiB above 1 MiB (at most 65535), 0x34/0x35 64 KiB
    /// blocks above 16 MiB below 4 GiB (at most 65535), 0x5B-0x5D 64 KiB blocks above 4 GiB.
    public func setMemorySizes(belowFourGiB: UInt64, aboveFourGiB: UInt64) {
        let base = min(belowFourGiB / 1024, 640)
        cmos[0x15] = UInt8(truncatingIfNeeded: base)
        cmos[0x16] = UInt8(truncatingIfNeeded: base >> 8)
        let extended = min(belowFourGiB > 1 << 20 ? (belowFourGiB - (1 << 20)) / 1024 : 0, 65535)
        for i in [0x17, 0x30] {
            cmos[i] = UInt8(truncatingIfNeeded: extended)
            cmos[i + 1] = UInt8(truncatingIfNeeded: extended >> 8)
        }
        let above16M = min(belowFourGiB > 16 << 20 ? (belowFourGiB - (16 << 20)) / 65536 : 0, 65535)
        cmos[0x34] = UInt8(truncatingIfNeeded: above16M)
        cmos[0x35] = UInt8(truncatingIfNeeded: above16M >> 8)
        let high = aboveFourGiB / 65536
        cmos[0x5B] = UInt8(truncatingIfNeeded: high)
        cmos[0x5C] = UInt8(truncatingIfNeeded: high >> 8)
        cmos[0x5D] = UInt8(truncatingIfNeeded: high >> 16)
    }

    /// 0x5F = CPUs - 1; 0 when the count does not fit a byte (firmware then uses fw_cfg), as QEMU.
    public func setCPUCount(_ count: Int) {
        cmos[0x5F] = (1...256).contains(count) ? UInt8(count - 1) : 0
    }

    /// The equipment byte (0x14) as QEMU sets it: FPU and PS/2 mouse present, plus floppies.
    public func setEquipment(floppyDrives: Int = 0) {
        var value: UInt8 = 0x02 | 0x04
        if floppyDrives >= 1 { value |= 0x01 }
        if floppyDrives >= 2 { value |= 0x40 }
        cmos[0x14] = value
    }

    /// QEMU's `-boot order=` letters for the BIOS: up to three of a/b (floppy), c (disk),
    /// d (CD-ROM), n (network), as nibbles: first in 0x3D low, second 0x3D high, third 0x38
    /// high. 0x38 bit 0 set disables the floppy boot-signature check (QEMU: fd_bootchk off).
    public func setBootOrder(_ devices: String, checkFloppySignature: Bool = true) throws(CMOSRTCError) {
        let letters = Array(devices.utf8)
        guard letters.count <= 3 else { throw .invalidBootOrder(devices, reason: "too many boot devices for PC") }
        var nibbles: [UInt8] = [0, 0, 0]
        for (i, letter) in letters.enumerated() {
            switch letter {
            case UInt8(ascii: "a"), UInt8(ascii: "b"): nibbles[i] = 1
            case UInt8(ascii: "c"): nibbles[i] = 2
            case UInt8(ascii: "d"): nibbles[i] = 3
            case UInt8(ascii: "n"): nibbles[i] = 4
            default: throw .invalidBootOrder(devices, reason: "invalid boot device for PC: '\(Character(Unicode.Scalar(letter)))'")
            }
        }
        cmos[0x3D] = nibbles[1] << 4 | nibbles[0]
        cmos[0x38] = nibbles[2] << 4 | (checkFloppySignature ? 0 : 1)
    }

    // MARK: Time

    private var isRunning: Bool {
        cmos[Index.b] & B.set == 0 && dividerRunning(cmos[Index.a])
    }

    private func dividerRunning(_ a: UInt8) -> Bool { a & A.dividerMask <= 0x20 }

    private func rtcNanoseconds() -> Int64 { wallClock() &+ offset }

    private var binaryMode: Bool { cmos[Index.b] & B.binary != 0 }

    private func encode(_ value: Int) -> UInt8 {
        let v = UInt8(clamping: value)
        return binaryMode ? v : (v / 10) << 4 | v % 10
    }

    private func decode(_ raw: UInt8) -> Int {
        binaryMode ? Int(raw) : Int(raw >> 4) * 10 + Int(raw & 0x0F)
    }

    private func encodeHour(_ hour: Int) -> UInt8 {
        if cmos[Index.b] & B.twentyFourHour != 0 { return encode(hour) }
        let h12 = hour % 12 == 0 ? 12 : hour % 12
        return encode(h12) | (hour >= 12 ? 0x80 : 0)
    }

    private func decodeHour(_ raw: UInt8) -> Int {
        if cmos[Index.b] & B.twentyFourHour != 0 { return decode(raw) }
        return decode(raw & 0x7F) % 12 + (raw & 0x80 != 0 ? 12 : 0)
    }

    private func isTimeRegister(_ i: Int) -> Bool {
        i == Index.seconds || i == Index.minutes || i == Index.hours || (Index.weekday...Index.year).contains(i)
            || i == Index.century
    }

    /// Writes the running time into the time registers in the current format.
    private func refreshTimeRegisters() {
        let seconds = floorDiv(rtcNanoseconds(), Self.nanosecondsPerSecond)
        writeTime(seconds)
    }

    private func writeTime(_ epochSeconds: Int64) {
        let days = floorDiv(epochSeconds, 86400)
        let secondOfDay = Int(epochSeconds - days * 86400)
        let (year, month, day) = civilDate(fromDays: days)
        cmos[Index.seconds] = encode(secondOfDay % 60)
        cmos[Index.minutes] = encode(secondOfDay / 60 % 60)
        cmos[Index.hours] = encodeHour(secondOfDay / 3600)
        cmos[Index.weekday] = encode(Int(floorMod(days + 4, 7)) + 1)  // 1970-01-01 was a Thursday; Sunday = 1
        cmos[Index.day] = encode(day)
        cmos[Index.month] = encode(month)
        cmos[Index.year] = encode(Int(floorMod(year, 100)))
        cmos[Index.century] = encode(Int(floorDiv(year, 100)))
    }

    /// Reads the time registers as the guest left them; out-of-range fields are clamped, the
    /// century to 19-21.
    private func registerTime() -> Int64 {
        func field(_ value: Int, _ range: ClosedRange<Int>, _ name: String) -> Int {
            if !range.contains(value) {
                GuestErrorLog.shared.report(stateID, "RTC \(name) \(value) out of range; clamped")
            }
            return min(max(value, range.lowerBound), range.upperBound)
        }
        let second = field(decode(cmos[Index.seconds]), 0...59, "seconds")
        let minute = field(decode(cmos[Index.minutes]), 0...59, "minutes")
        let hour = field(decodeHour(cmos[Index.hours]), 0...23, "hours")
        let day = field(decode(cmos[Index.day]), 1...31, "day")
        let month = field(decode(cmos[Index.month]), 1...12, "month")
        let year = Int64(field(decode(cmos[Index.year]), 0...99, "year"))
            // 1900-2199 keeps nanoseconds since the epoch well inside Int64.
            + Int64(field(decode(cmos[Index.century]), 19...21, "century")) * 100
        return days(fromCivilYear: year, month: month, day: day) * 86400 + Int64(hour * 3600 + minute * 60 + second)
    }

    /// Restarts the clock from the registers with the given sub-second phase.
    private func startFromRegisters(phase: Int64) {
        offset = registerTime() &* Self.nanosecondsPerSecond &+ phase &- wallClock()
    }

    private var currentPhase: Int64 { floorMod(rtcNanoseconds(), Self.nanosecondsPerSecond) }

    // MARK: BusDevice

    public func read(region: Int, offset windowOffset: UInt64, size: Int) -> UInt64 {
        // Wider accesses split into bytes at consecutive ports, as QEMU's memory core does.
        var value: UInt64 = 0
        for i in 0..<min(size, 8) {
            value |= UInt64(readByte(at: windowOffset + UInt64(i))) << (8 * UInt64(i))
        }
        return value
    }

    public func write(region: Int, offset windowOffset: UInt64, size: Int, value: UInt64) {
        for i in 0..<min(size, 8) {
            writeByte(at: windowOffset + UInt64(i), UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))))
        }
    }

    private func readByte(at port: UInt64) -> UInt8 {
        guard port == 1 else { return 0xFF }  // the index port is write-only
        if index == Index.ps2Century { index = Index.century }
        switch index {
        case Index.a:
            var value = cmos[Index.a] & ~A.updateInProgress
            if isRunning && currentPhase >= Self.nanosecondsPerSecond - Self.updateInProgressWindow {
                value |= A.updateInProgress
            }
            return value
        case Index.c:
            let value = cmos[Index.c]
            cmos[Index.c] = 0
            updateIRQ()
            armUpdateTimer()
            return value
        case Index.d:
            return 0x80
        case let i where isTimeRegister(i):
            if isRunning { refreshTimeRegisters() }
            return cmos[i]
        default:
            return cmos[index]
        }
    }

    private func writeByte(at port: UInt64, _ value: UInt8) {
        guard port == 1 else {
            index = Int(value & 0x7F)
            return
        }
        if index == Index.ps2Century { index = Index.century }
        switch index {
        case Index.a:
            let wasRunning = isRunning
            if wasRunning { refreshTimeRegisters() }
            // Only leaving divider reset (DV = 11x) delays the first update, as in QEMU.
            let dividerReleased = cmos[Index.a] & 0x60 == 0x60 && dividerRunning(value)
            cmos[Index.a] = value & ~A.updateInProgress
            if !wasRunning && isRunning {
                // Out of divider reset the first update comes half a second later.
                startFromRegisters(phase: dividerReleased ? Self.nanosecondsPerSecond / 2 : currentPhase)
            }
            armPeriodicTimer()
            armUpdateTimer()
        case Index.b:
            writeRegisterB(value)
        case Index.c, Index.d:
            GuestErrorLog.shared.report(stateID, "write of \(hex(value)) to read-only RTC register \(hex(index))")
        case let i where isTimeRegister(i):
            if isRunning {
                let phase = currentPhase
                refreshTimeRegisters()
                cmos[i] = value
                startFromRegisters(phase: phase)
                armUpdateTimer()
            } else {
                cmos[i] = value
            }
        default:
            cmos[index] = value
            if index == Index.secondsAlarm || index == Index.minutesAlarm || index == Index.hoursAlarm {
                armUpdateTimer()
            }
        }
    }

    private func writeRegisterB(_ requested: UInt8) {
        var value = requested
        let wasRunning = isRunning
        if value & B.set != 0 {
            if wasRunning { refreshTimeRegisters() }
            value &= ~B.updateEnable  // SET disables update interrupts (QEMU, datasheet)
        } else if cmos[Index.b] & B.set != 0 && dividerRunning(cmos[Index.a]) {
            // Leaving SET: the guest's registers become the time; the phase carries on.
            startFromRegisters(phase: currentPhase)
        }
        cmos[Index.b] = value
        // A flag already set when its enable goes on raises the interrupt at once.
        if value & cmos[Index.c] & C.sources != 0 {
            cmos[Index.c] |= C.irq
        } else {
            cmos[Index.c] &= ~C.irq
        }
        updateIRQ()
        armPeriodicTimer()
        armUpdateTimer()
    }

    private func updateIRQ() {
        let level = cmos[Index.c] & C.irq != 0
        if level != irqLevel {
            irqLevel = level
            irq.set(level)
        }
    }

    // MARK: Timers

    /// Periodic interrupt period in nanoseconds, or nil when off.
    private var periodicPeriod: UInt64? {
        var rate = Int(cmos[Index.a] & A.rateMask)
        guard rate != 0, cmos[Index.b] & B.periodicEnable != 0, dividerRunning(cmos[Index.a]) else { return nil }
        if rate <= 2 { rate += 7 }
        return (UInt64(1) << UInt64(rate - 1)) * 1_000_000_000 / 32768
    }

    private func armPeriodicTimer() {
        guard let period = periodicPeriod else {
            periodicTimer.cancel()
            return
        }
        let now = clock.now()
        // Keep ticks on the period's grid so re-arming does not shift them.
        periodicTimer.arm(at: (now / period + 1) * period)
    }

    private func periodicTick() {
        guard periodicPeriod != nil else { return }
        cmos[Index.c] |= C.periodic
        if cmos[Index.b] & B.periodicEnable != 0 { cmos[Index.c] |= C.irq }
        updateIRQ()
        armPeriodicTimer()
    }

    /// The update timer runs at second edges while there is something for it to do: a flag
    /// not yet set, or an enabled interrupt.
    private func armUpdateTimer() {
        let needed = cmos[Index.c] & (C.update | C.alarm) != C.update | C.alarm
            || cmos[Index.b] & (B.updateEnable | B.alarmEnable) != 0
        guard isRunning, needed else {
            updateTimer.cancel()
            pendingEdgeSecond = nil
            return
        }
        let now = rtcNanoseconds()
        let nextSecond = floorDiv(now, Self.nanosecondsPerSecond) + 1
        let wait = UInt64(max(0, nextSecond * Self.nanosecondsPerSecond - now))
        pendingEdgeSecond = nextSecond
        updateTimer.arm(at: clock.now() &+ wait)
    }

    private func secondEdge() {
        guard isRunning else { return }
        let seconds = max(floorDiv(rtcNanoseconds(), Self.nanosecondsPerSecond), pendingEdgeSecond ?? .min)
        writeTime(seconds)
        var flags = C.update
        if alarmMatches() { flags |= C.alarm }
        cmos[Index.c] |= flags
        if flags & cmos[Index.b] & (B.updateEnable | B.alarmEnable) != 0 { cmos[Index.c] |= C.irq }
        updateIRQ()
        armUpdateTimer()
    }

    private func alarmMatches() -> Bool {
        func matches(_ alarm: Int, _ current: Int, hour: Bool) -> Bool {
            let raw = cmos[alarm]
            if raw & 0xC0 == 0xC0 { return true }  // "don't care"
            return hour ? decodeHour(raw) == decodeHour(cmos[current]) : decode(raw) == decode(cmos[current])
        }
        return matches(Index.secondsAlarm, Index.seconds, hour: false)
            && matches(Index.minutesAlarm, Index.minutes, hour: false)
            && matches(Index.hoursAlarm, Index.hours, hour: true)
    }

    // MARK: Reset and state

    /// As QEMU: interrupt enables and flags clear; CMOS contents and the time survive.
    public func reset() {
        cmos[Index.b] &= ~(B.periodicEnable | B.alarmEnable | B.squareWave)
        cmos[Index.c] = 0
        updateIRQ()
        armPeriodicTimer()
        armUpdateTimer()
    }

    public func saveState(to writer: inout StateWriter) {
        if isRunning { refreshTimeRegisters() }
        writer.put(bytes: cmos)
        writer.put(UInt8(index))
        // Relative to the wall clock, so a restored guest's clock follows the host's like QEMU's.
        writer.put(offset)
    }

    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        var newCMOS = try reader.getBytes(exactly: 128)
        let newIndex = try reader.get(UInt8.self)
        let newOffset = try reader.get(Int64.self)
        guard newIndex < 128 else { throw .invalidValue(section: stateID, field: "index") }
        guard newCMOS[Index.c] & 0x0F == 0 else { throw .invalidValue(section: stateID, field: "register C") }
        newCMOS[Index.a] &= ~A.updateInProgress
        newCMOS[Index.d] = 0x80
        cmos = newCMOS
        index = Int(newIndex)
        offset = newOffset
        updateIRQ()
        armPeriodicTimer()
        armUpdateTimer()
    }
}

// MARK: Calendar arithmetic (proleptic Gregorian, days since 1970-01-01)

private func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
    let q = a / b
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
}

private func floorMod(_ a: Int64, _ b: Int64) -> Int64 { a - floorDiv(a, b) * b }

/// Days since the epoch for a date; months shift so the year starts in March and the leap
/// day falls last, which makes the day-of-year a closed formula.
func days(fromCivilYear year: Int64, month: Int, day: Int) -> Int64 {
    let y = month <= 2 ? year - 1 : year
    let era = floorDiv(y, 400)
    let yearOfEra = y - era * 400
    let shiftedMonth = Int64(month > 2 ? month - 3 : month + 9)
    let dayOfYear = (153 * shiftedMonth + 2) / 5 + Int64(day) - 1
    let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
    return era * 146_097 + dayOfEra - 719_468
}

func civilDate(fromDays days: Int64) -> (year: Int64, month: Int, day: Int) {
    let shifted = days + 719_468
    let era = floorDiv(shifted, 146_097)
    let dayOfEra = shifted - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let shiftedMonth = (5 * dayOfYear + 2) / 153
    let day = Int(dayOfYear - (153 * shiftedMonth + 2) / 5 + 1)
    let month = Int(shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9)
    return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
}
