import DMCore

/// The i8042 PS/2 controller with a keyboard on its first port and a minimal mouse on the aux
/// port. Region 0 is the data port (0x60), region 1 the status/command port (0x64). IRQ 1 and
/// IRQ 12 are levels that follow "output buffer full from that port, and its interrupt enabled
/// in the command byte"; every data-port read lowers them before the next byte is loaded, so
/// an edge-triggered PIC sees one edge per byte.
///
/// Output priority: controller replies, then keyboard bytes, then mouse bytes; a port disabled
/// in the command byte (0xAD/0xA7 or bits 4/5) holds its bytes back. With translation on
/// (command byte bit 6), keyboard scan codes (set 2) and the identify reply are translated to
/// set 1 as they enter the queue, as QEMU's keyboard does; command replies are not.
///
/// Host input arrives as `KeyboardInput` (set-2 scan codes) and `PointerInput` (relative
/// motion, wheel, buttons), the VNC server's seams.
///
/// Queues are bounded: each device keeps at most 32 bytes; host key input stops at 16 queued
/// bytes so replies to guest commands always fit.
public final class I8042: BusDevice, Snapshottable, Resettable, KeyboardInput, PointerInput, @unchecked Sendable {
    public let stateID: String
    /// Version 2 adds the mouse's IntelliMouse mode and sample-rate history.
    public let stateVersion: UInt32 = 2

    /// Output port bit 0 written as 0, or a pulse command with bit 0 clear (0xFE), asks for a
    /// system reset. Called with the DeviceLock held; schedule, don't reset inline.
    public var onResetRequest: () -> Void = {}
    /// Output port bit 1 (A20) changed.
    public var onA20Change: (Bool) -> Void = { _ in }

    enum Status {
        static let outputFull: UInt8 = 0x01
        static let system: UInt8 = 0x04
        static let lastWriteWasCommand: UInt8 = 0x08
        static let notInhibited: UInt8 = 0x10
        static let auxOutputFull: UInt8 = 0x20
    }
    enum CommandByte {
        static let keyboardInterrupt: UInt8 = 0x01
        static let auxInterrupt: UInt8 = 0x02
        static let system: UInt8 = 0x04
        static let keyboardDisabled: UInt8 = 0x10
        static let auxDisabled: UInt8 = 0x20
        static let translate: UInt8 = 0x40
    }
    enum OutputPort {
        static let reset: UInt8 = 0x01
        static let a20: UInt8 = 0x02
        static let keyboardFull: UInt8 = 0x10
        static let auxFull: UInt8 = 0x20
        static let initial: UInt8 = 0xCF
    }
    /// Controller commands that take a data byte.
    enum Pending: UInt8 {
        case writeCommandByte = 0x60
        case writeOutputPort = 0xD1
        case writeKeyboardOutput = 0xD2
        case writeAuxOutput = 0xD3
        case writeToAux = 0xD4
    }

    static let deviceQueueCapacity = 32
    static let hostInputLimit = 16

    private let keyboardIRQ: IRQLine
    private let mouseIRQ: IRQLine

    private var commandByte: UInt8 = 0
    private var systemFlag = false
    private var lastWriteWasCommand = true
    private var outputPort: UInt8 = OutputPort.initial
    private var pending: Pending?
    private var outputByte: UInt8 = 0
    private var outputFull = false
    private var outputIsAux = false
    /// Controller replies; bit 8 marks bytes that appear as if from the aux port (0xD3).
    private var controllerQueue = Ring<UInt16>(capacity: 16)
    private var keyboard = PS2Keyboard()
    private var mouse = PS2Mouse()
    private var keyboardLevel = false
    private var mouseLevel = false

    public init(keyboardIRQ: IRQLine, mouseIRQ: IRQLine, stateID: String = "i8042") {
        self.keyboardIRQ = keyboardIRQ
        self.mouseIRQ = mouseIRQ
        self.stateID = stateID
        resetState()
    }

    private func resetState() {
        commandByte = CommandByte.keyboardInterrupt | CommandByte.auxInterrupt
        systemFlag = false
        lastWriteWasCommand = true
        outputPort = OutputPort.initial
        pending = nil
        outputByte = 0
        outputFull = false
        outputIsAux = false
        controllerQueue.removeAll()
        keyboard = PS2Keyboard()
        mouse = PS2Mouse()
    }

    public func reset() {
        resetState()
        updateIRQs()
    }

    // MARK: Host input

    /// Queues scan codes (set 2, as the keyboard produces them) from the host; dropped while
    /// the guest has scanning disabled or the queue is full.
    public func keyboardInput(scancodes: [UInt8]) {
        guard keyboard.scanning else { return }
        let translate = commandByte & CommandByte.translate != 0
        for code in scancodes {
            guard keyboard.queue.count < Self.hostInputLimit else {
                GuestErrorLog.shared.report(stateID, "keyboard queue full; key input dropped")
                break
            }
            keyboard.enqueueScancode(code, translate: translate)
        }
        refillOutput()
    }

    /// Moves the mouse: packets are queued while the guest has reporting on (stream mode);
    /// motion that does not fit the queue is kept and sent as it drains, as QEMU does.
    public func pointerInput(dx: Int, dy: Int, wheel: Int, buttons: UInt8) {
        mouse.move(dx: dx, dy: dy, wheel: wheel, buttons: buttons)
        refillOutput()
    }

    // MARK: BusDevice

    public func read(region: Int, offset: UInt64, size: Int) -> UInt64 {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte read; the i8042 ports are byte-wide")
            return mask(size)
        }
        return UInt64(region == 0 ? readData() : status)
    }

    public func write(region: Int, offset: UInt64, size: Int, value: UInt64) {
        guard size == 1 else {
            GuestErrorLog.shared.report(stateID, "\(size)-byte write; the i8042 ports are byte-wide")
            return
        }
        let byte = UInt8(truncatingIfNeeded: value)
        if region == 0 { writeData(byte) } else { writeCommand(byte) }
    }

    private var status: UInt8 {
        var value = Status.notInhibited
        if outputFull { value |= Status.outputFull }
        if outputFull && outputIsAux { value |= Status.auxOutputFull }
        if systemFlag { value |= Status.system }
        if lastWriteWasCommand { value |= Status.lastWriteWasCommand }
        return value
    }

    private func readData() -> UInt8 {
        // An empty buffer reads as the last byte, as on hardware and QEMU.
        guard outputFull else { return outputByte }
        let value = outputByte
        outputFull = false
        updateIRQs()  // lower first: the next byte must raise a fresh edge
        refillOutput()
        return value
    }

    private func refillOutput() {
        if !outputFull {
            if let entry = controllerQueue.pop() {
                load(UInt8(truncatingIfNeeded: entry), aux: entry & 0x100 != 0)
            } else if commandByte & CommandByte.keyboardDisabled == 0, let byte = keyboard.queue.pop() {
                load(byte, aux: false)
            } else if commandByte & CommandByte.auxDisabled == 0, let byte = mouse.queue.pop() {
                load(byte, aux: true)
                mouse.flushMotion()
            }
        }
        updateIRQs()
    }

    private func load(_ byte: UInt8, aux: Bool) {
        outputByte = byte
        outputIsAux = aux
        outputFull = true
    }

    private func updateIRQs() {
        let keyboardWanted = outputFull && !outputIsAux && commandByte & CommandByte.keyboardInterrupt != 0
        let mouseWanted = outputFull && outputIsAux && commandByte & CommandByte.auxInterrupt != 0
        if keyboardWanted != keyboardLevel {
            keyboardLevel = keyboardWanted
            keyboardIRQ.set(keyboardWanted)
        }
        if mouseWanted != mouseLevel {
            mouseLevel = mouseWanted
            mouseIRQ.set(mouseWanted)
        }
    }

    private func reply(_ byte: UInt8, aux: Bool = false) {
        if !controllerQueue.push(UInt16(byte) | (aux ? 0x100 : 0)) {
            GuestErrorLog.shared.report(stateID, "controller reply queue full; reply dropped")
        }
        refillOutput()
    }

    // MARK: Commands

    private func writeCommand(_ command: UInt8) {
        lastWriteWasCommand = true
        pending = nil
        switch command {
        case 0x20:
            reply(commandByte)
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4:
            pending = Pending(rawValue: command)
        case 0xA7:
            commandByte |= CommandByte.auxDisabled
        case 0xA8:
            commandByte &= ~CommandByte.auxDisabled
            refillOutput()
        case 0xA9, 0xAB:
            reply(0x00)  // interface test: no error
        case 0xAA:
            systemFlag = true
            reply(0x55)
        case 0xAD:
            commandByte |= CommandByte.keyboardDisabled
        case 0xAE:
            commandByte &= ~CommandByte.keyboardDisabled
            refillOutput()
        case 0xC0:
            reply(0x80)  // input port: keyboard not locked
        case 0xD0:
            reply(currentOutputPort)
        case 0xDD, 0xDF:
            // HP Vectra-style A20 control, which QEMU also accepts.
            writeOutputPort(command == 0xDF ? outputPort | OutputPort.a20 : outputPort & ~OutputPort.a20)
        case 0xE0:
            reply(0x00)  // test inputs
        case 0xF0...0xFF:
            // Pulse output lines for 6 µs; bit 0 clear pulses the reset line.
            if command & 0x01 == 0 { onResetRequest() }
        default:
            GuestErrorLog.shared.report(stateID, "unknown controller command \(hex(command))")
        }
    }

    private var currentOutputPort: UInt8 {
        var value = outputPort & ~(OutputPort.keyboardFull | OutputPort.auxFull)
        if outputFull { value |= outputIsAux ? OutputPort.auxFull : OutputPort.keyboardFull }
        return value
    }

    private func writeData(_ byte: UInt8) {
        lastWriteWasCommand = false
        let command = pending
        pending = nil
        switch command {
        case .writeCommandByte:
            commandByte = byte
            systemFlag = byte & CommandByte.system != 0
            refillOutput()
        case .writeOutputPort:
            writeOutputPort(byte)
        case .writeKeyboardOutput:
            reply(byte)
        case .writeAuxOutput:
            reply(byte, aux: true)
        case .writeToAux:
            // Talking to the mouse re-enables its interface, as QEMU does.
            commandByte &= ~CommandByte.auxDisabled
            mouse.write(byte)
            refillOutput()
        case nil:
            // Talking to the keyboard re-enables its interface, as QEMU does.
            commandByte &= ~CommandByte.keyboardDisabled
            keyboard.write(byte, translate: commandByte & CommandByte.translate != 0)
            refillOutput()
        }
    }

    private func writeOutputPort(_ byte: UInt8) {
        let old = outputPort
        outputPort = byte
        if (old ^ byte) & OutputPort.a20 != 0 { onA20Change(byte & OutputPort.a20 != 0) }
        if byte & OutputPort.reset == 0 { onResetRequest() }
    }

    // MARK: Snapshottable

    public func saveState(to writer: inout StateWriter) {
        writer.put(commandByte)
        writer.put(systemFlag)
        writer.put(lastWriteWasCommand)
        writer.put(outputPort)
        writer.put(pending?.rawValue ?? 0)
        writer.put(outputByte)
        writer.put(outputFull)
        writer.put(outputIsAux)
        writer.put(array: controllerQueue.contents)
        keyboard.save(to: &writer)
        mouse.save(to: &writer)
    }

    public func loadState(from reader: inout StateReader, version: UInt32) throws(StateError) {
        guard version == 1 || version == 2 else { throw .unsupportedVersion(section: stateID, version: version) }
        let newCommandByte = try reader.get(UInt8.self)
        let newSystemFlag = try reader.get(Bool.self)
        let newLastWrite = try reader.get(Bool.self)
        let newOutputPort = try reader.get(UInt8.self)
        let pendingRaw = try reader.get(UInt8.self)
        let newOutputByte = try reader.get(UInt8.self)
        let newOutputFull = try reader.get(Bool.self)
        let newOutputIsAux = try reader.get(Bool.self)
        let count = Int(try reader.get(UInt32.self))
        guard count <= 16 else { throw .invalidValue(section: stateID, field: "controller queue") }
        var queue = Ring<UInt16>(capacity: 16)
        for _ in 0..<count {
            let entry = try reader.get(UInt16.self)
            guard entry < 0x200 else { throw .invalidValue(section: stateID, field: "controller queue entry") }
            _ = queue.push(entry)
        }
        var newPending: Pending?
        if pendingRaw != 0 {
            guard let p = Pending(rawValue: pendingRaw) else { throw .invalidValue(section: stateID, field: "pending command") }
            newPending = p
        }
        let newKeyboard = try PS2Keyboard.load(from: &reader)
        let newMouse = try PS2Mouse.load(from: &reader, version: version)
        commandByte = newCommandByte
        systemFlag = newSystemFlag
        lastWriteWasCommand = newLastWrite
        outputPort = newOutputPort
        pending = newPending
        outputByte = newOutputByte
        outputFull = newOutputFull
        outputIsAux = newOutputIsAux
        controllerQueue = queue
        keyboard = newKeyboard
        mouse = newMouse
        refillOutput()
    }
}

// MARK: - Devices behind the controller

/// Replies shared by both devices.
enum PS2Reply {
    static let ack: UInt8 = 0xFA
    static let selfTestPassed: UInt8 = 0xAA
    static let resend: UInt8 = 0xFE
    static let echo: UInt8 = 0xEE
}

/// A PS/2 keyboard's command set: reset, identify, LEDs, typematic, scanning on/off,
/// defaults, echo, scan-code set; 0xF7-0xFD are acknowledged. Anything else is answered with
/// "resend" (0xFE) like a real keyboard (QEMU acknowledges unknown commands instead).
struct PS2Keyboard {
    var queue = Ring<UInt8>(capacity: I8042.deviceQueueCapacity)
    /// A command waiting for its argument byte (0xED, 0xF3, 0xF0).
    var awaitingArgument: UInt8 = 0
    var scanning = true
    var scanSet: UInt8 = 2
    var leds: UInt8 = 0
    var typematic: UInt8 = 0x2B
    /// Set-1 translation of a break (0xF0) prefix: the next code gets bit 7.
    var breakPending = false

    mutating func enqueueScancode(_ code: UInt8, translate: Bool) {
        guard translate else {
            _ = queue.push(code)
            return
        }
        if code == 0xF0 {
            breakPending = true
            return
        }
        _ = queue.push(ScanCodes.set2ToSet1[Int(code)] | (breakPending ? 0x80 : 0))
        breakPending = false
    }

    private mutating func send(_ bytes: UInt8...) {
        for b in bytes { _ = queue.push(b) }
    }

    private mutating func setDefaults() {
        scanSet = 2
        leds = 0
        typematic = 0x2B
        breakPending = false
    }

    mutating func write(_ byte: UInt8, translate: Bool) {
        if awaitingArgument != 0 {
            let command = awaitingArgument
            awaitingArgument = 0
            switch command {
            case 0xED:
                leds = byte & 0x07
                send(PS2Reply.ack)
            case 0xF3:
                typematic = byte & 0x7F
                send(PS2Reply.ack)
            default:  // 0xF0: scan-code set
                switch byte {
                case 0:
                    send(PS2Reply.ack)
                    enqueueScancode(scanSet, translate: translate)
                case 1...3:
                    scanSet = byte
                    send(PS2Reply.ack)
                default:
                    send(PS2Reply.resend)
                }
            }
            return
        }
        switch byte {
        case 0xED, 0xF3, 0xF0:
            awaitingArgument = byte
            send(PS2Reply.ack)
        case 0xEE:
            send(PS2Reply.echo)
        case 0xF2:
            send(PS2Reply.ack, 0xAB, translate ? ScanCodes.set2ToSet1[0x83] : 0x83)
        case 0xF4:
            scanning = true
            send(PS2Reply.ack)
        case 0xF5:
            setDefaults()
            scanning = false
            send(PS2Reply.ack)
        case 0xF6:
            setDefaults()
            scanning = true
            send(PS2Reply.ack)
        case 0xFF:
            queue.removeAll()
            setDefaults()
            scanning = true
            send(PS2Reply.ack, PS2Reply.selfTestPassed)
        case 0xF7...0xFD:
            // Scan-set-3 key-type commands: acknowledged (and ignored) by an MF2 keyboard, and
            // by QEMU, which acknowledges every command it does not know.
            send(PS2Reply.ack)
        default:
            send(PS2Reply.resend)
        }
    }

    func save(to writer: inout StateWriter) {
        writer.put(bytes: queue.contents)
        writer.put(awaitingArgument)
        writer.put(scanning)
        writer.put(scanSet)
        writer.put(leds)
        writer.put(typematic)
        writer.put(breakPending)
    }

    static func load(from reader: inout StateReader) throws(StateError) -> PS2Keyboard {
        var k = PS2Keyboard()
        for b in try reader.getBytes(maxCount: I8042.deviceQueueCapacity) { _ = k.queue.push(b) }
        k.awaitingArgument = try reader.get(UInt8.self)
        k.scanning = try reader.get(Bool.self)
        k.scanSet = try reader.get(UInt8.self)
        k.leds = try reader.get(UInt8.self)
        k.typematic = try reader.get(UInt8.self)
        k.breakPending = try reader.get(Bool.self)
        guard [0, 0xED, 0xF3, 0xF0].contains(k.awaitingArgument), (1...3).contains(k.scanSet) else {
            throw .invalidValue(section: "i8042", field: "keyboard state")
        }
        return k
    }
}

/// A PS/2 mouse: reset, identify, reporting on/off, sample rate, resolution, scaling, status,
/// stream/remote mode, and movement packets from host input. Setting the sample rate to 200,
/// 100, 80 in a row turns it into an IntelliMouse (ID 3) whose packets carry a fourth, wheel
/// byte, as Linux and Windows probe for.
struct PS2Mouse {
    var queue = Ring<UInt8>(capacity: I8042.deviceQueueCapacity)
    var awaitingArgument: UInt8 = 0
    var reporting = false
    var remoteMode = false
    var scaling2to1 = false
    var resolution: UInt8 = 2
    var sampleRate: UInt8 = 100
    /// 0: a plain mouse; 3: IntelliMouse (wheel). Only a reset clears it.
    var deviceID: UInt8 = 0
    /// The last three sample rates set, newest last (the IntelliMouse knock).
    var rateHistory: [UInt8] = [0, 0, 0]
    /// Host motion not yet sent (the queue was full) and the buttons now held. Host state, not
    /// saved.
    var pendingDX = 0
    var pendingDY = 0
    var pendingWheel = 0
    var buttons: UInt8 = 0
    var buttonsChanged = false

    private mutating func send(_ bytes: UInt8...) {
        for b in bytes { _ = queue.push(b) }
    }

    private mutating func setDefaults() {
        reporting = false
        remoteMode = false
        scaling2to1 = false
        resolution = 2
        sampleRate = 100
    }

    var statusByte: UInt8 {
        (remoteMode ? 0x40 : 0) | (reporting ? 0x20 : 0) | (scaling2to1 ? 0x10 : 0)
    }

    mutating func write(_ byte: UInt8) {
        if awaitingArgument != 0 {
            let command = awaitingArgument
            awaitingArgument = 0
            if command == 0xE8 {
                resolution = byte & 0x03
            } else {
                sampleRate = byte
                rateHistory = [rateHistory[1], rateHistory[2], byte]
                if rateHistory == [200, 100, 80] { deviceID = 3 }
            }
            send(PS2Reply.ack)
            return
        }
        switch byte {
        case 0xE8, 0xF3:
            awaitingArgument = byte
            send(PS2Reply.ack)
        case 0xE6:
            scaling2to1 = false
            send(PS2Reply.ack)
        case 0xE7:
            scaling2to1 = true
            send(PS2Reply.ack)
        case 0xE9:
            send(PS2Reply.ack, statusByte, resolution, sampleRate)
        case 0xEA:
            remoteMode = false
            send(PS2Reply.ack)
        case 0xF0:
            remoteMode = true
            send(PS2Reply.ack)
        case 0xEB:
            send(PS2Reply.ack, 0x08, 0x00, 0x00)  // a packet with no movement
        case 0xEC, 0xEE:
            send(PS2Reply.ack)  // wrap mode is accepted but not emulated
        case 0xF2:
            send(PS2Reply.ack, deviceID)
        case 0xF4:
            reporting = true
            send(PS2Reply.ack)
        case 0xF5:
            reporting = false
            send(PS2Reply.ack)
        case 0xF6:
            setDefaults()
            send(PS2Reply.ack)
        case 0xFF:
            queue.removeAll()
            setDefaults()
            deviceID = 0
            rateHistory = [0, 0, 0]
            send(PS2Reply.ack, PS2Reply.selfTestPassed, 0x00)
        default:
            send(PS2Reply.resend)
        }
    }

    var packetSize: Int { deviceID == 3 ? 4 : 3 }

    /// Adds host motion (y down, wheel positive towards the user) and queues what fits.
    mutating func move(dx: Int, dy: Int, wheel: Int, buttons newButtons: UInt8) {
        // Clamped so a hostile or buggy client cannot overflow the sums.
        pendingDX = max(-65536, min(65536, pendingDX + dx))
        pendingDY = max(-65536, min(65536, pendingDY + dy))
        pendingWheel = max(-256, min(256, pendingWheel + wheel))
        if newButtons & 7 != buttons {
            buttons = newButtons & 7
            buttonsChanged = true
        }
        flushMotion()
    }

    /// Queues packets for pending motion while reporting in stream mode and room remains.
    mutating func flushMotion() {
        guard reporting, !remoteMode else {
            pendingDX = 0
            pendingDY = 0
            pendingWheel = 0
            buttonsChanged = false
            return
        }
        while pendingDX != 0 || pendingDY != 0 || pendingWheel != 0 || buttonsChanged {
            guard queue.count + packetSize <= I8042.deviceQueueCapacity else { return }
            // Nine-bit two's complement per axis; PS/2's y grows upwards.
            let x = max(-255, min(255, pendingDX))
            let y = max(-255, min(255, -pendingDY))
            let z = deviceID == 3 ? max(-8, min(7, pendingWheel)) : 0
            pendingDX -= x
            pendingDY += y
            pendingWheel = deviceID == 3 ? pendingWheel - z : 0
            buttonsChanged = false
            var first = buttons | 0x08
            if x < 0 { first |= 0x10 }
            if y < 0 { first |= 0x20 }
            send(first, UInt8(truncatingIfNeeded: x), UInt8(truncatingIfNeeded: y))
            if deviceID == 3 { send(UInt8(truncatingIfNeeded: z)) }
        }
    }

    func save(to writer: inout StateWriter) {
        writer.put(bytes: queue.contents)
        writer.put(awaitingArgument)
        writer.put(reporting)
        writer.put(remoteMode)
        writer.put(scaling2to1)
        writer.put(resolution)
        writer.put(sampleRate)
        writer.put(deviceID)
        writer.put(bytes: rateHistory)
    }

    static func load(from reader: inout StateReader, version: UInt32) throws(StateError) -> PS2Mouse {
        var m = PS2Mouse()
        for b in try reader.getBytes(maxCount: I8042.deviceQueueCapacity) { _ = m.queue.push(b) }
        m.awaitingArgument = try reader.get(UInt8.self)
        m.reporting = try reader.get(Bool.self)
        m.remoteMode = try reader.get(Bool.self)
        m.scaling2to1 = try reader.get(Bool.self)
        m.resolution = try reader.get(UInt8.self)
        m.sampleRate = try reader.get(UInt8.self)
        if version >= 2 {
            m.deviceID = try reader.get(UInt8.self)
            let history = try reader.getBytes(maxCount: 3)
            guard history.count == 3 else { throw .invalidValue(section: "i8042", field: "mouse rate history") }
            m.rateHistory = history
        }
        guard [0, 0xE8, 0xF3].contains(m.awaitingArgument), m.resolution <= 3, [0, 3].contains(m.deviceID) else {
            throw .invalidValue(section: "i8042", field: "mouse state")
        }
        return m
    }
}

/// A fixed-capacity ring; storage is allocated once.
struct Ring<Element: FixedWidthInteger> {
    private var storage: [Element]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        storage = [Element](repeating: 0, count: capacity)
    }

    var isEmpty: Bool { count == 0 }

    mutating func push(_ value: Element) -> Bool {
        guard count < storage.count else { return false }
        storage[(head + count) % storage.count] = value
        count += 1
        return true
    }

    mutating func pop() -> Element? {
        guard count > 0 else { return nil }
        let value = storage[head]
        head = (head + 1) % storage.count
        count -= 1
        return value
    }

    mutating func removeAll() {
        head = 0
        count = 0
    }

    var contents: [Element] { (0..<count).map { storage[(head + $0) % storage.count] } }
}
