import XCTest
@testable import Display

final class DESTests: XCTestCase {
    func testKnownVectors() {
        // The worked example of the standard's literature, and FIPS validation vectors.
        let vectors: [(UInt64, UInt64, UInt64)] = [
            (0x1334_5779_9BBC_DFF1, 0x0123_4567_89AB_CDEF, 0x85E8_1354_0F0A_B405),
            (0x0123_4567_89AB_CDEF, 0x4E6F_7720_6973_2074, 0x3FA4_0E8A_984D_4815),
            (0x0000_0000_0000_0000, 0x0000_0000_0000_0000, 0x8CA6_4DE9_C1B1_23A7),
            (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 0x7359_B216_3E4E_DC58),
        ]
        for (key, plain, cipher) in vectors {
            let keyBytes = (0..<8).map { UInt8(truncatingIfNeeded: key >> UInt64(56 - 8 * $0)) }
            XCTAssertEqual(DES(key: keyBytes).encrypt(plain), cipher, String(key, radix: 16))
        }
    }

    func testVNCAuthenticationReversesKeyBits() {
        // "password" bit-reversed per byte is the key 0E 86 CE CE EE F6 4E 26; the response to
        // a challenge is DES under that key of each half.
        let challenge = (0..<16).map { UInt8($0) }
        let response = VNCAuthentication.response(challenge: challenge, password: Array("password".utf8))
        let des = DES(key: [0x0E, 0x86, 0xCE, 0xCE, 0xEE, 0xF6, 0x4E, 0x26])
        XCTAssertEqual(response, des.encrypt(Array(challenge[0..<8])) + des.encrypt(Array(challenge[8..<16])))
        // Longer passwords are cut at eight bytes; shorter ones padded with zeros.
        XCTAssertEqual(VNCAuthentication.response(challenge: challenge, password: Array("password-long".utf8)), response)
        XCTAssertEqual(VNCAuthentication.response(challenge: challenge, password: Array("pw".utf8)),
                       VNCAuthentication.response(challenge: challenge, password: Array("pw".utf8) + [0, 0]))
    }
}
