import Config
import DMCore
import Devices
#if canImport(Glibc)
import Glibc
#endif

/// fw_cfg keys of direct kernel boot (QEMU's numbering): where each piece goes, its size, and
/// its bytes. The option ROM reads them; SeaBIOS itself does not.
extension FwCfgKey {
    static let kernelAddress: UInt16 = 0x07
    static let kernelSize: UInt16 = 0x08
    static let initrdAddress: UInt16 = 0x0A
    static let initrdSize: UInt16 = 0x0B
    static let kernelData: UInt16 = 0x11
    static let initrdData: UInt16 = 0x12
    static let commandLineAddress: UInt16 = 0x13
    static let commandLineSize: UInt16 = 0x14
    static let commandLineData: UInt16 = 0x15
    static let setupAddress: UInt16 = 0x16
    static let setupSize: UInt16 = 0x17
    static let setupData: UInt16 = 0x18
}

/// Direct kernel boot (`-kernel`, `-initrd`, `-append`) as QEMU's PC machines do it: the
/// kernel, initrd, command line and patched setup header become fw_cfg items, and QEMU's
/// Linux loader option ROM becomes the fw_cfg file `genroms/linuxboot_dma.bin`, first in
/// `bootorder`. SeaBIOS runs every `genroms/` ROM; this one registers a boot entry (BEV) that
/// pulls the pieces into place over fw_cfg (by DMA, or byte by byte with `linuxboot.bin` when
/// DMA is off) and jumps to the kernel's setup code. Nothing here touches the accelerator, so
/// any machine with a fw_cfg device (pc on KVM, xenfv under Xen) can install it.
struct LinuxBoot {
    /// Where Debian's qemu-system-data (and QEMU builds in general) keep the option ROMs.
    static let romDirectories = ["/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu"]

    let image: LinuxBootImage
    let kernel: [UInt8]
    let initrd: [UInt8]?
    /// The command line with its NUL.
    let commandLine: [UInt8]
    let romName: String
    let rom: [UInt8]

    /// The `bootorder` line that puts the ROM first, as QEMU's bootindex 0 does.
    var bootOrderEntry: String { "/rom@genroms/\(romName)" }

    /// Reads and checks everything `-kernel`/`-initrd`/`-append` name, and lays the boot out in
    /// `belowFourGiB` bytes of low RAM. Nil without `-kernel`. Sizes are checked before any
    /// large read, so a huge initrd fails fast.
    static func load(_ config: VMConfig, belowFourGiB: UInt64, dma: Bool,
                     romDirectories: [String] = romDirectories) throws(MachineError) -> LinuxBoot? {
        guard let kernelPath = config.kernel else { return nil }
        let romName = dma ? "linuxboot_dma.bin" : "linuxboot.bin"
        let rom = try loadROM(named: romName, directories: romDirectories)

        var initrdSize: Int?
        if let path = config.initrd {
            // QEMU splits `-initrd a,b` into several initrds only for multiboot kernels.
            if path.contains(",") && access(path, F_OK) != 0 {
                throw MachineError("-initrd \(path): several initrds (comma-separated) are not supported; concatenate them into one file")
            }
            initrdSize = try FirmwareImage.withRegularFile(path, what: "-initrd \(path)") { (_, size) throws(MachineError) in size }
        }
        let what = "-kernel \(kernelPath)"
        let (image, kernel) = try FirmwareImage.withRegularFile(kernelPath, what: what) { (fd, size) throws(MachineError) in
            let head = try FirmwareImage.read(fd, offset: 0, count: min(size, LinuxBootImage.headSize), what: what)
            var image: LinuxBootImage
            do throws(LinuxBootError) {
                image = try LinuxBootImage(head: head, fileSize: size)
                try image.place(commandLine: config.append ?? "", initrdSize: initrdSize, belowFourGiB: belowFourGiB)
            } catch {
                switch error.option {
                case .kernel: throw MachineError("\(what): \(error.reason)")
                case .initrd: throw MachineError("-initrd \(config.initrd ?? ""): \(error.reason)")
                case .append: throw MachineError(error.description)
                }
            }
            return (image, try FirmwareImage.read(fd, offset: image.setupSize, count: image.kernelSize, what: what))
        }
        var initrd: [UInt8]?
        if let path = config.initrd, let expected = initrdSize {
            initrd = try FirmwareImage.withRegularFile(path, what: "-initrd \(path)") { (fd, size) throws(MachineError) in
                guard size == expected else { throw MachineError("-initrd \(path): the file changed size while loading") }
                return try FirmwareImage.read(fd, offset: 0, count: size, what: "-initrd \(path)")
            }
        }
        return LinuxBoot(image: image, kernel: kernel, initrd: initrd,
                         commandLine: Array((config.append ?? "").utf8) + [0], romName: romName, rom: rom)
    }

    static func loadROM(named name: String, directories: [String]) throws(MachineError) -> [UInt8] {
        for directory in directories {
            let path = directory + "/" + name
            guard let bytes = try? FirmwareImage.readFile(path, limit: 128 << 10, what: path) else { continue }
            guard bytes.count >= 512, bytes.count % 512 == 0, bytes[0] == 0x55, bytes[1] == 0xAA else {
                throw MachineError("-kernel: option ROM \(path) is not a valid option ROM")
            }
            return bytes
        }
        throw MachineError("-kernel: QEMU's Linux loader option ROM \(name) not found in \(directories.joined(separator: ", ")) (apt-get install qemu-system-data)")
    }

    /// Adds the items and the ROM to `fwcfg`, and returns the `bootorder` entry for them.
    func install(into fwcfg: FwCfg) throws(FwCfgError) -> String {
        func le32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        try fwcfg.addItem(key: FwCfgKey.setupAddress, data: le32(LinuxBootImage.setupAddress))
        try fwcfg.addItem(key: FwCfgKey.setupSize, data: le32(UInt32(image.setup.count)))
        try fwcfg.addItem(key: FwCfgKey.setupData, data: image.setup)
        try fwcfg.addItem(key: FwCfgKey.kernelAddress, data: le32(LinuxBootImage.kernelAddress))
        try fwcfg.addItem(key: FwCfgKey.kernelSize, data: le32(UInt32(kernel.count)))
        try fwcfg.addItem(key: FwCfgKey.kernelData, data: kernel)
        try fwcfg.addItem(key: FwCfgKey.commandLineAddress, data: le32(LinuxBootImage.commandLineAddress))
        try fwcfg.addItem(key: FwCfgKey.commandLineSize, data: le32(UInt32(commandLine.count)))
        try fwcfg.addItem(key: FwCfgKey.commandLineData, data: commandLine)
        if let initrd, let address = image.initrdAddress {
            try fwcfg.addItem(key: FwCfgKey.initrdAddress, data: le32(address))
            try fwcfg.addItem(key: FwCfgKey.initrdSize, data: le32(UInt32(initrd.count)))
            try fwcfg.addItem(key: FwCfgKey.initrdData, data: initrd)
        }
        try fwcfg.addFile(name: "genroms/\(romName)", data: rom)
        return bootOrderEntry
    }
}
