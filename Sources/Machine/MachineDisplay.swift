import DMCore
import Monitor

/// The machine's display: the framebuffer its display device draws and whoever reads it (the
/// VNC server, `screendump`). While someone watches, the picture is redrawn every 30 ms (as
/// QEMU's display refresh); nobody pays for drawing while nobody looks.
final class MachineDisplay {
    static let refreshInterval: UInt64 = 30_000_000
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

    /// Starts the regular redraws (a watcher appeared); harmless when they already run.
    func startRefreshing() {
        guard let timer, timer.deadline == nil else { return }
        timer.arm(at: clock.now() + Self.refreshInterval)
    }

    private func tick() {
        if refresh() { startRefreshing() }
    }

    /// Redraws and tells the watcher; returns whether it wants more.
    @discardableResult
    func refresh() -> Bool {
        source.refresh(framebuffer)
        let more = watcher?() ?? false
        framebuffer.clearDirty()
        return more
    }

    func screenshot() -> Screenshot {
        refresh()
        return Screenshot(width: framebuffer.width, height: framebuffer.height, pixels: framebuffer.pixels)
    }
}
