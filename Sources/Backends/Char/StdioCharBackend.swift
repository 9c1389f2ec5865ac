import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `-chardev stdio[,signal=on|off]` / `-serial stdio`: guest output to our stdout, our stdin
/// to the guest.
///
/// On a terminal, input goes raw (no echo, no line editing, no CR/NL translation) but, with
/// `signal=on` (QEMU's default), ISIG stays so Ctrl-C still ends the process; output keeps
/// OPOST so the terminal turns "\n" into "\r\n" as usual. The main program calls
/// `restoreTerminal()` (or `close()`) on every exit path; nothing global is installed here.
/// stdin and stdout stay in blocking mode because their open file descriptions are shared with
/// our parent (a shell would inherit O_NONBLOCK); instead each readiness gets one read, and a
/// write happens only when the descriptor reports room (regular files always do), so a stalled
/// reader makes us drop output rather than stall a vCPU.
///
/// Only one backend may own the real stdin at a time (QEMU: "cannot use stdio by multiple
/// character devices"): two would race for input and restore the terminal in the wrong order.
public final class StdioCharBackend: CharBackend, @unchecked Sendable {
    public let id: String
    public var filename: String { "stdio" }
    private let inputFD: Int32
    private let outputFD: Int32
    private let outputIsRegularFile: Bool
    private var savedTerminal: termios?
    private var pump: InputPump?
    private var ownsStdin = false
    private static let stdinClaimed = Mutex(false)

    /// `inputFD`/`outputFD` are stdin/stdout except in tests.
    public init(id: String, loop: any CharBackendLoop, allowSignals: Bool = true,
                inputFD: Int32 = 0, outputFD: Int32 = 1) throws(CharBackendError) {
        self.id = id
        self.inputFD = inputFD
        self.outputFD = outputFD
        if inputFD == 0 {
            let claimed = Self.stdinClaimed.withLock { taken in
                defer { taken = true }
                return !taken
            }
            guard claimed else { throw CharBackendError(id: id, reason: "cannot use stdio by multiple character devices") }
            ownsStdin = true
        }
        var info = stat()
        outputIsRegularFile = fstat(outputFD, &info) == 0 && info.st_mode & S_IFMT == S_IFREG
        if isatty(inputFD) == 1 {
            var attributes = termios()
            if tcgetattr(inputFD, &attributes) == 0 {
                savedTerminal = attributes
                attributes.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
                attributes.c_oflag |= tcflag_t(OPOST)
                attributes.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | IEXTEN)
                if !allowSignals { attributes.c_lflag &= ~tcflag_t(ISIG) }
                attributes.c_cflag &= ~tcflag_t(CSIZE | PARENB)
                attributes.c_cflag |= tcflag_t(CS8)
                withUnsafeMutableBytes(of: &attributes.c_cc) { cc in
                    cc[Int(VMIN)] = 1
                    cc[Int(VTIME)] = 0
                }
                _ = tcsetattr(inputFD, TCSANOW, &attributes)
            }
        }
        pump = InputPump(fd: inputFD, loop: loop) { _ in }  // stdin closed: no more input
    }

    /// Puts the terminal back as we found it. Safe to call more than once.
    public func restoreTerminal() {
        if var saved = savedTerminal {
            _ = tcsetattr(inputFD, TCSANOW, &saved)
            savedTerminal = nil
        }
    }

    public func attach(_ frontend: any CharFrontend) { pump?.attach(frontend) }
    public func frontendReady() { pump?.resume() }

    public func write(byte: UInt8) {
        guard outputIsRegularFile || FD.isWritable(outputFD) else { return }
        _ = FD.write(byte: byte, to: outputFD, socket: false)
    }

    public func write(_ bytes: ArraySlice<UInt8>) {
        guard outputIsRegularFile || FD.isWritable(outputFD) else { return }
        _ = FD.write(bytes, to: outputFD, socket: false)
    }

    public func close() {
        pump?.stop()
        pump = nil
        restoreTerminal()
        if ownsStdin {
            Self.stdinClaimed.withLock { $0 = false }
            ownsStdin = false
        }
    }

    deinit { close() }
}
