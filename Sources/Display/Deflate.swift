/// A small zlib (RFC 1950/1951) compressor for ZRLE: one stream per client that never ends.
/// Each call compresses one rectangle's data into fixed-Huffman blocks (greedy LZ77 with a
/// single-probe hash) and ends with a sync flush (an empty stored block), so the client can
/// decode everything sent so far. Matches never reach back into earlier rectangles, which
/// keeps the state small; the scratch tables are reused, so compressing allocates nothing
/// once they have grown.
struct DeflateStream {
    private var headerSent = false
    /// Last position of each 3-byte hash, counted over the whole stream so that positions from
    /// earlier rectangles (below `base`) are told apart without clearing the table. Allocated
    /// on first use: clients that never ask for ZRLE do not pay its 256 KiB.
    private var head: [Int] = []
    private var base = 0
    private var bitBuffer: UInt64 = 0
    private var bitCount = 0

    static let maxMatch = 258
    static let window = 32768

    private mutating func put(_ value: UInt32, _ count: Int, to out: inout [UInt8]) {
        bitBuffer |= UInt64(value) << UInt64(bitCount)
        bitCount += count
        while bitCount >= 8 {
            out.append(UInt8(truncatingIfNeeded: bitBuffer))
            bitBuffer >>= 8
            bitCount -= 8
        }
    }

    private mutating func literal(_ symbol: Int, to out: inout [UInt8]) {
        put(Self.literalCodes[symbol], Int(Self.literalLengths[symbol]), to: &out)
    }

    /// Appends the compressed form of `input` (and, the first time, the zlib header).
    mutating func compress(_ input: [UInt8], into out: inout [UInt8]) {
        if !headerSent {
            out.append(0x78)  // deflate, 32 KiB window
            out.append(0x01)  // no preset dictionary, fastest; 0x7801 is a multiple of 31
            headerSent = true
            head = [Int](repeating: -1, count: 1 << 15)
        }
        put(0b010, 3, to: &out)  // not final, fixed Huffman codes
        // Plain indexing, no closures: the loop must not allocate.
        let n = input.count
        var i = 0
        while i < n {
            var length = 0
            var distance = 0
            if i + 3 <= n {
                let h = Self.hash(input[i], input[i + 1], input[i + 2])
                let candidate = head[h] - base
                head[h] = base + i
                if candidate >= 0 && i - candidate <= Self.window {
                    let limit = min(Self.maxMatch, n - i)
                    while length < limit && input[candidate + length] == input[i + length] { length += 1 }
                    distance = i - candidate
                }
            }
            if length >= 3 {
                emitMatch(length: length, distance: distance, to: &out)
                // Later matches may start inside this one.
                var j = i + 1
                while j < i + length && j + 3 <= n {
                    head[Self.hash(input[j], input[j + 1], input[j + 2])] = base + j
                    j += 1
                }
                i += length
            } else {
                literal(Int(input[i]), to: &out)
                i += 1
            }
        }
        base += n
        literal(256, to: &out)  // end of block
        put(0, 3, to: &out)  // sync flush: an empty stored block, byte-aligned
        if bitCount > 0 { put(0, 8 - bitCount, to: &out) }
        out.append(0x00)
        out.append(0x00)
        out.append(0xFF)
        out.append(0xFF)
    }

    private mutating func emitMatch(length: Int, distance: Int, to out: inout [UInt8]) {
        var code = 28
        while Self.lengthBase[code] > length { code -= 1 }
        literal(257 + code, to: &out)
        if Self.lengthExtra[code] > 0 { put(UInt32(length - Self.lengthBase[code]), Self.lengthExtra[code], to: &out) }
        var d = 29
        while Self.distanceBase[d] > distance { d -= 1 }
        put(Self.reversed(UInt32(d), 5), 5, to: &out)
        if Self.distanceExtra[d] > 0 { put(UInt32(distance - Self.distanceBase[d]), Self.distanceExtra[d], to: &out) }
    }

    private static func hash(_ a: UInt8, _ b: UInt8, _ c: UInt8) -> Int {
        let v = UInt32(a) << 16 | UInt32(b) << 8 | UInt32(c)
        return Int((v &* 2_654_435_761) >> 17)
    }

    private static func reversed(_ code: UInt32, _ length: Int) -> UInt32 {
        var out: UInt32 = 0
        for bit in 0..<length where code & (1 << UInt32(bit)) != 0 { out |= 1 << UInt32(length - 1 - bit) }
        return out
    }

    /// RFC 1951 §3.2.6: the fixed literal/length code, bit-reversed for LSB-first output.
    private static let literalLengths: [UInt8] = (0..<288).map { s in s < 144 ? 8 : (s < 256 ? 9 : (s < 280 ? 7 : 8)) }
    private static let literalCodes: [UInt32] = (0..<288).map { s -> UInt32 in
        let code: UInt32 = s < 144 ? 0x30 + UInt32(s) : (s < 256 ? 0x190 + UInt32(s - 144)
                                                        : (s < 280 ? UInt32(s - 256) : 0xC0 + UInt32(s - 280)))
        return reversed(code, Int(literalLengths[s]))
    }
    private static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                                     131, 163, 195, 227, 258]
    private static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
    private static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
                                       1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    private static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
                                        13, 13]
}
