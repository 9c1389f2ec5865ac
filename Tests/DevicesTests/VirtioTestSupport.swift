import Backends
import DMCore
import Devices
import Foundation
import Synchronization
import XCTest

/// Writes a split virtqueue's rings into guest memory the way a driver does, so tests can build
/// well-formed and hostile chains byte by byte.
struct RingDriver {
    let memory: any GuestMemory
    var size: UInt16
    var descriptors: UInt64 = 0x10000
    var avail: UInt64 = 0x11000
    var used: UInt64 = 0x12000
    var availIndex: UInt16 = 0
    var nextDescriptor: UInt16 = 0

    init(memory: any GuestMemory, size: UInt16 = 8) {
        self.memory = memory
        self.size = size
    }

    var queue: SplitVirtqueue {
        var q = SplitVirtqueue(maxSize: 256)
        q.size = size
        q.descriptorTable = descriptors
        q.availRing = avail
        q.usedRing = used
        q.ready = true
        return q
    }

    func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0,
                       table: UInt64? = nil) {
        let base = (table ?? descriptors) + 16 * UInt64(index)
        try! memory.write(address, at: base)
        try! memory.write(length, at: base + 8)
        try! memory.write(flags, at: base + 12)
        try! memory.write(next, at: base + 14)
    }

    /// Puts `head` in the next avail slot and publishes it.
    mutating func makeAvailable(_ head: UInt16) {
        try! memory.write(head, at: avail + 4 + 2 * UInt64(availIndex % size))
        availIndex &+= 1
        try! memory.write(availIndex, at: avail + 2)
    }

    func setAvailIndex(_ index: UInt16) { try! memory.write(index, at: avail + 2) }
    func setAvailFlags(_ flags: UInt16) { try! memory.write(flags, at: avail) }
    func setUsedEvent(_ index: UInt16) { try! memory.write(index, at: avail + 4 + 2 * UInt64(size)) }
    var usedIndex: UInt16 { try! memory.read(UInt16.self, at: used + 2) }
    var availEvent: UInt16 { try! memory.read(UInt16.self, at: used + 4 + 8 * UInt64(size)) }
    func usedElement(_ slot: UInt16) -> (id: UInt32, length: UInt32) {
        let base = used + 4 + 8 * UInt64(slot % size)
        return (try! memory.read(UInt32.self, at: base), try! memory.read(UInt32.self, at: base + 4))
    }

    /// Chains `buffers` (address, length, device-writable) through fresh descriptors and makes
    /// the chain available; returns its head.
    @discardableResult
    mutating func submit(_ buffers: [(UInt64, UInt32, Bool)]) -> UInt16 {
        let head = nextDescriptor
        for (i, buffer) in buffers.enumerated() {
            let index = (nextDescriptor &+ UInt16(i)) % size
            let last = i == buffers.count - 1
            setDescriptor(index, address: buffer.0, length: buffer.1, flags: (last ? 0 : 1) | (buffer.2 ? 2 : 0),
                          next: (index + 1) % size)
        }
        nextDescriptor = (nextDescriptor &+ UInt16(buffers.count)) % size
        makeAvailable(head)
        return head
    }

    /// One indirect descriptor pointing at a table at `table` holding `buffers`.
    @discardableResult
    mutating func submitIndirect(_ buffers: [(UInt64, UInt32, Bool)], table: UInt64 = 0x30000) -> UInt16 {
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            setDescriptor(UInt16(i), address: buffer.0, length: buffer.1, flags: (last ? 0 : 1) | (buffer.2 ? 2 : 0),
                          next: UInt16(i + 1), table: table)
        }
        let head = nextDescriptor
        setDescriptor(head, address: table, length: UInt32(16 * buffers.count), flags: 4)
        nextDescriptor = (nextDescriptor &+ 1) % size
        makeAvailable(head)
        return head
    }
}

/// Records what a device asks of the accelerator: doorbells and MSIs.
final class RecordingNotifications: NotificationProvider, @unchecked Sendable {
    final class Registration: DoorbellRegistration {
        let owner: RecordingNotifications
        let doorbell: Doorbell
        init(owner: RecordingNotifications, doorbell: Doorbell) {
            self.owner = owner
            self.doorbell = doorbell
        }
        func cancel() { owner.doorbells.removeAll { $0.doorbell == doorbell } }
    }
    final class Vector: MSIVector, @unchecked Sendable {
        let owner: RecordingNotifications
        init(owner: RecordingNotifications) { self.owner = owner }
        func fire(_ message: MSIMessage) { owner.messages.append(message) }
    }

    var doorbells: [(doorbell: Doorbell, handler: () -> Void)] = []
    var messages: [MSIMessage] = []
    /// false: behave like an accelerator without ioeventfd.
    var acceptsDoorbells = true

    func addDoorbell(_ doorbell: Doorbell, handler: @escaping () -> Void) -> DoorbellRegistration? {
        guard acceptsDoorbells else { return nil }
        doorbells.append((doorbell, handler))
        return Registration(owner: self, doorbell: doorbell)
    }

    func makeMSIVector() -> any MSIVector { Vector(owner: self) }
}

/// A virtio-blk-pci function on its own PCI bus over 1 MiB of guest RAM and a patterned raw
/// disk (sector n starts with n and is filled with n's low byte), driven through its BARs and
/// config space like a guest driver.
final class VirtioBlkRig {
    static let modernBase: UInt64 = 0xE000_0000
    static let msixBase: UInt64 = 0xE001_0000
    static let legacyBase: UInt64 = 0xC000
    let legacy: LegacyTestRig
    let poster = QueuedPoster()
    let notifications = RecordingNotifications()
    let errors = GuestErrorLog(burst: 1000, sink: { _ in })
    let device: VirtioBlk
    let bus: PCIBus
    let directory: URL
    var ring: RingDriver
    let sectors: Int

    /// `fallback`: serve notifications like an accelerator without ioeventfd/irqfd (Xen),
    /// MSIs going to this sink.
    init(sectors: Int = 64, readOnly: Bool = false, mode: VirtioPCIMode = VirtioPCIMode(legacy: true, modern: true),
         serial: String = "SWIFTDM-SERIAL", fallback: (any InterruptSink)? = nil) throws {
        legacy = try LegacyTestRig()
        self.sectors = sectors
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("virtio-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = try IDETestRig.patternImage(at: directory.appendingPathComponent("disk.raw").path, blocks: sectors, blockSize: 512)
        let medium = try BlockBackend(path: path, options: BlockOpenOptions(format: .raw, readOnly: readOnly), workers: 1)
        device = VirtioBlk(id: "virtio0", serial: serial, medium: medium, readOnly: readOnly, mode: mode,
                           memory: legacy.memory, notifications: fallback.map { ExitNotifications(sink: $0) } ?? notifications,
                           poster: poster, log: errors)
        bus = PCIBus(portBus: Bus(name: "io", unassignedValue: .max), mmioBus: Bus(name: "mmio", unassignedValue: 0))
        try bus.plug(device, slot: 4)
        ring = RingDriver(memory: legacy.memory)
        // BARs programmed and decoding on, as firmware leaves them.
        if mode.legacy { device.configWrite(offset: 0x10, size: 4, value: UInt32(Self.legacyBase)) }
        device.configWrite(offset: 0x14, size: 4, value: UInt32(Self.msixBase))
        if mode.modern { device.configWrite(offset: 0x20, size: 4, value: UInt32(Self.modernBase)) }
        device.configWrite(offset: 0x04, size: 2, value: 0x0007)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    var memory: PhysicalMemory { legacy.memory }

    // MARK: modern common configuration (BAR 4)

    func common(_ offset: UInt64, size: Int) -> UInt64 { device.read(region: 4, offset: offset, size: size) }
    func setCommon(_ offset: UInt64, size: Int, _ value: UInt64) { device.write(region: 4, offset: offset, size: size, value: value) }
    var status: UInt8 { UInt8(common(0x14, size: 1)) }

    var offeredFeatures: UInt64 {
        setCommon(0x00, size: 4, 0)
        let low = common(0x04, size: 4)
        setCommon(0x00, size: 4, 1)
        return low | common(0x04, size: 4) << 32
    }

    func setDriverFeatures(_ features: UInt64) {
        setCommon(0x08, size: 4, 0)
        setCommon(0x0C, size: 4, features & 0xFFFF_FFFF)
        setCommon(0x08, size: 4, 1)
        setCommon(0x0C, size: 4, features >> 32)
    }

    /// The modern driver's initialisation (virtio 1.x §3.1.1); `accept` filters the features.
    func startModern(accept: (UInt64) -> UInt64 = { $0 }) {
        setCommon(0x14, size: 1, 0)
        setCommon(0x14, size: 1, 1)
        setCommon(0x14, size: 1, 3)
        setDriverFeatures(accept(offeredFeatures))
        setCommon(0x14, size: 1, 0x0B)
        setCommon(0x16, size: 2, 0)
        setCommon(0x18, size: 2, UInt64(ring.size))
        setCommon(0x20, size: 8, ring.descriptors)
        setCommon(0x28, size: 8, ring.avail)
        setCommon(0x30, size: 8, ring.used)
        setCommon(0x1C, size: 2, 1)
        setCommon(0x14, size: 1, 0x0F)
    }

    /// The queue's doorbell, as a write that exits (no ioeventfd).
    func kick() { device.write(region: 4, offset: 0x3000, size: 2, value: 0) }

    /// Runs completions until the used index reaches `index`.
    @discardableResult
    func waitUsed(_ index: UInt16) -> Bool { poster.drain { ring.usedIndex == index } }

    // MARK: requests

    static let header: UInt64 = 0x20000
    static let data: UInt64 = 0x21000
    static let statusByte: UInt64 = 0x28000

    func writeHeader(type: UInt32, sector: UInt64, at address: UInt64 = header) {
        try! memory.write(type, at: address)
        try! memory.write(UInt32(0), at: address + 4)
        try! memory.write(sector, at: address + 8)
    }

    /// A three-descriptor request (header, data, status) completed; returns the status byte.
    func request(type: UInt32, sector: UInt64, dataLength: UInt32, dataWritable: Bool) -> UInt8 {
        writeHeader(type: type, sector: sector)
        try! memory.write(UInt8(0xEE), at: Self.statusByte)
        var buffers: [(UInt64, UInt32, Bool)] = [(Self.header, 16, false)]
        if dataLength > 0 { buffers.append((Self.data, dataLength, dataWritable)) }
        buffers.append((Self.statusByte, 1, true))
        ring.submit(buffers)
        kick()
        XCTAssertTrue(waitUsed(ring.availIndex), "request completed")
        return try! memory.read(UInt8.self, at: Self.statusByte)
    }
}
