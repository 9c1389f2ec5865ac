import Backends
import DMCore

/// virtio-blk over virtio-pci (`-device virtio-blk-pci`): one request queue, reads, writes,
/// flush, get-id, discard and write-zeroes against a `BlockBackend`, all I/O on the backend's
/// workers and completed on the event loop like IDE DMA.
///
/// Per request nothing is allocated: each in-flight descriptor chain owns a preallocated
/// `Request` (segment arrays sized for `segMax`), the worker closure and the completion capture
/// only that object, and a finished request goes back to a free list.
public final class VirtioBlk: PCIDevice, VirtioDevice, Snapshottable, Resettable, @unchecked Sendable {
    public static let virtioDeviceID: UInt16 = 2
    public static let queueSize: UInt16 = 256
    /// Segments per request: the queue minus header and status, as QEMU advertises.
    public static let segMax = Int(queueSize) - 2
    public static let sizeMax: UInt32 = 1 << 20
    static let sectorSize: UInt64 = 512
    static let idBytes = 20
    /// Discard/write-zeroes limits: one range per request, up to 4 GiB - 512 bytes of it.
    static let maxDiscardSectors: UInt32 = 0x7F_FFFF

    enum Feature {
        static let sizeMax: UInt64 = 1 << 1
        static let segMax: UInt64 = 1 << 2
        static let readOnly: UInt64 = 1 << 5
        static let blkSize: UInt64 = 1 << 6
        static let flush: UInt64 = 1 << 9
        static let discard: UInt64 = 1 << 13
        static let writeZeroes: UInt64 = 1 << 14
    }

    enum Status {
        static let ok: UInt8 = 0
        static let ioError: UInt8 = 1
        static let unsupported: UInt8 = 2
    }

    public let transport: VirtioPCITransport
    public var pci: PCIFunction { transport.pci }
    /// The `-drive` id and the `-device` id (QMP's `device` and `qdev`).
    public let id: String
    public let qdevID: String?
    public let serial: String
    public let medium: BlockBackend
    public let readOnly: Bool
    public private(set) var stats = BlockDeviceStats()
    private let poster: any BlockCompletionPoster
    private let config: [UInt8]
    private var requests: [Request] = []
    private var freeRequests: [Int] = []
    /// Bumped by every device reset: completions of older requests touch nothing.
    private var generation: UInt64 = 0
    /// The queue had work we could not take (every request slot busy); retried on completion.
    private var starved = false

    public init(name: String = "virtio-blk", id: String, qdevID: String? = nil, serial: String = "",
                medium: BlockBackend, readOnly: Bool, mode: VirtioPCIMode, memory: any GuestMemory,
                notifications: any NotificationProvider, poster: any BlockCompletionPoster, log: GuestErrorLog = .shared) {
        self.id = id
        self.qdevID = qdevID
        self.serial = serial
        self.medium = medium
        self.readOnly = readOnly || medium.isReadOnly
        self.poster = poster
        var features = Feature.sizeMax | Feature.segMax | Feature.blkSize | Feature.flush
        features |= self.readOnly ? Feature.readOnly : Feature.discard | Feature.writeZeroes
        config = Self.configLayout(sectors: medium.size / Self.sectorSize)
        // Class 01:00 (SCSI storage), as QEMU gives virtio-blk.
        transport = VirtioPCITransport(name: name, deviceID: Self.virtioDeviceID, deviceFeatures: features,
                                       queueMaxSizes: [Self.queueSize], configSize: config.count, mode: mode,
                                       classCode: 0x01_0000, memory: memory, notifications: notifications, log: log)
        transport.device = self
        freeRequests.reserveCapacity(Int(Self.queueSize))
        requests.reserveCapacity(Int(Self.queueSize))
    }

    /// `struct virtio_blk_config`: capacity, size_max, seg_max, geometry (unused), blk_size,
    /// topology (unused), writeback (unused), num_queues, then the discard and write-zeroes
    /// limits. 60 bytes.
    static func configLayout(sectors: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }
        put(sectors, at: 0)
        put(sizeMax, at: 8)
        put(UInt32(segMax), at: 12)
        put(UInt32(sectorSize), at: 20)
        put(UInt16(1), at: 34)
        put(maxDiscardSectors, at: 36)
        put(UInt32(1), at: 40)
        put(UInt32(1), at: 44)
        put(maxDiscardSectors, at: 48)
        put(UInt32(1), at: 52)
        bytes[56] = 1  // write_zeroes_may_unmap
        return bytes
    }

    // MARK: bus and config (forwarded to the transport)

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 { transport.read(region: region, offset: offset, size: size) }
    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        transport.write(region: region, offset: offset, size: size, value: value)
    }
    public func configRead(offset: Int, size: Int) -> UInt32 { transport.configRead(offset: offset, size: size) }
    public func configWrite(offset: Int, size: Int, value: UInt32) { transport.configWrite(offset: offset, size: size, value: value) }

    public func readConfig(offset: Int) -> UInt8 { offset < config.count ? config[offset] : 0 }
    /// Nothing in the configuration is writable without VIRTIO_BLK_F_CONFIG_WCE (not offered).
    public func writeConfig(offset: Int, value: UInt8) {}

    public var info: BlockDeviceInfo {
        BlockDeviceInfo(id: id, qdevID: qdevID, isCDROM: false, removable: false, locked: false, trayOpen: nil,
                        path: medium.path, format: medium.format.rawValue, readOnly: readOnly, size: medium.size, stats: stats)
    }

    // MARK: requests

    /// One descriptor chain in flight. The loop thread fills it, a worker runs it, the loop
    /// thread completes it; the hand-offs go through the worker pool and `poster`, so the two
    /// never touch it at the same time.
    final class Request: @unchecked Sendable {
        unowned let device: VirtioBlk
        /// Where it sits in `requests` (and goes back to `freeRequests`).
        let index: Int
        var head: UInt16 = 0
        var generation: UInt64 = 0
        var request = VirtioBlkRequest()
        var buffers: [VirtqueueBuffer] = []
        var segments: [GuestSegment] = []
        var offset: UInt64 = 0
        var length: UInt64 = 0
        var result: Result<Void, BlockError> = .success(())
        var elapsed: UInt64 = 0

        init(device: VirtioBlk, index: Int) {
            self.device = device
            self.index = index
            buffers.reserveCapacity(VirtioBlk.segMax + 2)
            segments.reserveCapacity(VirtioBlk.segMax + 2)
        }

        /// Worker side: the I/O itself.
        func run() {
            let start = monotonicNanoseconds()
            let medium = device.medium
            switch request.requestType {
            case .read?, .write?:
                result = medium.transferGuest(device.transport.memory, segments: segments, at: offset,
                                              writing: request.requestType == .write)
            case .flush?:
                result = Self.capture { () throws(BlockError) in try medium.flush() }
            case .discard?:
                result = Self.capture { () throws(BlockError) in try medium.discard(at: offset, length: length) }
            case .writeZeroes?:
                result = Self.capture { () throws(BlockError) in try medium.writeZeroes(at: offset, length: length) }
            case .getID?, nil:
                result = .success(())
            }
            elapsed = monotonicNanoseconds() &- start
            device.poster.post { [self] in device.finished(self) }
        }

        static func capture(_ body: () throws(BlockError) -> Void) -> Result<Void, BlockError> {
            do throws(BlockError) {
                try body()
                return .success(())
            } catch {
                return .failure(error)
            }
        }
    }

    public func queueNotified(_ queue: Int) {
        let memory = transport.memory
        while true {
            guard let slot = takeRequest() else {
                starved = true
                return
            }
            guard let popped = transport.withQueue(queue, { (q) throws(VirtqueueError) in try q.popAvailable(memory) }),
                  let head = popped else {
                freeRequests.append(slot)
                return
            }
            guard issue(requests[slot], head: head) else { return }
        }
    }

    /// Parses chain `head` into `r` and starts it; false (and the queue marked broken) when the
    /// chain is not a request.
    private func issue(_ r: Request, head: UInt16) -> Bool {
        r.head = head
        r.generation = generation
        var chain = transport.queues[0].chain(head: head)
        do {
            r.request = try VirtioBlkRequest.parse(&chain, memory: transport.memory, segments: &r.buffers,
                                                   maxSegments: Self.segMax)
        } catch {
            freeRequests.append(r.index)
            transport.queueFailed(0, error)
            return false
        }
        start(r)
        return true
    }

    private func takeRequest() -> Int? {
        if let index = freeRequests.popLast() { return index }
        guard requests.count < Int(Self.queueSize) else { return nil }
        requests.append(Request(device: self, index: requests.count))
        return requests.count - 1
    }

    /// Validates a parsed request against the disk and either answers it at once or hands it
    /// to a worker.
    private func start(_ r: Request) {
        let request = r.request
        guard let type = request.requestType else { return complete(r, status: Status.unsupported) }
        guard request.problem == nil else {
            transport.log.report(pci.name, "request type \(request.type): \(request.problem.map { "\($0)" } ?? "")")
            return complete(r, status: Status.ioError)
        }
        switch type {
        case .read, .write:
            let sectors = medium.size / Self.sectorSize
            var valid = request.dataLength % Self.sectorSize == 0 && request.sector <= sectors
                && request.dataLength / Self.sectorSize <= sectors - request.sector && (type == .read || !readOnly)
            r.segments.removeAll(keepingCapacity: true)
            // Index loops: element iteration is unspecialised (and allocates) in debug builds.
            for i in r.buffers.indices {
                valid = valid && r.buffers[i].length <= Self.sizeMax
                r.segments.append(GuestSegment(address: r.buffers[i].address, length: Int(r.buffers[i].length)))
            }
            guard valid else {
                countFailure(type)
                return complete(r, status: Status.ioError)
            }
            r.offset = request.sector * Self.sectorSize
            r.length = request.dataLength
        case .flush:
            break
        case .getID:
            return complete(r, status: writeID(r) ? Status.ok : Status.ioError,
                            written: UInt32(min(request.dataLength, UInt64(Self.idBytes))))
        case .discard, .writeZeroes:
            guard !readOnly, let range = discardRange(r, zeroes: type == .writeZeroes) else {
                return complete(r, status: readOnly ? Status.ioError : Status.unsupported)
            }
            (r.offset, r.length) = range
        }
        medium.submitWork { [r] in r.run() }
    }

    /// The one `virtio_blk_discard_write_zeroes` segment (sector, num_sectors, flags) of a
    /// discard or write-zeroes request, checked: inside the disk, within the advertised limits,
    /// flags only UNMAP and only for write-zeroes.
    private func discardRange(_ r: Request, zeroes: Bool) -> (UInt64, UInt64)? {
        guard r.request.dataLength == 16, r.buffers.count == 1 else { return nil }
        let memory = transport.memory
        let base = r.buffers[0].address
        guard let sector = try? memory.read(UInt64.self, at: base), let count = try? memory.read(UInt32.self, at: base + 8),
              let flags = try? memory.read(UInt32.self, at: base + 12) else { return nil }
        let sectors = medium.size / Self.sectorSize
        guard flags & ~(zeroes ? 1 : 0) == 0, count <= Self.maxDiscardSectors, sector <= sectors,
              UInt64(count) <= sectors - sector else { return nil }
        return (sector * Self.sectorSize, UInt64(count) * Self.sectorSize)
    }

    /// VIRTIO_BLK_T_GET_ID: the serial, zero-padded to 20 bytes, cut to the buffers' length.
    private func writeID(_ r: Request) -> Bool {
        var remaining = min(Int(r.request.dataLength), Self.idBytes)
        var position = 0
        let bytes = Array(serial.utf8.prefix(Self.idBytes))
        for buffer in r.buffers where remaining > 0 {
            let count = min(remaining, Int(buffer.length))
            for i in 0..<count {
                let at = position + i
                do { try transport.memory.write(at < bytes.count ? bytes[at] : 0, at: buffer.address + UInt64(i)) } catch {
                    return false
                }
            }
            position += count
            remaining -= count
        }
        return true
    }

    /// Loop thread: a worker finished `r`.
    private func finished(_ r: Request) {
        guard r.generation == generation else {
            // The device was reset meanwhile: the chain is no longer ours to answer.
            freeRequests.append(r.index)
            return
        }
        let type = r.request.requestType
        switch (type, r.result) {
        case (.read?, .success):
            stats.readOperations += 1
            stats.readBytes &+= r.length
            stats.readTotalNanoseconds &+= r.elapsed
        case (.write?, .success):
            stats.writeOperations += 1
            stats.writtenBytes &+= r.length
            stats.writeTotalNanoseconds &+= r.elapsed
        case (.flush?, .success):
            stats.flushOperations += 1
            stats.flushTotalNanoseconds &+= r.elapsed
        case (_, .failure(let error)):
            if let type { countFailure(type) }
            transport.log.report(pci.name, "request type \(r.request.type) at sector \(r.request.sector): \(error)")
        default:
            break
        }
        let ok: Bool
        if case .success = r.result { ok = true } else { ok = false }
        complete(r, status: ok ? Status.ok : Status.ioError, written: type == .read && ok ? UInt32(r.length) : 0)
    }

    private func countFailure(_ type: VirtioBlkRequest.RequestType) {
        switch type {
        case .read: stats.failedReadOperations += 1
        case .write: stats.failedWriteOperations += 1
        case .flush: stats.failedFlushOperations += 1
        default: break
        }
    }

    /// Writes the status byte, returns the chain and interrupts the driver if it wants it.
    private func complete(_ r: Request, status: UInt8, written: UInt32 = 0) {
        freeRequests.append(r.index)
        let memory = transport.memory
        do {
            try memory.write(status, at: r.request.statusAddress)
        } catch {
            transport.queueFailed(0, VirtqueueError.memory(error))
            return
        }
        _ = transport.withQueue(0) { (q) throws(VirtqueueError) in try q.pushUsed(head: r.head, written: written + 1, memory) }
        transport.interruptQueue(0)
        if starved {
            starved = false
            queueNotified(0)
        }
    }

    /// Device reset: in-flight requests finish on their workers and are then dropped.
    public func resetDevice() {
        generation &+= 1
        starved = false
    }

    // MARK: state

    public var stateID: String { "virtio-blk@\(pci.name)-\(id)" }
    public var stateVersion: UInt32 { 1 }

    public func saveState(to w: inout StateWriter) {
        transport.saveState(to: &w)
        // Requests in flight are redone on the destination from the (restored) rings.
        let heads = requests.filter { r in r.generation == generation && !freeRequests.contains(r.index) }.map(\.head)
        w.put(array: heads)
    }

    public func loadState(from r: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
        generation &+= 1
        try transport.loadState(from: &r)
        let count = Int(try r.get(UInt32.self))
        guard count <= Int(Self.queueSize) else { throw .invalidValue(section: stateID, field: "in-flight count") }
        var heads: [UInt16] = []
        for _ in 0..<count {
            let head = try r.get(UInt16.self)
            guard head < Self.queueSize else { throw .invalidValue(section: stateID, field: "in-flight head") }
            heads.append(head)
        }
        for head in heads { resubmit(head: head) }
    }

    private func resubmit(head: UInt16) {
        guard transport.withQueue(0, { _ in () }) != nil, let slot = takeRequest() else { return }
        _ = issue(requests[slot], head: head)
    }

    public func reset() {
        generation &+= 1
        starved = false
        transport.reset()
    }
}
