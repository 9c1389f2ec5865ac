/// The deterministic workload of the crash test (`swiftdm-img crash-writer` and BlockTests):
/// write `index` of a run seeded `seed` goes to a pseudo-random offset with contents that can
/// be recomputed, so a test can replay the flushed prefix and check every byte.
public enum CrashPattern {
    public static let blockSize = 24 * 1024   // not a multiple of the cluster: exercises COW

    public static func write(seed: UInt64, index: UInt64, imageSize: UInt64) -> (offset: UInt64, bytes: [UInt8]) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ index &* 0xBF58_476D_1CE4_E5B9
        func next() -> UInt64 {
            state = state &+ 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let slots = (imageSize - UInt64(blockSize)) / 512
        let offset = (next() % max(slots, 1)) * 512
        var bytes = [UInt8](repeating: 0, count: blockSize)
        var word = next()
        for i in 0..<blockSize {
            if i % 8 == 0 { word = next() }
            bytes[i] = UInt8(truncatingIfNeeded: word >> UInt64(8 * (i % 8)))
        }
        return (offset, bytes)
    }

    /// What the crash writer does with write `index`: 0 write, 1 discard, 2 write zeroes.
    public static func operation(index: UInt64) -> Int {
        index % 7 == 3 ? 1 : (index % 11 == 5 ? 2 : 0)
    }
}
