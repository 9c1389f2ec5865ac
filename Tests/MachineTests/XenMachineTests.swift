import Config
import DMCore
import Devices
import Foundation
import Monitor
import XCTest
@testable import Machine
@testable import XenAccel

/// A `xenfv` machine built from the command line libxl really sent to qemu-xen (captured in
/// the Xen lab), run against the simulated hypervisor: what it claims from Xen, what it writes
/// to xenstore, and how it answers the ioreqs hvmloader, SeaBIOS and Linux send.
final class XenMachineTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("xenmachine-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path("disk.img"), contents: Data(count: 1 << 20))
        FileManager.default.createFile(atPath: path("cd.iso"), contents: Data(count: 2048 * 16))
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// hvm2's argv from the lab capture (xen-lab/captures/dm-023110-pid968.argv), paths moved.
    func libxlArguments(domain: Int = 4) -> [String] {
        ["-xen-domid", "\(domain)", "-no-shutdown",
         "-chardev", "socket,id=libxl-cmd,path=\(path("qmp-libxl")),server=on,wait=off",
         "-mon", "chardev=libxl-cmd,mode=control",
         "-chardev", "socket,id=libxenstat-cmd,path=\(path("qmp-libxenstat")),server=on,wait=off",
         "-mon", "chardev=libxenstat-cmd,mode=control",
         "-nodefaults", "-no-user-config", "-name", "hvm2", "-vnc", "127.0.0.1:0,to=99", "-display", "none",
         "-serial", "file:\(path("com1.log"))", "-device", "cirrus-vga,vgamem_mb=8", "-boot", "order=c",
         "-smp", "1,maxcpus=2", "-net", "none", "-machine", "xenfv,suppress-vmdesc=on", "-m", "120",
         "-drive", "file=\(path("disk.img")),if=ide,index=0,media=disk,format=raw,cache=writeback",
         "-drive", "if=none,readonly=on,id=ide-5632,file=\(path("cd.iso")),format=raw",
         "-device", "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0"]
    }

    func makeMachine(_ arguments: [String]) throws -> (PCMachine, SimulatedXenHypervisor, MemoryXenStore) {
        guard case .run(let config) = try CommandLineParser.parse(arguments) else { throw XCTSkip("not a run") }
        // Guest RAM (-m 120) plus the cirrus-vga video RAM QEMU homes right after it.
        let sim = try SimulatedXenHypervisor(vcpus: 2, ramSize: 136 << 20)
        let store = MemoryXenStore()
        let machine = try PCMachine(config: config, xenHypervisor: sim, xenStore: store)
        return (machine, sim, store)
    }

    /// libxl's vga="stdvga" form: the standard VGA assembles under Xen, Xen forwards its
    /// legacy ranges, and the machine has a display to take screendumps from.
    func testStandardVGAAssemblesUnderXenAndClaimsItsLegacyRanges() throws {
        // 8 MiB of guest RAM and 1 MiB of VRAM: its home (after guest RAM) is well inside the simulated RAM.
        var arguments = libxlArguments().map { $0 == "cirrus-vga,vgamem_mb=8" ? "VGA,vgamem_mb=1" : $0 }
        if let memory = arguments.firstIndex(of: "-m") { arguments[memory + 1] = "8" }
        let (machine, sim, _) = try makeMachine(arguments)
        defer { machine.shutdownBackends() }
        let ranges = sim.dmOps.compactMap { op -> String? in
            if case let .mapRange(kind, start, end) = op { return "\(kind) \(hex(start))-\(hex(end))" }
            return nil
        }
        for expected in ["port 0x3b0-0x3df", "port 0x1ce-0x1d1", "mmio 0xa0000-0xbffff"] {
            XCTAssertTrue(ranges.contains(expected), "\(expected) not claimed: \(ranges)")
        }
        XCTAssertNotNil(machine.display)
        XCTAssertNotNil(machine.pci.functions.compactMap { $0 as? StdVGA }.first)
    }

    func testLibxlArgvAssemblesAndClaimsExactlyWhatItDecodes() throws {
        let (machine, sim, store) = try makeMachine(libxlArguments())
        defer { machine.shutdownBackends() }
        XCTAssertEqual(machine.platform, .xen(domain: 4, platformDevice: true))
        let ops = sim.dmOps
        let ports = ops.compactMap { op -> ClosedRange<UInt64>? in
            if case let .mapRange(.port, start, end) = op { return start...end }
            return nil
        }
        for expected: ClosedRange<UInt64> in [0x3F8...0x3FF, 0x1F0...0x1F7, 0x3F6...0x3F6, 0x170...0x177, 0x376...0x376,
                                             0x60...0x60, 0x64...0x64, 0x92...0x92, 0xCF8...0xCFF, 0x10...0x1F, 0x510...0x51B] {
            XCTAssertTrue(ports.contains(expected), "port range \(expected) not claimed: \(ports)")
        }
        // Xen's own devices are never claimed: PIT, PICs, ELCR. The RTC ports are (Xen forwards
        // CMOS indexes from 0x0E on), and so is 0xCF8-0xCFF, as QEMU claims it.
        XCTAssertTrue(ports.contains(0x70...0x71), "\(ports)")
        for owned: UInt64 in [0x20, 0x40, 0x61, 0xA0, 0x4D0] {
            XCTAssertFalse(ports.contains { $0.contains(owned) }, "port \(hex(owned)) claimed")
        }
        let functions = ops.compactMap { op -> String? in
            if case let .mapPCI(address) = op { return address.description }
            return nil
        }
        // As on qemu-xen (its `info pci` in the lab): the Xen platform device at 00:02.0, the cirrus VGA at 00:03.0.
        XCTAssertEqual(Set(functions), ["0000:00:00.0", "0000:00:01.0", "0000:00:01.1", "0000:00:01.3", "0000:00:02.0",
                                        "0000:00:03.0"])
        XCTAssertTrue(ports.contains(0x3B0...0x3DF), "VGA ports not claimed: \(ports)")
        XCTAssertFalse(ops.contains(.serverEnabled(true)), "the server is enabled only when the VM runs")
        XCTAssertEqual(store.read("device-model/4/backends"), "")
        XCTAssertNil(store.read("device-model/4/state"))
    }

    /// hdtype=ahci: libxl's AHCI disk (`-device ahci,id=ahci0` + an if=none drive + ide-hd on
    /// ahci0.0). The controller takes the next free slot, the disk is listed with the CD, and
    /// the PV drivers' unplug leaves it: QEMU unplugs IDE, SCSI and NVMe disks only.
    func testLibxlAHCIDiskAssemblesAndStaysAfterUnplug() throws {
        var arguments = libxlArguments()
        let ideDisk = "file=\(path("disk.img")),if=ide,index=0,media=disk,format=raw,cache=writeback"
        guard let at = arguments.firstIndex(of: ideDisk) else { return XCTFail("no IDE disk in the argv") }
        FileManager.default.createFile(atPath: path("ide.img"), contents: Data(count: 1 << 20))
        arguments.replaceSubrange(at - 1...at, with: [
            "-device", "ahci,id=ahci0",
            "-drive", "file=\(path("disk.img")),if=none,id=ahcidisk-0,format=raw,cache=writeback",
            "-device", "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0",
            "-drive", "file=\(path("ide.img")),if=ide,index=1,media=disk,format=raw"])
        let (machine, sim, _) = try makeMachine(arguments)
        defer { machine.shutdownBackends() }
        XCTAssertTrue(sim.dmOps.contains(.mapPCI(PCIAddress(device: 3))), "AHCI after the platform device")
        XCTAssertEqual(machine.lock.withLock { machine.blockDrives.map(\.id) }.sorted(), ["ahcidisk-0", "ide-5632", "ide0-hd1"])
        let platform = machine.lock.withLock { machine.devices.compactMap { $0 as? XenPlatformDevice }.first }
        machine.lock.withLock {
            platform?.write(region: XenPlatformDevice.fixedPortRegion, offset: 0, size: 2, value: 0x0001)
        }
        XCTAssertEqual(machine.lock.withLock { machine.blockDrives.map(\.id) }.sorted(), ["ahcidisk-0", "ide-5632"],
                       "the IDE disk is unplugged, the AHCI disk and the CD stay")
    }

    /// libxl's emulated NIC (`vif = ['model=rtl8139']`): the RTL8139 takes the next slot and the
    /// PV drivers' unplug (bit 1) removes it from the bus, as QEMU does, so the guest's netfront
    /// is the only NIC with that MAC. (A `user` netdev: the NIC has no backend, no tap needed.)
    func testLibxlEmulatedNICLeavesTheBusOnUnplug() throws {
        var arguments = libxlArguments()
        arguments += ["-netdev", "type=user,id=net0", "-device", "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:12:34:56"]
        let (machine, _, _) = try makeMachine(arguments)
        defer { machine.shutdownBackends() }
        func nicPresent() -> Bool {
            machine.lock.withLock {
                let nic = machine.devices.compactMap { $0 as? RTL8139 }.first
                return machine.pci.functions.contains { $0 != nil && $0 === nic }
            }
        }
        XCTAssertTrue(nicPresent())
        let platform = machine.lock.withLock { machine.devices.compactMap { $0 as? XenPlatformDevice }.first }
        machine.lock.withLock { platform?.write(region: XenPlatformDevice.fixedPortRegion, offset: 0, size: 2, value: 0x0001) }
        XCTAssertTrue(nicPresent(), "a disk unplug leaves the NIC")
        machine.lock.withLock { platform?.write(region: XenPlatformDevice.fixedPortRegion, offset: 0, size: 2, value: 0x0002) }
        XCTAssertFalse(nicPresent(), "the NIC unplug removes it from the PCI bus")
    }

    func testMachineTypesAndErrors() throws {
        XCTAssertThrowsError(try makeMachine(["-machine", "xenfv"])) { error in
            XCTAssertTrue("\(error)".contains("needs -xen-domid"), "\(error)")
        }
        XCTAssertThrowsError(try makeMachine(["-xen-domid", "3", "-machine", "xenpv"])) { error in
            XCTAssertTrue("\(error)".contains("not implemented"), "\(error)")
        }
        let (pc, sim, _) = try makeMachine(["-xen-domid", "5", "-machine", "pc,accel=xen", "-nodefaults", "-m", "64"])
        defer { pc.shutdownBackends() }
        XCTAssertEqual(pc.platform, .xen(domain: 5, platformDevice: false))
        XCTAssertFalse(sim.dmOps.contains(.mapPCI(PCIAddress(device: 2))), "no platform device with xen_platform_pci=0")
    }

    /// Runs the machine on a thread and plays hvmloader and a guest over the ioreq page.
    func testRunsAndServesIoreqsLikeQEMU() throws {
        let (machine, sim, store) = try makeMachine(libxlArguments())
        let status = LockedBox<Int32>(-1)
        let finished = try start(machine, store: store, domain: 4, status: status)
        XCTAssertTrue(sim.dmOps.contains(.serverEnabled(true)))

        func request(_ r: Ioreq, vcpu: Int = 0) throws -> UInt64 { try answer(sim, r, vcpu: vcpu) }
        func config(_ device: UInt8, _ function: UInt8, _ offset: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
            let sbdf = UInt64(PCIAddress(device: device, function: function).sbdf)
            return try request(Ioreq(addr: sbdf << 32 | offset, data: write ?? 0, size: size, isRead: write == nil,
                                     type: Ioreq.Kind.pciConfig.rawValue))
        }
        func port(_ address: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
            try request(Ioreq(addr: address, data: write ?? 0, size: size, isRead: write == nil, type: Ioreq.Kind.pio.rawValue))
        }

        // The platform device as hvmloader and Linux's xen-platform-pci find it.
        XCTAssertEqual(try config(2, 0, 0, size: 4), 0x0001_5853)
        XCTAssertEqual(try config(2, 0, 0x2C, size: 4), 0x0001_5853)
        XCTAssertEqual(try config(1, 1, 0, size: 4), 0x7010_8086)
        XCTAssertEqual(try port(0x10, size: 2), 0x49D2)
        XCTAssertEqual(try port(0x12, size: 1), 1)
        // CMOS RAM (the indexes Xen forwards): base and extended memory as QEMU sets them, no
        // RAM above 4 GiB, boot order "c" (hard disk first).
        func cmos(_ index: UInt64) throws -> UInt64 {
            _ = try port(0x70, size: 1, write: index)
            return try port(0x71, size: 1)
        }
        XCTAssertEqual(try cmos(0x5B), 0)
        XCTAssertEqual(try cmos(0x5C), 0)
        XCTAssertEqual(try cmos(0x5D), 0)
        XCTAssertEqual(try cmos(0x35) << 8 | cmos(0x34), (120 - 16) << 4)  // 64 KiB units above 16 MiB
        XCTAssertEqual(try cmos(0x3D) & 0x0F, 2)
        // Linux's probe for configuration mechanism #1 reads back 0xCF8 (Xen passes it through).
        _ = try port(0xCF8, size: 4, write: 0x8000_0000)
        XCTAssertEqual(try port(0xCF8, size: 4), 0x8000_0000)
        // A second vCPU has its own slot.
        XCTAssertEqual(try request(Ioreq(addr: 0x10, size: 2, isRead: true, type: Ioreq.Kind.pio.rawValue), vcpu: 1), 0x49D2)

        // PIIX3 link routes are mirrored to Xen's PIRQ router.
        _ = try config(1, 0, 0x60, size: 1, write: 0x0B)
        XCTAssertTrue(sim.dmOps.contains(.linkRoute(link: 0, irq: 11)))

        // COM1 output reaches the -serial file.
        for byte in Array("hi\n".utf8) { _ = try port(0x3F8, size: 1, write: UInt64(byte)) }
        try waitFor("COM1 output") { (try? String(contentsOfFile: self.path("com1.log"), encoding: .utf8)) == "hi\n" }

        // hvmloader's PIIX4 PM setup: PMBA 0x1F40, I/O enabled. Xen keeps PM1a_EVT and the timer.
        _ = try config(1, 3, 0x40, size: 4, write: 0x1F41)
        _ = try config(1, 3, 0x80, size: 1, write: 0x01)
        let claimed = sim.dmOps.compactMap { op -> ClosedRange<UInt64>? in
            if case let .mapRange(.port, start, end) = op, start >= 0x1F40, end <= 0x1F7F { return start...end }
            return nil
        }
        XCTAssertEqual(claimed, [0x1F44...0x1F47, 0x1F4C...0x1F7F])
        // hvmloader's acpi_enable_sci: ACPI_ENABLE through the APM port must set SCI_EN.
        XCTAssertEqual(try port(0x1F44, size: 1) & 1, 0)
        _ = try port(0xB2, size: 1, write: 0xF1)
        XCTAssertEqual(try port(0x1F44, size: 1) & 1, 1)
        XCTAssertEqual(try port(0xB2, size: 1), 0xF1)

        // The PV drivers unplug the emulated disks (bit 0: all of them); the CD-ROM stays.
        _ = try port(0x10, size: 2, write: 0x0001)
        let drives = machine.lock.withLock { machine.blockDrives.map(\.id) }
        XCTAssertEqual(drives, ["ide-5632"])

        // The guest powers off (S5 through PM1a_CNT): Xen hears it before the access completes,
        // and with -no-shutdown the device model stops serving and waits for libxl.
        XCTAssertFalse(sim.dmOps.contains(.shutdown(.poweroff)))
        _ = try port(0x1F44, size: 2, write: 0x2000)
        XCTAssertTrue(sim.dmOps.contains(.shutdown(.poweroff)))
        try waitFor("shutdown state") { machine.lock.withLock { machine.runState == .shutdown } }
        XCTAssertEqual(sim.dmOps.last, .serverEnabled(false))

        machine.terminate(signal: SIGHUP)
        wait(for: [finished], timeout: 10)
        XCTAssertEqual(status.value, 0)
        machine.shutdownBackends()
    }

    func testRebootIsForwardedToXen() throws {
        let (machine, sim, store) = try makeMachine(libxlArguments(domain: 9))
        let finished = try start(machine, store: store, domain: 9)
        _ = try port(sim, 0xCF9, size: 1, write: 0x06)
        XCTAssertTrue(sim.dmOps.contains(.shutdown(.reboot)))
        machine.terminate(signal: SIGTERM)
        wait(for: [finished], timeout: 10)
        machine.shutdownBackends()
    }

    /// ACPI S3 (SLP_TYP 1 in hvmloader's _S3): Xen suspends the domain when the device model
    /// sets HVM_PARAM_ACPI_S_STATE to 3, and resumes it at 0 (QMP `system_wakeup`); the CMOS
    /// shutdown status sends SeaBIOS down its resume path.
    func testSuspendToRAMGoesThroughXensSleepState() throws {
        let (machine, sim, store) = try makeMachine(libxlArguments(domain: 5))
        let finished = try start(machine, store: store, domain: 5)
        func port(_ address: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
            try self.port(sim, address, size: size, write: write)
        }
        func wake() -> Result<Void, QMPError> {
            let answered = expectation(description: "system_wakeup answered")
            let result = LockedBox<Result<Void, QMPError>?>(nil)
            machine.loop.post {
                machine.systemWakeup { outcome in
                    result.value = outcome
                    answered.fulfill()
                }
            }
            wait(for: [answered], timeout: 10)
            return result.value ?? .failure(.generic("no answer"))
        }
        guard case .failure(let early) = wake() else { return XCTFail("woke a running guest") }
        XCTAssertEqual(early, .generic("Unable to wake up: guest is not in suspended state"))

        let sbdf = UInt64(PCIAddress(device: 1, function: 3).sbdf) << 32
        for (offset, value, size) in [(UInt64(0x40), UInt64(0x1F41), UInt32(4)), (0x80, 0x01, 1)] {
            sim.send(Ioreq(addr: sbdf | offset, data: value, size: size, isRead: false, type: Ioreq.Kind.pciConfig.rawValue))
            try waitFor("config write") { sim.takeResponse() != nil }
        }
        _ = try port(0x1F44, size: 2, write: 1 << 10 | 1 << 13)
        try waitFor("suspended") { machine.lock.withLock { machine.runState == .suspended } }
        XCTAssertTrue(sim.dmOps.contains(.acpiSleepState(3)))
        XCTAssertFalse(sim.dmOps.contains(.shutdown(.poweroff)))
        XCTAssertEqual(sim.dmOps.last(where: { if case .serverEnabled = $0 { true } else { false } }), .serverEnabled(true))
        _ = try port(0x70, size: 1, write: 0x0F)
        XCTAssertEqual(try port(0x71, size: 1), 0xFE)

        guard case .success = wake() else { return XCTFail("system_wakeup failed") }
        XCTAssertEqual(sim.dmOps.last, .acpiSleepState(0))
        XCTAssertEqual(machine.lock.withLock { machine.runState }, .running)
        // The chipset kept its configuration: PM1a_CNT still answers at hvmloader's address.
        _ = try port(0x1F44, size: 2, write: 0x2000)
        XCTAssertTrue(sim.dmOps.contains(.shutdown(.poweroff)))

        machine.terminate(signal: SIGTERM)
        wait(for: [finished], timeout: 10)
        machine.shutdownBackends()
    }

    /// Runs `machine` on its own thread until libxl would see `state=running`; the returned
    /// expectation is fulfilled when `run()` returns, with its exit status in `status`.
    func start(_ machine: PCMachine, store: MemoryXenStore, domain: Int,
               status: LockedBox<Int32>? = nil) throws -> XCTestExpectation {
        let finished = expectation(description: "machine ended")
        Thread.detachNewThread {
            let code = machine.run()
            status?.value = code
            finished.fulfill()
        }
        try waitFor("state=running") { store.read("device-model/\(domain)/state") == "running" }
        return finished
    }

    /// Sends one ioreq from `vcpu` through the simulated page and returns the device model's answer.
    func answer(_ sim: SimulatedXenHypervisor, _ request: Ioreq, vcpu: Int = 0) throws -> UInt64 {
        sim.send(request, vcpu: vcpu)
        var answer: UInt64?
        try waitFor("response to \(request)") {
            answer = sim.takeResponse(vcpu)
            return answer != nil
        }
        return answer ?? 0
    }

    /// One port access from vCPU 0.
    func port(_ sim: SimulatedXenHypervisor, _ address: UInt64, size: UInt32, write: UInt64? = nil) throws -> UInt64 {
        try answer(sim, Ioreq(addr: address, data: write ?? 0, size: size, isRead: write == nil, type: Ioreq.Kind.pio.rawValue))
    }

    func waitFor(_ what: String, timeout: Double = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while try !condition() {
            guard Date() < deadline else { throw Timeout(what: what) }
            usleep(2000)
        }
    }
}

struct Timeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
