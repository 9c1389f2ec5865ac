import DMCore
#if canImport(Glibc)
import Glibc
#endif

/// Device RAM (video RAM) under Xen, kept where QEMU keeps it so libxl, a restored device model
/// and QEMU itself agree on it:
/// - the frames are the guest's own, populated once at a "home" address past the guest's RAM
///   (QEMU's `ram_addr` of the region, `xen_ram_alloc`), and mapped into the device model;
/// - when the guest maps the BAR, the frames move there (`relocate_memory`, cache attribute
///   pinned write-back) so the guest reaches its framebuffer without an ioreq per access, and
///   `device-model/<domid>/physmap/<home>/{start_addr,size,name}` records the move; libxl
///   carries those keys through save/restore and migration, and a device model that starts
///   with `-incoming` (or after a restart) finds its frames through them instead of
///   populating new ones (QEMU's `xen_add_to_physmap`, `xen_read_physmap`);
/// - a restore without a physmap record (qemu-xen built for Xen ≥ 4.10 writes none) finds the
///   frames where the restored BAR points, as QEMU does while `INMIGRATE`: nothing is mapped
///   until the device says where its BAR is, or first touches the RAM (then they are at home);
/// - Xen's dirty-VRAM tracking covers the relocated range (it tracks one range per domain).
public final class XenDeviceRAM: DeviceRAM, @unchecked Sendable {
    /// `XEN_DOMCTL_MEM_CACHEATTR_WB`.
    static let cacheWriteBack: UInt32 = 6

    public let size: Int
    public let name: String
    /// Where the frames live while the guest has not mapped them.
    public let homeAddress: UInt64
    /// Where they live now: `homeAddress`, or the BAR address the guest gave.
    public private(set) var location: UInt64
    /// The frames in our address space; nil only after Xen refused to map them again, when a
    /// scratch buffer stands in so the device keeps running (and the error is logged).
    private var mapping: ForeignMapping?
    private var scratch: HostMemory?
    /// Restoring without a record: the frames are wherever the saved BAR said.
    private var awaitingIncomingBAR = false
    private let hypervisor: any XenHypervisor
    private let store: any XenStoreAccess
    private let mapCache: XenMapCache
    private let physmapPath: String
    private let pages: Int
    /// Pages the device itself wrote since the last `collectDirtyPages`.
    private var deviceDirty: [UInt64]
    private var xenDirty: [UInt64]
    private let errors: GuestErrorLog

    /// `incoming`: the domain's memory comes from a saved image, which already holds the frames.
    public init(hypervisor: any XenHypervisor, store: any XenStoreAccess, mapCache: XenMapCache,
                deviceModelPath: String, name: String, size: Int, homeAddress: UInt64, incoming: Bool,
                errors: GuestErrorLog = .shared) throws(XenError) {
        guard size > 0, size % xenPageSize == 0, homeAddress % UInt64(xenPageSize) == 0 else {
            throw .invalid("device RAM \(name): size \(size) at \(hex(homeAddress)) is not page-aligned")
        }
        self.size = size
        self.name = name
        self.homeAddress = homeAddress
        self.hypervisor = hypervisor
        self.store = store
        self.mapCache = mapCache
        self.errors = errors
        pages = size / xenPageSize
        physmapPath = "\(deviceModelPath)/physmap/\(String(homeAddress, radix: 16))"
        deviceDirty = [UInt64](repeating: .max, count: (pages + 63) / 64)
        xenDirty = [UInt64](repeating: 0, count: (pages + 63) / 64)
        if let recorded = Self.recordedLocation(store: store, path: physmapPath, size: size) {
            location = recorded
        } else {
            location = homeAddress
            if incoming {
                awaitingIncomingBAR = true
                return
            }
            try hypervisor.populatePhysmap(firstGFN: homeAddress >> xenPageShift, count: pages)
        }
        mapping = try Self.mapAll(hypervisor, at: location, pages: pages, name: name)
    }

    /// Maps the frames where they are now (`location`), or a scratch buffer if Xen refuses.
    private func mapHere() {
        do throws(XenError) {
            mapping = try Self.mapAll(hypervisor, at: location, pages: pages, name: name)
        } catch {
            errors.report("xen", "\(name): cannot map the frames at \(hex(location)): \(error); the display is lost")
            if scratch == nil { scratch = try? HostMemory(size: size) }
        }
    }

    /// A restore without a record learns where the frames are: at `address` (the BAR the
    /// saved configuration decodes), or at home.
    private func adoptIncomingLocation(_ address: UInt64?) {
        awaitingIncomingBAR = false
        location = address ?? homeAddress
        mapHere()
        if mapping == nil, location != homeAddress {
            location = homeAddress
            mapHere()
        }
        recordLocation()
    }

    deinit { if let mapping { hypervisor.unmapForeignPages(mapping) } }

    /// A physmap record of our size left by an earlier device model of this domain (libxl
    /// writes them back before a restore).
    private static func recordedLocation(store: any XenStoreAccess, path: String, size: Int) -> UInt64? {
        guard let start = store.read("\(path)/start_addr").flatMap({ UInt64($0, radix: 16) }),
              let recordedSize = store.read("\(path)/size").flatMap({ UInt64($0, radix: 16) }),
              recordedSize == UInt64(size), start % UInt64(xenPageSize) == 0 else { return nil }
        return start
    }

    private static func mapAll(_ hypervisor: any XenHypervisor, at address: UInt64, pages: Int,
                               name: String) throws(XenError) -> ForeignMapping {
        let mapping = try hypervisor.mapForeignPages(firstGFN: address >> xenPageShift, pageCount: pages)
        for page in 0..<pages where !mapping.isValid(page: page) {
            hypervisor.unmapForeignPages(mapping)
            throw .invalid("device RAM \(name): Xen refused frame \(hex((address >> xenPageShift) + UInt64(page)))")
        }
        return mapping
    }

    public func withBytes<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        if awaitingIncomingBAR { adoptIncomingLocation(nil) }
        if let mapping { return body(UnsafeMutableRawBufferPointer(start: mapping.base, count: size)) }
        guard let scratch else { return body(UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
        return withExtendedLifetime(scratch) { body(UnsafeMutableRawBufferPointer(start: scratch.baseAddress, count: size)) }
    }

    public func map(at address: UInt64?) {
        if awaitingIncomingBAR {
            adoptIncomingLocation(address)
            return
        }
        let target = address ?? homeAddress
        guard target != location else { return }
        guard target % UInt64(xenPageSize) == 0 else {
            errors.report("xen", "\(name): BAR at \(hex(target)) is not page-aligned; left at \(hex(location))")
            return
        }
        if location != homeAddress { stopTracking() }
        if let mapping { hypervisor.unmapForeignPages(mapping) }
        mapping = nil
        do throws(XenError) {
            try hypervisor.relocateMemory(count: UInt32(pages), from: location >> xenPageShift, to: target >> xenPageShift)
            location = target
        } catch {
            errors.report("xen", "\(name): moving \(pages) frames to \(hex(target)): \(error)")
        }
        mapHere()
        // The mapcache may hold the frames' old addresses.
        mapCache.invalidate()
        recordLocation()
        for i in deviceDirty.indices { deviceDirty[i] = .max }
    }

    /// The physmap keys say where the frames are whenever they are away from home.
    private func recordLocation() {
        guard location != homeAddress else {
            store.remove(physmapPath)
            return
        }
        let last = (location + UInt64(size) - 1) >> xenPageShift
        do throws(XenError) {
            try hypervisor.pinMemoryCacheattr(first: location >> xenPageShift, last: last, type: Self.cacheWriteBack)
        } catch {
            errors.report("xen", "\(name): \(error)")
        }
        do throws(XenError) {
            try store.write("\(physmapPath)/start_addr", String(location, radix: 16))
            try store.write("\(physmapPath)/size", String(UInt64(size), radix: 16))
            try store.write("\(physmapPath)/name", name)
        } catch {
            errors.report("xen", "\(name): physmap record: \(error)")
        }
    }

    private func stopTracking() {
        do throws(XenError) { try hypervisor.trackDirtyVRAM(firstGFN: 0, count: 0, bitmap: &xenDirty) } catch {
            errors.report("xen", "\(name): stopping dirty tracking: \(error)")
        }
    }

    public func collectDirtyPages(into bitmap: inout [UInt64]) -> Bool {
        if bitmap.count < deviceDirty.count { bitmap += [UInt64](repeating: 0, count: deviceDirty.count - bitmap.count) }
        for i in deviceDirty.indices {
            bitmap[i] |= deviceDirty[i]
            deviceDirty[i] = 0
        }
        // At home the guest has no mapping of the frames: only the device writes them.
        guard location != homeAddress, !awaitingIncomingBAR else { return true }
        do throws(XenError) {
            try hypervisor.trackDirtyVRAM(firstGFN: location >> xenPageShift, count: UInt32(pages), bitmap: &xenDirty)
        } catch {
            return false  // ENODATA and friends: Xen cannot tell now
        }
        for i in deviceDirty.indices { bitmap[i] |= xenDirty[i] }
        return true
    }

    public func deviceWrote(offset: Int, length: Int) {
        guard length > 0, offset >= 0, offset < size else { return }
        let first = offset / xenPageSize
        let last = min(offset + length - 1, size - 1) / xenPageSize
        for page in first...last { deviceDirty[page / 64] |= 1 << UInt64(page % 64) }
        guard mapCache.globalDirtyLogging else { return }
        do throws(XenError) {
            try hypervisor.modifiedMemory(firstGFN: (location >> xenPageShift) + UInt64(first), count: UInt32(last - first + 1))
        } catch {
            errors.report("xen", "\(name): modified_memory: \(error)")
        }
    }
}
