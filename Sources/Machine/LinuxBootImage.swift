import DMCore

/// Why a kernel, initrd or command line cannot be booted directly; `reason` completes a line
/// that names the option and the file ("-kernel FILE: <reason>").
struct LinuxBootError: Error, Equatable, CustomStringConvertible {
    enum Option: String, Sendable { case kernel = "-kernel", initrd = "-initrd", append = "-append" }
    let option: Option
    let reason: String
    init(_ option: Option, _ reason: String) {
        self.option = option
        self.reason = reason
    }
    var description: String { "\(option.rawValue): \(reason)" }
}

/// A Linux bzImage for direct kernel boot (Documentation/arch/x86/boot.rst), the way QEMU's PC
/// machines hand one to the firmware: the real-mode part ("setup": boot sector, setup header
/// and setup code) goes to 0x10000, the command line to 0x20000, the protected-mode part to
/// 1 MiB and the initrd as high in RAM as the kernel allows. The option ROM (`linuxboot_dma.bin`)
/// only copies the pieces to those addresses and jumps to the setup code, so everything the
/// kernel reads from its setup header is patched in here.
///
/// The file is hostile input: every size and offset is checked against the file and the
/// protocol before use, and nothing is read outside the bytes given.
struct LinuxBootImage: Equatable {
    /// Boot protocol 2.02 (Linux 2.4) is the oldest with a 32-bit command-line pointer and a
    /// kernel that loads at 1 MiB; older ones need the low-memory layout, which we do not do.
    static let minimumProtocol: UInt16 = 0x0202
    /// The setup code and boot sector may use at most 32 KiB of the real-mode segment (the
    /// rest of its 64 KiB is the kernel's heap and stack, below the command line).
    static let maxSetupSize = 0x8000
    /// The setup header ends before this offset (protocol 2.15's last field is at 0x268).
    static let headerEnd = 0x270
    /// How much of the file `init(head:fileSize:)` wants to see: all of any valid setup.
    static let headSize = maxSetupSize

    static let setupAddress: UInt32 = 0x1_0000
    static let commandLineAddress: UInt32 = 0x2_0000
    static let kernelAddress: UInt32 = 0x10_0000
    /// The command line must end below the EBDA the firmware keeps at the top of base memory.
    static let commandLineLimit: UInt32 = 0x9_F000
    /// QEMU keeps this much below the top of low RAM free for the ACPI tables (pc machines).
    static let acpiDataSize: UInt64 = 0x2_0000 + 0x8000

    enum Offset {
        static let setupSects = 0x1F1
        static let sysSize = 0x1F4
        static let vidMode = 0x1FA
        static let bootFlag = 0x1FE
        static let jump = 0x200
        static let magic = 0x202
        static let version = 0x206
        static let typeOfLoader = 0x210
        static let loadFlags = 0x211
        static let ramdiskImage = 0x218
        static let ramdiskSize = 0x21C
        static let heapEndPointer = 0x224
        static let commandLinePointer = 0x228
        static let initrdAddressMax = 0x22C
        static let xloadFlags = 0x236
        static let commandLineSize = 0x238
    }
    enum Flag {
        static let loadedHigh: UInt8 = 0x01
        static let canUseHeap: UInt8 = 0x80
        static let canBeLoadedAbove4G: UInt16 = 0x02
    }
    /// QEMU's loader id (0xB, version 0): the kernel only logs it.
    static let loaderType: UInt8 = 0xB0

    let protocolVersion: UInt16
    /// Bytes of the real-mode part, boot sector included; the file's first `setupSize` bytes.
    let setupSize: Int
    /// Bytes of the protected-mode part, which follows the setup in the file.
    let kernelSize: Int
    /// The highest address the initrd may end at, as the kernel's header says (before RAM).
    let initrdAddressMax: UInt32
    /// The longest command line the kernel takes, without its NUL.
    let maxCommandLineLength: Int
    /// The setup bytes, patched by `place`.
    private(set) var setup: [UInt8]
    /// Where `place` put the initrd (nil without one).
    private(set) var initrdAddress: UInt32?

    /// Validates the header in `head`, the first bytes of a kernel file of `fileSize` bytes
    /// (at least `min(fileSize, headSize)` of them).
    init(head: [UInt8], fileSize: Int) throws(LinuxBootError) {
        func fail(_ reason: String) -> LinuxBootError { LinuxBootError(.kernel, reason) }
        guard head.count >= min(fileSize, Self.headSize) else { throw fail("short read of the kernel header") }
        if head.count >= 4 && Array(head[0..<4]) == [0x7F, 0x45, 0x4C, 0x46] {
            throw fail("is an ELF file; only bzImage kernels can be booted directly (no PVH or multiboot ELF)")
        }
        guard head.count >= Self.headerEnd else {
            throw fail("not a Linux bzImage (\(fileSize) bytes is too small)")
        }
        guard Array(head[Offset.magic..<Offset.magic + 4]) == Array("HdrS".utf8) else {
            if Self.hasMultibootHeader(head) {
                throw fail("is a multiboot kernel; only Linux bzImage kernels can be booted directly")
            }
            throw fail("not a Linux bzImage (no 'HdrS' setup header at offset 0x202)")
        }
        guard le16(head, Offset.bootFlag) == 0xAA55 else {
            throw fail("not a Linux bzImage (boot flag at 0x1fe is not 0xaa55)")
        }
        let version = le16(head, Offset.version)
        guard version >= Self.minimumProtocol else {
            throw fail("boot protocol \(Self.versionText(version)) is too old (at least \(Self.versionText(Self.minimumProtocol)) is needed)")
        }
        guard head[Offset.loadFlags] & Flag.loadedHigh != 0 else {
            throw fail("a zImage (loaded low, below 1 MiB) cannot be booted directly; use a bzImage")
        }
        // setup_sects counts 512-byte sectors after the boot sector; 0 means the historic 4.
        let sectors = head[Offset.setupSects] == 0 ? 4 : Int(head[Offset.setupSects])
        let setupSize = (sectors + 1) * 512
        guard setupSize <= Self.maxSetupSize else {
            throw fail("setup_sects = \(sectors): real-mode setup of \(setupSize) bytes is larger than \(Self.maxSetupSize)")
        }
        guard setupSize < fileSize, head.count >= setupSize else {
            throw fail("the file (\(fileSize) bytes) ends inside its \(setupSize)-byte real-mode setup")
        }
        // The entry at 0x200 is a short jmp forward over the header (at most 127 bytes, so it
        // stays inside even the smallest setup).
        guard head[Offset.jump] == 0xEB, Int8(bitPattern: head[Offset.jump + 1]) >= 4 else {
            throw fail("the setup entry (jump at 0x200) does not lead into the setup code")
        }
        let kernelSize = fileSize - setupSize
        // syssize: the protected-mode part in 16-byte units (16 bits before protocol 2.04).
        let paragraphs = version >= 0x0204 ? UInt64(le32(head, Offset.sysSize)) : UInt64(le16(head, Offset.sysSize))
        guard paragraphs * 16 <= UInt64(kernelSize) else {
            throw fail("header says the kernel has \(paragraphs * 16) bytes but the file has \(kernelSize) after the setup")
        }
        guard UInt64(Self.kernelAddress) + UInt64(kernelSize) <= UInt64(UInt32.max) else {
            throw fail("kernel of \(kernelSize) bytes is too large")
        }
        protocolVersion = version
        self.setupSize = setupSize
        self.kernelSize = kernelSize
        if version >= 0x020C && le16(head, Offset.xloadFlags) & Flag.canBeLoadedAbove4G != 0 {
            initrdAddressMax = UInt32.max
        } else if version >= 0x0203 {
            initrdAddressMax = le32(head, Offset.initrdAddressMax)
        } else {
            initrdAddressMax = 0x37FF_FFFF
        }
        maxCommandLineLength = version >= 0x0206 ? Int(le32(head, Offset.commandLineSize)) : 255
        setup = Array(head[0..<setupSize])
    }

    /// Lays the boot out in a machine with `belowFourGiB` bytes of low RAM, as QEMU does, and
    /// patches the setup header: loader type, heap, command line, initrd, `vga=` mode.
    mutating func place(commandLine: String, initrdSize: Int?, belowFourGiB: UInt64) throws(LinuxBootError) {
        let line = Array(commandLine.utf8)
        guard !line.contains(0) else { throw LinuxBootError(.append, "the command line contains a NUL byte") }
        let room = Int(Self.commandLineLimit - Self.commandLineAddress) - 1
        guard line.count <= min(maxCommandLineLength, room) else {
            throw LinuxBootError(.append, "command line of \(line.count) bytes is longer than the kernel's limit of \(min(maxCommandLineLength, room))")
        }
        let kernelEnd = UInt64(Self.kernelAddress) + UInt64(kernelSize)
        guard kernelEnd <= belowFourGiB else {
            throw LinuxBootError(.kernel, "kernel of \(kernelSize) bytes does not fit in \(belowFourGiB >> 20) MiB of RAM")
        }
        if let mode = try Self.videoMode(commandLine) { put16(mode, at: Offset.vidMode) }
        setup[Offset.typeOfLoader] = Self.loaderType
        setup[Offset.loadFlags] |= Flag.canUseHeap
        put16(UInt16(Self.commandLineAddress - Self.setupAddress - 0x200), at: Offset.heapEndPointer)
        put32(Self.commandLineAddress, at: Offset.commandLinePointer)

        initrdAddress = nil
        put32(0, at: Offset.ramdiskImage)
        put32(0, at: Offset.ramdiskSize)
        guard let size = initrdSize else { return }
        // Highest usable byte: the kernel's limit, and below the RAM the ACPI tables need.
        var limit = UInt64(initrdAddressMax)
        if limit >= belowFourGiB - min(belowFourGiB, Self.acpiDataSize) {
            limit = belowFourGiB - min(belowFourGiB, Self.acpiDataSize) &- 1
        }
        guard UInt64(size) < limit, (limit - UInt64(size)) & ~0xFFF >= kernelEnd else {
            throw LinuxBootError(.initrd, "initrd of \(size) bytes does not fit between the kernel (ends at \(hex(kernelEnd))) and its highest address \(hex(limit)) (initrd_addr_max \(hex(UInt64(initrdAddressMax))), \(belowFourGiB >> 20) MiB of low RAM)")
        }
        let address = UInt32((limit - UInt64(size)) & ~0xFFF)
        initrdAddress = address
        put32(address, at: Offset.ramdiskImage)
        put32(UInt32(size), at: Offset.ramdiskSize)
    }

    /// The mode a `vga=` word asks for (QEMU's rules: normal, ext, ask, or a C number).
    static func videoMode(_ commandLine: String) throws(LinuxBootError) -> UInt16? {
        let bytes = Array(commandLine.utf8), key = Array("vga=".utf8)
        guard let start = bytes.indices.first(where: { bytes[$0...].starts(with: key) }) else { return nil }
        let word = Substring(decoding: bytes[(start + key.count)...].prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)
        if word.hasPrefix("normal") { return 0xFFFF }
        if word.hasPrefix("ext") { return 0xFFFE }
        if word.hasPrefix("ask") { return 0xFFFD }
        let text = String(word)
        let value: UInt32?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = UInt32(text.dropFirst(2), radix: 16)
        } else if text.hasPrefix("0") && text.count > 1 {
            value = UInt32(text.dropFirst(), radix: 8)
        } else {
            value = UInt32(text, radix: 10)
        }
        guard let value else { throw LinuxBootError(.append, "invalid 'vga=' kernel parameter '\(text)'") }
        return UInt16(truncatingIfNeeded: value)
    }

    static func hasMultibootHeader(_ head: [UInt8]) -> Bool {
        // The multiboot header is 4-byte aligned within the first 8 KiB.
        stride(from: 0, to: min(head.count, 8192) - 11, by: 4).contains { offset in
            let magic = le32(head, offset), flags = le32(head, offset + 4), sum = le32(head, offset + 8)
            return magic == 0x1BAD_B002 && magic &+ flags &+ sum == 0
        }
    }

    /// "2.15" for 0x020F, as boot.rst names protocol versions.
    static func versionText(_ version: UInt16) -> String {
        let minor = version & 0xFF
        return "\(version >> 8).\(minor < 10 ? "0" : "")\(minor)"
    }

    private mutating func put16(_ value: UInt16, at offset: Int) {
        setup[offset] = UInt8(truncatingIfNeeded: value)
        setup[offset + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    private mutating func put32(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { setup[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }
}

private func le16(_ bytes: [UInt8], _ offset: Int) -> UInt16 {
    UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
}

private func le32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
    (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
}

