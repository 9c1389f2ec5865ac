/// The picture a display device shows, as the display back ends (VNC, `screendump`) read it:
/// 32-bit pixels `0x00RRGGBB`, row-major, `width` pixels per row. Devices draw whole rows with
/// `storeRow`, which compares before copying, so what changed is known per 16×16 tile and a
/// back end sends only that.
///
/// Owned by the machine; touched only with the `DeviceLock` held (the display refresh runs on
/// the main loop).
public final class Framebuffer: @unchecked Sendable {
    public static let tileSize = 16
    /// The largest picture any device may ask for (QEMU's VBE limit is 16000 pixels a side;
    /// 8192×8192 keeps a 256 MiB surface the worst case).
    public static let maxDimension = 8192

    public private(set) var width: Int
    public private(set) var height: Int
    public private(set) var pixels: [UInt32]
    /// Changes on every resize, so a back end knows to resend everything and the new size.
    public private(set) var generation = 0
    /// One flag per tile, row-major, `tilesAcross` per tile row: set when a tile's pixels
    /// changed since the back ends last cleared it.
    public private(set) var dirtyTiles: [Bool]
    public private(set) var tilesAcross: Int
    public private(set) var tilesDown: Int

    public init(width: Int = 640, height: Int = 480) {
        let (w, h) = Self.clamp(width, height)
        self.width = w
        self.height = h
        pixels = [UInt32](repeating: 0, count: w * h)
        tilesAcross = (w + Self.tileSize - 1) / Self.tileSize
        tilesDown = (h + Self.tileSize - 1) / Self.tileSize
        dirtyTiles = [Bool](repeating: true, count: tilesAcross * tilesDown)
    }

    private static func clamp(_ width: Int, _ height: Int) -> (Int, Int) {
        (min(max(width, 1), maxDimension), min(max(height, 1), maxDimension))
    }

    /// Changes the size (a mode switch): the picture is cleared and every tile is dirty.
    /// A no-op when the size is the same.
    public func resize(width: Int, height: Int) {
        let (w, h) = Self.clamp(width, height)
        guard w != self.width || h != self.height else { return }
        self.width = w
        self.height = h
        pixels = [UInt32](repeating: 0, count: w * h)
        tilesAcross = (w + Self.tileSize - 1) / Self.tileSize
        tilesDown = (h + Self.tileSize - 1) / Self.tileSize
        dirtyTiles = [Bool](repeating: true, count: tilesAcross * tilesDown)
        generation &+= 1
    }

    /// Copies `row` (at least `width` pixels; extra ones are ignored) into row `y` and marks
    /// the tiles whose pixels differ. Rows outside the picture are ignored.
    public func storeRow(_ y: Int, _ row: UnsafeBufferPointer<UInt32>) {
        guard y >= 0, y < height, row.count >= width else { return }
        let tileRow = (y / Self.tileSize) * tilesAcross
        let w = width
        pixels.withUnsafeMutableBufferPointer { all in
            let start = y * w
            var x = 0
            while x < w {
                let end = min(x + Self.tileSize, w)
                var differs = false
                var i = x
                while i < end {
                    if all[start + i] != row[i] { differs = true; break }
                    i += 1
                }
                if differs {
                    while i < end { all[start + i] = row[i]; i += 1 }
                    dirtyTiles[tileRow + x / Self.tileSize] = true
                }
                x = end
            }
        }
    }

    /// Marks everything dirty (a client that asks for a full update, a palette change).
    public func markAllDirty() {
        for i in dirtyTiles.indices { dirtyTiles[i] = true }
    }

    /// Forgets the dirty tiles once every back end has taken them.
    public func clearDirty() {
        for i in dirtyTiles.indices { dirtyTiles[i] = false }
    }

    public var hasDirtyTiles: Bool { dirtyTiles.contains(true) }
}

/// A device that draws into a `Framebuffer` (a VGA): the machine calls `refresh` from its
/// display timer with the `DeviceLock` held; the device redraws what may have changed since the
/// last call (resizing the framebuffer when its mode changed).
public protocol DisplaySource: AnyObject {
    func refresh(_ framebuffer: Framebuffer)
}

/// Where host keyboard input goes (the PS/2 keyboard): PC scan codes, set 2, as a keyboard
/// sends them, including 0xE0 prefixes and 0xF0 break codes.
public protocol KeyboardInput: AnyObject {
    func keyboardInput(scancodes: [UInt8])
}

/// Where host pointer input goes (the PS/2 mouse): relative motion (x right, y down, as the
/// host sees it), wheel steps (positive: towards the user) and the buttons now held
/// (bit 0 left, 1 right, 2 middle).
public protocol PointerInput: AnyObject {
    func pointerInput(dx: Int, dy: Int, wheel: Int, buttons: UInt8)
}

/// Memory a device owns that the guest may also map directly at a bus address — video RAM
/// behind a PCI BAR. The device reads and writes it through `withBytes`; the platform provides
/// it and maps it into the guest where the device says (a KVM memory slot; under Xen, guest
/// frames relocated to the BAR address, QEMU's "physmap"), and says which pages changed.
public protocol DeviceRAM: AnyObject {
    var size: Int { get }
    /// The bytes, valid only inside `body`.
    func withBytes<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R
    /// The guest now sees the RAM at `address` (its BAR), or nowhere (nil). Called by the
    /// device when the guest moves or disables the BAR.
    func map(at address: UInt64?)
    /// Sets bit `page` of `bitmap` (4 KiB pages, 64 per word) for each page written since the
    /// last call, by the guest through its mapping or by the device. Returns false when the
    /// platform cannot tell; the caller must then treat every page as changed.
    func collectDirtyPages(into bitmap: inout [UInt64]) -> Bool
    /// The device wrote [offset, offset+length) itself (through `withBytes`), so dirty
    /// tracking and migration see it.
    func deviceWrote(offset: Int, length: Int)
}

/// Makes `DeviceRAM` for the devices of a machine; `name` is QEMU's region name (`vga.vram`),
/// which Xen's physmap records carry.
public protocol DeviceRAMProvider: AnyObject {
    func makeDeviceRAM(name: String, size: Int) throws -> any DeviceRAM
}

/// Device RAM for machines whose guests never map it directly (tests, the empty machine).
public final class HostDeviceRAMProvider: DeviceRAMProvider {
    public init() {}
    public func makeDeviceRAM(name: String, size: Int) throws -> any DeviceRAM { try HostDeviceRAM(size: size) }
}

/// Device RAM in an anonymous host mapping with no guest mapping of its own: for tests and for
/// machines where every guest access reaches the device as MMIO. It records the device's own
/// writes as dirty pages.
public final class HostDeviceRAM: DeviceRAM, @unchecked Sendable {
    public let memory: HostMemory
    public private(set) var mappedAddress: UInt64?
    private var dirty: [UInt64]
    /// Told when the guest mapping moves (the KVM machine adds or drops a memory slot).
    public var onMap: ((UInt64?) -> Void)?
    /// While the guest maps the RAM: ORs the pages the guest wrote since the last call into the
    /// bitmap (KVM's write log of the slot), or returns false when that is unknown.
    public var collectGuestWrites: ((inout [UInt64]) -> Bool)?

    public init(size: Int) throws(HostMemoryError) {
        memory = try HostMemory(size: size)
        dirty = [UInt64](repeating: .max, count: (size / 4096 + 63) / 64)
    }

    public var size: Int { memory.size }

    public func withBytes<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        withExtendedLifetime(memory) { body(UnsafeMutableRawBufferPointer(start: memory.baseAddress, count: memory.size)) }
    }

    public func map(at address: UInt64?) {
        guard address != mappedAddress else { return }
        mappedAddress = address
        onMap?(address)
    }

    /// Without a guest mapping only the device writes, and those are all recorded; once the
    /// guest maps the RAM its writes are known only through `collectGuestWrites`.
    public func collectDirtyPages(into bitmap: inout [UInt64]) -> Bool {
        if bitmap.count < dirty.count { bitmap += [UInt64](repeating: 0, count: dirty.count - bitmap.count) }
        for i in dirty.indices {
            bitmap[i] |= dirty[i]
            dirty[i] = 0
        }
        guard mappedAddress != nil else { return true }
        return collectGuestWrites?(&bitmap) ?? false
    }

    public func deviceWrote(offset: Int, length: Int) {
        guard length > 0, offset >= 0, offset < size else { return }
        let last = min(offset + length - 1, size - 1) / 4096
        for page in (offset / 4096)...last { dirty[page / 64] |= 1 << UInt64(page % 64) }
    }
}
