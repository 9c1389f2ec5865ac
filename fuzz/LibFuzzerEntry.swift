/// libFuzzer's entry point, compiled into every fuzz target whose run.sh names this file: the
/// target's own file defines `Harness`, a class with `init()` and `run(_: UnsafeRawBufferPointer)`
/// that feeds one input to the device.
nonisolated(unsafe) let harness = Harness()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let data else { return 0 }
    harness.run(UnsafeRawBufferPointer(start: data, count: count))
    return 0
}
