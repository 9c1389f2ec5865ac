import Foundation
import XCTest

/// Debian's SeaBIOS, which nobody here wrote, on our chipset.
final class SeaBIOSTests: XCTestCase {
    func testSeaBIOSBootsToNoBootableDevice() throws {
        try VMProcess.requireKVM()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("seabios-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let vm = try VMProcess(["-M", "pc", "-m", "64", "-nodefaults", "-nographic", "-serial", "stdio",
                                "-debugcon", "file:\(log.path)"])
        let seconds = vm.waitForOutput("No bootable device.", timeout: 60)
        XCTAssertNotNil(seconds, "SeaBIOS output:\n\(vm.stdout)\nstderr:\n\(vm.stderr)")
        XCTAssertTrue(vm.stdout.contains("SeaBIOS (version"), "banner on the serial console")
        if let seconds { print("SeaBIOS reached 'No bootable device.' in \(String(format: "%.2f", seconds)) s") }
        vm.signal(SIGTERM)
        XCTAssertEqual(vm.waitForExit(timeout: 10), 0)
        XCTAssertTrue(vm.stderr.contains("terminating on signal 15"))
        let debug = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        for id in ["8086:1237", "8086:7000", "8086:7113"] {
            XCTAssertTrue(debug.contains(id), "SeaBIOS's log lists \(id):\n\(debug.prefix(4000))")
        }
    }

    func testTwoVCPUsAreBroughtUpBySeaBIOS() throws {
        try VMProcess.requireKVM()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("seabios-smp-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        let vm = try VMProcess(["-m", "64", "-smp", "2", "-nodefaults", "-nographic", "-serial", "stdio",
                                "-debugcon", "file:\(log.path)"])
        XCTAssertNotNil(vm.waitForOutput("No bootable device.", timeout: 90), vm.stdout + vm.stderr)
        vm.signal(SIGINT)
        XCTAssertEqual(vm.waitForExit(timeout: 10), 0)
        let debug = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        XCTAssertTrue(debug.contains("Found 2 cpu(s)"), "SeaBIOS counted both CPUs:\n\(debug.prefix(3000))")
    }
}
