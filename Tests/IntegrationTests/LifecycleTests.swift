import Foundation
import XCTest

/// Resets and power-off as the guest asks for them, and QEMU's -no-reboot / -no-shutdown.
final class LifecycleTests: XCTestCase {
    func lifecycleGuest(_ extra: [String] = []) throws -> VMProcess {
        try VMProcess.requireKVM()
        let build = try VMProcess.guestsBuilt.get()
        return try VMProcess(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                              "-bios", build.appendingPathComponent("lifecycle.bin").path] + extra)
    }

    func boots(_ output: String) -> [String] {
        output.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("lifecycle: boot") }.map(String.init)
    }

    /// 0xCF9, the i8042 pulse and port 0x92 each reset the machine (devices and CPUs back to
    /// power-on, RAM and CMOS kept); ACPI S5 then ends the process with status 0.
    func testEveryResetPathRebootsAndACPIPowerOffExits() throws {
        let vm = try lifecycleGuest()
        XCTAssertEqual(vm.waitForExit(timeout: 60), 0, vm.stdout + vm.stderr)
        XCTAssertEqual(boots(vm.stdout), (1...4).map { "lifecycle: boot \($0)" })
        XCTAssertTrue(vm.stdout.contains("lifecycle: powering off"))
        XCTAssertFalse(vm.stdout.contains("did not"), vm.stdout)
    }

    func testNoRebootTurnsTheFirstResetIntoAnExit() throws {
        let vm = try lifecycleGuest(["-no-reboot"])
        XCTAssertEqual(vm.waitForExit(timeout: 60), 0, vm.stdout + vm.stderr)
        XCTAssertEqual(boots(vm.stdout), ["lifecycle: boot 1"])
        XCTAssertFalse(vm.stdout.contains("did not"), "the guest stopped at its reset:\n\(vm.stdout)")
    }

    func testNoShutdownKeepsTheProcessAfterPowerOff() throws {
        let vm = try lifecycleGuest(["-no-shutdown"])
        XCTAssertNotNil(vm.waitForOutput("powering off", timeout: 60), vm.stdout)
        usleep(500_000)
        XCTAssertTrue(vm.process.isRunning, "stopped, not exited")
        XCTAssertFalse(vm.stdout.contains("did not"))
        vm.signal(SIGHUP)
        XCTAssertEqual(vm.waitForExit(timeout: 10), 0)
        XCTAssertTrue(vm.stderr.contains("terminating on signal 1"), vm.stderr)
    }
}
