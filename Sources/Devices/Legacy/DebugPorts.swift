import Backends
import DMCore

/// QEMU's `-debugcon` (isa-debugcon, conventionally port 0x402; SeaBIOS logs to it): each byte
/// written goes to the backend; reads return the `readback` value, 0xE9 by default as in QEMU
/// (so a guest can detect the port). Byte accesses only, as QEMU's device accepts.
public final class DebugConsole: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1
    public let readback: UInt8
    private let backend: (any CharBackend)?

    public init(backend: (any CharBackend)?, readback: UInt8 = 0xE9, stateID: String = "debugcon") {
        self.backend = backend
        self.readback = readback
        self.stateID = stateID
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte read; the debug console is byte-wide")
            return mask(size)
        }
        return UInt64(readback)
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte write; the debug console is byte-wide")
            return
        }
        backend?.write(byte: UInt8(truncatingIfNeeded: value))
    }

    public func reset() {}
    public func saveState(to writer: inout StateWriter) {}
    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
    }
}

/// Port 0x80, the POST-code / I/O-delay port. As QEMU's pc machine does, writes are accepted
/// silently and reads return all ones; the last code written is kept for diagnostics.
public final class POSTPort: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1
    public private(set) var lastValue: UInt8 = 0

    public init(stateID: String = "port80") {
        self.stateID = stateID
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 { mask(size) }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        lastValue = UInt8(truncatingIfNeeded: value)
    }

    public func reset() { lastValue = 0 }
    public func saveState(to writer: inout StateWriter) { writer.put(lastValue) }
    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        lastValue = try reader.get(UInt8.self)
    }
}

public enum ISADebugExitError: Error, Equatable, CustomStringConvertible {
    case invalidRange(iobase: UInt64, iosize: UInt64)

    public var description: String {
        switch self {
        case let .invalidRange(base, size):
            return "isa-debug-exit: iobase \(hex(base)) with iosize \(hex(size)) is not inside the port space"
        }
    }
}

/// QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (defaults 0x501, 2): any write of
/// value v (an access of 1-4 bytes, whatever the offset) ends the VMM with status (v << 1) | 1,
/// so a test guest can report success or failure; the shell sees the low 8 bits. Reads return 0.
public final class ISADebugExit: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1
    public let iobase: UInt64
    public let iosize: UInt64
    private let onExit: (Int32) -> Void

    /// Validates the window the machine will register: 1-4096 ports inside 0...0xFFFF.
    public init(iobase: UInt64, iosize: UInt64, stateID: String = "isa-debug-exit",
                onExit: @escaping (Int32) -> Void) throws(ISADebugExitError) {
        guard (1...0x1000).contains(iosize), iobase <= 0x10000 - iosize else {
            throw .invalidRange(iobase: iobase, iosize: iosize)
        }
        self.iobase = iobase
        self.iosize = iosize
        self.stateID = stateID
        self.onExit = onExit
    }

    /// QEMU's defaults: iobase 0x501, iosize 2.
    public init(stateID: String = "isa-debug-exit", onExit: @escaping (Int32) -> Void) {
        iobase = 0x501
        iosize = 2
        self.stateID = stateID
        self.onExit = onExit
    }

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 { 0 }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard size <= 4 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte write; at most 4 bytes are accepted")
            return
        }
        onExit(Int32(truncatingIfNeeded: value << 1 | 1))
    }

    public func reset() {}
    public func saveState(to writer: inout StateWriter) {}
    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
    }
}
