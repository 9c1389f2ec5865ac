/// Why a machine could not be built or started; printed as one line before exit status 1.
public struct MachineError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
