import Foundation
import XCTest

/// The command line as a user meets it: errors are one line naming the option and the value,
/// with exit status 1, and the informational options exit 0.
final class CommandLineTests: XCTestCase {
    func expectError(_ arguments: [String], mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, out, err) = try VMProcess.run(arguments, timeout: 20)
        XCTAssertEqual(status, 1, "arguments \(arguments)", file: file, line: line)
        XCTAssertEqual(out, "", file: file, line: line)
        let lines = err.split(whereSeparator: \.isNewline)
        XCTAssertEqual(lines.count, 1, "one line: \(err)", file: file, line: line)
        for text in mentions { XCTAssertTrue(err.contains(text), "'\(err)' mentions \(text)", file: file, line: line) }
    }

    func testBadOptionsAndValues() throws {
        try expectError(["-frobnicate"], mentions: ["-frobnicate", "invalid option"])
        try expectError(["-m", "lots"], mentions: ["-m", "lots"])
        try expectError(["-m", "0"], mentions: ["-m", "0"])
        try expectError(["-smp", "two"], mentions: ["-smp", "two"])
        try expectError(["-smp", "4,maxcpus=2"], mentions: ["-smp", "maxcpus"])
        try expectError(["-machine", "q35"], mentions: ["q35"])
        try expectError(["-device", "no-such-device"], mentions: ["-device", "no-such-device"])
        try expectError(["-device", "isa-debug-exit,iobase=0x10000"], mentions: ["-device", "iobase"])
        try expectError(["-device", "isa-debug-exit,colour=blue"], mentions: ["colour"])
        try expectError(["-serial", "carrier-pigeon"], mentions: ["-serial", "carrier-pigeon"])
        try expectError(["-bios", "/nonexistent/bios.bin"], mentions: ["-bios", "/nonexistent/bios.bin"])
        try expectError(["-boot", "order=z"], mentions: ["-boot", "order=z"])
        try expectError(["-m"], mentions: ["-m", "requires an argument"])
        try expectError(["stray"], mentions: ["stray"])
    }

    func testHelpAndVersion() throws {
        let (status, out, _) = try VMProcess.run(["--help"])
        XCTAssertEqual(status, 0)
        for option in ["-machine", "-m ", "-smp", "-bios", "-serial", "-chardev", "-debugcon", "-no-reboot", "-device"] {
            XCTAssertTrue(out.contains(option), "help lists \(option)")
        }
        let (vstatus, vout, _) = try VMProcess.run(["-version"])
        XCTAssertEqual(vstatus, 0)
        XCTAssertTrue(vout.hasPrefix("SwiftDM version"))
        let (dstatus, dout, _) = try VMProcess.run(["-device", "help"])
        XCTAssertEqual(dstatus, 0)
        XCTAssertTrue(dout.contains("isa-debug-exit") && dout.contains("pci-testdev"))
    }
}
