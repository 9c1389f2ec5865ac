import DMCore

/// The PIIX4 power-management function (8086:7113) at 01.3: the ACPI fixed hardware a guest's
/// OS and SeaBIOS use — PM1 event and control registers, the 3.579545 MHz PM timer — at the
/// I/O base the guest programs (PMBA, 0x40; enabled by PMREGMISC bit 0, 0x80), and the SCI.
///
/// SMM is not emulated. Like QEMU without SMM, the APMC-enable bit (0x5B bit 1) starts set, so
/// SeaBIOS believes SMM is already initialised and never raises an SMI we could not serve.
/// The APM control/status ports (0xB2/0xB3, region `apmRegion`, the FADT's SMI_CMD) still
/// work the way firmware without SMM needs: ACPI_ENABLE (0xF1) sets SCI_EN, ACPI_DISABLE
/// (0xF0) clears it — hvmloader refuses to go on unless that works.
public final class PIIX4PowerManagement: PCIDevice, Snapshottable, Resettable, @unchecked Sendable {
    public static let timerFrequency: UInt64 = 3_579_545
    public static let ioSize: UInt64 = 64
    static let pmioRegion = 7
    public static let apmRegion = 8
    public static let apmPorts: ClosedRange<UInt64> = 0xB2...0xB3
    /// The GPE0 block the FADT of SeaBIOS, hvmloader and QEMU names: status (write one to
    /// clear) then enable, two bytes each. Nothing raises a GPE here (no ACPI hotplug), but it
    /// must read as clear: all-ones made Linux disable GPEs 0-7 with an error line each.
    public static let gpeRegion = 9
    public static let gpePorts: ClosedRange<UInt64> = 0xAFE0...0xAFE3
    static let acpiEnable: UInt8 = 0xF1
    static let acpiDisable: UInt8 = 0xF0
    static let sciEnable: UInt16 = 1 << 0

    /// PM1 status/enable bits.
    public struct PM1Event: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let timerOverflow = PM1Event(rawValue: 1 << 0)
        public static let busMaster = PM1Event(rawValue: 1 << 4)
        public static let globalLock = PM1Event(rawValue: 1 << 5)
        public static let powerButton = PM1Event(rawValue: 1 << 8)
        public static let rtcAlarm = PM1Event(rawValue: 1 << 10)
        public static let wake = PM1Event(rawValue: 1 << 15)
        static let sciSources: PM1Event = [.timerOverflow, .globalLock, .powerButton, .rtcAlarm]
    }

    public let pci: PCIFunction
    private let sci: IRQLine
    private let clock: VirtualClock
    private let overflowTimer: any DeviceTimer
    private var status: PM1Event = []
    private var enable: PM1Event = []
    private var control: UInt16 = 0
    private var gpe: (status: UInt16, enable: UInt16) = (0, 0)
    /// APM control (last SMI command) and status (scratch) bytes.
    private var apm: (control: UInt8, status: UInt8) = (0, 0)
    private var mappedBase: UInt64?
    /// Told when the guest writes SLP_EN, with SLP_TYP (what each type means is in the ACPI
    /// tables the firmware gives the guest, so the machine decides).
    public var onSleepRequest: ((UInt8) -> Void)?

    public init(sci: IRQLine, timers: any TimerService) {
        // As QEMU: every device-specific register is writable, PMBA and the SMBus base included.
        var config = PCIConfigSpace(vendor: 0x8086, device: 0x7113, revision: 0x03, classCode: 0x06_8000,
                                    interruptPin: 1, status: 0x0280)
        config.set32(0x40, 0x1)      // PMBA: I/O space indicator
        config.set32(0x90, 0xB101)   // SMBus base, as QEMU's pc machine sets it
        config.set8(0xD2, 0x09)      // SMBus host configuration: enabled, IRQ 9
        config.set8(0x5B, 0x02)      // APMC_EN: "SMM already set up"
        pci = PCIFunction(name: "PIIX4-PM", config: config)
        self.sci = sci
        clock = timers.clock
        var overflow: (() -> Void)?
        overflowTimer = timers.makeTimer { overflow?() }
        overflow = { [unowned self] in self.timerOverflowed() }
    }

    /// The 24-bit PM timer, derived from guest time so it never drifts and costs nothing idle.
    public var timerValue: UInt32 {
        UInt32(truncatingIfNeeded: Self.ticks(atNanoseconds: clock.now())) & 0xFF_FFFF
    }

    /// PM timer ticks after `ns` nanoseconds, in 128-bit arithmetic so it never overflows.
    static func ticks(atNanoseconds ns: UInt64) -> UInt64 {
        let product = ns.multipliedFullWidth(by: timerFrequency)
        return UInt64(1_000_000_000).dividingFullWidth(product).quotient
    }

    public func pressPowerButton() {
        status.insert(.powerButton)
        updateSCI()
    }

    /// Leaving a sleep state: WAK_STS tells the OS's resume path the system woke.
    public func signalWake() {
        status.insert(.wake)
    }

    private func updateSCI() {
        sci.set(!status.intersection(enable).intersection(.sciSources).isEmpty || gpe.status & gpe.enable != 0)
    }

    /// Arms the overflow timer for the next flip of bit 23 while the guest wants that event.
    private func armOverflowTimer() {
        guard enable.contains(.timerOverflow), !status.contains(.timerOverflow) else {
            overflowTimer.cancel()
            return
        }
        let now = clock.now()
        let period: UInt64 = 1 << 23
        let ticks = Self.ticks(atNanoseconds: now)
        let nextTicks = (ticks / period + 1) * period
        let (nsHigh, nsLow) = nextTicks.multipliedFullWidth(by: 1_000_000_000)
        let (ns, _) = Self.timerFrequency.dividingFullWidth((nsHigh, nsLow))
        overflowTimer.arm(at: ns + 1)
    }

    private func timerOverflowed() {
        status.insert(.timerOverflow)
        updateSCI()
    }

    // MARK: configuration space

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        pci.write(offset: offset, size: size, value: value)
        remapPMIO()
    }

    private func remapPMIO() {
        let enabled = pci.config.get8(0x80) & 0x1 != 0
        let base = UInt64(pci.config.get32(0x40) & 0xFFC0)
        let want: UInt64? = enabled && base != 0 ? base : nil
        guard want != mappedBase else { return }
        if mappedBase != nil { pci.portBus?.unregister(self, region: Self.pmioRegion) }
        mappedBase = nil
        guard let want else { return }
        do {
            try pci.portBus?.register(self, base: want, length: Self.ioSize, region: Self.pmioRegion, name: "PIIX4 PM I/O")
            mappedBase = want
        } catch {
            GuestErrorLog.shared.report("PIIX4-PM", "PM I/O base \(hex(want)) not mapped: \(error)")
        }
    }

    // MARK: PM I/O registers

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        if region == Self.apmRegion {
            var value: UInt64 = 0
            for i in 0..<UInt64(size) where offset + i < 2 {
                value |= UInt64(offset + i == 0 ? apm.control : apm.status) << (8 * i)
            }
            return value
        }
        if region == Self.gpeRegion {
            let block = UInt64(gpe.status) | UInt64(gpe.enable) << 16
            return (block >> (8 * min(offset, 4))) & mask(size)
        }
        guard region == Self.pmioRegion else { return mask(size) }
        var value: UInt64 = 0
        for i in 0..<UInt64(size) { value |= UInt64(readByte(offset + i)) << (8 * i) }
        return value
    }

    private func readByte(_ offset: UInt64) -> UInt8 {
        switch offset {
        case 0...1: return byte(status.rawValue, offset)
        case 2...3: return byte(enable.rawValue, offset - 2)
        case 4...5: return byte(control, offset - 4)
        case 8...11: return UInt8(truncatingIfNeeded: timerValue >> (8 * UInt32(offset - 8)))
        default: return 0
        }
    }

    private func byte(_ value: UInt16, _ index: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: value >> (8 * index)) }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        if region == Self.apmRegion {
            for i in 0..<UInt64(size) where offset + i < 2 {
                let byte = UInt8(truncatingIfNeeded: value >> (8 * i))
                if offset + i == 0 { writeAPMControl(byte) } else { apm.status = byte }
            }
            return
        }
        if region == Self.gpeRegion {
            writeGPE(offset: offset, size: size, value: value)
            return
        }
        guard region == Self.pmioRegion else { return }
        // Apply by register so a 32-bit write to 0x00 updates status and enable together.
        for register in stride(from: UInt64(0), to: 6, by: 2) where offset < register + 2 && offset + UInt64(size) > register {
            var mask16: UInt16 = 0, value16: UInt16 = 0
            for i in 0..<UInt64(size) where offset + i >= register && offset + i < register + 2 {
                let shift = 8 * (offset + i - register)
                mask16 |= 0xFF << shift
                value16 |= UInt16(truncatingIfNeeded: (value >> (8 * i)) & 0xFF) << shift
            }
            writeRegister(register, value: value16, mask: mask16)
        }
    }

    private func writeGPE(offset: UInt64, size: Int, value: UInt64) {
        for i in 0..<UInt64(size) where offset + i < 4 {
            let byte = UInt16(truncatingIfNeeded: value >> (8 * i))
            let shift = 8 * ((offset + i) % 2)
            if offset + i < 2 {
                gpe.status &= ~(byte << shift)
            } else {
                gpe.enable = (gpe.enable & ~(0xFF << shift)) | byte << shift
            }
        }
        updateSCI()
    }

    private func writeAPMControl(_ command: UInt8) {
        apm.control = command
        switch command {
        case Self.acpiEnable: control |= Self.sciEnable
        case Self.acpiDisable: control &= ~Self.sciEnable
        default: break  // other commands would go to SMM, which is not there
        }
    }

    private func writeRegister(_ register: UInt64, value: UInt16, mask: UInt16) {
        switch register {
        case 0:
            status.subtract(PM1Event(rawValue: value & mask))
        case 2:
            enable = PM1Event(rawValue: (enable.rawValue & ~mask) | (value & mask))
        default:
            let written = (control & ~mask) | (value & mask)
            control = written & ~(1 << 13)  // SLP_EN always reads as zero
            if written & (1 << 13) != 0 { onSleepRequest?(UInt8((written >> 10) & 0x7)) }
        }
        updateSCI()
        armOverflowTimer()
    }

    // MARK: state

    public var stateID: String { "piix4-pm" }
    /// 2 adds the APM bytes, 3 the GPE0 block.
    public var stateVersion: UInt32 { 3 }

    public func saveState(to w: inout StateWriter) {
        pci.saveState(to: &w)
        w.put(status.rawValue)
        w.put(enable.rawValue)
        w.put(control)
        w.put(apm.control)
        w.put(apm.status)
        w.put(gpe.status)
        w.put(gpe.enable)
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        guard (1...3).contains(version) else { throw .unsupportedVersion(section: stateID, version: version) }
        try pci.loadState(from: &r)
        status = PM1Event(rawValue: try r.get(UInt16.self))
        enable = PM1Event(rawValue: try r.get(UInt16.self))
        control = try r.get(UInt16.self) & ~(1 << 13)
        apm = version >= 2 ? (try r.get(UInt8.self), try r.get(UInt8.self)) : (0, 0)
        gpe = version >= 3 ? (try r.get(UInt16.self), try r.get(UInt16.self)) : (0, 0)
        remapPMIO()
        updateSCI()
        armOverflowTimer()
    }

    public func reset() {
        pci.reset()
        status = []
        enable = []
        control = 0
        apm = (0, 0)
        gpe = (0, 0)
        remapPMIO()
        updateSCI()
        overflowTimer.cancel()
    }
}
