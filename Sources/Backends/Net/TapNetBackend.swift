import CLinux
import Config
import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// `-netdev tap`: a host tap interface (IFF_TAP | IFF_NO_PI, no virtio-net header), attached by
/// name (`ifname=`, created if missing, as QEMU does) or a descriptor our parent opened
/// (`fd=N`). Interface set-up scripts are never run: the parent (libxl with script=no) or the
/// administrator configures the interface.
///
/// Reading is level-triggered on the event loop and stops while the NIC has no room, so a
/// guest that does not drain its ring makes the kernel queue (then drop), never us spin.
public final class TapNetBackend: NetBackend {
    public let id: String
    public let interfaceName: String
    private let fd: Int32
    private weak var loop: (any CharBackendLoop)?
    private weak var frontend: (any NetFrontend)?
    private var watching = false
    /// One frame at a time, reused: larger than any frame a tap without offloads delivers.
    private var buffer = [UInt8](repeating: 0, count: 65536)
    /// Frames handed over per readiness, so one busy tap cannot starve the rest of the loop.
    static let framesPerWakeup = 64

    public init(id: String, options: NetdevOption.TapOptions, loop: any CharBackendLoop) throws(NetBackendError) {
        self.id = id
        self.loop = loop
        var name = [CChar](repeating: 0, count: 16)
        if let passed = options.fd {
            let flags = sdm_tap_query(passed, &name, name.count)
            guard flags >= 0 else {
                throw NetBackendError(id: id, reason: "fd=\(passed) is not a tap descriptor: \(SystemError("TUNGETIFF"))")
            }
            guard flags & sdm_IFF_TAP() != 0, flags & sdm_IFF_NO_PI() != 0, flags & sdm_IFF_VNET_HDR() == 0 else {
                throw NetBackendError(id: id, reason: "fd=\(passed) must be a tap opened with IFF_NO_PI and without IFF_VNET_HDR")
            }
            let status = fcntl(passed, F_GETFL)
            guard status >= 0, fcntl(passed, F_SETFL, status | O_NONBLOCK) == 0 else {
                throw NetBackendError(id: id, reason: "fd=\(passed): \(SystemError("fcntl(O_NONBLOCK)"))")
            }
            fd = passed
        } else {
            let opened = options.ifname.map { sdm_tap_open($0, &name, name.count) } ?? sdm_tap_open(nil, &name, name.count)
            guard opened >= 0 else {
                let what = options.ifname.map { "tap \($0)" } ?? "a tap"
                throw NetBackendError(id: id, reason: "could not open \(what): \(SystemError("TUNSETIFF"))")
            }
            fd = opened
        }
        interfaceName = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit {
        if watching { loop?.removeReader(fd) }
        close(fd)
    }

    public func attach(_ frontend: (any NetFrontend)?) {
        self.frontend = frontend
        frontendReady()
    }

    @discardableResult
    public func send(frame: UnsafeRawBufferPointer) -> Bool {
        while true {
            let n = write(fd, frame.baseAddress, frame.count)
            if n == frame.count { return true }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    public func frontendReady() {
        guard !watching, let loop, let frontend, frontend.canReceive else { return }
        do {
            try loop.addReader(fd) { [weak self] in self?.readable() }
            watching = true
        } catch {
            GuestErrorLog.stderrSink("swiftdm: -netdev \(id): cannot watch the tap: \(error)")
        }
    }

    private func pause() {
        guard watching else { return }
        loop?.removeReader(fd)
        watching = false
    }

    private func readable() {
        for _ in 0..<Self.framesPerWakeup {
            guard let frontend, frontend.canReceive else { pause(); return }
            let received = buffer.withUnsafeMutableBytes { raw -> Int in
                let n = read(fd, raw.baseAddress, raw.count)
                if n > 0 { frontend.receive(frame: UnsafeRawBufferPointer(rebasing: raw[0..<n])) }
                return n
            }
            if received > 0 { continue }
            if received < 0 && errno == EINTR { continue }
            if received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            // The interface went away (or a hard error): stop watching rather than spin.
            GuestErrorLog.stderrSink("swiftdm: -netdev \(id): tap read failed: \(SystemError("read"))")
            pause()
            return
        }
    }
}
