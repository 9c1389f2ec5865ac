import DMCore

/// A virtio-blk request as the driver laid it out (virtio 1.x §5.2.6): a 16-byte header
/// (type, reserved, sector) in device-readable buffers, data, and a one-byte status at the very
/// end of the device-writable buffers. With VERSION_1 (and ANY_LAYOUT) the split into
/// descriptors is arbitrary, so the header may span buffers and the status may share one with
/// data; this parser accepts any split and checks the order (readable before writable).
///
/// Parsing reads only the header from guest memory; data buffers are recorded, not touched.
public struct VirtioBlkRequest: Equatable, Sendable {
    public enum RequestType: UInt32, Sendable {
        case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
    }

    /// Problems the driver is told about through the status byte (the queue itself is fine).
    public enum Problem: Equatable, Sendable {
        case tooManySegments
        /// Data buffers whose direction does not suit the request (a read into readable
        /// buffers, a write from writable ones).
        case wrongDirection
    }

    public var type: UInt32 = 0
    public var sector: UInt64 = 0
    /// The status byte's guest address.
    public var statusAddress: UInt64 = 0
    /// Data bytes in `segments[0..<segmentCount]` (everything but header and status).
    public var dataLength: UInt64 = 0
    public var readableData = false
    public var writableData = false
    public var problem: Problem?

    public init() {}

    public var requestType: RequestType? { RequestType(rawValue: type) }

    static let headerSize = 16

    /// Why a chain is not a request at all: nothing can be answered, the queue is broken.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case chain(VirtqueueError)
        case shortHeader
        case missingStatus
        case readableAfterWritable

        public var description: String {
            switch self {
            case .chain(let e): return e.description
            case .shortHeader: return "request header shorter than 16 bytes"
            case .missingStatus: return "request without a writable status byte"
            case .readableAfterWritable: return "device-readable buffer after a writable one"
            }
        }
    }

    /// Walks `chain`, reads the header and fills `segments` with the data buffers (at most
    /// `maxSegments`; the array's capacity is reused, so a steady state allocates nothing).
    public static func parse(_ chain: inout DescriptorChain, memory: any GuestMemory,
                             segments: inout [VirtqueueBuffer], maxSegments: Int) throws(ParseError) -> VirtioBlkRequest {
        segments.removeAll(keepingCapacity: true)
        var request = VirtioBlkRequest()
        var header = (low: UInt64(0), high: UInt64(0))
        var headerFill = 0
        var sawWritable = false
        var overflow = false
        var lastWritable: VirtqueueBuffer?
        while true {
            let next: VirtqueueBuffer?
            do { next = try chain.next(memory) } catch { throw .chain(error) }
            guard var buffer = next else { break }
            if buffer.writable {
                sawWritable = true
            } else {
                guard !sawWritable else { throw .readableAfterWritable }
                if headerFill < headerSize {
                    let take = min(headerSize - headerFill, Int(buffer.length))
                    for i in 0..<take {
                        let byte: UInt8
                        do { byte = try memory.read(UInt8.self, at: buffer.address + UInt64(i)) } catch {
                            throw .chain(.memory(error))
                        }
                        let at = headerFill + i
                        if at < 8 { header.low |= UInt64(byte) << (8 * UInt64(at)) } else { header.high |= UInt64(byte) << (8 * UInt64(at - 8)) }
                    }
                    headerFill += take
                    buffer.address += UInt64(take)
                    buffer.length -= UInt32(take)
                }
            }
            guard buffer.length > 0 else { continue }
            if buffer.writable { lastWritable = buffer }
            if segments.count < maxSegments { segments.append(buffer) } else { overflow = true }
        }
        guard headerFill == headerSize else { throw .shortHeader }
        // The status byte is the last writable byte; it leaves the data.
        guard let last = lastWritable else { throw .missingStatus }
        request.statusAddress = last.address + UInt64(last.length - 1)
        if overflow {
            request.problem = .tooManySegments
            return request
        }
        if last.length == 1 { segments.removeLast() } else { segments[segments.count - 1].length -= 1 }
        request.type = UInt32(truncatingIfNeeded: header.low)
        request.sector = header.high
        for i in segments.indices {
            request.dataLength += UInt64(segments[i].length)
            if segments[i].writable { request.writableData = true } else { request.readableData = true }
        }
        switch request.requestType {
        case .read?, .getID?: if request.readableData { request.problem = .wrongDirection }
        case .write?, .discard?, .writeZeroes?: if request.writableData { request.problem = .wrongDirection }
        case .flush?, nil: break
        }
        return request
    }
}
