import Foundation
import XCTest

/// The tiny test guests in guests/, run as firmware under swiftdm on KVM. Each checks real
/// values and ends with "PASS NAME" and isa-debug-exit status 1 (QEMU's convention).
final class GuestTests: XCTestCase {
    static let common = ["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]

    func runGuest(_ name: String, extra: [String] = [], timeout: TimeInterval = 120) throws -> (String, String) {
        try VMProcess.requireKVM()
        let build = try VMProcess.guestsBuilt.get()
        let (status, out, err) = try VMProcess.run(Self.common + ["-bios", build.appendingPathComponent("\(name).bin").path] + extra,
                                                    timeout: timeout)
        let verdict = out.split(whereSeparator: \.isNewline).last { $0.hasPrefix("PASS") || $0.hasPrefix("FAIL") }
        XCTAssertEqual(verdict.map(String.init), "PASS \(name)", "guest output:\n\(out)\nstderr:\n\(err)")
        XCTAssertEqual(status, 1, "isa-debug-exit status; stderr:\n\(err)")
        return (out, err)
    }

    func testPortDispatch() throws {
        let (out, _) = try runGuest("ports")
        XCTAssertTrue(out.contains("ports: rep outsb to 0x3f8 ok"), "rep outsb reached the UART")
    }

    func testMMIODispatchThroughPCITestDevice() throws { _ = try runGuest("mmio", extra: ["-device", "pci-testdev"]) }
    func testPCIConfigSpaceAndWriteMasks() throws { _ = try runGuest("pci") }
    func testInterruptsThroughThePIC() throws { _ = try runGuest("irq-pic") }
    func testInterruptsThroughTheIOAPIC() throws { _ = try runGuest("irq-ioapic") }
    func testFirmwareConfigDMA() throws { _ = try runGuest("fwcfg") }

    /// Random values to every port and to unassigned MMIO: the device model must keep running,
    /// and its guest-error log must stay rate-limited.
    func testHostileGuestCannotCrashTheDeviceModel() throws {
        let (_, err) = try runGuest("hostile", extra: ["-d", "guest_errors"], timeout: 300)
        let lines = err.split(whereSeparator: \.isNewline).filter { $0.contains("guest error") }
        XCTAssertGreaterThan(lines.count, 0, "unassigned accesses were logged")
        XCTAssertTrue(err.contains("suppressed"), "the log was rate-limited")
    }
}
