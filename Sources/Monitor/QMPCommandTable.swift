/// The monitor's commands as one declared table: each entry names the command, its argument
/// type (decoded with Codable) and its handler. Dispatch, `query-commands` and
/// `query-qmp-schema` are all derived from the table, so they cannot disagree.

/// One declared parameter of a command, for introspection and for rejecting unknown members.
public struct QMPParameter: Sendable {
    public let name: String
    /// A QAPI builtin type name: str, bool, int, number, any, or ['str'] for a list.
    public let type: String
    public let optional: Bool
    public init(_ name: String, _ type: String, optional: Bool = false) {
        self.name = name
        self.type = type
        self.optional = optional
    }
}

/// A command's arguments: a `Decodable` type that also declares its members.
public protocol QMPArguments: Decodable, SendableMetatype {
    static var parameters: [QMPParameter] { get }
    /// `device_add` takes any device property; everything else rejects unknown members.
    static var acceptsAnyMember: Bool { get }
}

extension QMPArguments {
    public static var acceptsAnyMember: Bool { false }
}

public struct NoArguments: QMPArguments {
    public static let parameters: [QMPParameter] = []
    public init() {}
    public init(from decoder: any Decoder) throws {}
}

/// What a handler produces: a value now, or later (the operation waits for vCPUs off the
/// device lock and answers through `complete`, on the loop thread with the lock held).
public enum QMPReply {
    case value(JSONValue)
    case later((_ complete: @escaping (Result<JSONValue, QMPError>) -> Void) -> Void)

    public static var empty: QMPReply { .value(.object(JSONObject())) }
}

/// What a handler can reach: the monitor (host machine, fd sets, sockets) and the connection
/// the command came from (descriptors it passed, its capabilities).
public struct QMPCommandContext {
    public let monitor: Monitor
    let session: QMPSession

    public var host: (any MonitorHost)? { monitor.host }

    /// The machine, or the error every command gets if it has gone (only during shutdown).
    public func requireHost() throws(QMPError) -> any MonitorHost {
        guard let host = monitor.host else { throw .generic("the machine is shutting down") }
        return host
    }

    /// The descriptor the client passed with SCM_RIGHTS for this command, taken (QEMU's
    /// `qemu_chr_fe_get_msgfd`).
    public func takePassedFD() -> Int32? { session.takePassedFD() }
}

public struct QMPCommand: Sendable {
    public let name: String
    public let parameters: [QMPParameter]
    public let acceptsAnyMember: Bool
    /// QAPI return type for introspection.
    public let returns: String
    /// Allowed before `qmp_capabilities` (only `qmp_capabilities` itself).
    public let allowedInNegotiation: Bool
    let run: @Sendable (JSONObject, QMPCommandContext) throws(QMPError) -> QMPReply

    public init<A: QMPArguments>(_ name: String, _ arguments: A.Type, returns: String = "any",
                                 allowedInNegotiation: Bool = false,
                                 _ handler: @escaping @Sendable (A, QMPCommandContext) throws(QMPError) -> QMPReply) {
        self.name = name
        parameters = A.parameters
        acceptsAnyMember = A.acceptsAnyMember
        self.returns = returns
        self.allowedInNegotiation = allowedInNegotiation
        run = { object, context throws(QMPError) in
            if !A.acceptsAnyMember, let unknown = object.keys.first(where: { key in !A.parameters.contains { $0.name == key } }) {
                throw .generic(QMPArgumentError.unexpected(unknown).description)
            }
            let arguments: A
            do throws(QMPArgumentError) {
                arguments = try QMPArgumentDecoder.decode(A.self, from: .object(object))
            } catch {
                throw .generic(error.description)
            }
            return try handler(arguments, context)
        }
    }
}

public struct QMPCommandTable: Sendable {
    public let commands: [QMPCommand]
    private let byName: [String: Int]

    public init(_ commands: [QMPCommand]) {
        self.commands = commands
        var index: [String: Int] = [:]
        for (i, command) in commands.enumerated() { index[command.name] = i }
        byName = index
    }

    public subscript(name: String) -> QMPCommand? { byName[name].map { commands[$0] } }

    /// `query-commands`.
    public var commandList: JSONValue {
        .array(commands.map { ["name": .string($0.name)] })
    }

    /// `query-qmp-schema` in QEMU's SchemaInfo shape (names not masked): builtin types, one
    /// object type per command's arguments, the commands and the events.
    public func schema(events: [String]) -> JSONValue {
        var entries: [JSONValue] = []
        for (name, jsonType) in [("str", "string"), ("int", "int"), ("number", "number"), ("bool", "boolean"),
                                 ("null", "null"), ("any", "value")] {
            entries.append(["name": .string(name), "meta-type": "builtin", "json-type": .string(jsonType)])
        }
        entries.append(["name": "[str]", "meta-type": "array", "element-type": "str"])
        entries.append(["name": "empty", "meta-type": "object", "members": []])
        for command in commands {
            let argType = command.parameters.isEmpty && !command.acceptsAnyMember ? "empty" : "\(command.name)-arg"
            if argType != "empty" {
                let members: [JSONValue] = command.parameters.map { parameter in
                    var member = JSONObject([("name", .string(parameter.name)), ("type", .string(parameter.type))])
                    if parameter.optional { member["default"] = .null }
                    return .object(member)
                }
                var object = JSONObject([("name", .string(argType)), ("meta-type", "object"), ("members", .array(members))])
                if command.acceptsAnyMember { object["variants"] = [] }
                entries.append(.object(object))
            }
            entries.append(["name": .string(command.name), "meta-type": "command", "arg-type": .string(argType),
                            "ret-type": .string(command.returns), "allow-oob": false])
        }
        for event in events {
            entries.append(["name": .string(event), "meta-type": "event", "arg-type": "any"])
        }
        return .array(entries)
    }
}
