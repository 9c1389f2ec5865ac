// libFuzzer target: random bytes as a guest driver and a wire talking to one RTL8139.
// Each input is a list of operations on 64 KiB of guest RAM (addresses reach past it):
//   0: register write [offset][size][value u32] through BAR0 or BAR1
//   1: register read  [offset][size]
//   2: a frame from the wire [length u16] taken from the input
//   3: guest RAM bytes [address u16][count][bytes]
// Invariants checked after every operation: no crash, no host access outside RAM (ASan;
// GuestMemory refuses guest addresses outside it), the NIC's write position inside its ring
// and 4-byte aligned, INTx exactly (ISR & IMR) != 0.
import Backends
import DMCore
#if canImport(Glibc)
import Glibc
#endif

let ramSize = 64 * 1024

final class Wire: NetBackend {
    let id = "fuzz"
    weak var frontend: (any NetFrontend)?
    var sentBytes = 0
    func attach(_ frontend: (any NetFrontend)?) { self.frontend = frontend }
    func send(frame: UnsafeRawBufferPointer) -> Bool {
        precondition(frame.count >= 1 && frame.count <= RTL8139.maxFrame, "frame size")
        sentBytes &+= frame.count
        return true
    }
    func frontendReady() {}
}

final class Harness: @unchecked Sendable {
    let ram: HostMemory
    let memory: PhysicalMemory
    let clock = VirtualClock()

    init() {
        do { ram = try HostMemory(size: ramSize) } catch { fatalError("fuzz harness: \(error)") }
        memory = PhysicalMemory(regions: [.init(guestAddress: 0, size: UInt64(ramSize), backing: ram, backingOffset: 0, writable: true)])
    }

    func run(_ data: UnsafeRawBufferPointer) {
        memset(ram.baseAddress, 0, ramSize)
        let wire = Wire()
        let timers = TimerList(clock: clock)  // per input: the NIC's timer goes with it
        let nic = RTL8139(mac: MACAddress(value: 0x0016_3E12_3456), backend: wire, memory: memory, timers: timers)
        nic.configWrite(offset: 0x04, size: 2, value: data.first.map { $0 & 0x40 != 0 ? 0x0001 : 0x0005 } ?? 0x0005)
        var at = 0
        func byte() -> Int? {
            guard at < data.count else { return nil }
            defer { at += 1 }
            return Int(data[at])
        }
        while let op = byte() {
            switch op % 4 {
            case 0:
                guard let offset = byte(), let s = byte(), let a = byte(), let b = byte(), let c = byte(), let d = byte() else { return }
                let value = UInt64(a) | UInt64(b) << 8 | UInt64(c) << 16 | UInt64(d) << 24
                let size = [1, 2, 4, 8][s & 3]
                // Addresses the NIC will use for DMA: keep half of them inside RAM.
                nic.write(region: (s >> 2) & 1, offset: UInt64(offset), size: size, value: value & (op & 0x80 != 0 ? 0x1FFFF : .max))
            case 1:
                guard let offset = byte(), let s = byte() else { return }
                _ = nic.read(region: (s >> 2) % 3 == 2 ? 6 : (s >> 2) & 1, offset: UInt64(offset), size: [1, 2, 4, 8][s & 3])
            case 2:
                guard let lo = byte(), let hi = byte() else { return }
                let length = min((lo | hi << 8) % 2048, data.count - at)
                if nic.canReceive {
                    nic.receive(frame: UnsafeRawBufferPointer(rebasing: data[at..<at + length]))
                }
                at += length
            default:
                guard let lo = byte(), let hi = byte(), let count = byte() else { return }
                let n = min(count, data.count - at)
                let address = UInt64(lo | hi << 8)
                try? memory.write(at: address, bytes: UnsafeRawBufferPointer(rebasing: data[at..<at + n]))
                at += n
            }
            let cbr = UInt32(nic.read(region: 0, offset: 0x3A, size: 2))
            let rcr = UInt32(nic.read(region: 0, offset: 0x44, size: 4))
            precondition(cbr < 8192 << ((rcr >> 11) & 3) && cbr & 3 == 0, "write position outside the ring")
            let isr = nic.read(region: 0, offset: 0x3E, size: 2)
            let imr = nic.read(region: 0, offset: 0x3C, size: 2)
            let intx = nic.pci.config.get8(0x06) & 0x08 != 0
            precondition(intx == (isr & imr != 0), "INTx follows ISR & IMR")
        }
    }
}

nonisolated(unsafe) let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    harness.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
