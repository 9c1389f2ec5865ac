/// A raw DEFLATE (RFC 1951) decoder for qcow2 compressed clusters, in Swift so that hostile
/// compressed data meets bounds-checked arrays rather than a C library. qcow2 stores each
/// compressed cluster as a raw deflate stream (no zlib header), padded to whole sectors, and the
/// decoded output must be exactly one cluster.
enum Inflate {
    struct Failure: Error { let reason: String }

    /// Decodes `input` until `outputSize` bytes are produced or the final block ends; trailing
    /// input (sector padding) is ignored. Fewer than `outputSize` bytes is an error.
    static func decompress(_ input: [UInt8], outputSize: Int) throws(Failure) -> [UInt8] {
        var state = Decoder(input: input, capacity: outputSize)
        try state.run()
        guard state.output.count == outputSize else {
            throw Failure(reason: "compressed cluster decodes to \(state.output.count) bytes, expected \(outputSize)")
        }
        return state.output
    }

    /// A canonical Huffman code as counts per length and symbols sorted by code.
    struct Huffman {
        var counts = [Int](repeating: 0, count: 16)
        var symbols: [Int]

        /// Over-subscribed code lengths (more codes than bit patterns): hostile or corrupt.
        var isValid = true

        init(lengths: ArraySlice<Int>) {
            symbols = [Int](repeating: 0, count: lengths.count)
            for length in lengths { counts[length] += 1 }
            var left = 1
            for length in 1...15 {
                left <<= 1
                left -= counts[length]
                if left < 0 { isValid = false }
            }
            var offsets = [Int](repeating: 0, count: 16)
            for length in 1..<15 { offsets[length + 1] = offsets[length] + counts[length] }
            for (symbol, length) in lengths.enumerated() where length != 0 {
                symbols[offsets[length]] = symbol
                offsets[length] += 1
            }
        }
    }

    struct Decoder {
        let input: [UInt8]
        let capacity: Int
        var output: [UInt8] = []
        var position = 0
        var bitBuffer: UInt32 = 0
        var bitCount = 0

        init(input: [UInt8], capacity: Int) {
            self.input = input
            self.capacity = capacity
            output.reserveCapacity(capacity)
        }

        mutating func bits(_ need: Int) throws(Failure) -> Int {
            while bitCount < need {
                guard position < input.count else { throw Failure(reason: "compressed data ends early") }
                bitBuffer |= UInt32(input[position]) << UInt32(bitCount)
                position += 1
                bitCount += 8
            }
            let value = Int(bitBuffer & ((1 << UInt32(need)) - 1))
            bitBuffer >>= UInt32(need)
            bitCount -= need
            return value
        }

        mutating func run() throws(Failure) {
            var last = 0
            repeat {
                last = try bits(1)
                switch try bits(2) {
                case 0: try stored()
                case 1: try codes(Self.fixedLengths, Self.fixedDistances)
                case 2: try dynamic()
                default: throw Failure(reason: "invalid deflate block type")
                }
            } while last == 0 && output.count < capacity
        }

        mutating func stored() throws(Failure) {
            bitBuffer = 0
            bitCount = 0
            guard position + 4 <= input.count else { throw Failure(reason: "stored block header truncated") }
            let length = Int(input[position]) | Int(input[position + 1]) << 8
            let check = Int(input[position + 2]) | Int(input[position + 3]) << 8
            guard length == (~check & 0xffff) else { throw Failure(reason: "stored block length check failed") }
            position += 4
            guard position + length <= input.count else { throw Failure(reason: "stored block truncated") }
            guard output.count + length <= capacity else { throw Failure(reason: "output larger than a cluster") }
            output.append(contentsOf: input[position..<position + length])
            position += length
        }

        mutating func decode(_ code: Huffman) throws(Failure) -> Int {
            var value = 0, first = 0, index = 0
            for length in 1...15 {
                value |= try bits(1)
                let count = code.counts[length]
                if value - count < first { return code.symbols[index + (value - first)] }
                index += count
                first += count
                first <<= 1
                value <<= 1
            }
            throw Failure(reason: "invalid Huffman code")
        }

        static let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
        static let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                  3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
        static let distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
                                   257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
                                   8193, 12289, 16385, 24577]
        static let distanceExtra = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                    7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]

        static let fixedLengths: Huffman = {
            var lengths = [Int](repeating: 8, count: 288)
            for i in 144..<256 { lengths[i] = 9 }
            for i in 256..<280 { lengths[i] = 7 }
            return Huffman(lengths: lengths[...])
        }()
        static let fixedDistances = Huffman(lengths: [Int](repeating: 5, count: 30)[...])

        mutating func codes(_ lengths: Huffman, _ distances: Huffman) throws(Failure) {
            while true {
                let symbol = try decode(lengths)
                if symbol < 256 {
                    guard output.count < capacity else { throw Failure(reason: "output larger than a cluster") }
                    output.append(UInt8(symbol))
                } else if symbol == 256 {
                    return
                } else {
                    let li = symbol - 257
                    guard li < 29 else { throw Failure(reason: "invalid length symbol") }
                    let length = Self.lengthBase[li] + (try bits(Self.lengthExtra[li]))
                    let di = try decode(distances)
                    guard di < 30 else { throw Failure(reason: "invalid distance symbol") }
                    let distance = Self.distanceBase[di] + (try bits(Self.distanceExtra[di]))
                    guard distance <= output.count else { throw Failure(reason: "distance too far back") }
                    guard output.count + length <= capacity else { throw Failure(reason: "output larger than a cluster") }
                    var from = output.count - distance
                    for _ in 0..<length {
                        output.append(output[from])
                        from += 1
                    }
                }
            }
        }

        mutating func dynamic() throws(Failure) {
            let literalCount = try bits(5) + 257
            let distanceCount = try bits(5) + 1
            let codeCount = try bits(4) + 4
            guard literalCount <= 286, distanceCount <= 30 else { throw Failure(reason: "bad dynamic block counts") }
            let order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
            var codeLengths = [Int](repeating: 0, count: 19)
            for i in 0..<codeCount { codeLengths[order[i]] = try bits(3) }
            let lengthCode = Huffman(lengths: codeLengths[...])
            guard lengthCode.isValid else { throw Failure(reason: "over-subscribed code length code") }
            var lengths = [Int](repeating: 0, count: literalCount + distanceCount)
            var index = 0
            while index < lengths.count {
                let symbol = try decode(lengthCode)
                if symbol < 16 {
                    lengths[index] = symbol
                    index += 1
                    continue
                }
                var repeatValue = 0
                var repeatCount: Int
                switch symbol {
                case 16:
                    guard index > 0 else { throw Failure(reason: "repeat with no previous length") }
                    repeatValue = lengths[index - 1]
                    repeatCount = 3 + (try bits(2))
                case 17: repeatCount = 3 + (try bits(3))
                default: repeatCount = 11 + (try bits(7))
                }
                guard index + repeatCount <= lengths.count else { throw Failure(reason: "too many code lengths") }
                for _ in 0..<repeatCount {
                    lengths[index] = repeatValue
                    index += 1
                }
            }
            guard lengths[256] != 0 else { throw Failure(reason: "no end-of-block code") }
            let literals = Huffman(lengths: lengths[0..<literalCount])
            let distances = Huffman(lengths: lengths[literalCount...])
            guard literals.isValid, distances.isValid else { throw Failure(reason: "over-subscribed Huffman code") }
            try codes(literals, distances)
        }
    }
}

