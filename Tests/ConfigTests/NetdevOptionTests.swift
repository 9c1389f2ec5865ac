import XCTest
@testable import Config

final class NetdevOptionTests: XCTestCase {
    private func parse(_ args: [String]) throws -> VMConfig {
        guard case .run(let c) = try CommandLineParser.parse(args) else { throw XCTSkip("not a run") }
        return c
    }

    private func reason(_ args: [String]) -> String? {
        do {
            _ = try CommandLineParser.parse(args)
            return nil
        } catch {
            return error.description
        }
    }

    func testLibxlTapSpellings() throws {
        let c = try parse(["-netdev", "type=tap,id=net0,ifname=vif1.0-emu,script=no,downscript=no", "-net", "none"])
        XCTAssertEqual(c.netdevs, [NetdevOption(id: "net0", kind: .tap(.init(ifname: "vif1.0-emu")))])
        XCTAssertTrue(c.netNone)
        XCTAssertEqual(c.warnings, [])
        let positional = try parse(["-netdev", "tap,id=n1,fd=7"])
        XCTAssertEqual(positional.netdevs, [NetdevOption(id: "n1", kind: .tap(.init(fd: 7)))])
        let bare = try parse(["-netdev", "tap,id=n2,script=,downscript="])
        XCTAssertEqual(bare.netdevs, [NetdevOption(id: "n2", kind: .tap(.init()))])
    }

    func testIdIsRequiredUniqueAndWellFormed() {
        XCTAssertEqual(reason(["-netdev", "tap,ifname=t0"]), "-netdev tap,ifname=t0: parameter 'id' is missing")
        XCTAssertEqual(reason(["-netdev", "tap,id=a", "-netdev", "tap,id=a"]), "-netdev tap,id=a: Duplicate ID 'a' for netdev")
        XCTAssertNotNil(reason(["-netdev", "tap,id=0bad"]))
        XCTAssertNotNil(reason(["-netdev", "tap,id=a b"]))
        XCTAssertEqual(reason(["-netdev", "id=a"]), "-netdev id=a: parameter 'type' is missing")
    }

    func testInterfaceNamesAreValidated() {
        for bad in ["", "a/b", "sixteen-bytes-xx", "a:b", "a b", ".", ".."] {
            XCTAssertNotNil(reason(["-netdev", "tap,id=n,ifname=\(bad)"]), bad)
        }
        XCTAssertTrue(NetdevOption.isValidInterfaceName("fifteen-bytes-x"))
        XCTAssertNotNil(reason(["-netdev", "tap,id=n,fd=-1"]))
        XCTAssertNotNil(reason(["-netdev", "tap,id=n,fd=3,ifname=t"]))
    }

    func testScriptsAreRefusedNotRun() {
        XCTAssertEqual(reason(["-netdev", "tap,id=n,script=/etc/qemu-ifup"]),
                       "-netdev tap,id=n,script=/etc/qemu-ifup: script=/etc/qemu-ifup: SwiftDM does not run scripts; set up the interface beforehand and pass script=no")
        XCTAssertNotNil(reason(["-netdev", "tap,id=n,script=no,downscript=/bin/true"]))
        XCTAssertNotNil(reason(["-netdev", "tap,id=n,vnet_hdr=on"]))
        XCTAssertNotNil(reason(["-netdev", "tap,id=n,colour=blue"]))
    }

    func testOtherTypesWarnOrFail() throws {
        let c = try parse(["-netdev", "user,id=u0,hostfwd=tcp::2222-:22"])
        XCTAssertEqual(c.netdevs, [NetdevOption(id: "u0", kind: .notImplemented(type: "user"))])
        XCTAssertEqual(c.warnings.count, 1)
        XCTAssertTrue(c.warnings[0].contains("'user' is not implemented yet"), c.warnings[0])
        XCTAssertEqual(reason(["-netdev", "carrier-pigeon,id=p"]), "-netdev carrier-pigeon,id=p: unknown network backend type 'carrier-pigeon'")
        let legacy = try parse(["-net", "nic,model=e1000"])
        XCTAssertFalse(legacy.netNone)
        XCTAssertEqual(legacy.warnings.count, 1)
    }

    func testNICShorthand() throws {
        let c = try parse(["-nic", "tap,model=rtl8139,mac=00:16:3e:00:00:09,ifname=vif3.0-emu,script=no,downscript=no"])
        XCTAssertEqual(c.netdevs, [NetdevOption(id: "__org.qemu.nic0", kind: .tap(.init(ifname: "vif3.0-emu")))])
        XCTAssertEqual(c.devices.map(\.text), ["rtl8139,netdev=__org.qemu.nic0,mac=00:16:3e:00:00:09"])
        XCTAssertTrue(try parse(["-nic", "none"]).netNone)
        XCTAssertNotNil(reason(["-nic", "tap,script=/etc/qemu-ifup"]))
        XCTAssertNotNil(reason(["-nic", "none,model=rtl8139"]))
    }
}
