import Config
import DMCore
import Devices
import Display
import Monitor

/// `-vnc`: the VNC server shows the display's framebuffer (a blank 640×480 one when the
/// machine has no display device, so clients still connect) and types into the i8042.
extension PCMachine {
    func assembleVNC() throws(MachineError) {
        guard let option = config.vnc else { return }
        let framebuffer = display?.framebuffer ?? Framebuffer()
        let server: VNCServer
        do throws(VNCError) {
            server = try VNCServer(option: option, framebuffer: framebuffer, loop: loop,
                                   name: config.name.map { "SwiftDM (\($0))" } ?? "SwiftDM")
        } catch {
            throw MachineError("Failed to start VNC server: \(error.message)")
        }
        // The machine's device list keeps the i8042 alive; the server holds it weakly.
        let ps2 = device(I8042.self)
        server.keyboard = ps2
        server.pointer = ps2
        if let display {
            display.watcher = { [unowned server] in server.framebufferChanged() }
            server.onClientConnected = { [unowned display] in
                // Draw now so the first update has the picture, then keep drawing while watched.
                display.refresh()
                display.startRefreshing()
            }
        }
        vnc = server
    }

    /// `query-vnc`, as QEMU's VncInfo.
    var vncQueryInfo: JSONValue? {
        guard let vnc else { return nil }
        let clients: [JSONValue] = vnc.clientAddresses.map { peer -> JSONValue in
            ["host": .string(peer.host), "service": .string(peer.service), "family": .string(peer.family),
             "websocket": .bool(false)]
        }
        return ["enabled": true, "host": .string(vnc.address.host), "service": .string(vnc.address.service),
                "family": .string(vnc.address.family), "auth": .string(vnc.authName), "clients": .array(clients)]
    }
}
