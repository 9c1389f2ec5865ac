import Backends
import CLinux
import Config
import DMCore
import Machine
import Monitor
#if canImport(Glibc)
import Glibc
#endif

/// swiftdm: parse QEMU's command line, assemble the machine, run it, exit like QEMU.
func fail(_ message: String) -> Never {
    GuestErrorLog.stderrSink("swiftdm: \(message)")
    exit(1)
}

let arguments = Array(CommandLine.arguments.dropFirst())
let action: CommandLineAction
do {
    action = try CommandLineParser.parse(arguments)
} catch {
    fail(error.description)
}

let config: VMConfig
switch action {
case .printHelp:
    print(CommandLineParser.helpText)
    exit(0)
case .printVersion:
    print(CommandLineParser.versionText)
    exit(0)
case .listMachines:
    print(MachineCatalog.machineHelp)
    exit(0)
case .listDevices:
    print(MachineCatalog.deviceHelp)
    exit(0)
case .run(let parsed):
    config = parsed
}

// Termination signals are read from a signalfd on the main loop, so they must be blocked in
// every thread, which inherit this mask. A closed socket peer must not kill us either.
let terminationSignals = [SIGINT, SIGTERM, SIGHUP]
_ = sdm_sigmask(SIG_BLOCK, terminationSignals, Int32(terminationSignals.count))
signal(SIGPIPE, SIG_IGN)

for warning in config.warnings { GuestErrorLog.stderrSink("swiftdm: warning: \(warning)") }

let machine: PCMachine
do {
    machine = try PCMachine(config: config)
} catch {
    fail(error.description)
}

let signalFD = sdm_signalfd(terminationSignals, Int32(terminationSignals.count))
guard signalFD >= 0 else { fail("signalfd: \(String(cString: strerror(errno)))") }
do {
    try machine.loop.addReader(signalFD) {
        var info = signalfd_siginfo()
        guard read(signalFD, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size else { return }
        machine.terminate(signal: Int32(info.ssi_signo))
    }
} catch {
    fail(error.description)
}

// The QMP monitor: its sockets run on the machine's loop; lifecycle events flow back to it.
let monitor = Monitor(host: machine, loop: machine.loop, package: "SwiftDM \(CommandLineParser.programVersion)")
do {
    try machine.lock.withLock { () throws(MonitorError) in
        try monitor.listen(monitors: config.monitors, chardevs: config.chardevs)
    }
} catch {
    machine.shutdownBackends()
    fail(error.description)
}
machine.monitorEvents = monitor
do {
    try machine.loadIncomingState()
} catch {
    monitor.close()
    machine.shutdownBackends()
    fail(error.description)
}

// Everything that needs privileges is open: confine the process as asked (-xen-domid-restrict,
// -chroot, -runas), in QEMU's order.
do {
    if config.xenRestrict { try machine.restrictXenHandles() }
    try Privileges.drop(user: config.runAsUser, chroot: config.chrootDirectory)
} catch {
    monitor.close()
    machine.shutdownBackends()
    fail(error.description)
}

let status = machine.run()
// Removes the socket files; clients see the connection close after the last reply.
machine.lock.withLock { monitor.close() }
machine.shutdownBackends()
exit(status)
