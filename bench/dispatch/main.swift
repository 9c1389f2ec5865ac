// What SwiftDM adds to every port exit, measured without KVM: the device lock, the bus lookup
// and the device call, through the same IODispatcher the vCPU threads use.
//   swift run -c release dispatch-bench
import DMCore

final class NullDevice: BusDevice {
    func read(region: Int, offset: UInt64, size: Int) -> UInt64 { 0 }
    func write(region: Int, offset: UInt64, size: Int, value: UInt64) {}
}

/// A port map shaped like the pc machine's (about twenty windows).
let ports = Bus(name: "io", unassignedValue: .max)
for (base, length) in [(0x60, 1), (0x64, 1), (0x70, 2), (0x80, 1), (0x92, 1), (0xE9, 1), (0x1F0, 8), (0x2F8, 8),
                       (0x3F6, 1), (0x3F8, 8), (0x402, 1), (0x510, 12), (0x600, 64), (0xCF8, 8), (0xC000, 16)] {
    try ports.register(NullDevice(), base: UInt64(base), length: UInt64(length), name: "dev@\(hex(base))")
}
let dispatcher = IODispatcher(lock: DeviceLock(), ports: ports, mmio: Bus(name: "mmio", unassignedValue: 0))

func measure(_ label: String, port: UInt16, iterations: Int = 5_000_000) {
    let start = monotonicNanoseconds()
    for _ in 0..<iterations { dispatcher.portWrite(port, size: 1, value: 1) }
    let perCall = Double(monotonicNanoseconds() - start) / Double(iterations)
    print("\(label): \((perCall * 10).rounded() / 10) ns per port write")
}

for _ in 0..<3 {
    measure("unassigned port 0x504", port: 0x504)
    measure("device port 0x3f9   ", port: 0x3F9)
}
