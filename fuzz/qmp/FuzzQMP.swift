/// libFuzzer target for the QMP input path: the streaming message splitter (fed in chunks of
/// a size the input picks, as reads arrive) and the JSON parser. Invariants checked beyond
/// "no crash": every parsed value survives serialise -> parse unchanged, and the splitter
/// never returns a message larger than its limit.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQMP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))

    func checkRoundTrip(_ value: JSONValue) {
        var out: [UInt8] = []
        value.write(to: &out)
        guard let again = try? JSONParser.parse(out), again == value else {
            fatalError("round trip changed \(String(decoding: out.prefix(200), as: UTF8.self))")
        }
    }

    if let value = try? JSONParser.parse(bytes, maxNesting: 64) { checkRoundTrip(value) }

    let limit = 4096
    var splitter = QMPMessageSplitter(maxMessageBytes: limit)
    let chunk = 1 + Int(bytes.first ?? 0) % 31
    var index = 0
    while index < bytes.count {
        for output in splitter.feed(bytes[index..<min(index + chunk, bytes.count)]) {
            guard case .message(let message) = output else { continue }
            if message.count > limit { fatalError("message of \(message.count) bytes over the \(limit) limit") }
            if let value = try? JSONParser.parse(message) { checkRoundTrip(value) }
        }
        index += chunk
    }
    return 0
}
