import DMCore

public enum FwCfgError: Error, Equatable, CustomStringConvertible {
    case emptyFileName
    /// Names are stored in 56-byte NUL-terminated fields, so at most 55 bytes fit.
    case fileNameTooLong(String)
    case fileNameContainsNUL(String)
    case duplicateFile(String)
    case tooManyFiles
    /// The directory and the file range belong to `addFile`; the write-channel bit is not a key.
    case reservedKey(UInt16)
    case itemTooLarge(key: UInt16, size: Int)

    public var description: String {
        switch self {
        case .emptyFileName: return "fw_cfg: empty file name"
        case .fileNameTooLong(let n): return "fw_cfg: file name '\(n)' is longer than 55 bytes"
        case .fileNameContainsNUL(let n): return "fw_cfg: file name '\(n)' contains a NUL byte"
        case .duplicateFile(let n): return "fw_cfg: duplicate file '\(n)'"
        case .tooManyFiles: return "fw_cfg: too many files"
        case .reservedKey(let k): return "fw_cfg: key \(hex(k)) is reserved"
        case let .itemTooLarge(k, s): return "fw_cfg: item \(hex(k)) has \(s) bytes, more than 4 GiB"
        }
    }
}

/// QEMU's firmware configuration device, x86 port interface, registered as one 12-byte window
/// at 0x510: selector (0x510, 16-bit write), data (0x511, byte reads, sequential), two unused
/// ports, then the big-endian DMA address register (0x514-0x51B; writing the low half at 0x518
/// starts a transfer; reads return the "QEMU CFG" signature).
///
/// Items are byte strings under 16-bit keys; bit 15 marks x86-local keys (e820 table and
/// friends at 0x8000+), bit 14 is the write channel and is ignored on select, as in QEMU.
/// Files get selectors from 0x0020 in the order they are added (stable, so the selector
/// `addFile` returns stays valid); the directory at 0x0019 lists them sorted by name, which is
/// all firmware relies on. DMA follows QEMU's hw/nvram/fw_cfg.c exactly: reads past an item's
/// end zero-fill the rest of the guest buffer, skips advance, writes need a writable item and
/// must fit it, and the control word is written back as 0 or with the error bit.
public final class FwCfg: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1

    public enum Key {
        public static let signature: UInt16 = 0x0000
        public static let id: UInt16 = 0x0001
        public static let fileDirectory: UInt16 = 0x0019
        public static let firstFile: UInt16 = 0x0020
        public static let archLocal: UInt16 = 0x8000
        static let writeChannel: UInt16 = 0x4000
        static let indexMask: UInt16 = 0x3FFF
    }
    /// DMA control bits.
    public enum DMAControl {
        public static let error: UInt32 = 0x01
        public static let read: UInt32 = 0x02
        public static let skip: UInt32 = 0x04
        public static let select: UInt32 = 0x08
        public static let write: UInt32 = 0x10
    }
    public static let dmaSignature: [UInt8] = Array("QEMU CFG".utf8)
    public static let maxFileNameLength = 55
    /// Zero-fills of guest memory go in pieces of this size, so one transfer never asks the
    /// memory layer (a Xen mapcache, for one) for gigabytes at once.
    static let fillChunk = 1 << 20

    final class Item {
        var data: [UInt8]
        let writable: Bool
        init(data: [UInt8], writable: Bool) {
            self.data = data
            self.writable = writable
        }
    }

    private let memory: any GuestMemory
    /// False models QEMU's `fw_cfg_io.dma_enabled=off` (qemu-xen's fw_cfg): ID bit 1 clear,
    /// and 0x514-0x51B decode nothing.
    public let dmaEnabled: Bool
    private var items: [UInt16: Item] = [:]
    private var files: [(name: String, key: UInt16)] = []
    /// The selected key (write-channel bit stripped) and its item; nil item = invalid selection.
    private var selectedKey: UInt16 = Key.signature
    private var selected: Item?
    private var offset: Int = 0
    private var dmaAddress: UInt64 = 0

    public init(memory: any GuestMemory, dmaEnabled: Bool = true, stateID: String = "fw_cfg") {
        self.memory = memory
        self.dmaEnabled = dmaEnabled
        self.stateID = stateID
        items[Key.signature] = Item(data: Array("QEMU".utf8), writable: false)
        // Bit 0: the traditional port interface; bit 1: DMA.
        items[Key.id] = Item(data: [dmaEnabled ? 0x03 : 0x01, 0, 0, 0], writable: false)
        rebuildDirectory()
        select(Key.signature)
    }

    // MARK: Machine API

    /// Adds or replaces a fixed item (FW_CFG_NB_CPUS, the e820 table at 0x8003, ...).
    public func addItem(key: UInt16, data: [UInt8]) throws(FwCfgError) {
        let index = key & Key.indexMask
        guard key & Key.writeChannel == 0, index != Key.fileDirectory,
              key & Key.archLocal != 0 || index < Key.firstFile else { throw .reservedKey(key) }
        guard UInt64(data.count) < UInt64(UInt32.max) else { throw .itemTooLarge(key: key, size: data.count) }
        items[key] = Item(data: data, writable: false)
        if key == selectedKey { selected = items[key] }
    }

    /// Adds a named file and returns its selector. `writable` files accept DMA writes that fit.
    @discardableResult
    public func addFile(name: String, data: [UInt8], writable: Bool = false) throws(FwCfgError) -> UInt16 {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty else { throw .emptyFileName }
        guard bytes.count <= Self.maxFileNameLength else { throw .fileNameTooLong(name) }
        guard !bytes.contains(0) else { throw .fileNameContainsNUL(name) }
        guard !files.contains(where: { $0.name == name }) else { throw .duplicateFile(name) }
        guard files.count < Int(Key.indexMask - Key.firstFile) else { throw .tooManyFiles }
        let key = Key.firstFile + UInt16(files.count)
        guard UInt64(data.count) < UInt64(UInt32.max) else { throw .itemTooLarge(key: key, size: data.count) }
        items[key] = Item(data: data, writable: writable)
        files.append((name, key))
        rebuildDirectory()
        return key
    }

    /// The current contents of an item (tests, and the machine reading back writable files).
    public func itemData(key: UInt16) -> [UInt8]? { items[key & ~Key.writeChannel]?.data }

    private func rebuildDirectory() {
        var dir: [UInt8] = []
        dir.reserveCapacity(4 + 64 * files.count)
        appendBigEndian(UInt32(files.count), to: &dir)
        for file in files.sorted(by: { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }) {
            appendBigEndian(UInt32(items[file.key]?.data.count ?? 0), to: &dir)
            appendBigEndian(file.key, to: &dir)
            appendBigEndian(UInt16(0), to: &dir)
            var name = Array(file.name.utf8)
            name += [UInt8](repeating: 0, count: 56 - name.count)
            dir += name
        }
        items[Key.fileDirectory] = Item(data: dir, writable: false)
        if selectedKey == Key.fileDirectory { selected = items[Key.fileDirectory] }
    }

    // MARK: Selection and PIO

    private func select(_ key: UInt16) {
        selectedKey = key & ~Key.writeChannel
        selected = items[selectedKey]
        offset = 0
    }

    public func reset() {
        select(Key.signature)
        dmaAddress = 0
    }

    public func read(region: Int, offset windowOffset: UInt64, size: Int) -> UInt64 {
        switch windowOffset {
        case 0...1 where size == 1:
            return UInt64(nextDataByte())
        case 4...11 where !dmaEnabled:
            return mask(size)
        case 4...11:
            // Byte i of the register is byte i of the signature, whatever the access size.
            var value: UInt64 = 0
            for i in 0..<size {
                let index = Int(windowOffset) - 4 + i
                value |= UInt64(index < 8 ? Self.dmaSignature[index] : 0xFF) << (8 * UInt64(i))
            }
            return value
        default:
            GuestErrorLog.shared.report(stateID, "\(size)-byte read at port offset \(windowOffset)")
            return mask(size)
        }
    }

    public func write(region: Int, offset windowOffset: UInt64, size: Int, value: UInt64) {
        switch (windowOffset, size) {
        case (0, 2):
            select(UInt16(truncatingIfNeeded: value))
        case (0, 1), (1, 1):
            break  // legacy data-port writes: ignored, as in current QEMU
        case (4...11, _) where !dmaEnabled:
            break
        case (4, 4):
            dmaAddress = UInt64(UInt32(truncatingIfNeeded: value).byteSwapped) << 32
        case (8, 4):
            dmaAddress |= UInt64(UInt32(truncatingIfNeeded: value).byteSwapped)
            performDMA()
        case (4, 8):
            dmaAddress = value.byteSwapped
            performDMA()
        default:
            GuestErrorLog.shared.report(stateID, "ignored \(size)-byte write of \(hex(value)) at port offset \(windowOffset)")
        }
    }

    @inline(__always)
    private func nextDataByte() -> UInt8 {
        guard let item = selected, offset < item.data.count else { return 0 }
        defer { offset += 1 }
        return item.data[offset]
    }

    // MARK: DMA

    private func performDMA() {
        let descriptor = dmaAddress
        dmaAddress = 0
        let header: [UInt8]
        do {
            header = try memory.readBytes(at: descriptor, count: 16)
        } catch {
            GuestErrorLog.shared.report(stateID, "DMA descriptor at \(hex(descriptor)) is not in RAM")
            writeControl(DMAControl.error, descriptor: descriptor)
            return
        }
        var control = bigEndian(header[0..<4])
        var length = UInt64(bigEndian(header[4..<8]))
        var address = bigEndian64(header[8..<16])

        if control & DMAControl.select != 0 { select(UInt16(truncatingIfNeeded: control >> 16)) }
        let isRead = control & DMAControl.read != 0
        let isWrite = !isRead && control & DMAControl.write != 0
        let isSkip = !isRead && !isWrite && control & DMAControl.skip != 0
        if !isRead && !isWrite && !isSkip { length = 0 }
        control = 0

        // At most two steps: the bytes the item still has, then whatever lies past its end.
        if length > 0, let item = selected, offset < item.data.count {
            let count = Int(min(length, UInt64(item.data.count - offset)))
            if isRead {
                if let failed = copyToGuest(item, from: offset, count: count, address: address) {
                    fail(&control, "DMA read of \(count) bytes to \(hex(address)) reaches \(hex(failed)), outside RAM")
                }
            } else if isWrite {
                if !item.writable {
                    fail(&control, "DMA write to read-only item \(hex(selectedKey))")
                } else if UInt64(count) != length {
                    fail(&control, "DMA write of \(length) bytes runs past the end of item \(hex(selectedKey))")
                } else {
                    do {
                        let bytes = try memory.readBytes(at: address, count: count)
                        item.data.replaceSubrange(offset..<offset + count, with: bytes)
                    } catch {
                        fail(&control, "DMA write source \(hex(address))+\(hex(count)) is outside RAM")
                    }
                }
            }
            offset += count
            address &+= UInt64(count)
            length -= UInt64(count)
        }
        if length > 0 && control & DMAControl.error == 0 {
            if isRead {
                zeroFill(address: address, length: length, control: &control)
            } else if isWrite {
                fail(&control, "DMA write past the end of item \(hex(selectedKey))")
            }
        }
        writeControl(control, descriptor: descriptor)
    }

    /// Copies item bytes straight into guest memory, in aligned pieces of `fillChunk` (so a Xen
    /// mapcache maps a bucket at a time), with no per-byte work and no intermediate buffer.
    /// Returns the guest address of the first piece that is not RAM, after copying all before it.
    private func copyToGuest(_ item: Item, from start: Int, count: Int, address: UInt64) -> UInt64? {
        guard address <= UInt64.max - UInt64(count) else { return address }
        let memory = memory
        return item.data.withUnsafeBytes { source -> UInt64? in
            var done = 0
            while done < count {
                let target = address + UInt64(done)
                let piece = min(count - done, Self.fillChunk - Int(target & UInt64(Self.fillChunk - 1)))
                do throws(GuestMemoryError) {
                    try memory.withBytes(at: target, length: piece, forWriting: true) { destination in
                        destination.baseAddress!.copyMemory(from: source.baseAddress! + start + done, byteCount: piece)
                    }
                } catch {
                    return target
                }
                done += piece
            }
            return nil
        }
    }

    /// Zero-fills like QEMU: as far as RAM goes. Pieces are aligned 1 MiB blocks; a block
    /// that is not wholly RAM is retried page by page, stopping at the first unmapped page.
    private func zeroFill(address: UInt64, length: UInt64, control: inout UInt32) {
        guard address <= UInt64.max - length else {
            fail(&control, "DMA zero-fill at \(hex(address))+\(hex(length)) wraps around")
            return
        }
        let end = address + length
        var cursor = address
        while cursor < end {
            let blockEnd = min(end, (cursor | UInt64(Self.fillChunk - 1)) &+ 1)
            if (try? memory.fill(at: cursor, count: Int(blockEnd - cursor), byte: 0)) == nil {
                while cursor < blockEnd {
                    let pageEnd = min(blockEnd, (cursor | 0xFFF) + 1)
                    if (try? memory.fill(at: cursor, count: Int(pageEnd - cursor), byte: 0)) == nil {
                        fail(&control, "DMA zero-fill reaches \(hex(cursor)), outside RAM")
                        return
                    }
                    cursor = pageEnd
                }
            }
            cursor = blockEnd
        }
    }

    private func fail(_ control: inout UInt32, _ message: @autoclosure () -> String) {
        control |= DMAControl.error
        GuestErrorLog.shared.report(stateID, message())
    }

    private func writeControl(_ control: UInt32, descriptor: UInt64) {
        do {
            try memory.write(control.bigEndian, at: descriptor)
        } catch {
            GuestErrorLog.shared.report(stateID, "cannot write DMA status to \(hex(descriptor))")
        }
    }

    // MARK: Snapshottable

    public func saveState(to writer: inout StateWriter) {
        writer.put(selectedKey)
        writer.put(UInt32(offset))
        writer.put(dmaAddress)
        // Only writable items can differ from what the machine set up.
        let writable = items.filter { $0.value.writable }.sorted { $0.key < $1.key }
        writer.put(UInt32(writable.count))
        for (key, item) in writable {
            writer.put(key)
            writer.put(bytes: item.data)
        }
    }

    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        let key = try reader.get(UInt16.self)
        let newOffset = Int(try reader.get(UInt32.self))
        let newDMAAddress = try reader.get(UInt64.self)
        guard key & Key.writeChannel == 0 else { throw .invalidValue(section: stateID, field: "selector") }
        if let item = items[key] {
            guard newOffset <= item.data.count else { throw .invalidValue(section: stateID, field: "offset") }
        } else {
            guard newOffset == 0 else { throw .invalidValue(section: stateID, field: "offset") }
        }
        let count = Int(try reader.get(UInt32.self))
        let writableKeys = items.filter { $0.value.writable }.map(\.key).sorted()
        guard count == writableKeys.count else { throw .invalidValue(section: stateID, field: "writable item count") }
        var contents: [(Item, [UInt8])] = []
        for expected in writableKeys {
            guard try reader.get(UInt16.self) == expected, let item = items[expected] else {
                throw .invalidValue(section: stateID, field: "writable item key")
            }
            contents.append((item, try reader.getBytes(exactly: item.data.count)))
        }
        for (item, data) in contents { item.data = data }
        select(key)
        offset = newOffset
        dmaAddress = newDMAAddress
    }
}

private func appendBigEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
}

private func bigEndian(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    bytes.reduce(0) { $0 << 8 | UInt32($1) }
}

private func bigEndian64(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    bytes.reduce(0) { $0 << 8 | UInt64($1) }
}
