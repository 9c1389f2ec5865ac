@testable import Backends
import DMCore
import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The socket backend on the real event loop: handlers run on the loop's thread with the
/// DeviceLock held, and the frontend sees bytes only under that lock.
final class EventLoopCharBackendTests: XCTestCase {
    final class LockedFrontend: CharFrontend, @unchecked Sendable {
        var received: [UInt8] = []
        var receiveCapacity: Int { 64 }
        func receive(_ bytes: ArraySlice<UInt8>) { received += bytes }
    }

    func testSocketServerOnTheEventLoop() throws {
        let lock = DeviceLock()
        let loop = try EventLoop(lock: lock, clock: VirtualClock())
        let path = temporaryPath("loop.sock")
        let spec = try CharBackendSpec(shorthand: "unix:\(path),server=on,wait=off", option: "-serial")
        let server = try makeCharBackend(id: "serial0", spec: spec, loop: loop)
        let frontend = LockedFrontend()
        server.attach(frontend)
        let runner = Task.detached { loop.run() }

        // The client lives on its own hand-run loop, outside the device lock.
        let clientLoop = ManualLoop()
        let client = try SocketCharBackend(id: "c", address: .unix(path: path), server: false, wait: false, loop: clientLoop)
        let clientSide = RecordingFrontend()
        client.attach(clientSide)
        client.write(Array("from host".utf8)[...])
        var got: [UInt8] = []
        for _ in 0..<200 where got.count < 9 {
            usleep(10_000)
            got = lock.withLock { frontend.received }
        }
        XCTAssertEqual(got, Array("from host".utf8))
        lock.withLock { server.write(Array("to host".utf8)[...]) }
        clientLoop.run { clientSide.received.count == 7 }
        XCTAssertEqual(clientSide.received, Array("to host".utf8))

        client.close()
        loop.stop()
        _ = runner
        lock.withLock { server.close() }
        var info = stat()
        XCTAssertNotEqual(lstat(path, &info), 0)
    }
}
