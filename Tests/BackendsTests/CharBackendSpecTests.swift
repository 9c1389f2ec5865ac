import Backends
import Config
import XCTest

final class CharBackendSpecTests: XCTestCase {
    func shorthand(_ text: String) throws -> CharBackendSpec {
        try CharBackendSpec(shorthand: text, option: "-serial")
    }

    func chardev(_ text: String) throws -> CharBackendSpec {
        try CharBackendSpec(chardev: OptionList(option: "-chardev", text: text, impliedKey: "backend"))
    }

    func testShorthands() throws {
        XCTAssertEqual(try shorthand("stdio"), .stdio(allowSignals: true))
        XCTAssertEqual(try shorthand("null"), .null)
        XCTAssertEqual(try shorthand("none"), CharBackendSpec.none)
        XCTAssertEqual(try shorthand("pty"), .pty)
        XCTAssertEqual(try shorthand("file:/tmp/serial.log"), .file(path: "/tmp/serial.log", append: false))
        XCTAssertEqual(try shorthand("file:/tmp/a,b"), .file(path: "/tmp/a,b", append: false))
        XCTAssertEqual(try shorthand("chardev:ser0"), .chardev(id: "ser0"))
        XCTAssertEqual(try shorthand("unix:/tmp/s.sock,server=on,wait=off"),
                       .socket(address: .unix(path: "/tmp/s.sock"), server: true, wait: false, noDelay: false))
        XCTAssertEqual(try shorthand("unix:/tmp/s.sock,server,nowait"),
                       .socket(address: .unix(path: "/tmp/s.sock"), server: true, wait: false, noDelay: false))
        XCTAssertEqual(try shorthand("unix:/tmp/s.sock,server=on"),
                       .socket(address: .unix(path: "/tmp/s.sock"), server: true, wait: true, noDelay: false))
        XCTAssertEqual(try shorthand("unix:/tmp/s.sock"),
                       .socket(address: .unix(path: "/tmp/s.sock"), server: false, wait: false, noDelay: false))
        XCTAssertEqual(try shorthand("tcp:127.0.0.1:4444,server=on,wait=off"),
                       .socket(address: .tcp(host: "127.0.0.1", port: 4444), server: true, wait: false, noDelay: false))
        XCTAssertEqual(try shorthand("tcp::4444,server=on,wait=off,nodelay=on"),
                       .socket(address: .tcp(host: "", port: 4444), server: true, wait: false, noDelay: true))
        XCTAssertEqual(try shorthand("tcp:[::1]:4444"),
                       .socket(address: .tcp(host: "::1", port: 4444), server: false, wait: false, noDelay: false))
        XCTAssertEqual(try shorthand("tcp:localhost:0,server=on,wait=off"),
                       .socket(address: .tcp(host: "localhost", port: 0), server: true, wait: false, noDelay: false))
    }

    func testChardevs() throws {
        XCTAssertEqual(try chardev("null,id=n"), .null)
        XCTAssertEqual(try chardev("stdio,id=s,signal=off"), .stdio(allowSignals: false))
        XCTAssertEqual(try chardev("file,id=f,path=/tmp/x.log,append=on"), .file(path: "/tmp/x.log", append: true))
        XCTAssertEqual(try chardev("pty,id=p"), .pty)
        XCTAssertEqual(try chardev("socket,id=s,path=/tmp/m.sock,server=on,wait=off"),
                       .socket(address: .unix(path: "/tmp/m.sock"), server: true, wait: false, noDelay: false))
        XCTAssertEqual(try chardev("socket,id=s,host=0.0.0.0,port=5555,server=on,wait=off,nodelay=on"),
                       .socket(address: .tcp(host: "0.0.0.0", port: 5555), server: true, wait: false, noDelay: true))
        XCTAssertEqual(try chardev("socket,id=s,port=5555"),
                       .socket(address: .tcp(host: "", port: 5555), server: false, wait: false, noDelay: false))
    }

    func testHostileShorthandsNameOptionAndValue() {
        let bad = ["", "foo", "file:", "chardev:", "chardev:1abc", "chardev:a b", "mon:stdio", "vc:80Cx24C",
                   "tcp:localhost", "tcp:localhost:99999", "tcp:localhost:0", "tcp:h:-1", "tcp:h:port",
                   "unix:", "unix:/tmp/x,bogus=1", "unix:/tmp/x,server=maybe", "unix:/" + String(repeating: "a", count: 120),
                   "unix:/tmp/x,telnet=on", "file:/tmp/a\u{0}b", "udp:1.2.3.4:5", "stdio,signal=off"]
        for text in bad {
            XCTAssertThrowsError(try shorthand(text), "'\(text)' should be rejected") { error in
                guard let error = error as? ConfigError else { return XCTFail("not a ConfigError: \(error)") }
                XCTAssertEqual(error.option, "-serial")
                XCTAssertEqual(error.value, text)
                XCTAssertFalse(error.reason.isEmpty)
            }
        }
    }

    func testHostileChardevs() {
        let bad = ["id=x", "file,id=f", "file,id=f,path=", "socket,id=s", "socket,id=s,path=/tmp/a,port=4",
                   "socket,id=s,host=h", "socket,id=s,port=70000", "pty,id=p,bogus=1", "stdio,id=s,mux=on",
                   "serial,id=s,path=/dev/ttyS0", "file,id=f,path=/tmp/o,in=/tmp/i", "socket,id=s,path=/tmp/x,reconnect=1",
                   "null,id=n,append=on"]
        for text in bad {
            XCTAssertThrowsError(try chardev(text), "'\(text)' should be rejected") { error in
                guard let error = error as? ConfigError else { return XCTFail("not a ConfigError: \(error)") }
                XCTAssertEqual(error.option, "-chardev")
                XCTAssertEqual(error.value, text)
            }
        }
    }

    func testChardevReferenceIsNotCreatedDirectly() {
        XCTAssertThrowsError(try makeCharBackend(id: "x", spec: .chardev(id: "y"), loop: ManualLoop()))
    }

    func testNullAndNoneBackends() throws {
        let loop = ManualLoop()
        let null = try makeCharBackend(id: "n", spec: .null, loop: loop)
        null.write(byte: 1)
        null.write([1, 2, 3])
        XCTAssertEqual(null.filename, "null")
        null.close()
        XCTAssertTrue(try makeCharBackend(id: "none", spec: .none, loop: loop) is NullCharBackend)
    }
}
