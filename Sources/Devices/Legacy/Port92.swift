import DMCore

/// System control port A (0x92, "fast A20 and reset"): bit 1 drives the A20 gate, a 0→1 change
/// of bit 0 requests a system reset. Reads return the last value written, as in QEMU; a reset
/// clears bit 0 and keeps A20.
public final class Port92: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1
    /// Called with the DeviceLock held; the machine schedules the reset rather than doing it inline.
    public var onResetRequest: () -> Void = {}
    /// Called when bit 1 changes.
    public var onA20Change: (Bool) -> Void = { _ in }

    private var value: UInt8 = 0

    public init(stateID: String = "port92") {
        self.stateID = stateID
    }

    public var a20Enabled: Bool { value & 0x02 != 0 }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        size == 1 ? UInt64(value) : UInt64(value) | (mask(size) & ~0xFF)
    }

    public func write(region: Int, offset: UInt64, size: Int, value newValue: UInt64) {
        let byte = UInt8(truncatingIfNeeded: newValue)
        let old = value
        value = byte
        if (old ^ byte) & 0x02 != 0 { onA20Change(byte & 0x02 != 0) }
        if byte & 0x01 != 0 && old & 0x01 == 0 { onResetRequest() }
    }

    public func reset() { value &= ~0x01 }

    public func saveState(to writer: inout StateWriter) { writer.put(value) }

    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        value = try reader.get(UInt8.self)
    }
}
