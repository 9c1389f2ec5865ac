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
/// Queues are bounded: each device keeps at most 32 bytes; host key input stops at 16 queued
/// bytes so replies to guest commands always fit.
public final class I8042: BusDevice, Snapshottable, Resettable, @unchecked Sendable {
    public let stateID: String
    public let stateVersion: UInt32 = 1

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
        guard version == 1 else { throw .unsupportedVersion(section: stateID, version: version) }
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
        let newMouse = try PS2Mouse.load(from: &reader)
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
        _ = queue.push(setOneTranslation[Int(code)] | (breakPending ? 0x80 : 0))
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
            send(PS2Reply.ack, 0xAB, translate ? setOneTranslation[0x83] : 0x83)
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

/// Enough of a PS/2 mouse for firmware and OS probes: reset, identify (a plain 3-byte mouse),
/// reporting on/off, sample rate, resolution, scaling, status, stream/remote mode. It never
/// moves; host pointer input is future work.
struct PS2Mouse {
    var queue = Ring<UInt8>(capacity: I8042.deviceQueueCapacity)
    var awaitingArgument: UInt8 = 0
    var reporting = false
    var remoteMode = false
    var scaling2to1 = false
    var resolution: UInt8 = 2
    var sampleRate: UInt8 = 100

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
            if command == 0xE8 { resolution = byte & 0x03 } else { sampleRate = byte }
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
            send(PS2Reply.ack, 0x00)
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
            send(PS2Reply.ack, PS2Reply.selfTestPassed, 0x00)
        default:
            send(PS2Reply.resend)
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
    }

    static func load(from reader: inout StateReader) throws(StateError) -> PS2Mouse {
        var m = PS2Mouse()
        for b in try reader.getBytes(maxCount: I8042.deviceQueueCapacity) { _ = m.queue.push(b) }
        m.awaitingArgument = try reader.get(UInt8.self)
        m.reporting = try reader.get(Bool.self)
        m.remoteMode = try reader.get(Bool.self)
        m.scaling2to1 = try reader.get(Bool.self)
        m.resolution = try reader.get(UInt8.self)
        m.sampleRate = try reader.get(UInt8.self)
        guard [0, 0xE8, 0xF3].contains(m.awaitingArgument), m.resolution <= 3 else {
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

/// Scan-code set 2 → set 1, as the controller translates with command byte bit 6. Built from
/// the key-by-key correspondence of the two sets (both are documented per key; checked against
/// Bochs's full table); codes that name no key pass through unchanged, where the hardware
/// table has arbitrary values. 0xE0/0xE1 prefixes pass through; the codes after them
/// use the same table, which is how the hardware handles extended keys.
let setOneTranslation: [UInt8] = {
    var table = (0...255).map { UInt8($0) }
    let pairs: [(UInt8, UInt8)] = [
        (0x76, 0x01), (0x16, 0x02), (0x1E, 0x03), (0x26, 0x04), (0x25, 0x05), (0x2E, 0x06), (0x36, 0x07),
        (0x3D, 0x08), (0x3E, 0x09), (0x46, 0x0A), (0x45, 0x0B), (0x4E, 0x0C), (0x55, 0x0D), (0x66, 0x0E),
        (0x0D, 0x0F), (0x15, 0x10), (0x1D, 0x11), (0x24, 0x12), (0x2D, 0x13), (0x2C, 0x14), (0x35, 0x15),
        (0x3C, 0x16), (0x43, 0x17), (0x44, 0x18), (0x4D, 0x19), (0x54, 0x1A), (0x5B, 0x1B), (0x5A, 0x1C),
        (0x14, 0x1D), (0x1C, 0x1E), (0x1B, 0x1F), (0x23, 0x20), (0x2B, 0x21), (0x34, 0x22), (0x33, 0x23),
        (0x3B, 0x24), (0x42, 0x25), (0x4B, 0x26), (0x4C, 0x27), (0x52, 0x28), (0x0E, 0x29), (0x12, 0x2A),
        (0x5D, 0x2B), (0x1A, 0x2C), (0x22, 0x2D), (0x21, 0x2E), (0x2A, 0x2F), (0x32, 0x30), (0x31, 0x31),
        (0x3A, 0x32), (0x41, 0x33), (0x49, 0x34), (0x4A, 0x35), (0x59, 0x36), (0x7C, 0x37), (0x11, 0x38),
        (0x29, 0x39), (0x58, 0x3A), (0x05, 0x3B), (0x06, 0x3C), (0x04, 0x3D), (0x0C, 0x3E), (0x03, 0x3F),
        (0x0B, 0x40), (0x83, 0x41), (0x0A, 0x42), (0x01, 0x43), (0x09, 0x44), (0x77, 0x45), (0x7E, 0x46),
        (0x6C, 0x47), (0x75, 0x48), (0x7D, 0x49), (0x7B, 0x4A), (0x6B, 0x4B), (0x73, 0x4C), (0x74, 0x4D),
        (0x79, 0x4E), (0x69, 0x4F), (0x72, 0x50), (0x7A, 0x51), (0x70, 0x52), (0x71, 0x53), (0x84, 0x54),
        (0x61, 0x56), (0x78, 0x57), (0x07, 0x58),
        // Japanese and Brazilian keys, and the keyboard's error code.
        (0x13, 0x70), (0x51, 0x73), (0x6A, 0x7D), (0x64, 0x79), (0x67, 0x7B), (0x00, 0xFF),
        // 0x02 (an alternate F7 code): it also makes the scan-set report for set 2 read 0x41.
        (0x02, 0x41),
    ]
    for (set2, set1) in pairs { table[Int(set2)] = set1 }
    return table
}()
