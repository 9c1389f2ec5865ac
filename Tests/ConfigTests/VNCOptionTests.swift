import XCTest
@testable import Config

final class VNCOptionTests: XCTestCase {
    func testLibxlSpellings() throws {
        let c = try config(["-vnc", "127.0.0.1:0,to=99"])
        var expected = VNCOption(address: .tcp(host: "127.0.0.1", display: 0))
        expected.toDisplay = 99
        XCTAssertEqual(c.vnc, expected)
        XCTAssertEqual(c.warnings, [])

        let withPassword = try config(["-vnc", "127.0.0.1:1,password=on"])
        XCTAssertEqual(withPassword.vnc?.password, true)
        XCTAssertEqual(try config(["-vnc", ":2,password"]).vnc?.password, true, "bare password means on")
        XCTAssertEqual(try config(["-vnc", ":2,password=off"]).vnc?.password, false)
        XCTAssertNil(try config(["-vnc", "none"]).vnc)
        XCTAssertNil(try config([]).vnc)
        XCTAssertNotEqual(try config(["-vnc", ":1"]), try config(["-vnc", ":2"]), "VMConfig's == sees -vnc")
    }

    func testAddresses() throws {
        XCTAssertEqual(try VNCOption.parse(":5")?.address, .tcp(host: "", display: 5))
        XCTAssertEqual(try VNCOption.parse("[::1]:3")?.address, .tcp(host: "::1", display: 3))
        XCTAssertEqual(try VNCOption.parse("localhost:0")?.address, .tcp(host: "localhost", display: 0))
        XCTAssertEqual(try VNCOption.parse("unix:/run/vnc.sock")?.address, .unix(path: "/run/vnc.sock"))
        // ,, escapes a comma in a path.
        XCTAssertEqual(try VNCOption.parse("unix:/tmp/a,,b,password=on")?.address, .unix(path: "/tmp/a,b"))
    }

    func testOptions() throws {
        let o = try VNCOption.parse("0.0.0.0:7,share=force-shared,ipv4,id=vnc0,lossy,non-adaptive")
        XCTAssertEqual(o?.share, .forceShared)
        XCTAssertEqual(o?.ipv4Only, true)
        XCTAssertEqual(o?.id, "vnc0")
        XCTAssertEqual(try VNCOption.parse(":0,share=ignore")?.share, .ignore)
        XCTAssertEqual(try VNCOption.parse(":0")?.share, .allowExclusive)
        XCTAssertEqual(try VNCOption.parse(":0,ipv6=on")?.ipv6Only, true)
        let ws = try config(["-vnc", ":0,websocket=5700"])
        XCTAssertEqual(ws.warnings.count, 1)
        XCTAssertTrue(ws.warnings[0].contains("websocket"), ws.warnings[0])
    }

    func testInvalidValuesAreClearErrors() {
        let cases: [(String, String)] = [
            ("127.0.0.1", "expects [host]:display"),
            (":x", "display 'x' is not a number"),
            (":-1", "display '-1' is not a number"),
            (":70000", "is not a number from 0 to 59635"),
            ("::1:0", "IPv6 host must be in brackets"),
            ("[::1:0", "unterminated IPv6"),
            ("unix:", "expects a socket path"),
            (":5,to=3", "below the display number"),
            (":5,to=abc", "parameter 'to' expects a number"),
            ("unix:/x,to=3", "only to TCP displays"),
            (":0,password=maybe", "expects 'on' or 'off'"),
            (":0,share=everyone", "share= expects"),
            (":0,ipv4,ipv6", "exclude each other"),
            (":0,tls-creds=tls0", "tls-creds is not supported"),
            (":0,sasl", "sasl is not supported"),
            (":0,frobnicate=1", "invalid parameter 'frobnicate'"),
            ("", "expects [host]:display"),
        ]
        for (text, reason) in cases {
            XCTAssertThrowsError(try VNCOption.parse(text), text) { error in
                let e = error as? ConfigError
                XCTAssertEqual(e?.option, "-vnc", text)
                XCTAssertTrue(e?.reason.contains(reason) == true, "\(text): \(e?.reason ?? "\(error)")")
            }
        }
    }
}
