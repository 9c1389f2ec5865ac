import DMCore
import Monitor

/// The machine's display: the framebuffer its display device draws and whoever reads it (the
/// VNC server, `screendump`). While someone watches, the picture is redrawn as QEMU's VNC paces
/// it: every 30 ms while it changes; each redraw that finds nothing new waits 50 ms longer, up to
/// 3 s, and a change halves the wait. Nobody pays for drawing while nobody looks, and little
/// while the screen stands still (under Xen each redraw asks the hypervisor for dirty VRAM).
final class MachineDisplay {
    static let refreshInterval: UInt64 = 30_000_000
    static let idleStep: UInt64 = 50_000_000
    static let idleInterval: UInt64 = 3_000_000_000
    private var interval = refreshInterval
    /// Made when someone first looks (a VNC server, `screendump`): a guest nobody watches, as
    /// libxl's `vnc=0`, does not pay 1.2 MiB of resident memory for a picture never drawn.
    private(set) lazy var framebuffer = Framebuffer()
    let source: any DisplaySource
    private let clock: VirtualClock
    private var timer: (any DeviceTimer)?
    /// Told after each redraw, before the dirty tiles are cleared; returns whether it still
    /// wants regular redraws (a VNC server with clients).
    var watcher: (() -> Bool)?

    init(source: any DisplaySource, timers: any TimerService) {
        self.source = source
        clock = timers.clock
        timer = nil
        timer = timers.makeTimer { [weak self] in self?.tick() }
    }

    /// Starts the regular redraws at the fast pace (a watcher appeared); harmless when they
    /// already run.
    func startRefreshing() {
        interval = Self.refreshInterval
        arm()
    }

    private func arm() {
        guard let timer, timer.deadline == nil else { return }
        timer.arm(at: clock.now() + interval)
    }

    private func tick() {
        source.refresh(framebuffer)
        interval = framebuffer.hasDirtyTiles ? max(interval / 2, Self.refreshInterval)
                                             : min(interval + Self.idleStep, Self.idleInterval)
        if tellWatcher() { arm() }
    }

    /// Redraws and tells the watcher now (a screendump, a new VNC client); returns whether it
    /// wants more.
    @discardableResult
    func refresh() -> Bool {
        source.refresh(framebuffer)
        return tellWatcher()
    }

    private func tellWatcher() -> Bool {
        let more = watcher?() ?? false
        framebuffer.clearDirty()
        return more
    }

    func screenshot() -> Screenshot {
        refresh()
        return Screenshot(width: framebuffer.width, height: framebuffer.height, pixels: framebuffer.pixels)
    }
}
