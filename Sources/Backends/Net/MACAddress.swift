/// An Ethernet station address, as written on the command line (`mac=00:16:3e:01:02:03`).
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    /// The six octets, first octet in the most significant of the low 48 bits.
    public let value: UInt64

    public init(_ octets: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)) {
        value = UInt64(octets.0) << 40 | UInt64(octets.1) << 32 | UInt64(octets.2) << 24
            | UInt64(octets.3) << 16 | UInt64(octets.4) << 8 | UInt64(octets.5)
    }

    public init(value: UInt64) { self.value = value & 0xFFFF_FFFF_FFFF }

    /// Six hexadecimal pairs separated by ':' (or '-', as QEMU also takes).
    public init?(parsing text: String) {
        let parts = text.split(separator: text.contains("-") ? "-" : ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var v: UInt64 = 0
        for part in parts {
            guard (1...2).contains(part.count), let octet = UInt8(part, radix: 16) else { return nil }
            v = v << 8 | UInt64(octet)
        }
        value = v
    }

    /// Octet `index` (0-5) in wire order.
    public subscript(index: Int) -> UInt8 { UInt8(truncatingIfNeeded: value >> UInt64(8 * (5 - index))) }

    /// Group addresses (the I/G bit) cannot be a NIC's own address.
    public var isMulticast: Bool { self[0] & 1 != 0 }

    /// QEMU's address for the `index`th NIC without `mac=`: 52:54:00:12:34:56, then :57, ...
    public static func qemuDefault(index: Int) -> MACAddress {
        MACAddress(value: 0x5254_0012_3456 &+ UInt64(UInt8(truncatingIfNeeded: index)))
    }

    public var description: String {
        (0..<6).map { i in
            let s = String(self[i], radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined(separator: ":")
    }
}
