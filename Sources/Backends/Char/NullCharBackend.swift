/// `-chardev null` / `-serial null`: output vanishes, input never comes.
public final class NullCharBackend: CharBackend, @unchecked Sendable {
    public let id: String
    public var filename: String { "null" }

    public init(id: String) {
        self.id = id
    }

    public func attach(_ frontend: any CharFrontend) {}
    public func write(byte: UInt8) {}
    public func write(_ bytes: ArraySlice<UInt8>) {}
    public func frontendReady() {}
    public func close() {}
}
