// libFuzzer target for the qcow2 parser and metadata paths. The input is an image file: it is
// opened read-only (header, extensions, snapshot table, L1/refcount tables), read at a few
// places (L1/L2 lookups, compressed clusters), checked (full metadata walk), then opened
// read-write and written, discarded and zeroed (allocation, refcounts, COW). Any crash,
// sanitizer report or access outside the image file is a bug; errors are expected.
#if canImport(Glibc)
import Glibc
#endif

private let scratchPath = "/dev/shm/swiftdm-fuzz-qcow2-\(getpid()).img"

private func writeInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Bool {
    let fd = open(scratchPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var done = 0
    while done < size {
        let n = write(fd, data + done, size - done)
        if n <= 0 { return false }
        done += n
    }
    return true
}

private func exercise(readOnly: Bool) {
    let options = BlockOpenOptions(format: .qcow2, readOnly: readOnly, cache: .unsafe, locking: false,
                                   skipBacking: true, l2CacheTables: 4)
    guard let driver = try? BlockDrivers.open(path: scratchPath, options: options) else { return }
    let backend = BlockBackend(driver: driver, workers: 1, queueDepth: 4)
    let size = backend.size
    let probes: [UInt64] = [0, 65536, size / 2, size > 4096 ? size - 4096 : 0]
    for offset in probes where offset < size {
        _ = try? backend.read(at: offset, count: Int(min(8192, size - offset)))
        _ = try? backend.allocation(at: offset, length: min(1 << 20, size - offset))
    }
    if let qcow2 = driver as? Qcow2Image { _ = try? qcow2.check(repair: readOnly ? nil : .leaks) }
    if !readOnly && size > 0 {
        let pattern = [UInt8](repeating: 0xa5, count: Int(min(size, 70_000)))
        _ = try? backend.write(pattern, at: 0)
        _ = try? backend.write(Array(pattern.prefix(3000)), at: size / 3)
        _ = try? backend.discard(at: 0, length: min(size, 1 << 17))
        _ = try? backend.writeZeroes(at: size / 2, length: min(size - size / 2, 1 << 17))
        _ = try? backend.flush()
        _ = try? backend.read(at: 0, count: Int(min(size, 70_000)))
        if let qcow2 = driver as? Qcow2Image { _ = try? qcow2.check(repair: nil) }
    }
    try? backend.close()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQcow2(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard writeInput(data, size) else { return 0 }
    exercise(readOnly: true)
    exercise(readOnly: false)   // the file may have been modified; that is fine
    unlink(scratchPath)
    return 0
}
