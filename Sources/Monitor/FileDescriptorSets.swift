#if canImport(Glibc)
import Glibc
#endif

/// QEMU's fd sets (`add-fd`, `remove-fd`, `query-fdsets`): descriptors a client passed with
/// SCM_RIGHTS, grouped under an id, so that a later command can name `/dev/fdset/N` wherever
/// it takes a file name. A privileged caller (libxl) opens the file and we never need the
/// right to open it ourselves.
///
/// Every subsystem that opens a file a QMP client named goes through `open(_:flags:mode:)`,
/// which resolves `/dev/fdset/N` to a duplicate of the member whose access mode matches (as
/// QEMU's `qemu_open`) and opens anything else normally. A duplicate handed out this way is
/// given back with `closeDuplicate(_:)`; while one is out, its set survives client
/// disconnects (QEMU's `dup_fds`).
///
/// Loop-thread only, like the rest of the monitor.
public final class FileDescriptorSets {
    public struct Member: Equatable {
        public let fd: Int32
        public let opaque: String?
        var removed = false
    }

    final class FDSet {
        let id: Int
        var members: [Member] = []
        var duplicates: Set<Int32> = []
        init(id: Int) { self.id = id }
    }

    public struct OpenError: Error, Equatable, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "Could not open '\(path)': \(String(cString: strerror(errno)))" }
    }

    private var sets: [FDSet] = []  // sorted by id
    /// Bounds what a client can make us hold (QEMU has no limit; descriptors are finite).
    public static let maxDescriptors = 256

    public init() {}

    deinit {
        for set in sets { for member in set.members { Glibc.close(member.fd) } }
    }

    public var descriptorCount: Int { sets.reduce(0) { $0 + $1.members.count } }

    /// `add-fd`: takes ownership of `fd`. Returns the set id and the descriptor number.
    public func add(_ fd: Int32, toSet requested: Int?, opaque: String?) throws(QMPError) -> (setID: Int, fd: Int32) {
        guard descriptorCount < Self.maxDescriptors else {
            Glibc.close(fd)
            throw .generic("Too many file descriptors in fd sets (at most \(Self.maxDescriptors))")
        }
        let set: FDSet
        if let requested {
            guard requested >= 0 else {
                Glibc.close(fd)
                throw .generic("Parameter 'fdset-id' expects a non-negative value")
            }
            if let existing = sets.first(where: { $0.id == requested }) {
                set = existing
            } else {
                set = FDSet(id: requested)
                insert(set)
            }
        } else {
            // The lowest id not in use, as QEMU's monitor_fdset_add_fd.
            var candidate = 0
            for existing in sets where existing.id == candidate { candidate += 1 }
            set = FDSet(id: candidate)
            insert(set)
        }
        set.members.append(Member(fd: fd, opaque: opaque))
        return (set.id, fd)
    }

    private func insert(_ set: FDSet) {
        let index = sets.firstIndex { $0.id > set.id } ?? sets.count
        sets.insert(set, at: index)
    }

    /// `remove-fd`: marks one member (or the whole set) removed; it is closed at the next
    /// cleanup that may close it.
    public func remove(setID: Int, fd: Int32?, vmRunning: Bool) throws(QMPError) {
        let name = fd.map { "fdset-id:\(setID), fd:\($0)" } ?? "fdset-id:\(setID)"
        guard let set = sets.first(where: { $0.id == setID }) else {
            throw .generic("File descriptor named '\(name)' not found")
        }
        var found = false
        for i in set.members.indices where fd == nil || set.members[i].fd == fd {
            set.members[i].removed = true
            found = true
        }
        guard found else { throw .generic("File descriptor named '\(name)' not found") }
        cleanup(set, vmRunning: vmRunning, anyMonitorOpen: true)
    }

    /// `query-fdsets`.
    public var queryResult: JSONValue {
        .array(sets.map { set in
            let fds: [JSONValue] = set.members.map { member in
                var entry = JSONObject([("fd", .int(member.fd))])
                if let opaque = member.opaque { entry["opaque"] = .string(opaque) }
                return .object(entry)
            }
            return ["fdset-id": .int(set.id), "fds": .array(fds)]
        })
    }

    /// A client went away: QEMU's `monitor_fdsets_cleanup`. While the VM runs, members that were
    /// removed, or that no one holds a duplicate of, are closed; a paused VM keeps everything
    /// (libxl passes the save file, then saves, possibly over separate connections).
    public func connectionClosed(vmRunning: Bool) {
        for set in sets { cleanup(set, vmRunning: vmRunning, anyMonitorOpen: false) }
    }

    private func cleanup(_ set: FDSet, vmRunning: Bool, anyMonitorOpen: Bool) {
        guard vmRunning else { return }
        set.members.removeAll { member in
            let close = member.removed || (set.duplicates.isEmpty && !anyMonitorOpen)
            if close { Glibc.close(member.fd) }
            return close
        }
        if set.members.isEmpty && set.duplicates.isEmpty { sets.removeAll { $0 === set } }
    }

    /// The set id in `/dev/fdset/N`, or nil for an ordinary path.
    public static func setID(inPath path: String) -> Int? {
        guard path.hasPrefix("/dev/fdset/") else { return nil }
        return Int(path.dropFirst("/dev/fdset/".count)).flatMap { $0 >= 0 ? $0 : nil } ?? -1
    }

    /// Opens `path` for a subsystem: `/dev/fdset/N` gives a close-on-exec duplicate of the
    /// member opened with the same access mode (`flags & O_ACCMODE`); other paths are opened
    /// with `open(2)`. The caller owns the result; give fd-set duplicates back with
    /// `closeDuplicate`.
    public func open(_ path: String, flags: Int32, mode: mode_t = 0o660) throws(OpenError) -> Int32 {
        if let id = Self.setID(inPath: path) {
            guard id >= 0, let set = sets.first(where: { $0.id == id }) else { throw OpenError(path: path, errno: ENOENT) }
            for member in set.members where !member.removed {
                let memberFlags = fcntl(member.fd, F_GETFL)
                guard memberFlags >= 0, memberFlags & O_ACCMODE == flags & O_ACCMODE else { continue }
                let copy = fcntl(member.fd, F_DUPFD_CLOEXEC, 0)
                guard copy >= 0 else { throw OpenError(path: path, errno: errno) }
                set.duplicates.insert(copy)
                return copy
            }
            throw OpenError(path: path, errno: EACCES)
        }
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw OpenError(path: path, errno: errno) }
        return fd
    }

    /// Closes a descriptor `open` returned (an fd-set duplicate or an ordinary file).
    public func closeDuplicate(_ fd: Int32) {
        for set in sets where set.duplicates.remove(fd) != nil { break }
        Glibc.close(fd)
    }
}
