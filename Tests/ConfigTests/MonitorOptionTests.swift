import XCTest
@testable import Config

final class MonitorOptionTests: XCTestCase {
    func testLibxlsMonitorsAndRestore() throws {
        let c = try config(["-chardev", "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-5,server=on,wait=off",
                            "-mon", "chardev=libxl-cmd,mode=control", "-qmp", "unix:/tmp/q,server=on,wait=off",
                            "-incoming", "fd:17", "-uuid", "12345678-9ABC-def0-1234-56789abcdef0"])
        XCTAssertEqual(c.monitors, [MonitorOption(source: .chardev("libxl-cmd")), MonitorOption(source: .shorthand("unix:/tmp/q,server=on,wait=off"))])
        XCTAssertEqual(c.monitorChardevIDs, ["libxl-cmd"])
        XCTAssertEqual(c.incoming, .fd(17))
        XCTAssertEqual(c.uuid, "12345678-9abc-def0-1234-56789abcdef0")
        XCTAssertEqual(try config(["-incoming", "defer"]).incoming, .deferred)
    }

    func testBadMonitorOptionsNameTheProblem() {
        func reason(_ arguments: [String]) -> String {
            do {
                _ = try CommandLineParser.parse(arguments)
                return "accepted"
            } catch {
                return error.description
            }
        }
        XCTAssertTrue(reason(["-mon", "chardev=x"]).contains("mode=readline is not supported"))
        XCTAssertTrue(reason(["-mon", "mode=control"]).contains("missing chardev="))
        XCTAssertTrue(reason(["-mon", "chardev=x,mode=control,colour=red"]).contains("colour"))
        XCTAssertTrue(reason(["-qmp", "tcp:localhost:4444,server=on"]).contains("-qmp"))
        XCTAssertTrue(reason(["-incoming", "tcp:0:4444"]).contains("only fd:N and defer"))
        XCTAssertTrue(reason(["-uuid", "not-a-uuid"]).contains("invalid UUID"))
    }
}
