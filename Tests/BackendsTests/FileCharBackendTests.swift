@testable import Backends
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class FileCharBackendTests: XCTestCase {
    func contents(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        return readAll(fd: fd, count: 1 << 16, timeoutMs: 0)
    }

    func testWritesTruncatesAndAppends() throws {
        let path = temporaryPath("file.log")
        defer { unlink(path) }
        let loop = ManualLoop()
        var backend = try makeCharBackend(id: "f", spec: .file(path: path, append: false), loop: loop)
        for b in Array("hello ".utf8) { backend.write(byte: b) }
        backend.write(Array("world\n".utf8)[...])
        XCTAssertEqual(backend.filename, "file:\(path)")
        backend.close()
        backend.write(byte: 0x21)  // after close: dropped, no crash
        XCTAssertEqual(contents(path), Array("hello world\n".utf8))

        backend = try makeCharBackend(id: "f", spec: .file(path: path, append: true), loop: loop)
        backend.write(Array("more\n".utf8)[...])
        backend.close()
        XCTAssertEqual(contents(path), Array("hello world\nmore\n".utf8))

        backend = try makeCharBackend(id: "f", spec: .file(path: path, append: false), loop: loop)
        backend.write(byte: 0x41)
        backend.close()
        XCTAssertEqual(contents(path), [0x41], "truncated like QEMU")
    }

    func testUnopenableFileNamesTheChardev() {
        XCTAssertThrowsError(try makeCharBackend(id: "log", spec: .file(path: "/nonexistent-dir/x", append: false),
                                                 loop: ManualLoop())) { error in
            XCTAssertTrue("\(error)".contains("chardev 'log'"))
        }
    }
}
