// swiftdm-img: the subset of qemu-img people use (create, info, check, convert, resize, bench),
// with qemu-img's option spellings, over SwiftDM's block layer.
import Backends
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ text: String) { description = text }
}

/// qemu-img style arguments: single-letter options with a value (-f raw), flags (-p), long
/// options (--output=json, --shrink) and positionals, in any order.
struct Arguments {
    var values: [String: String] = [:]
    var flags: Set<String> = []
    var positionals: [String] = []
    var options: [String] = []   // every -o, joined later with commas

    init(_ argv: ArraySlice<String>, valued: Set<String>) throws {
        var rest = argv
        while let arg = rest.popFirst() {
            if arg.hasPrefix("--") && arg.count > 2 {
                let body = arg.dropFirst(2)
                if let eq = body.firstIndex(of: "=") {
                    values[String(body[..<eq])] = String(body[body.index(after: eq)...])
                } else if valued.contains(String(body)) {
                    guard let value = rest.popFirst() else { throw UsageError("option --\(body) needs a value") }
                    values[String(body)] = value
                } else {
                    flags.insert(String(body))
                }
            } else if arg.hasPrefix("-") && arg.count > 1 {
                let letter = String(arg.dropFirst().prefix(1))
                let attached = String(arg.dropFirst(2))
                if valued.contains(letter) {
                    let value: String
                    if !attached.isEmpty { value = attached } else if let next = rest.popFirst() { value = next } else {
                        throw UsageError("option -\(letter) needs a value")
                    }
                    if letter == "o" { options.append(value) } else { values[letter] = value }
                } else {
                    for ch in arg.dropFirst() { flags.insert(String(ch)) }
                }
            } else {
                positionals.append(arg)
            }
        }
    }

    func has(_ flag: String) -> Bool { flags.contains(flag) }
}

func writeLine(_ line: String, fd: Int32) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

func printError(_ line: String) { writeLine(line, fd: 2) }

func fail(_ message: String) -> Never {
    printError("swiftdm-img: \(message)")
    exit(1)
}

func parseFormat(_ text: String?) throws -> BlockFormat? {
    guard let text else { return nil }
    guard let format = BlockFormat(rawValue: text) else { throw UsageError("Unknown file format '\(text)'") }
    return format
}

func openOptions(_ args: Arguments, readOnly: Bool, formatKey: String = "f", cacheKey: String = "t",
                 skipBacking: Bool = false) throws -> BlockOpenOptions {
    let format = try parseFormat(args.values[formatKey])
    var options = BlockOpenOptions(format: format, readOnly: readOnly,
                                   cache: try CacheMode(parsing: args.values[cacheKey] ?? "writeback"),
                                   locking: !(args.has("U") || args.has("force-share")),
                                   allowProbing: format == nil, skipBacking: skipBacking)
    if args.has("n") { options.cache = .none }
    return options
}

/// `-o key=value,...` for create and convert.
func parseCreateOptions(_ list: [String], size: UInt64) throws -> Qcow2CreateOptions {
    var options = Qcow2CreateOptions(size: size)
    for item in list.joined(separator: ",").split(separator: ",") {
        let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
        let key = parts[0], value = parts.count > 1 ? parts[1] : "on"
        switch key {
        case "cluster_size":
            guard let bytes = ImageCreation.parseSize(value) else { throw UsageError("invalid cluster_size '\(value)'") }
            options.clusterSize = bytes
        case "compat":
            switch value {
            case "0.10", "v2": options.version = 2
            case "1.1", "v3": options.version = 3
            default: throw UsageError("Invalid compatibility level: '\(value)'")
            }
        case "lazy_refcounts": options.lazyRefcounts = value == "on"
        case "refcount_bits":
            guard let bits = UInt32(value) else { throw UsageError("invalid refcount_bits '\(value)'") }
            options.refcountBits = bits
        case "backing_file": options.backingFile = value
        case "backing_fmt": options.backingFormat = try parseFormat(value)
        case "size":
            guard let bytes = ImageCreation.parseSize(value) else { throw UsageError("invalid size '\(value)'") }
            options.size = bytes
        case "preallocation" where value == "off", "compression_type" where value == "zlib":
            break
        default: throw UsageError("Invalid parameter '\(key)'")
        }
    }
    return options
}

// MARK: create

func create(_ args: Arguments) throws {
    let format = try parseFormat(args.values["f"]) ?? .raw
    guard let path = args.positionals.first else { throw UsageError("Expecting image file name") }
    var size: UInt64?
    if args.positionals.count > 1 {
        guard let parsed = ImageCreation.parseSize(args.positionals[1]) else { throw UsageError("Invalid image size specified") }
        size = parsed
    }
    var options = try parseCreateOptions(args.options, size: size ?? 0)
    if let backing = args.values["b"] { options.backingFile = backing }
    if let backingFormat = args.values["F"] { options.backingFormat = try parseFormat(backingFormat) }
    if size == nil && !args.options.joined().contains("size=") {
        guard let backing = options.backingFile else { throw UsageError("Image creation needs a size parameter") }
        // Like qemu-img: the size defaults to the backing file's.
        let resolved = BlockDrivers.resolveBackingPath(backing, relativeTo: path)
        let driver = try BlockDrivers.open(path: resolved, options: BlockOpenOptions(
            format: options.backingFormat, readOnly: true, locking: !args.has("u"), allowProbing: options.backingFormat == nil))
        options.size = driver.size
        try driver.close()
    }
    switch format {
    case .raw:
        guard options.backingFile == nil else { throw UsageError("raw images cannot have a backing file") }
        try ImageCreation.createRaw(path: path, size: options.size)
    case .qcow2:
        try ImageCreation.createQcow2(path: path, options: options)
    }
    if !args.has("q") {
        var line = "Formatting '\(path)', fmt=\(format.rawValue)"
        if format == .qcow2 { line += " cluster_size=\(options.clusterSize)" }
        line += " size=\(options.size)"
        if let backing = options.backingFile { line += " backing_file=\(backing)" }
        if let backingFormat = options.backingFormat { line += " backing_fmt=\(backingFormat.rawValue)" }
        print(line)
    }
}

// MARK: info

func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

func humanSize(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    var value = Double(bytes), unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(bytes) B" }
    let rounded = (value * 100).rounded() / 100
    var text = String(rounded)
    if text.hasSuffix(".0") { text.removeLast(2) }
    return "\(text) \(units[unit])"
}

func actualSize(_ path: String) -> UInt64 {
    var info = stat()
    guard stat(path, &info) == 0 else { return 0 }
    return UInt64(info.st_blocks) * 512
}

func info(_ args: Arguments) throws {
    guard let path = args.positionals.first else { throw UsageError("Expecting one image file name") }
    let driver = try BlockDrivers.open(path: path, options: try openOptions(args, readOnly: true, skipBacking: true))
    defer { try? driver.close() }
    var fields: [(String, String)] = []   // JSON key, JSON value
    var human: [String] = ["image: \(path)", "file format: \(driver.format.rawValue)",
                           "virtual size: \(humanSize(driver.size)) (\(driver.size) bytes)",
                           "disk size: \(humanSize(actualSize(path)))"]
    fields.append(("virtual-size", String(driver.size)))
    fields.append(("filename", jsonString(path)))
    if let qcow2 = driver as? Qcow2Image {
        let header = qcow2.currentHeader
        human.append("cluster_size: \(header.clusterSize)")
        fields.append(("cluster-size", String(header.clusterSize)))
        fields.append(("format", jsonString("qcow2")))
        if let backing = header.backingFile {
            let full = BlockDrivers.resolveBackingPath(backing, relativeTo: path)
            human.append("backing file: \(backing)" + (full != backing ? " (actual path: \(full))" : ""))
            fields.append(("full-backing-filename", jsonString(full)))
            fields.append(("backing-filename", jsonString(backing)))
            if let format = header.backingFormat {
                human.append("backing file format: \(format)")
                fields.append(("backing-filename-format", jsonString(format)))
            }
        }
        if !qcow2.snapshots.isEmpty {
            human.append("Snapshot list:")
            human.append("ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT")
            var list: [String] = []
            for s in qcow2.snapshots {
                human.append("\(s.id.padding(10))\(s.name.padding(18))\(humanSize(s.vmStateSize).padding(12)) \(s.dateSeconds) \(s.vmClockNanoseconds)")
                list.append("{\"id\": \(jsonString(s.id)), \"name\": \(jsonString(s.name)), \"vm-state-size\": \(s.vmStateSize), \"date-sec\": \(s.dateSeconds), \"date-nsec\": \(s.dateNanoseconds), \"vm-clock-sec\": \(s.vmClockNanoseconds / 1_000_000_000), \"vm-clock-nsec\": \(s.vmClockNanoseconds % 1_000_000_000)}")
            }
            fields.append(("snapshots", "[" + list.joined(separator: ", ") + "]"))
        }
        let compat = header.version == 3 ? "1.1" : "0.10"
        human += ["Format specific information:", "    compat: \(compat)"]
        var specific = ["\"compat\": \(jsonString(compat))"]
        if header.version == 3 {
            human += ["    compression type: zlib", "    lazy refcounts: \(header.hasLazyRefcounts)",
                      "    refcount bits: \(header.refcountBits)", "    corrupt: \(header.isCorrupt)", "    extended l2: false"]
            specific += ["\"compression-type\": \"zlib\"", "\"lazy-refcounts\": \(header.hasLazyRefcounts)",
                         "\"refcount-bits\": \(header.refcountBits)", "\"corrupt\": \(header.isCorrupt)", "\"extended-l2\": false"]
        } else {
            specific += ["\"refcount-bits\": \(header.refcountBits)"]
        }
        fields.append(("format-specific", "{\"type\": \"qcow2\", \"data\": {" + specific.joined(separator: ", ") + "}}"))
        fields.append(("dirty-flag", String(header.isDirty)))
    } else {
        fields.append(("format", jsonString(driver.format.rawValue)))
        fields.append(("dirty-flag", "false"))
    }
    fields.append(("actual-size", String(actualSize(path))))
    if args.values["output"] == "json" {
        print("{\n" + fields.map { "    \(jsonString($0.0)): \($0.1)" }.joined(separator: ",\n") + "\n}")
    } else {
        print(human.joined(separator: "\n"))
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}

// MARK: check

func check(_ args: Arguments) throws -> Int32 {
    guard let path = args.positionals.first else { throw UsageError("Expecting one image file name") }
    var repair: Qcow2Image.RepairMode?
    switch args.values["r"] {
    case nil: repair = nil
    case "leaks": repair = .leaks
    case "all": repair = .all
    case let other?: throw UsageError("Invalid option for -r: '\(other)' (leaks or all)")
    }
    let driver = try BlockDrivers.open(path: path, options: try openOptions(args, readOnly: repair == nil, skipBacking: true))
    defer { try? driver.close() }
    guard let qcow2 = driver as? Qcow2Image else {
        print("This image format does not support checks")
        return 63
    }
    var report = try qcow2.check(repair: repair)
    if repair != nil && (report.leaksFixed > 0 || report.corruptionsFixed > 0) {
        // Report the state after repair, as qemu-img does.
        let fixed = (report.leaksFixed, report.corruptionsFixed)
        for line in report.messages { print(line) }
        report = try qcow2.check(repair: nil)
        print("The following inconsistencies were found and repaired:\n\n    \(fixed.0) leaked clusters\n    \(fixed.1) corruptions\n")
        print("Double checking the fixed image now...")
    }
    if args.values["output"] == "json" {
        print("{\n    \"image-end-offset\": \(report.imageEndOffset),\n    \"total-clusters\": \(report.totalClusters),\n    \"check-errors\": 0,\n    \"leaks\": \(report.leaks),\n    \"corruptions\": \(report.corruptions),\n    \"allocated-clusters\": \(report.allocatedClusters),\n    \"filename\": \(jsonString(path)),\n    \"format\": \"qcow2\"\n}")
    } else {
        for line in report.messages { print(line) }
        if report.corruptions > 0 {
            print("\n\(report.corruptions) errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.")
        }
        if report.leaks > 0 {
            print("\n\(report.leaks) leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.")
        }
        if report.corruptions == 0 && report.leaks == 0 { print("No errors were found on the image.") }
        let total = max(report.totalClusters, 1)
        func percent(_ part: UInt64, _ whole: UInt64) -> String {
            let value = Double(part) * 100 / Double(max(whole, 1))
            let hundredths = Int((value * 100).rounded())
            let frac = hundredths % 100
            return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)%"
        }
        print("\(report.allocatedClusters)/\(report.totalClusters) = \(percent(report.allocatedClusters, total)) allocated, \(percent(report.fragmentedClusters, report.allocatedClusters)) fragmented, \(percent(report.compressedClusters, report.allocatedClusters)) compressed clusters")
        print("Image end offset: \(report.imageEndOffset)")
    }
    if report.corruptions > 0 { return 2 }
    if report.leaks > 0 { return 3 }
    return 0
}

// MARK: convert

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

func convert(_ args: Arguments) throws {
    guard args.positionals.count == 2 else { throw UsageError("Expecting a source and a destination image") }
    let (sourcePath, destinationPath) = (args.positionals[0], args.positionals[1])
    let source = try BlockDrivers.open(path: sourcePath, options: try openOptions(args, readOnly: true, cacheKey: "T"))
    defer { try? source.close() }
    let outputFormat = try parseFormat(args.values["O"]) ?? .raw
    let size = source.size
    var createOptions = try parseCreateOptions(args.options, size: size)
    if let backing = args.values["B"] { createOptions.backingFile = backing }
    switch outputFormat {
    case .raw: try ImageCreation.createRaw(path: destinationPath, size: size)
    case .qcow2: try ImageCreation.createQcow2(path: destinationPath, options: createOptions)
    }
    // qemu-img convert defaults to cache=unsafe for the target and flushes once at the end.
    let cache = try CacheMode(parsing: args.values["t"] ?? "unsafe")
    let destination = try BlockDrivers.open(path: destinationPath, options: BlockOpenOptions(
        format: outputFormat, cache: cache, locking: !args.has("U")))
    let showProgress = args.has("p")
    var lastShown = -1.0
    func progress(_ done: UInt64) {
        guard showProgress else { return }
        let percent = size == 0 ? 100.0 : Double(done) * 100 / Double(size)
        if percent - lastShown >= 1 || done == size {
            lastShown = percent
            let hundredths = Int((percent * 100).rounded())
            print("    (\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)/100%)\r", terminator: "")
            fflush(nil)
        }
    }
    progress(0)
    // Reads run ahead on worker threads (a window of `slots` chunks); the main thread writes
    // the chunks in order, so a qcow2 target is allocated sequentially.
    let skipZeroes = createOptions.backingFile == nil
    let chunk: UInt64 = 2 << 20
    let chunkCount = Int((size + chunk - 1) / chunk)
    let slots = (0..<4).map { _ in ConvertSlot(capacity: Int(chunk)) }
    let reader = BlockBackend(driver: source, workers: 3, queueDepth: slots.count)
    func startRead(_ index: Int) {
        let slot = slots[index % slots.count]
        let offset = UInt64(index) * chunk
        slot.count = Int(min(chunk, size - offset))
        reader.submitWork { slot.fill(from: source, at: offset, skipUnallocated: skipZeroes) }
    }
    var submitted = 0
    for index in 0..<chunkCount {
        while submitted < chunkCount && submitted < index + slots.count {
            startRead(submitted)
            submitted += 1
        }
        let slot = slots[index % slots.count]
        sem_wait(slot.ready)
        if let error = slot.error { throw error }
        let offset = UInt64(index) * chunk
        for run in slot.dataRuns(skipZeroes: skipZeroes) {
            try slot.buffer.withBytesOrFail { raw throws(BlockError) in
                try destination.write(from: UnsafeRawBufferPointer(rebasing: raw[run]), at: offset + UInt64(run.lowerBound))
            }
        }
        progress(offset + UInt64(slot.count))
    }
    reader.pool.shutdownWorkers()
    try destination.flush()
    try destination.close()
    if showProgress { print("") }
}

/// One chunk of `convert` in flight: filled by a worker, written by the main thread.
final class ConvertSlot: @unchecked Sendable {
    var buffer: [UInt8]
    var count = 0
    var error: BlockError?
    /// Which 4 KiB blocks hold only zeroes.
    var zeroBlocks: [Bool] = []
    let ready: UnsafeMutablePointer<sem_t>
    static let block = 4096

    init(capacity: Int) {
        buffer = [UInt8](repeating: 0, count: capacity)
        ready = .allocate(capacity: 1)
        sem_init(ready, 0, 0)
    }

    /// Reads [offset, offset+count) (ranges without data are zero-filled without reading) and
    /// finds the all-zero blocks, which a fresh target need not be written.
    func fill(from source: any BlockDriver, at offset: UInt64, skipUnallocated: Bool) {
        let total = count
        error = nil
        do {
            try buffer.withMutableBytesOrFail { raw throws(BlockError) in
                var done = 0
                while done < total {
                    let (kind, run) = try source.allocation(at: offset + UInt64(done), length: UInt64(total - done))
                    let length = Int(min(run, UInt64(total - done)))
                    let piece = UnsafeMutableRawBufferPointer(rebasing: raw[done..<done + length])
                    if kind != .data && skipUnallocated {
                        piece.initializeMemory(as: UInt8.self, repeating: 0)
                    } else {
                        try source.read(into: piece, at: offset + UInt64(done))
                    }
                    done += length
                }
            }
        } catch let failure as BlockError {
            error = failure
        } catch {
            self.error = .invalidArgument("\(error)")
        }
        zeroBlocks = buffer.withUnsafeBytes { raw in
            stride(from: 0, to: total, by: Self.block).map { start in
                isAllZero(UnsafeRawBufferPointer(rebasing: raw[start..<min(start + Self.block, total)]))
            }
        }
        sem_post(ready)
    }

    /// Maximal runs of blocks to write (all of them when zeroes must be written too).
    func dataRuns(skipZeroes: Bool) -> [Range<Int>] {
        guard skipZeroes else { return count > 0 ? [0..<count] : [] }
        var runs: [Range<Int>] = []
        var start: Int?
        for (index, zero) in zeroBlocks.enumerated() {
            let position = index * Self.block
            if !zero && start == nil { start = position }
            if zero, let begin = start {
                runs.append(begin..<position)
                start = nil
            }
        }
        if let begin = start { runs.append(begin..<count) }
        return runs
    }
}

/// Whether every byte is zero, eight at a time.
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var index = 0
    let count = bytes.count
    while index + 8 <= count {
        if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
        index += 8
    }
    while index < count {
        if bytes[index] != 0 { return false }
        index += 1
    }
    return true
}

extension Array where Element == UInt8 {
    mutating func withMutableBytesOrFail(_ body: (UnsafeMutableRawBufferPointer) throws(BlockError) -> Void) throws {
        var failure: BlockError?
        withUnsafeMutableBytes { raw in
            do throws(BlockError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    func withBytesOrFail(_ body: (UnsafeRawBufferPointer) throws(BlockError) -> Void) throws {
        var failure: BlockError?
        withUnsafeBytes { raw in
            do throws(BlockError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}

// MARK: resize

func resize(_ args: Arguments) throws {
    guard args.positionals.count == 2 else { throw UsageError("Expecting image file name and size") }
    let path = args.positionals[0]
    var text = args.positionals[1]
    let driver = try BlockDrivers.open(path: path, options: try openOptions(args, readOnly: false))
    defer { try? driver.close() }
    var sign = 0
    if text.hasPrefix("+") { sign = 1; text.removeFirst() } else if text.hasPrefix("-") { sign = -1; text.removeFirst() }
    guard let amount = ImageCreation.parseSize(text) else { throw UsageError("Invalid image size specified") }
    let newSize: UInt64
    switch sign {
    case 1: newSize = driver.size + amount
    case -1:
        guard amount <= driver.size else { throw UsageError("New image size must be positive") }
        newSize = driver.size - amount
    default: newSize = amount
    }
    if newSize < driver.size && !args.has("shrink") {
        throw UsageError("Use the --shrink option to perform a shrink operation.")
    }
    try driver.resize(to: newSize)
    try driver.close()
    print("Image resized.")
}

// MARK: bench

/// Like `qemu-img bench`: `count` requests of `size` bytes, `depth` in flight, each `step`
/// bytes after the previous one (wrapping at the end of the image).
func bench(_ args: Arguments) throws {
    guard let path = args.positionals.first else { throw UsageError("Expecting one image file name") }
    let count = Int(args.values["c"] ?? "75000") ?? 75000
    let depth = max(1, Int(args.values["d"] ?? "64") ?? 64)
    let size = Int(ImageCreation.parseSize(args.values["s"] ?? "4096") ?? 4096)
    let step = ImageCreation.parseSize(args.values["S"] ?? "0") ?? 0
    let startOffset = ImageCreation.parseSize(args.values["o"] ?? "0") ?? 0
    let writing = args.has("w")
    let pattern = UInt8(truncatingIfNeeded: Int(args.values["pattern"] ?? "0") ?? 0)
    let flushInterval = Int(args.values["flush-interval"] ?? "0") ?? 0
    let threads = max(1, Int(args.values["threads"] ?? "4") ?? 4)
    let backend = try BlockBackend(path: path, options: try openOptions(args, readOnly: !writing), workers: min(threads, depth))
    let imageSize = backend.size
    guard UInt64(size) <= imageSize else { throw UsageError("request size larger than the image") }
    let stride = step == 0 ? UInt64(size) : step
    let span = imageSize - UInt64(size) + 1
    if !args.has("q") {
        print("Sending \(count) \(writing ? "write" : "read") requests, \(size) bytes each, \(depth) in parallel (starting at offset \(startOffset), step size \(stride))")
    }
    let issued = Atomic<Int>(0)
    let completed = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let started = monotonicSeconds()
    // `depth` request slots, each with its own buffer, run on the backend's worker pool: a
    // finished request immediately issues the next one from its completion.
    final class Slot: @unchecked Sendable { var buffer: [UInt8]; init(_ n: Int, _ fill: UInt8) { buffer = [UInt8](repeating: fill, count: n) } }
    let done = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    sem_init(done, 0, 0)
    nonisolated(unsafe) let doneSignal = done
    @Sendable func issue(_ slot: Slot) {
        let index = issued.add(1, ordering: .relaxed).oldValue
        guard index < count else {
            sem_post(doneSignal)
            return
        }
        let offset = (startOffset + UInt64(index) * stride) % span
        backend.submitWork {
            do {
                if writing {
                    try slot.buffer.withBytesOrFail { raw throws(BlockError) in try backend.write(from: raw, at: offset) }
                    if flushInterval > 0 && (index + 1) % flushInterval == 0 { try backend.flush() }
                } else {
                    try slot.buffer.withMutableBytesOrFail { raw throws(BlockError) in try backend.read(into: raw, at: offset) }
                }
            } catch {
                failed.add(1, ordering: .relaxed)
            }
            completed.add(1, ordering: .relaxed)
            issue(slot)
        }
    }
    for _ in 0..<depth { issue(Slot(size, pattern)) }
    for _ in 0..<depth { sem_wait(done) }
    // Like qemu-img bench, the clock stops when the last request completes; the flush at
    // close is not part of the figure.
    let elapsed = monotonicSeconds() - started
    if writing { try backend.flush() }
    try backend.close()
    let bytes = Double(count) * Double(size)
    if failed.load(ordering: .relaxed) > 0 { printError("swiftdm-img: \(failed.load(ordering: .relaxed)) requests failed") }
    print("Run completed in \(String(Int(elapsed * 1000) / 1000)).\(String(format3(Int(elapsed * 1000) % 1000))) seconds.")
    if !args.has("q") {
        print("IOPS: \(Int(Double(count) / elapsed)), throughput: \(Int(bytes / elapsed / 1_048_576)) MiB/s")
    }
}

func format3(_ value: Int) -> String { value < 10 ? "00\(value)" : value < 100 ? "0\(value)" : "\(value)" }

// MARK: crash-test helper (hidden)

/// `swiftdm-img crash-writer -f FMT FILE SEED`: writes pseudo-random blocks forever through the
/// BlockBackend write path, flushing every 64 writes and then printing "flushed N" (N = writes
/// so far). A test kills it with SIGKILL and verifies that every write up to the last printed
/// flush reads back. Block contents derive from (seed, write index) so they can be recomputed.
func crashWriter(_ args: Arguments) throws {
    guard args.positionals.count == 2, let seed = UInt64(args.positionals[1]) else { throw UsageError("crash-writer FILE SEED") }
    let backend = try BlockBackend(path: args.positionals[0], options: try openOptions(args, readOnly: false))
    var index: UInt64 = 0
    while true {
        let (offset, bytes) = CrashPattern.write(seed: seed, index: index, imageSize: backend.size)
        switch CrashPattern.operation(index: index) {
        case 1: try backend.discard(at: offset, length: UInt64(bytes.count))
        case 2: try backend.writeZeroes(at: offset, length: UInt64(bytes.count))
        default: try backend.write(bytes, at: offset)
        }
        index += 1
        if index % 64 == 0 {
            try backend.flush()
            writeLine("flushed \(index)", fd: 1)  // unbuffered: the test reads it live
        }
    }
}

// MARK: main

let argv = CommandLine.arguments
guard argv.count >= 2 else {
    print("usage: swiftdm-img {create|info|check|convert|resize|bench} [options] ...")
    exit(1)
}
let valued: Set<String> = ["f", "O", "o", "b", "F", "r", "t", "T", "c", "d", "s", "S", "B", "output", "pattern",
                           "flush-interval", "threads"]
do {
    let args = try Arguments(argv[2...], valued: valued.union(argv[1] == "bench" ? ["o"] : []))
    var arguments = args
    if argv[1] == "bench", let offset = args.options.first {
        arguments.values["o"] = offset   // bench's -o is an offset, not creation options
        arguments.options = []
    }
    switch argv[1] {
    case "create": try create(arguments)
    case "info": try info(arguments)
    case "check": exit(try check(arguments))
    case "convert": try convert(arguments)
    case "resize": try resize(arguments)
    case "bench": try bench(arguments)
    case "crash-writer": try crashWriter(arguments)
    default: fail("Command not found: \(argv[1])")
    }
} catch {
    fail("\(error)")
}
