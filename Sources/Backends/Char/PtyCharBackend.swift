import CLinux
import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// `-chardev pty` / `-serial pty`: a new pseudo-terminal whose slave (/dev/pts/N) a user opens
/// with screen, minicom or `cat`. Announced on stderr as QEMU does ("char device redirected to
/// /dev/pts/N (label ID)").
///
/// We keep only the master. With no slave open the master reports hang-up, so while nobody is
/// connected input is not watched (the level-triggered loop would spin), output is dropped
/// rather than left to fill the pty buffer (QEMU drops it too), and a timer looks for a client
/// every 100 ms of guest time. A full buffer also drops output: we never block.
public final class PtyCharBackend: CharBackend, @unchecked Sendable {
    public let id: String
    public let slavePath: String
    public var filename: String { "pty:\(slavePath)" }
    public private(set) var isConnected = false

    static let connectionPollInterval: UInt64 = 100_000_000
    /// TIOCSPTLCK = _IOW('T', 0x31, int) and TIOCGPTN = _IOR('T', 0x30, unsigned int) in the
    /// asm-generic encoding x86-64 and arm64 share (the macros do not import into Swift).
    static let setPtyLock: UInt = 0x4004_5431
    static let getPtyNumber: UInt = 0x8004_5430

    private var master: Int32
    private weak var loop: (any CharBackendLoop)?
    private var pump: InputPump?
    private var connectionTimer: (any DeviceTimer)?

    public init(id: String, loop: any CharBackendLoop, announce: Bool = true) throws(CharBackendError) {
        self.id = id
        self.loop = loop
        // posix_openpt/grantpt/unlockpt/ptsname as Linux implements them (Swift's Glibc module
        // does not export the XSI functions): open the multiplexer, clear the slave's lock,
        // ask for its number. grantpt has nothing to do on devpts.
        master = Glibc.open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else { throw CharBackendError(id: id, SystemError("open /dev/ptmx")) }
        var unlock: Int32 = 0
        var number: UInt32 = 0
        guard sdm_ioctl(master, Self.setPtyLock, &unlock) == 0, sdm_ioctl(master, Self.getPtyNumber, &number) == 0 else {
            let error = SystemError("pty unlock")
            Glibc.close(master)
            throw CharBackendError(id: id, error)
        }
        slavePath = "/dev/pts/\(number)"
        // Raw mode on the slave side, so the guest sees bytes as typed.
        let slave = Glibc.open(slavePath, O_RDWR | O_NOCTTY | O_CLOEXEC)
        if slave >= 0 {
            var attributes = termios()
            if tcgetattr(slave, &attributes) == 0 {
                cfmakeraw(&attributes)
                _ = tcsetattr(slave, TCSANOW, &attributes)
            }
            Glibc.close(slave)
        }
        do {
            try FD.setNonBlocking(master)
        } catch {
            Glibc.close(master)
            throw CharBackendError(id: id, error)
        }
        pump = InputPump(fd: master, loop: loop) { [weak self] _ in self?.disconnected() }
        pump?.stop()
        connectionTimer = loop.makeTimer { [weak self] in self?.checkForClient() }
        if announce { GuestErrorLog.stderrSink("swiftdm: char device redirected to \(slavePath) (label \(id))") }
        checkForClient()
    }

    deinit { close() }

    private func checkForClient() {
        guard master >= 0 else { return }
        var entry = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
        let hungUp = poll(&entry, 1, 0) < 0 || entry.revents & Int16(POLLHUP) != 0
        if hungUp {
            if let loop { connectionTimer?.arm(at: loop.clock.now() &+ Self.connectionPollInterval) }
        } else {
            isConnected = true
            pump?.restart()
        }
    }

    private func disconnected() {
        isConnected = false
        pump?.stop()
        checkForClient()
    }

    public func attach(_ frontend: any CharFrontend) {
        pump?.attach(frontend)
        if !isConnected { pump?.stop() }
    }

    public func frontendReady() {
        if isConnected { pump?.resume() }
    }

    public func write(byte: UInt8) {
        guard isConnected else { return }
        if case .failed = FD.write(byte: byte, to: master, socket: false) { disconnected() }
    }

    public func write(_ bytes: ArraySlice<UInt8>) {
        guard isConnected else { return }
        if case .failed = FD.write(bytes, to: master, socket: false) { disconnected() }
    }

    public func close() {
        pump?.stop()
        pump = nil
        connectionTimer?.cancel()
        isConnected = false
        FD.closeIfOpen(&master)
    }
}
