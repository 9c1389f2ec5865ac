import XCTest
@testable import Config

/// The command lines libxl builds (xen-contract.md §A.2), as captured from a real Xen 4.17.
final class XenCommandLineTests: XCTestCase {
    func testHVMLinuxArgvFromTheLab() throws {
        // dm-023207-pid1328.argv: direct kernel boot, an rtl8139 on a tap, cirrus VGA.
        let c = try config(["-xen-domid", "6", "-no-shutdown",
                            "-chardev", "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-6,server=on,wait=off",
                            "-mon", "chardev=libxl-cmd,mode=control",
                            "-chardev", "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-6,server=on,wait=off",
                            "-mon", "chardev=libxenstat-cmd,mode=control", "-nodefaults", "-no-user-config",
                            "-name", "hvmlinux", "-vnc", "none", "-display", "none", "-kernel", "/root/guest/vmlinuz",
                            "-initrd", "/root/guest/tiny-initrd.img", "-append", "console=hvc0 console=ttyS0 loglevel=4 panic=30",
                            "-serial", "file:/share/captures/hvmlinux-guest-com1.log", "-nographic",
                            "-device", "cirrus-vga,vgamem_mb=8", "-boot", "order=cda",
                            "-device", "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:02",
                            "-netdev", "type=tap,id=net0,ifname=vif6.0-emu,br=xenbr0,script=no,downscript=no",
                            "-machine", "xenfv,suppress-vmdesc=on", "-m", "248",
                            "-drive", "file=/root/guest/idle.img,if=ide,index=0,media=disk,format=raw,cache=writeback"])
        XCTAssertEqual(c.xenDomainID, 6)
        XCTAssertEqual(c.machineType, "xenfv")
        XCTAssertEqual(c.memoryBytes, 248 << 20)
        XCTAssertEqual(c.monitors.count, 2)
        XCTAssertEqual(c.kernel, "/root/guest/vmlinuz")
        XCTAssertEqual(c.append, "console=hvc0 console=ttyS0 loglevel=4 panic=30")
        XCTAssertTrue(c.noShutdown)
        // -vnc none is silent; the tap network is a netdev now.
        XCTAssertEqual(c.warnings, [])
        XCTAssertEqual(c.netdevs, [NetdevOption(id: "net0", kind: .tap(.init(ifname: "vif6.0-emu")))])
    }

    func testOptionsWithoutTheirFeatureWarnOnce() throws {
        let c = try config(["-xen-domid", "2", "-vnc", "127.0.0.1:0,to=99", "-k", "en-us", "-usb", "-usbdevice", "tablet",
                            "-display", "sdl", "-spice", "port=6000,disable-ticketing=on", "-net", "none",
                            "-monitor", "/dev/null", "-parallel", "/dev/null", "-object", "iothread,id=io0"])
        XCTAssertEqual(c.warnings.map { $0.prefix(while: { $0 != ":" }) },
                       ["-usb", "-usbdevice tablet", "-display sdl", "-spice port=6000,disable-ticketing=on",
                        "-object iothread,id=io0"])
    }

    func testDeprivilegeSpellings() throws {
        let old = try config(["-xen-domid", "2", "-runas", "xen-qemuuser-range-base", "-chroot", "/var/run/xen/qemu-root-2",
                              "-xen-domid-restrict"])
        XCTAssertEqual(old.runAsUser, "xen-qemuuser-range-base")
        XCTAssertEqual(old.chrootDirectory, "/var/run/xen/qemu-root-2")
        XCTAssertTrue(old.xenRestrict)
        let new = try config(["-run-with", "chroot=/var/run/xen/qemu-root-2,user=1002:1002"])
        XCTAssertEqual(new.runAsUser, "1002:1002")
        XCTAssertEqual(new.chrootDirectory, "/var/run/xen/qemu-root-2")
        // libxl's probe looks for exactly these parameter names.
        let runWith = CommandLineParser.optionParameters.first { $0.option == "run-with" }
        XCTAssertEqual(runWith?.parameters, ["chroot", "user"])
    }

    func testPVAndProbeCommandLines() throws {
        let probe = try config(["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=xen",
                                "-chardev", "socket,id=libxl-cmd,fd=12,server=on,wait=off", "-mon", "chardev=libxl-cmd,mode=control"])
        XCTAssertEqual(probe.machineType, "none")
        XCTAssertTrue(probe.startPaused)
        let pv = try config(["-xen-domid", "3", "-xen-attach", "-name", "pv1", "-vnc", "127.0.0.1:0,to=99",
                             "-display", "none", "-machine", "xenpv", "-m", "512"])
        XCTAssertTrue(pv.xenAttach)
        XCTAssertEqual(pv.machineType, "xenpv")
    }
}
