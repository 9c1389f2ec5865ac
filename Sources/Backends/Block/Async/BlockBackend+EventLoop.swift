import DMCore

/// A guest-physical scatter/gather element (a PRD entry, a virtio descriptor).
public struct GuestSegment: Sendable, Equatable {
    public let address: UInt64
    public let length: Int
    public init(address: UInt64, length: Int) {
        self.address = address
        self.length = length
    }
}

/// The API devices use: requests run on the backend's worker threads and completions are
/// posted to the machine's EventLoop, so they run on the loop thread with the DeviceLock held,
/// like every other device callback. Devices call these with the DeviceLock held; nothing
/// here takes it or blocks on I/O (only on a full queue, which the workers always drain).
extension BlockBackend {
    public func submit(_ request: Request, on loop: EventLoop, completion: @escaping Completion) {
        submit(request) { result in loop.post { completion(result) } }
    }

    /// Reads `[offset, offset + total length)` straight into guest memory: each segment is
    /// filled from the image through `GuestMemory.withBytes`, without an intermediate copy.
    /// A segment outside guest RAM fails the request (as a DMA error for the device to report).
    public func readIntoGuest(_ memory: any GuestMemory, segments: [GuestSegment], at offset: UInt64,
                              on loop: EventLoop, completion: @escaping @Sendable (Result<Void, BlockError>) -> Void) {
        transferGuest(memory, segments: segments, at: offset, writing: false, on: loop, completion: completion)
    }

    /// Writes the bytes of the guest segments to `[offset, ...)`, straight from guest memory.
    public func writeFromGuest(_ memory: any GuestMemory, segments: [GuestSegment], at offset: UInt64,
                               on loop: EventLoop, completion: @escaping @Sendable (Result<Void, BlockError>) -> Void) {
        transferGuest(memory, segments: segments, at: offset, writing: true, on: loop, completion: completion)
    }

    private func transferGuest(_ memory: any GuestMemory, segments: [GuestSegment], at offset: UInt64, writing: Bool,
                               on loop: EventLoop, completion: @escaping @Sendable (Result<Void, BlockError>) -> Void) {
        submitWork { [self] in
            let result = transferGuest(memory, segments: segments, at: offset, writing: writing)
            loop.post { completion(result) }
        }
    }

    /// The worker side of a guest transfer, for devices that schedule their own work (virtio-blk
    /// keeps one preallocated request per descriptor chain): validates the whole request, then
    /// moves each segment between the image and guest memory through `GuestMemory.withBytes`.
    /// Blocks on I/O; allocates nothing.
    public func transferGuest(_ memory: any GuestMemory, segments: [GuestSegment], at offset: UInt64,
                              writing: Bool) -> Result<Void, BlockError> {
        // Index loops: element iteration is unspecialised (and allocates) in debug builds.
        var total: UInt64 = 0
        for i in segments.indices {
            guard segments[i].length >= 0, let sum = checkedAdd(total, UInt64(segments[i].length)) else {
                return .failure(.invalidArgument("bad scatter/gather list"))
            }
            total = sum
        }
        do throws(BlockError) {
            try validate(offset: offset, length: total, writing: writing)
        } catch {
            return .failure(error)
        }
        var position = offset
        for i in segments.indices where segments[i].length > 0 {
            let segment = segments[i]
            let result: Result<Void, BlockError>
            do {
                result = try memory.withBytes(at: segment.address, length: segment.length, forWriting: !writing) { host in
                    do throws(BlockError) {
                        if writing {
                            try driver.write(from: UnsafeRawBufferPointer(host), at: position)
                        } else {
                            try driver.read(into: host, at: position)
                        }
                        return .success(())
                    } catch {
                        return .failure(error)
                    }
                }
            } catch {
                result = .failure(.invalidArgument("DMA to \(error)"))
            }
            if case .failure = result { return result }
            position += UInt64(segment.length)
        }
        return .success(())
    }
}
