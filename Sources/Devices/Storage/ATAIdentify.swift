/// IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data (ATA-7 tables 16 and 19). Model and
/// firmware strings are QEMU's, so guests (and their driver databases) see the same drive.
extension ATAChannel {
    static let firmwareRevision = "2.5+"

    /// ATA strings are space padded and byte swapped within each word.
    static func putString(_ text: String, into words: inout [UInt16], at start: Int, wordCount: Int) {
        var bytes = Array(text.utf8.prefix(wordCount * 2))
        bytes += [UInt8](repeating: 0x20, count: wordCount * 2 - bytes.count)
        for i in 0..<wordCount { words[start + i] = UInt16(bytes[2 * i]) << 8 | UInt16(bytes[2 * i + 1]) }
    }

    /// Words 62/63/88 list the DMA modes and mark the one SET FEATURES selected.
    static func putTransferModes(_ drive: ATADrive, into w: inout [UInt16]) {
        let mode = drive.transferMode
        w[62] = 0x07
        w[63] = 0x07 | (mode >> 3 == 4 ? UInt16(1) << (8 + UInt16(mode & 7)) : 0)
        w[88] = 0x3F | (mode >> 3 == 8 ? UInt16(1) << (8 + UInt16(mode & 7)) : 0)
    }

    func identifyDiskData(_ drive: ATADrive) -> [UInt16] {
        var w = [UInt16](repeating: 0, count: 256)
        let sectors = drive.sectorCount
        let geometry = ATADrive.geometry(sectors: sectors)
        w[0] = 0x0040  // fixed, not removable
        w[1] = UInt16(geometry.cylinders)
        w[3] = UInt16(geometry.heads)
        w[4] = 512 * UInt16(geometry.sectors)
        w[5] = 512
        w[6] = UInt16(geometry.sectors)
        Self.putString(drive.serial, into: &w, at: 10, wordCount: 10)
        w[20] = 3
        w[21] = 512
        w[22] = 4
        Self.putString(Self.firmwareRevision, into: &w, at: 23, wordCount: 4)
        Self.putString("QEMU HARDDISK", into: &w, at: 27, wordCount: 20)
        w[47] = 0x8000 | UInt16(Self.maxMultipleSectors)
        w[48] = 1           // dword I/O
        w[49] = 0x0B00      // IORDY, LBA, DMA
        w[51] = 0x200
        w[52] = 0x200
        w[53] = 0x07        // words 54-58, 64-70 and 88 are valid
        let chsCylinders = min(UInt64(geometry.cylinders), 65535)
        w[54] = UInt16(chsCylinders)
        w[55] = UInt16(drive.chsHeads)
        w[56] = UInt16(drive.chsSectors)
        let chsCapacity = chsCylinders * UInt64(drive.chsHeads) * UInt64(drive.chsSectors)
        w[57] = UInt16(truncatingIfNeeded: chsCapacity)
        w[58] = UInt16(truncatingIfNeeded: chsCapacity >> 16)
        if drive.multipleSectors > 0 { w[59] = 0x100 | UInt16(drive.multipleSectors) }
        let lba28 = min(sectors, 0x0FFF_FFFF)
        w[60] = UInt16(truncatingIfNeeded: lba28)
        w[61] = UInt16(truncatingIfNeeded: lba28 >> 16)
        Self.putTransferModes(drive, into: &w)
        w[64] = 0x03        // PIO 3 and 4
        w[65] = 120; w[66] = 120; w[67] = 120; w[68] = 120
        if ncqQueueDepth > 0 {
            w[75] = UInt16(ncqQueueDepth - 1)
            w[76] = 1 << 8 | 1 << 1  // NCQ, SATA 1.5 Gb/s
        }
        w[80] = 0xF0        // ATA-4 to ATA-7
        w[81] = 0x16
        w[82] = 1 << 14 | 1 << 5                    // write cache
        w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10  // FLUSH CACHE EXT, FLUSH CACHE, LBA48
        w[84] = 1 << 14
        w[85] = 1 << 14 | (drive.writeCacheEnabled ? 1 << 5 : 0)
        w[86] = 1 << 13 | 1 << 12 | 1 << 10
        w[87] = 1 << 14
        w[93] = 1 | 1 << 14 | 0x2000  // 80-conductor cable
        for i in 0..<4 { w[100 + i] = UInt16(truncatingIfNeeded: sectors >> (16 * UInt64(i))) }
        return w
    }

    func identifyPacketData(_ drive: ATADrive) -> [UInt16] {
        var w = [UInt16](repeating: 0, count: 256)
        // ATAPI, CD-ROM device type, removable, DRQ within 50 µs, 12-byte packets.
        w[0] = 2 << 14 | 5 << 8 | 1 << 7 | 2 << 5
        Self.putString(drive.serial, into: &w, at: 10, wordCount: 10)
        w[20] = 3
        w[21] = 512
        w[22] = 4
        Self.putString(Self.firmwareRevision, into: &w, at: 23, wordCount: 4)
        Self.putString("QEMU DVD-ROM", into: &w, at: 27, wordCount: 20)
        w[48] = 1
        w[49] = 1 << 9 | 1 << 8  // LBA, DMA
        w[53] = 7
        Self.putTransferModes(drive, into: &w)
        w[64] = 3
        w[65] = 0xB4; w[66] = 0xB4; w[67] = 0x12C; w[68] = 0xB4
        w[71] = 30; w[72] = 30
        w[80] = 0x1E  // ATAPI-1 to ATAPI-4
        w[82] = 1 << 4 | 1 << 14  // PACKET feature set
        w[83] = 1 << 14
        w[84] = 1 << 14
        w[85] = 1 << 4
        w[87] = 1 << 14
        w[93] = 1 | 1 << 14 | 0x2000
        return w
    }
}
