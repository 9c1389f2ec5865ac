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

    /// ACPI S3: the guest (guests/s3.c) sleeps through PM1_CNT, the VM reports `suspended` and
    /// stays there through `cont`; `system_wakeup` restarts the CPU at the reset vector with
    /// RAM, the chipset's configuration and CMOS shutdown status 0xFE kept, and WAK_STS set.
    func testSuspendToRAMAndSystemWakeup() throws {
        try VMProcess.requireKVM()
        let build = try VMProcess.guestsBuilt.get()
        let vm = try QMPVM(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-S", "-serial", "file:$DIR/com1.log",
                            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                            "-bios", build.appendingPathComponent("s3.bin").path])
        let client = try vm.client()
        try client.negotiate()
        func status() throws -> [String: Any] { try client.execute("query-status")["return"] as? [String: Any] ?? [:] }
        XCTAssertEqual(QMPTestClient.errorDesc(try client.execute("system_wakeup")),
                       "Unable to wake up: guest is not in suspended state")
        XCTAssertNotNil(try client.execute("cont")["return"])
        _ = try client.waitForEvent("SUSPEND")
        XCTAssertEqual(try status()["status"] as? String, "suspended")
        XCTAssertEqual(try status()["running"] as? Bool, false)
        XCTAssertNotNil(try client.execute("cont")["return"])
        XCTAssertEqual(try status()["status"] as? String, "suspended", "cont does not wake a sleeping guest")
        XCTAssertNotNil(try client.execute("system_wakeup")["return"])
        _ = try client.waitForEvent("WAKEUP")
        XCTAssertEqual(vm.waitForExit(timeout: 60), 1, "isa-debug-exit status; stderr:\n\(vm.stderr)")
        let output = (try? String(contentsOf: vm.directory.appendingPathComponent("com1.log"), encoding: .utf8)) ?? ""
        XCTAssertTrue(output.contains("s3: woke up (shutdown status 0xfe)"), output)
        XCTAssertTrue(output.hasSuffix("PASS s3\r\n"), output)
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
