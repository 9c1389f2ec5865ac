#if canImport(Glibc)
import Glibc
#endif

/// QEMU's `-chroot` and `-runas` (libxl's device-model deprivileging, xen-contract.md §A.1.3):
/// once every file, socket and hypervisor handle is open, confine the process to a directory
/// and become an unprivileged user. Order matters: the user is looked up before the chroot
/// hides /etc/passwd, and groups are dropped before the user id, while we still may.
public enum Privileges {
    public static func drop(user: String?, chroot directory: String?) throws(MachineError) {
        var ids: (uid: uid_t, gid: gid_t)?
        if let user { ids = try lookUp(user) }
        if let directory {
            guard chroot(directory) == 0 else { throw MachineError("-chroot \(directory): \(String(cString: strerror(errno)))") }
            guard chdir("/") == 0 else { throw MachineError("-chroot \(directory): chdir: \(String(cString: strerror(errno)))") }
        }
        guard let (uid, gid) = ids, let user else { return }
        var group = gid
        guard setgroups(1, &group) == 0, setgid(gid) == 0, setuid(uid) == 0 else {
            throw MachineError("-runas \(user): cannot switch to uid \(uid) gid \(gid): \(String(cString: strerror(errno)))")
        }
        // A process that can regain root has not dropped anything.
        guard setuid(0) != 0 || uid == 0 else { throw MachineError("-runas \(user): could switch back to root") }
    }

    /// A user name, or `uid:gid` as newer QEMU's `-run-with user=` accepts.
    static func lookUp(_ user: String) throws(MachineError) -> (uid: uid_t, gid: gid_t) {
        let parts = user.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 2, let uid = uid_t(parts[0]), let gid = gid_t(parts[1]) { return (uid, gid) }
        guard let entry = getpwnam(user) else { throw MachineError("-runas \(user): no such user") }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }
}
