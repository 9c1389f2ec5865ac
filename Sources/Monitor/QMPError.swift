/// A QMP error reply: one of QEMU's error classes and a human-readable description. libxl maps
/// the class names to its own codes (`CommandNotFound` drives its fallbacks), so only QEMU's
/// classes are used.
public struct QMPError: Error, Equatable, CustomStringConvertible {
    public enum Class: String, Sendable {
        case genericError = "GenericError"
        case commandNotFound = "CommandNotFound"
        case deviceNotActive = "DeviceNotActive"
        case deviceNotFound = "DeviceNotFound"
        case kvmMissingCap = "KVMMissingCap"
    }

    public let errorClass: Class
    public let desc: String

    public init(_ errorClass: Class = .genericError, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public static func generic(_ desc: String) -> QMPError { QMPError(.genericError, desc) }

    /// QEMU's wording for a missing device (`qmp_get_blk`, `find_device_state`).
    public static func deviceNotFound(_ id: String) -> QMPError { QMPError(.deviceNotFound, "Device '\(id)' not found") }

    public var json: JSONValue { ["class": .string(errorClass.rawValue), "desc": .string(desc)] }
    public var description: String { "\(errorClass.rawValue): \(desc)" }
}
