#if canImport(Glibc)
import Glibc
#endif

/// Why the Xen libraries could not be used: which library or symbol is missing, or which call
/// failed and with what errno. Every message names the thing a user has to install or fix.
public enum XenError: Error, Equatable, CustomStringConvertible {
    /// None of the candidate file names of a library could be loaded.
    case libraryMissing(library: String, tried: [String], reason: String)
    /// The library loaded but lacks a function the device model needs (too old a Xen).
    case symbolMissing(library: String, symbol: String)
    /// A library call failed; `errno` is what it left behind.
    case callFailed(call: String, errno: Int32)
    /// Xen handed us something unusable (a page too small, a port out of range).
    case invalid(String)

    public var description: String {
        switch self {
        case let .libraryMissing(library, tried, reason):
            return "Xen library \(library) not found (tried \(tried.joined(separator: ", "))): \(reason)"
        case let .symbolMissing(library, symbol):
            return "Xen library \(library) lacks \(symbol) (is the Xen version too old?)"
        case let .callFailed(call, errno):
            return "\(call) failed: \(String(cString: strerror(errno)))"
        case let .invalid(message):
            return message
        }
    }
}

/// The Xen user-space libraries, loaded at run time with dlopen so one binary also runs on a
/// host without Xen (KVM only). Each function the device model uses is resolved once here into
/// a typed C function pointer; a missing library or symbol is a `XenError` naming it.
///
/// Handles (`xendevicemodel_handle *` and friends) are opaque to us, so they travel as
/// `OpaquePointer`.
public struct XenLibraries: @unchecked Sendable {
    public typealias Handle = OpaquePointer

    // libxendevicemodel
    public let dmOpen: @convention(c) (OpaquePointer?, UInt32) -> Handle?
    public let dmClose: @convention(c) (Handle?) -> Int32
    public let createIoreqServer: @convention(c) (Handle?, UInt16, Int32, UnsafeMutablePointer<UInt16>?) -> Int32
    public let getIoreqServerInfo: @convention(c) (Handle?, UInt16, UInt16, UnsafeMutablePointer<UInt>?,
                                                   UnsafeMutablePointer<UInt>?, UnsafeMutablePointer<UInt32>?) -> Int32
    public let mapIORangeToIoreqServer: @convention(c) (Handle?, UInt16, UInt16, Int32, UInt64, UInt64) -> Int32
    public let unmapIORangeFromIoreqServer: @convention(c) (Handle?, UInt16, UInt16, Int32, UInt64, UInt64) -> Int32
    public let mapPCIDevToIoreqServer: @convention(c) (Handle?, UInt16, UInt16, UInt16, UInt8, UInt8, UInt8) -> Int32
    public let unmapPCIDevFromIoreqServer: @convention(c) (Handle?, UInt16, UInt16, UInt16, UInt8, UInt8, UInt8) -> Int32
    public let setIoreqServerState: @convention(c) (Handle?, UInt16, UInt16, Int32) -> Int32
    public let destroyIoreqServer: @convention(c) (Handle?, UInt16, UInt16) -> Int32
    public let setPCIIntxLevel: @convention(c) (Handle?, UInt16, UInt16, UInt8, UInt8, UInt8, UInt32) -> Int32
    public let setISAIRQLevel: @convention(c) (Handle?, UInt16, UInt8, UInt32) -> Int32
    public let setPCILinkRoute: @convention(c) (Handle?, UInt16, UInt8, UInt8) -> Int32
    public let injectMSI: @convention(c) (Handle?, UInt16, UInt64, UInt32) -> Int32
    public let modifiedMemory: @convention(c) (Handle?, UInt16, UInt64, UInt32) -> Int32
    public let trackDirtyVRAM: @convention(c) (Handle?, UInt16, UInt64, UInt32, UnsafeMutablePointer<UInt>?) -> Int32
    public let shutdown: @convention(c) (Handle?, UInt16, UInt32) -> Int32
    public let relocateMemory: @convention(c) (Handle?, UInt16, UInt32, UInt64, UInt64) -> Int32
    public let pinMemoryCacheattr: @convention(c) (Handle?, UInt16, UInt64, UInt64, UInt32) -> Int32
    public let dmRestrict: @convention(c) (Handle?, UInt16) -> Int32

    // libxenforeignmemory
    public let fmemOpen: @convention(c) (OpaquePointer?, UInt32) -> Handle?
    public let fmemClose: @convention(c) (Handle?) -> Int32
    public let fmemMap: @convention(c) (Handle?, UInt32, Int32, Int, UnsafePointer<UInt>?,
                                        UnsafeMutablePointer<Int32>?) -> UnsafeMutableRawPointer?
    public let fmemUnmap: @convention(c) (Handle?, UnsafeMutableRawPointer?, Int) -> Int32
    public let fmemMapResource: @convention(c) (Handle?, UInt16, UInt32, UInt32, UInt, UInt,
                                                UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32, Int32) -> Handle?
    public let fmemUnmapResource: @convention(c) (Handle?, Handle?) -> Int32

    // libxenevtchn
    public let evtchnOpen: @convention(c) (OpaquePointer?, UInt32) -> Handle?
    public let evtchnClose: @convention(c) (Handle?) -> Int32
    public let evtchnFD: @convention(c) (Handle?) -> Int32
    public let evtchnPending: @convention(c) (Handle?) -> Int32
    public let evtchnUnmask: @convention(c) (Handle?, UInt32) -> Int32
    public let evtchnBindInterdomain: @convention(c) (Handle?, UInt32, UInt32) -> Int32
    public let evtchnUnbind: @convention(c) (Handle?, UInt32) -> Int32
    public let evtchnNotify: @convention(c) (Handle?, UInt32) -> Int32

    // libxenstore (used by the machine for $QEMU/state, backends and physmap keys)
    public let xsOpen: @convention(c) (UInt) -> Handle?
    public let xsClose: @convention(c) (Handle?) -> Void
    public let xsRead: @convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt32>?) -> UnsafeMutableRawPointer?
    public let xsWrite: @convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeRawPointer?, UInt32) -> Bool
    public let xsMkdir: @convention(c) (Handle?, UInt32, UnsafePointer<CChar>?) -> Bool
    public let xsRm: @convention(c) (Handle?, UInt32, UnsafePointer<CChar>?) -> Bool
    /// `struct xs_permissions { unsigned int id; enum xs_perm_type perms; }`: pairs of UInt32.
    public let xsSetPermissions: @convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt32>?, UInt32) -> Bool
    public let xsWatch: @convention(c) (Handle?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Bool
    public let xsUnwatch: @convention(c) (Handle?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Bool
    public let xsReadWatch: @convention(c) (Handle?, UnsafeMutablePointer<UInt32>?) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
    public let xsFileno: @convention(c) (Handle?) -> Int32

    // libxenctrl (HVM params: ACPI S-state, ioreq server pages on old Xen)
    public let xcInterfaceOpen: @convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> Handle?
    public let xcInterfaceClose: @convention(c) (Handle?) -> Int32
    public let xcHVMParamSet: @convention(c) (Handle?, UInt32, UInt32, UInt64) -> Int32
    public let xcHVMParamGet: @convention(c) (Handle?, UInt32, UInt32, UnsafeMutablePointer<UInt64>?) -> Int32
    public let xcPopulatePhysmapExact: @convention(c) (Handle?, UInt32, UInt, UInt32, UInt32, UnsafeMutablePointer<UInt>?) -> Int32

    /// The file names tried for each library, most specific first: the sonames Debian 12 ships,
    /// then other sonames Xen has used, then the unversioned development symlink.
    public static let candidates: [(library: String, names: [String])] = [
        ("libxentoollog", ["libxentoollog.so.1", "libxentoollog.so"]),
        ("libxendevicemodel", ["libxendevicemodel.so.1", "libxendevicemodel.so"]),
        ("libxenforeignmemory", ["libxenforeignmemory.so.1", "libxenforeignmemory.so"]),
        ("libxenevtchn", ["libxenevtchn.so.1", "libxenevtchn.so"]),
        ("libxenstore", ["libxenstore.so.4", "libxenstore.so.3.0", "libxenstore.so"]),
        ("libxenctrl", ["libxenctrl.so.4.17", "libxenctrl.so"]),
    ]

    /// Loads every library and resolves every symbol. `directory`, when given, is prepended to
    /// each file name (tests use it; normally the dynamic loader's search path applies).
    public static func load(directory: String? = nil) throws(XenError) -> XenLibraries {
        var handles: [String: UnsafeMutableRawPointer] = [:]
        for (library, names) in candidates {
            handles[library] = try open(library, names: names, directory: directory)
        }
        func sym<T>(_ library: String, _ name: String, as _: T.Type) throws(XenError) -> T {
            guard let handle = handles[library], let p = dlsym(handle, name) else {
                throw .symbolMissing(library: library, symbol: name)
            }
            return unsafeBitCast(p, to: T.self)
        }
        let dm = "libxendevicemodel", fm = "libxenforeignmemory", ev = "libxenevtchn"
        let xs = "libxenstore", xc = "libxenctrl"
        return XenLibraries(
            dmOpen: try sym(dm, "xendevicemodel_open", as: (@convention(c) (OpaquePointer?, UInt32) -> Handle?).self),
            dmClose: try sym(dm, "xendevicemodel_close", as: (@convention(c) (Handle?) -> Int32).self),
            createIoreqServer: try sym(dm, "xendevicemodel_create_ioreq_server",
                                       as: (@convention(c) (Handle?, UInt16, Int32, UnsafeMutablePointer<UInt16>?) -> Int32).self),
            getIoreqServerInfo: try sym(dm, "xendevicemodel_get_ioreq_server_info",
                                        as: (@convention(c) (Handle?, UInt16, UInt16, UnsafeMutablePointer<UInt>?,
                                                             UnsafeMutablePointer<UInt>?, UnsafeMutablePointer<UInt32>?) -> Int32).self),
            mapIORangeToIoreqServer: try sym(dm, "xendevicemodel_map_io_range_to_ioreq_server",
                                             as: (@convention(c) (Handle?, UInt16, UInt16, Int32, UInt64, UInt64) -> Int32).self),
            unmapIORangeFromIoreqServer: try sym(dm, "xendevicemodel_unmap_io_range_from_ioreq_server",
                                                 as: (@convention(c) (Handle?, UInt16, UInt16, Int32, UInt64, UInt64) -> Int32).self),
            mapPCIDevToIoreqServer: try sym(dm, "xendevicemodel_map_pcidev_to_ioreq_server",
                                            as: (@convention(c) (Handle?, UInt16, UInt16, UInt16, UInt8, UInt8, UInt8) -> Int32).self),
            unmapPCIDevFromIoreqServer: try sym(dm, "xendevicemodel_unmap_pcidev_from_ioreq_server",
                                                as: (@convention(c) (Handle?, UInt16, UInt16, UInt16, UInt8, UInt8, UInt8) -> Int32).self),
            setIoreqServerState: try sym(dm, "xendevicemodel_set_ioreq_server_state",
                                         as: (@convention(c) (Handle?, UInt16, UInt16, Int32) -> Int32).self),
            destroyIoreqServer: try sym(dm, "xendevicemodel_destroy_ioreq_server",
                                        as: (@convention(c) (Handle?, UInt16, UInt16) -> Int32).self),
            setPCIIntxLevel: try sym(dm, "xendevicemodel_set_pci_intx_level",
                                     as: (@convention(c) (Handle?, UInt16, UInt16, UInt8, UInt8, UInt8, UInt32) -> Int32).self),
            setISAIRQLevel: try sym(dm, "xendevicemodel_set_isa_irq_level",
                                    as: (@convention(c) (Handle?, UInt16, UInt8, UInt32) -> Int32).self),
            setPCILinkRoute: try sym(dm, "xendevicemodel_set_pci_link_route",
                                     as: (@convention(c) (Handle?, UInt16, UInt8, UInt8) -> Int32).self),
            injectMSI: try sym(dm, "xendevicemodel_inject_msi", as: (@convention(c) (Handle?, UInt16, UInt64, UInt32) -> Int32).self),
            modifiedMemory: try sym(dm, "xendevicemodel_modified_memory",
                                    as: (@convention(c) (Handle?, UInt16, UInt64, UInt32) -> Int32).self),
            trackDirtyVRAM: try sym(dm, "xendevicemodel_track_dirty_vram",
                                    as: (@convention(c) (Handle?, UInt16, UInt64, UInt32, UnsafeMutablePointer<UInt>?) -> Int32).self),
            shutdown: try sym(dm, "xendevicemodel_shutdown", as: (@convention(c) (Handle?, UInt16, UInt32) -> Int32).self),
            relocateMemory: try sym(dm, "xendevicemodel_relocate_memory",
                                    as: (@convention(c) (Handle?, UInt16, UInt32, UInt64, UInt64) -> Int32).self),
            pinMemoryCacheattr: try sym(dm, "xendevicemodel_pin_memory_cacheattr",
                                        as: (@convention(c) (Handle?, UInt16, UInt64, UInt64, UInt32) -> Int32).self),
            dmRestrict: try sym(dm, "xendevicemodel_restrict", as: (@convention(c) (Handle?, UInt16) -> Int32).self),
            fmemOpen: try sym(fm, "xenforeignmemory_open", as: (@convention(c) (OpaquePointer?, UInt32) -> Handle?).self),
            fmemClose: try sym(fm, "xenforeignmemory_close", as: (@convention(c) (Handle?) -> Int32).self),
            fmemMap: try sym(fm, "xenforeignmemory_map",
                             as: (@convention(c) (Handle?, UInt32, Int32, Int, UnsafePointer<UInt>?,
                                                  UnsafeMutablePointer<Int32>?) -> UnsafeMutableRawPointer?).self),
            fmemUnmap: try sym(fm, "xenforeignmemory_unmap", as: (@convention(c) (Handle?, UnsafeMutableRawPointer?, Int) -> Int32).self),
            fmemMapResource: try sym(fm, "xenforeignmemory_map_resource",
                                     as: (@convention(c) (Handle?, UInt16, UInt32, UInt32, UInt, UInt,
                                                          UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32, Int32) -> Handle?).self),
            fmemUnmapResource: try sym(fm, "xenforeignmemory_unmap_resource", as: (@convention(c) (Handle?, Handle?) -> Int32).self),
            evtchnOpen: try sym(ev, "xenevtchn_open", as: (@convention(c) (OpaquePointer?, UInt32) -> Handle?).self),
            evtchnClose: try sym(ev, "xenevtchn_close", as: (@convention(c) (Handle?) -> Int32).self),
            evtchnFD: try sym(ev, "xenevtchn_fd", as: (@convention(c) (Handle?) -> Int32).self),
            evtchnPending: try sym(ev, "xenevtchn_pending", as: (@convention(c) (Handle?) -> Int32).self),
            evtchnUnmask: try sym(ev, "xenevtchn_unmask", as: (@convention(c) (Handle?, UInt32) -> Int32).self),
            evtchnBindInterdomain: try sym(ev, "xenevtchn_bind_interdomain",
                                           as: (@convention(c) (Handle?, UInt32, UInt32) -> Int32).self),
            evtchnUnbind: try sym(ev, "xenevtchn_unbind", as: (@convention(c) (Handle?, UInt32) -> Int32).self),
            evtchnNotify: try sym(ev, "xenevtchn_notify", as: (@convention(c) (Handle?, UInt32) -> Int32).self),
            xsOpen: try sym(xs, "xs_open", as: (@convention(c) (UInt) -> Handle?).self),
            xsClose: try sym(xs, "xs_close", as: (@convention(c) (Handle?) -> Void).self),
            xsRead: try sym(xs, "xs_read",
                            as: (@convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt32>?) -> UnsafeMutableRawPointer?).self),
            xsWrite: try sym(xs, "xs_write",
                             as: (@convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeRawPointer?, UInt32) -> Bool).self),
            xsMkdir: try sym(xs, "xs_mkdir", as: (@convention(c) (Handle?, UInt32, UnsafePointer<CChar>?) -> Bool).self),
            xsRm: try sym(xs, "xs_rm", as: (@convention(c) (Handle?, UInt32, UnsafePointer<CChar>?) -> Bool).self),
            xsSetPermissions: try sym(xs, "xs_set_permissions",
                                      as: (@convention(c) (Handle?, UInt32, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt32>?, UInt32) -> Bool).self),
            xsWatch: try sym(xs, "xs_watch", as: (@convention(c) (Handle?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Bool).self),
            xsUnwatch: try sym(xs, "xs_unwatch", as: (@convention(c) (Handle?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Bool).self),
            xsReadWatch: try sym(xs, "xs_read_watch",
                                 as: (@convention(c) (Handle?, UnsafeMutablePointer<UInt32>?) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?).self),
            xsFileno: try sym(xs, "xs_fileno", as: (@convention(c) (Handle?) -> Int32).self),
            xcInterfaceOpen: try sym(xc, "xc_interface_open", as: (@convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> Handle?).self),
            xcInterfaceClose: try sym(xc, "xc_interface_close", as: (@convention(c) (Handle?) -> Int32).self),
            xcHVMParamSet: try sym(xc, "xc_hvm_param_set", as: (@convention(c) (Handle?, UInt32, UInt32, UInt64) -> Int32).self),
            xcHVMParamGet: try sym(xc, "xc_hvm_param_get",
                                   as: (@convention(c) (Handle?, UInt32, UInt32, UnsafeMutablePointer<UInt64>?) -> Int32).self),
            xcPopulatePhysmapExact: try sym(xc, "xc_domain_populate_physmap_exact",
                                            as: (@convention(c) (Handle?, UInt32, UInt, UInt32, UInt32, UnsafeMutablePointer<UInt>?) -> Int32).self))
    }

    private static func open(_ library: String, names: [String], directory: String?) throws(XenError) -> UnsafeMutableRawPointer {
        var tried: [String] = []
        var lastReason = "not found"
        for name in names {
            let path = directory.map { $0.hasSuffix("/") ? $0 + name : $0 + "/" + name } ?? name
            tried.append(path)
            // RTLD_GLOBAL: libxenctrl and friends resolve libxentoollog's symbols through it.
            if let handle = dlopen(path, RTLD_NOW | RTLD_GLOBAL) { return handle }
            if let message = dlerror() { lastReason = String(cString: message) }
        }
        throw .libraryMissing(library: library, tried: tried, reason: lastReason)
    }

    /// `xentoolcore_restrict_all`: from now on every handle this process opened through the
    /// Xen libraries may act on `domid` only (QEMU's `-xen-domid-restrict`). A failure leaves
    /// the process unrestricted, so the caller must not go on as if it were.
    public static func restrictAll(to domid: UInt16, directory: String? = nil) throws(XenError) {
        let core = try open("libxentoolcore", names: ["libxentoolcore.so.1", "libxentoolcore.so"], directory: directory)
        guard let symbol = dlsym(core, "xentoolcore_restrict_all") else {
            throw .symbolMissing(library: "libxentoolcore", symbol: "xentoolcore_restrict_all")
        }
        let restrict = unsafeBitCast(symbol, to: (@convention(c) (UInt16) -> Int32).self)
        guard restrict(domid) == 0 else { throw .callFailed(call: "xentoolcore_restrict_all(\(domid))", errno: errno) }
    }

    /// Opens a libxendevicemodel handle: the first call that needs a hypervisor (it opens
    /// /dev/xen/privcmd), so on a host without Xen this is where a clear error appears.
    public func openDeviceModel() throws(XenError) -> Handle {
        guard let handle = dmOpen(nil, 0) else {
            throw .callFailed(call: "xendevicemodel_open (is this a Xen dom0 with /dev/xen/privcmd?)", errno: errno)
        }
        return handle
    }
}
