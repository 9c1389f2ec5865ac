/// Cuts a QMP byte stream into messages the way QEMU's JSON streamer does: there is no
/// line framing, a message ends when its braces and brackets balance (or with the token itself
/// at the top level), so `{"execute":` and `"cont"}` may arrive in separate reads — libxl sends
/// the first byte alone when it attaches a descriptor to it.
///
/// Limits are QEMU's (`qobject/json-streamer.c`): 64 MiB per message, 2 Mi tokens, nesting
/// 1024. A message over a limit is reported once and the rest of it is skipped without being
/// stored, so a hostile client costs bounded memory. After a lexical error the splitter skips
/// to a resynchronisation point as QEMU's lexer does: a structural character, a control
/// character (such as the newline ending the bad line) or the bytes 0xFE/0xFF.
public struct QMPMessageSplitter {
    public enum Output: Equatable {
        /// The bytes of one complete message (not yet parsed).
        case message([UInt8])
        /// A message that could not be framed; the text follows QEMU's "JSON parse error, ...".
        case error(String)
    }

    public static let maxMessageBytes = 64 << 20
    public static let maxTokens = 2 << 20
    public static let maxNesting = 1024

    private enum State {
        case start
        case string(quote: UInt8, escaped: Bool)
        case word
        case recovery
    }

    private var state = State.start
    private var message: [UInt8] = []
    private var braces = 0
    private var brackets = 0
    private var tokens = 0
    /// Over a limit: keep lexing to find the message's end, but store nothing.
    private var discarding = false
    private let maxMessageBytes: Int

    public init(maxMessageBytes: Int = QMPMessageSplitter.maxMessageBytes) {
        self.maxMessageBytes = maxMessageBytes
    }

    /// True while part of a message is buffered.
    public var hasPartialMessage: Bool { !message.isEmpty || discarding }

    public mutating func feed(_ input: some Sequence<UInt8>, into out: inout [Output]) {
        for byte in input { consume(byte, &out) }
    }

    public mutating func feed(_ input: some Sequence<UInt8>) -> [Output] {
        var out: [Output] = []
        feed(input, into: &out)
        return out
    }

    private mutating func consume(_ b: UInt8, _ out: inout [Output]) {
        switch state {
        case .recovery:
            if b < 0x20 && b != 0x09 || b >= 0xFE || Self.isStructural(b) {
                state = .start
                consume(b, &out)
            }
        case .string(let quote, let escaped):
            if b < 0x20 || b >= 0xFE {
                lexicalError("control character in string", &out)
                return
            }
            store(b, &out)
            if escaped {
                state = .string(quote: quote, escaped: false)
            } else if b == UInt8(ascii: "\\") {
                state = .string(quote: quote, escaped: true)
            } else if b == quote {
                state = .start
                endToken(&out)
            }
        case .word:
            if Self.isWordByte(b) {
                store(b, &out)
            } else {
                state = .start
                endToken(&out)
                consume(b, &out)
            }
        case .start:
            switch b {
            case 0x20, 0x09, 0x0A, 0x0D:
                // Keep one separator so the parser still sees two words as two tokens.
                if !message.isEmpty && message.last != 0x20 { store(0x20, &out) }
            case UInt8(ascii: "{"):
                braces += 1
                store(b, &out)
                endToken(&out)
            case UInt8(ascii: "}"):
                braces -= 1
                store(b, &out)
                endToken(&out)
            case UInt8(ascii: "["):
                brackets += 1
                store(b, &out)
                endToken(&out)
            case UInt8(ascii: "]"):
                brackets -= 1
                store(b, &out)
                endToken(&out)
            case UInt8(ascii: ":"), UInt8(ascii: ","):
                store(b, &out)
                endToken(&out)
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                store(b, &out)
                state = .string(quote: b, escaped: false)
            default:
                if Self.isWordByte(b) {
                    store(b, &out)
                    state = .word
                } else {
                    lexicalError(b >= 0x20 && b < 0x7F ? "stray '\(UnicodeScalar(b))'" : "invalid byte 0x\(String(b, radix: 16))", &out)
                }
            }
        }
    }

    private mutating func store(_ b: UInt8, _ out: inout [Output]) {
        guard !discarding else { return }
        if message.count >= maxMessageBytes {
            overLimit("token size limit exceeded", &out)
            return
        }
        message.append(b)
    }

    private mutating func endToken(_ out: inout [Output]) {
        tokens += 1
        if braces < 0 || brackets < 0 || (braces == 0 && brackets == 0) {
            if discarding {
                discarding = false
            } else {
                out.append(.message(message))
            }
            reset()
        } else if !discarding && tokens > Self.maxTokens {
            overLimit("token count limit exceeded", &out)
        } else if !discarding && braces + brackets > Self.maxNesting {
            overLimit("nesting depth limit exceeded", &out)
        }
    }

    private mutating func overLimit(_ reason: String, _ out: inout [Output]) {
        out.append(.error("JSON parse error, \(reason)"))
        message = []
        discarding = true
    }

    private mutating func lexicalError(_ reason: String, _ out: inout [Output]) {
        if !discarding { out.append(.error("JSON parse error, \(reason)")) }
        reset()
        state = .recovery
    }

    private mutating func reset() {
        message = []
        braces = 0
        brackets = 0
        tokens = 0
        discarding = false
        state = .start
    }

    private static func isStructural(_ b: UInt8) -> Bool {
        b == UInt8(ascii: "{") || b == UInt8(ascii: "}") || b == UInt8(ascii: "[") || b == UInt8(ascii: "]")
    }

    private static func isWordByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "+") || b == UInt8(ascii: "-")
            || b == UInt8(ascii: ".")
    }
}
