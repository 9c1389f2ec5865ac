import XCTest
@testable import Config

final class CommandLineParserTests: XCTestCase {
    func testTheIssuesCommandLine() throws {
        let c = try config(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio"])
        XCTAssertEqual(c.machineType, "pc")
        XCTAssertEqual(c.memoryBytes, 64 << 20)
        XCTAssertTrue(c.noDefaults)
        XCTAssertTrue(c.noGraphic)
        XCTAssertEqual(c.serials, ["stdio"])
    }

    func testDirectKernelBootOptions() throws {
        let c = try config(["-kernel", "vmlinuz", "-initrd", "initrd.img", "-append", "console=ttyS0 quiet"])
        XCTAssertEqual(c.kernel, "vmlinuz")
        XCTAssertEqual(c.initrd, "initrd.img")
        XCTAssertEqual(c.append, "console=ttyS0 quiet")
        XCTAssertTrue(c.fwCfgDMA)
        XCTAssertFalse(try config(["-global", "fw_cfg_io.dma_enabled=off"]).fwCfgDMA)
        XCTAssertTrue(try config(["-global", "fw_cfg_io.dma_enabled=on"]).fwCfgDMA)
        for bad in [["-initrd", "i"], ["-append", "x"], ["-kernel", ""], ["-global", "PIIX4_PM.disable_s3=1"],
                    ["-global", "fw_cfg_io.dma_enabled=maybe"], ["-global", "fw_cfg_io.dma_enabled"]] {
            XCTAssertThrowsError(try CommandLineParser.parse(bad), "\(bad)") { error in
                XCTAssertTrue((error as! ConfigError).description.hasPrefix(bad[0]), "\(error)")
            }
        }
    }

    func testVGAOptionAddsTheCardAsADevice() throws {
        XCTAssertEqual(try config(["-vga", "std"]).devices.map { $0.entries.first?.value }, ["VGA"])
        XCTAssertEqual(try config(["-vga", "cirrus"]).devices.map { $0.entries.first?.value }, ["cirrus-vga"])
        let none = try config(["-vga", "none"])
        XCTAssertTrue(none.devices.isEmpty)
        XCTAssertThrowsError(try CommandLineParser.parse(["-vga", "qxl"])) { error in
            XCTAssertEqual((error as? ConfigError)?.description.hasPrefix("-vga"), true, "\(error)")
        }
    }

    func testDefaults() throws {
        let c = try config([])
        XCTAssertEqual(c.memoryBytes, 128 << 20)
        XCTAssertEqual(c.smp.cpus, 1)
        XCTAssertEqual(c.machineType, "pc")
    }

    func testSizesAndSMP() throws {
        XCTAssertEqual(try config(["-m", "1G"]).memoryBytes, 1 << 30)
        XCTAssertEqual(try config(["-m", "size=512M"]).memoryBytes, 512 << 20)
        XCTAssertEqual(try config(["-m", "96"]).memoryBytes, 96 << 20)
        let smp = try config(["-smp", "2,maxcpus=4"]).smp
        XCTAssertEqual(smp.cpus, 2)
        XCTAssertEqual(smp.maxCPUs, 4)
        XCTAssertEqual(try config(["-smp", "sockets=2,cores=2"]).smp.cpus, 4)
        XCTAssertEqual(try config(["-smp", "maxcpus=3"]).smp.cpus, 3)
    }

    func testMachinePropertiesAndDoubleDashSpellings() throws {
        let c = try config(["--machine", "xenfv,suppress-vmdesc=on,max-ram-below-4g=1G", "--no-reboot", "-no-shutdown", "-S"])
        XCTAssertEqual(c.machineType, "xenfv")
        XCTAssertEqual(c.machineProperties.map(\.key), ["suppress-vmdesc", "max-ram-below-4g"])
        XCTAssertTrue(c.noReboot && c.noShutdown && c.startPaused)
    }

    func testDevicesChardevsAndBoot() throws {
        let c = try config(["-chardev", "socket,id=mon,path=/tmp/x,server=on,wait=off",
                            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                            "-boot", "order=cd,menu=on,reboot-timeout=500", "-debugcon", "file:/tmp/log", "-name", "guest=vm1"])
        XCTAssertEqual(c.chardevs.count, 1)
        XCTAssertEqual(c.devices.first?.entries.first?.value, "isa-debug-exit")
        XCTAssertEqual(c.bootOrder, "cd")
        XCTAssertEqual(c.bootMenu, true)
        XCTAssertEqual(c.bootRebootTimeout, 500)
        XCTAssertEqual(c.debugcon, "file:/tmp/log")
        XCTAssertEqual(c.name, "vm1")
    }

    func testInformationalActions() throws {
        XCTAssertEqual(try CommandLineParser.parse(["--help"]), .printHelp)
        XCTAssertEqual(try CommandLineParser.parse(["-version"]), .printVersion)
        XCTAssertEqual(try CommandLineParser.parse(["-M", "help"]), .listMachines)
        XCTAssertEqual(try CommandLineParser.parse(["-device", "help"]), .listDevices)
    }

    func testErrorsNameTheOptionAndTheValue() {
        let cases: [([String], String, String)] = [
            (["-bogus"], "-bogus", ""),
            (["-m", "lots"], "-m", "lots"),
            (["-m", "0"], "-m", "0"),
            (["-smp", "2,maxcpus=1"], "-smp", "2,maxcpus=1"),
            (["-smp", "cpus=x"], "-smp", "cpus=x"),
            (["-display", "none,gl=on"], "-display", "none,gl=on"),
            (["-xen-domid", "0"], "-xen-domid", "0"),
            (["-xen-domid", "32752"], "-xen-domid", "32752"),
            (["-run-with", "chroot=relative"], "-run-with", "chroot=relative"),
            (["-run-with", "color=blue"], "-run-with", "color=blue"),
            (["-chardev", "socket,path=/x"], "-chardev", "socket,path=/x"),
            (["-boot", "order=q"], "-boot", "order=q"),
            (["-boot", "menu=maybe"], "-boot", "menu=maybe"),
            (["-d", "everything"], "-d", "everything"),
            (["-cpu", "486"], "-cpu", "486"),
            (["-m"], "-m", ""),
        ]
        for (arguments, option, value) in cases {
            XCTAssertThrowsError(try CommandLineParser.parse(arguments), "\(arguments)") { error in
                guard let error = error as? ConfigError else { return XCTFail("typed error") }
                XCTAssertEqual(error.option, option, "\(arguments)")
                XCTAssertEqual(error.value, value, "\(arguments)")
                XCTAssertFalse(error.description.contains("\n"))
            }
        }
    }

    func testHelpIsGeneratedFromTheTable() {
        for option in CommandLineParser.options {
            XCTAssertTrue(CommandLineParser.helpText.contains("-" + option.names[0]), option.names[0])
        }
    }

    func testDrivesAndLegacyDiskOptions() throws {
        let c = try config(["-drive", "file=/tmp/a.img,if=ide,index=0,media=disk,format=raw,cache=writeback",
                            "-hdb", "/tmp/with,comma.img", "-cdrom", "/tmp/cd.iso",
                            "-drive", "if=none,readonly=on,id=ide-5632,file=/tmp/x.iso,format=raw"])
        XCTAssertEqual(c.drives.count, 4)
        var hdb = c.drives[1]
        XCTAssertEqual(hdb.option, "-hdb")
        XCTAssertEqual(hdb.take("file"), "/tmp/with,comma.img", "commas in the file name survive")
        XCTAssertEqual(hdb.take("index"), "1")
        var cdrom = c.drives[2]
        XCTAssertEqual(cdrom.take("media"), "cdrom")
        XCTAssertEqual(cdrom.take("index"), "2")
        var none = c.drives[3]
        XCTAssertEqual(none.take("id"), "ide-5632")
        XCTAssertThrowsError(try config(["-hda", ""]))
    }
}

final class OptionListTests: XCTestCase {
    func testImpliedKeyEscapedCommasAndFlags() throws {
        var list = try OptionList(option: "-drive", text: "file=a,,b.img,readonly,noauto,if=ide", impliedKey: nil)
        XCTAssertEqual(list.take("file"), "a,b.img")
        XCTAssertEqual(try list.takeBool("readonly"), true)
        XCTAssertEqual(try list.takeBool("auto"), false)
        XCTAssertEqual(list.take("if"), "ide")
        XCTAssertNoThrow(try list.rejectUnknown())
        var device = try OptionList(option: "-device", text: "e1000,id=n0,mac=52:54:00:12:34:56", impliedKey: "driver")
        XCTAssertEqual(device.take("driver"), "e1000")
        XCTAssertEqual(device.take("id"), "n0")
        XCTAssertThrowsError(try device.rejectUnknown()) { error in
            XCTAssertTrue((error as? ConfigError)?.reason.contains("mac") ?? false)
        }
    }

    func testLaterValuesWinAndBadValuesAreNamed() throws {
        var list = try OptionList(option: "-x", text: "a=1,a=2,n=0x10,s=2G,b=perhaps")
        XCTAssertEqual(list.take("a"), "2")
        XCTAssertEqual(try list.takeUInt("n"), 16)
        XCTAssertEqual(try list.takeSize("s"), 2 << 30)
        XCTAssertThrowsError(try list.takeBool("b"))
        XCTAssertThrowsError(try OptionList(option: "-x", text: "=value"))
        var overflow = try OptionList(option: "-x", text: "s=99999999999999999999T,n=300")
        XCTAssertThrowsError(try overflow.takeSize("s"))
        XCTAssertThrowsError(try overflow.takeUInt("n", max: 255))
    }

    func testSizes() {
        XCTAssertEqual(parseSize("64", defaultUnit: 1 << 20), 64 << 20)
        XCTAssertEqual(parseSize("4k"), 4096)
        XCTAssertEqual(parseSize("0x1000"), 4096)
        XCTAssertNil(parseSize(""))
        XCTAssertNil(parseSize("M"))
        XCTAssertNil(parseSize("-1"))
        XCTAssertNil(parseSize("\(UInt64.max)T"))
    }
}
