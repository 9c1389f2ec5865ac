import Foundation
import XCTest

/// The NIC as libxl asks for it, against a real DHCP server: a tap interface with an address,
/// dnsmasq serving a small range on it, and the `rtl8139` guest broadcasting a DHCPDISCOVER
/// through swiftdm's RTL8139 and tap backend until dnsmasq's DHCPOFFER comes back.
final class NetworkTests: XCTestCase {
    static func skip(_ message: String) throws -> Never {
        FileHandle.standardError.write(Data(("\n*** SKIPPED: " + message + " ***\n").utf8))
        throw XCTSkip("SKIPPED: " + message)
    }

    func testDHCPOfferThroughTapWithLibxlCommandLine() throws {
        try VMProcess.requireKVM()
        guard getuid() == 0 else { try Self.skip("not root: creating a tap interface needs CAP_NET_ADMIN") }
        guard FileManager.default.fileExists(atPath: "/dev/net/tun") else { try Self.skip("/dev/net/tun is missing") }
        _ = try StorageBootTests.tool("ip")
        _ = try StorageBootTests.tool("dnsmasq")
        let build = try VMProcess.guestsBuilt.get()

        let tap = "sdmt\(getpid() % 100_000)"
        let subnet = "10.213.\(Int(getpid() % 200) + 20)"
        try StorageBootTests.run("ip", ["tuntap", "add", "dev", tap, "mode", "tap"])
        defer { _ = try? StorageBootTests.run("ip", ["link", "del", tap]) }
        try StorageBootTests.run("ip", ["addr", "add", "\(subnet).1/24", "dev", tap])
        try StorageBootTests.run("ip", ["link", "set", tap, "up"])

        // dnsmasq runs as a daemon (its pid in a file) rather than a child Process: Foundation
        // would sit in waitpid() on it and stop noticing swiftdm's exit.
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("net-\(getpid())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let pidFile = work.appendingPathComponent("dnsmasq.pid").path
        let logFile = work.appendingPathComponent("dnsmasq.log").path
        // --no-ping: offer at once instead of probing the address for ~3 s first.
        try StorageBootTests.run("dnsmasq", ["--conf-file=/dev/null", "--interface=\(tap)", "--bind-interfaces",
                                             "--except-interface=lo", "--dhcp-range=\(subnet).50,\(subnet).59,1h", "--no-ping",
                                             "--no-resolv", "--port=0", "--leasefile-ro", "--log-dhcp",
                                             "--log-facility=\(logFile)", "--pid-file=\(pidFile)"])
        defer {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 {
                kill(pid, SIGTERM)
            }
        }

        // libxl's spelling (xen-contract.md §A.2): -device before -netdev, and -net none.
        let (status, out, err) = try VMProcess.run([
            "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
            "-bios", build.appendingPathComponent("rtl8139.bin").path,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device", "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:5a:01:02",
            "-netdev", "type=tap,id=net0,ifname=\(tap),script=no,downscript=no",
            "-net", "none",
        ], timeout: 90)
        XCTAssertEqual(status, 1, "guest did not PASS\nstdout:\n\(out)\nstderr:\n\(err)")
        XCTAssertTrue(out.contains("PASS rtl8139"), out)
        XCTAssertTrue(out.contains("rtl8139: MAC 00:16:3e:5a:01:02"), out)
        XCTAssertTrue(out.contains("rtl8139: DHCPOFFER \(subnet).5"), out)
        XCTAssertTrue(out.contains("from \(subnet).1"), out)
        let served = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        XCTAssertTrue(served.contains("DHCPOFFER(\(tap)) \(subnet).5"), served)
        XCTAssertTrue(served.contains("00:16:3e:5a:01:02"), served)
    }

    /// The errors a wrong network command line gets, before any guest runs.
    func testNetworkCommandLineErrors() throws {
        try VMProcess.requireKVM()
        let (status, _, err) = try VMProcess.run(["-nodefaults", "-device", "rtl8139,netdev=nope"], timeout: 30)
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("Property 'rtl8139.netdev' can't find value 'nope'"), err)
        let (status2, _, err2) = try VMProcess.run(["-nodefaults", "-device", "rtl8139,mac=01:00:5e:00:00:01"], timeout: 30)
        XCTAssertEqual(status2, 1)
        XCTAssertTrue(err2.contains("multicast"), err2)
        let (status3, _, err3) = try VMProcess.run(["-nodefaults", "-netdev", "tap,id=n0,script=/etc/qemu-ifup"], timeout: 30)
        XCTAssertEqual(status3, 1)
        XCTAssertTrue(err3.contains("does not run scripts"), err3)
    }
}
