import DMCore

/// X keysyms (what RFB KeyEvents carry) → PC scan codes, set 2, for a US keyboard. A key is
/// one set-2 code, marked `extended` when it needs the 0xE0 prefix. Shifted characters map to
/// the key that produces them; the client sends Shift itself.
enum KeysymMap {
    struct Key: Equatable {
        var code: UInt8
        var extended = false
    }

    static func key(forKeysym keysym: UInt32) -> Key? {
        if keysym >= 0x61 && keysym <= 0x7A { return Key(code: letters[Int(keysym - 0x61)]) }
        if keysym >= 0x41 && keysym <= 0x5A { return Key(code: letters[Int(keysym - 0x41)]) }
        return table[keysym]
    }

    /// The bytes a key sends when pressed or released. Pause has no break sequence.
    static func scancodes(for key: Key, down: Bool) -> [UInt8] {
        if key == pause { return down ? [0xE1, 0x14, 0x77, 0xE1, 0xF0, 0x14, 0xF0, 0x77] : [] }
        var bytes: [UInt8] = key.extended ? [0xE0] : []
        if !down { bytes.append(0xF0) }
        bytes.append(key.code)
        return bytes
    }

    /// QEMU's extended key event carries an XT (set 1) make code; 0xE0-prefixed keys have bit 7
    /// set (0x9D is right Control). Nil for codes no key has.
    static func key(forXTCode code: UInt32) -> Key? {
        guard code < 0x100 else { return nil }
        if code == 0xC6 { return pause }  // QEMU's number for Pause (E1 1D 45)
        let set2 = ScanCodes.set1ToSet2[Int(code & 0x7F)]
        guard set2 != 0 else { return nil }
        return Key(code: set2, extended: code & 0x80 != 0)
    }

    /// Pause is the one key with a prefix of its own (0xE1); marked by this impossible code.
    static let pause = Key(code: 0xE1, extended: true)

    private static let letters: [UInt8] = [
        0x1C, 0x32, 0x21, 0x23, 0x24, 0x2B, 0x34, 0x33, 0x43, 0x3B, 0x42, 0x4B, 0x3A,  // a-m
        0x31, 0x44, 0x4D, 0x15, 0x2D, 0x1B, 0x2C, 0x3C, 0x2A, 0x1D, 0x22, 0x35, 0x1A,  // n-z
    ]

    private static let table: [UInt32: Key] = {
        var t: [UInt32: Key] = [:]
        func plain(_ keysyms: [UInt32], _ code: UInt8) { for k in keysyms { t[k] = Key(code: code) } }
        func ext(_ keysyms: [UInt32], _ code: UInt8) { for k in keysyms { t[k] = Key(code: code, extended: true) } }
        // Digit row with its shifted characters: 1! 2@ 3# 4$ 5% 6^ 7& 8* 9( 0) -_ =+ `~
        plain([0x31, 0x21], 0x16); plain([0x32, 0x40], 0x1E); plain([0x33, 0x23], 0x26); plain([0x34, 0x24], 0x25)
        plain([0x35, 0x25], 0x2E); plain([0x36, 0x5E], 0x36); plain([0x37, 0x26], 0x3D); plain([0x38, 0x2A], 0x3E)
        plain([0x39, 0x28], 0x46); plain([0x30, 0x29], 0x45); plain([0x2D, 0x5F], 0x4E); plain([0x3D, 0x2B], 0x55)
        plain([0x60, 0x7E], 0x0E)
        // [{ ]} \| ;: '" ,< .> /? space
        plain([0x5B, 0x7B], 0x54); plain([0x5D, 0x7D], 0x5B); plain([0x5C, 0x7C], 0x5D); plain([0x3B, 0x3A], 0x4C)
        plain([0x27, 0x22], 0x52); plain([0x2C, 0x3C], 0x41); plain([0x2E, 0x3E], 0x49); plain([0x2F, 0x3F], 0x4A)
        plain([0x20], 0x29)
        // BackSpace, Tab (and ISO_Left_Tab, Shift+Tab), Return, Escape
        plain([0xFF08], 0x66); plain([0xFF09, 0xFE20], 0x0D); plain([0xFF0D], 0x5A); plain([0xFF1B], 0x76)
        // Caps, Scroll, Num Lock
        plain([0xFFE5], 0x58); plain([0xFF14], 0x7E); plain([0xFF7F], 0x77)
        // F1-F12
        let functionKeys: [UInt8] = [0x05, 0x06, 0x04, 0x0C, 0x03, 0x0B, 0x83, 0x0A, 0x01, 0x09, 0x78, 0x07]
        for (i, code) in functionKeys.enumerated() { plain([0xFFBE + UInt32(i)], code) }
        // Modifiers: Shift L/R, Control L/R, Alt L/R (AltGr is right Alt), Super/Meta, Menu
        plain([0xFFE1], 0x12); plain([0xFFE2], 0x59); plain([0xFFE3], 0x14); ext([0xFFE4], 0x14)
        plain([0xFFE9], 0x11); ext([0xFFEA, 0xFE03, 0xFF7E], 0x11)
        ext([0xFFEB, 0xFFE7], 0x1F); ext([0xFFEC, 0xFFE8], 0x27); ext([0xFF67], 0x2F)
        // Navigation: Home Left Up Right Down PgUp PgDn End Insert Delete, Print
        ext([0xFF50], 0x6C); ext([0xFF51], 0x6B); ext([0xFF52], 0x75); ext([0xFF53], 0x74); ext([0xFF54], 0x72)
        ext([0xFF55], 0x7D); ext([0xFF56], 0x7A); ext([0xFF57], 0x69); ext([0xFF63], 0x70); ext([0xFFFF], 0x71)
        ext([0xFF61, 0xFF15], 0x7C)
        t[0xFF13] = pause
        // Keypad: Enter, * + - . /, digits (and their NumLock-off names)
        ext([0xFF8D], 0x5A); plain([0xFFAA], 0x7C); plain([0xFFAB], 0x79); plain([0xFFAD], 0x7B)
        plain([0xFFAE, 0xFF9F, 0xFFAC], 0x71); ext([0xFFAF], 0x4A)
        let keypad: [UInt8] = [0x70, 0x69, 0x72, 0x7A, 0x6B, 0x73, 0x74, 0x6C, 0x75, 0x7D]
        for (i, code) in keypad.enumerated() { plain([0xFFB0 + UInt32(i)], code) }
        // KP_Home Left Up Right Down Prior Next End Begin Insert
        let keypadNavigation: [(UInt32, UInt8)] = [(0xFF95, 0x6C), (0xFF96, 0x6B), (0xFF97, 0x75), (0xFF98, 0x74),
                                                   (0xFF99, 0x72), (0xFF9A, 0x7D), (0xFF9B, 0x7A), (0xFF9C, 0x69),
                                                   (0xFF9D, 0x73), (0xFF9E, 0x70)]
        for (keysym, code) in keypadNavigation { plain([keysym], code) }
        return t
    }()
}
