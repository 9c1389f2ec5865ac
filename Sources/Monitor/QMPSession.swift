#if canImport(Glibc)
import Glibc
#endif

/// One client's conversation with the monitor, independent of the transport: framing,
/// capability negotiation, dispatch through the command table, one command at a time (as
/// QEMU without out-of-band execution), and events once negotiated.
///
/// The transport feeds bytes and passed descriptors in and provides `output`; it stops reading
/// while `wantsInput` is false (a command is still running, or the client has not been reading
/// its replies), which bounds what a client that pipelines without reading can make us hold.
public final class QMPSession {
    /// Queued messages beyond this stop input until they are handled.
    static let maxQueuedMessages = 64
    /// Descriptors a client may have passed and not yet used; older ones are closed first.
    static let maxPassedFDs = 8

    public private(set) var negotiated = false
    private var splitter = QMPMessageSplitter()
    private var queue: [QMPMessageSplitter.Output] = []
    private var queueStart = 0
    private var busy = false
    private var passedFDs: [Int32] = []
    private unowned let monitor: Monitor
    private let output: ([UInt8]) -> Void
    /// Asks the transport to re-evaluate `wantsInput` (a deferred command finished).
    var inputStateChanged: () -> Void = {}
    public private(set) var isClosed = false

    init(monitor: Monitor, output: @escaping ([UInt8]) -> Void) {
        self.monitor = monitor
        self.output = output
    }

    deinit { closePassedFDs() }

    var wantsInput: Bool { !busy && pendingMessages == 0 && !isClosed }
    private var pendingMessages: Int { queue.count - queueStart }

    /// QEMU's greeting: the version and the capabilities on offer. OOB needs a monitor I/O
    /// thread, which we do not have, so none is offered (as QEMU without one).
    func start() {
        send(["QMP": ["version": monitor.versionInfo, "capabilities": []]])
    }

    func close() {
        isClosed = true
        closePassedFDs()
        queue = []
        queueStart = 0
    }

    /// Bytes from the client, with any descriptors that arrived with them.
    func receive(_ bytes: some Sequence<UInt8>, passedFDs fds: [Int32] = []) {
        for fd in fds {
            if passedFDs.count >= Self.maxPassedFDs { Glibc.close(passedFDs.removeFirst()) }
            passedFDs.append(fd)
        }
        splitter.feed(bytes, into: &queue)
        processQueue()
    }

    func takePassedFD() -> Int32? {
        passedFDs.isEmpty ? nil : passedFDs.removeFirst()
    }

    private func closePassedFDs() {
        for fd in passedFDs { Glibc.close(fd) }
        passedFDs = []
    }

    private func processQueue() {
        while !busy && !isClosed && queueStart < queue.count {
            let item = queue[queueStart]
            queueStart += 1
            handle(item)
        }
        if queueStart == queue.count {
            queue.removeAll(keepingCapacity: queue.count < 256)
            queueStart = 0
        }
    }

    private func handle(_ item: QMPMessageSplitter.Output) {
        switch item {
        case .error(let desc):
            sendError(.generic(desc), id: nil)
        case .message(let bytes):
            let value: JSONValue
            do {
                value = try JSONParser.parse(bytes)
            } catch {
                sendError(.generic(error.description), id: nil)
                return
            }
            dispatch(value)
        }
    }

    // MARK: Dispatch (QEMU's qmp_dispatch)

    private func dispatch(_ request: JSONValue) {
        guard case .object(let object) = request else {
            sendError(.generic("QMP input must be a JSON object"), id: nil)
            return
        }
        let id = object["id"]
        var name: String?
        for (key, value) in object.members {
            switch key {
            case "execute":
                guard case .string(let s) = value else {
                    sendError(.generic("QMP input member 'execute' must be a string"), id: id)
                    return
                }
                name = s
            case "arguments":
                guard case .object = value else {
                    sendError(.generic("QMP input member 'arguments' must be an object"), id: id)
                    return
                }
            case "id":
                break
            default:
                // Includes 'exec-oob': out-of-band execution was not offered.
                sendError(.generic("QMP input member '\(key)' is unexpected"), id: id)
                return
            }
        }
        guard let name else {
            sendError(.generic("QMP input lacks member 'execute'"), id: id)
            return
        }
        guard let command = monitor.commands[name], negotiated || command.allowedInNegotiation else {
            sendError(QMPError(.commandNotFound, negotiated ? "The command \(name) has not been found"
                                                            : "Expecting capabilities negotiation with 'qmp_capabilities'"), id: id)
            return
        }
        let arguments = object["arguments"]?.objectValue ?? JSONObject()
        let context = QMPCommandContext(monitor: monitor, session: self)
        let reply: QMPReply
        do {
            reply = try command.run(arguments, context)
        } catch {
            sendError(error, id: id)
            return
        }
        switch reply {
        case .value(let value):
            sendReturn(value, id: id)
        case .later(let start):
            busy = true
            start { [weak self] result in
                guard let self else { return }
                self.busy = false
                switch result {
                case .success(let value): self.sendReturn(value, id: id)
                case .failure(let error): self.sendError(error, id: id)
                }
                self.processQueue()
                self.inputStateChanged()
            }
        }
    }

    /// `qmp_capabilities`: called by its handler.
    func negotiate(enable: [String]) throws(QMPError) {
        guard !negotiated else {
            throw QMPError(.commandNotFound, "Capabilities negotiation is already complete, command ignored")
        }
        if !enable.isEmpty {
            throw .generic("Capability \(enable.joined(separator: ", ")) not available")
        }
        negotiated = true
    }

    // MARK: Output

    private func sendReturn(_ value: JSONValue, id: JSONValue?) {
        var reply = JSONObject([("return", value)])
        if let id { reply["id"] = id }
        send(.object(reply))
    }

    private func sendError(_ error: QMPError, id: JSONValue?) {
        var reply = JSONObject([("error", error.json)])
        if let id { reply["id"] = id }
        send(.object(reply))
    }

    /// Events go only to clients past negotiation, as in QEMU.
    func sendEvent(_ message: JSONValue) {
        guard negotiated, !isClosed else { return }
        send(message)
    }

    private func send(_ message: JSONValue) {
        guard !isClosed else { return }
        var bytes: [UInt8] = []
        message.write(to: &bytes)
        bytes += [0x0D, 0x0A]
        output(bytes)
    }
}
