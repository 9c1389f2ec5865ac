import DMCore

/// A 93C46 serial EEPROM (64 words of 16 bits, 6 address bits), bit-banged by its driver
/// through chip select, clock and data-in lines; data-out is sampled between clocks.
/// A command is a start bit (1), a 2-bit opcode and the address, clocked in on rising edges;
/// a read then shifts out a dummy 0 and 16 data bits, most significant first, continuing into
/// the following words while the clock runs. Writes need a prior EWEN (write enable).
public struct EEPROM93C46: Sendable, Equatable {
    public static let wordCount = 64
    static let addressBits = 6

    enum Phase: UInt8 { case idle = 0, command, reading, writing }

    public var words = [UInt16](repeating: 0, count: wordCount)
    var phase = Phase.idle
    var chipSelect = false
    var clock = false
    var writeEnabled = false
    /// Bits shifted in so far (command, or data of a write) and how many.
    var shift: UInt16 = 0
    var count = 0
    var address = 0
    /// The data-out line.
    public private(set) var dataOut = true

    public init(words: [UInt16]) {
        for (i, w) in words.prefix(Self.wordCount).enumerated() { self.words[i] = w }
    }

    /// The lines as the driver just set them.
    public mutating func drive(chipSelect cs: Bool, clock sk: Bool, dataIn di: Bool) {
        defer {
            chipSelect = cs
            clock = sk
        }
        guard cs else {
            phase = .idle
            dataOut = true
            return
        }
        if !chipSelect {
            // Selecting the chip starts a new command.
            phase = .idle
            count = 0
            shift = 0
        }
        guard sk, !clock else { return }
        risingEdge(di)
    }

    private mutating func risingEdge(_ di: Bool) {
        switch phase {
        case .idle:
            if di {
                phase = .command
                shift = 0
                count = 0
            }
        case .command:
            shift = shift << 1 | (di ? 1 : 0)
            count += 1
            guard count == 2 + Self.addressBits else { return }
            let opcode = shift >> Self.addressBits
            address = Int(shift) & (Self.wordCount - 1)
            shift = 0
            count = 0
            switch opcode {
            case 0b10:
                phase = .reading
                dataOut = false  // the dummy bit
            case 0b01:
                phase = .writing
            case 0b11:
                if writeEnabled { words[address] = 0xFFFF }
                phase = .idle
            default:
                // 00: the address's top two bits select EWDS, WRAL, ERAL, EWEN.
                switch address >> (Self.addressBits - 2) {
                case 0b11: writeEnabled = true
                case 0b00: writeEnabled = false
                case 0b10: if writeEnabled { words = [UInt16](repeating: 0xFFFF, count: Self.wordCount) }
                default:
                    phase = .writing
                    address = -1  // WRAL: the next 16 bits go to every word
                    return
                }
                phase = .idle
            }
        case .reading:
            dataOut = words[address] & (0x8000 >> UInt16(count)) != 0
            count += 1
            if count == 16 {
                count = 0
                address = (address + 1) % Self.wordCount
            }
        case .writing:
            shift = shift << 1 | (di ? 1 : 0)
            count += 1
            guard count == 16 else { return }
            if writeEnabled {
                if address < 0 {
                    words = [UInt16](repeating: shift, count: Self.wordCount)
                } else {
                    words[address] = shift
                }
            }
            phase = .idle
            count = 0
        }
    }

    public func saveState(to w: inout StateWriter) {
        w.put(array: words)
        w.put(phase.rawValue)
        w.put(chipSelect)
        w.put(clock)
        w.put(writeEnabled)
        w.put(shift)
        w.put(UInt8(count))
        w.put(Int8(address))
        w.put(dataOut)
    }

    public mutating func loadState(from r: inout StateReader) throws(StateError) {
        let section = r.section
        words = try r.getArray(of: UInt16.self, exactly: Self.wordCount)
        guard let p = Phase(rawValue: try r.get(UInt8.self)) else { throw .invalidValue(section: section, field: "EEPROM phase") }
        phase = p
        chipSelect = try r.get(Bool.self)
        clock = try r.get(Bool.self)
        writeEnabled = try r.get(Bool.self)
        shift = try r.get(UInt16.self)
        let c = Int(try r.get(UInt8.self))
        let a = Int(try r.get(Int8.self))
        guard c < 16, (-1..<Self.wordCount).contains(a), a >= 0 || phase == .writing else {
            throw .invalidValue(section: section, field: "EEPROM position")
        }
        count = c
        address = a
        dataOut = try r.get(Bool.self)
    }
}
