import CLinux
import DMCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// KVM's fast paths behind DMCore's `NotificationProvider`: doorbells become ioeventfds (KVM
/// completes the guest's write in the kernel and signals an eventfd, which the event loop
/// serves, so the vCPU never waits for the device model) and MSI vectors become irqfds on GSIs
/// routed to the vector's message. Whatever KVM refuses falls back to the exit path: no
/// doorbell (the write exits to the bus as usual) or KVM_SIGNAL_MSI.
public final class KVMNotifications: NotificationProvider {
    private let kvm: KVMAccelerator
    private let loop: EventLoop
    private let nextGSI = Atomic<UInt32>(KVMAccelerator.firstMSIGSI)
    /// KVM's default GSI table holds 1024 routes (KVM_MAX_IRQ_ROUTES is larger; this is plenty).
    static let lastGSI: UInt32 = 1023

    public init(accelerator: KVMAccelerator, loop: EventLoop) {
        kvm = accelerator
        self.loop = loop
    }

    public func addDoorbell(_ doorbell: Doorbell, handler: @escaping () -> Void) -> DoorbellRegistration? {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        guard fd >= 0 else { return nil }
        var request = Self.ioeventfd(doorbell, fd: fd)
        guard kvmIoctl(kvm.vmFD, sdm_KVM_IOEVENTFD(), &request) == 0 else {
            GuestErrorLog.shared.report("kvm", "KVM_IOEVENTFD at \(hex(doorbell.address)): \(String(cString: strerror(errno))); using exits")
            close(fd)
            return nil
        }
        let registration = IoeventfdRegistration(vmFD: kvm.vmFD, doorbell: doorbell, fd: fd, loop: loop)
        do {
            try loop.addReader(fd) {
                // Drain the counter: several writes since the last wake are one notification.
                var count: UInt64 = 0
                _ = read(fd, &count, 8)
                handler()
            }
        } catch {
            registration.cancel()
            return nil
        }
        return registration
    }

    static func ioeventfd(_ doorbell: Doorbell, fd: Int32) -> kvm_ioeventfd {
        var request = kvm_ioeventfd()
        request.addr = doorbell.address
        request.len = UInt32(doorbell.length)
        request.fd = fd
        if doorbell.space == .port { request.flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_pio) }
        if let value = doorbell.value {
            request.flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_datamatch)
            request.datamatch = value
        }
        return request
    }

    public func makeMSIVector() -> any MSIVector {
        IrqfdVector(kvm: kvm, provider: self)
    }

    /// A GSI of our own for an irqfd, or nil when they are used up.
    fileprivate func allocateGSI() -> UInt32? {
        let gsi = nextGSI.wrappingAdd(1, ordering: .relaxed).oldValue
        return gsi <= Self.lastGSI ? gsi : nil
    }
}

private final class IoeventfdRegistration: DoorbellRegistration, @unchecked Sendable {
    let vmFD: Int32
    let doorbell: Doorbell
    var fd: Int32
    let loop: EventLoop

    init(vmFD: Int32, doorbell: Doorbell, fd: Int32, loop: EventLoop) {
        self.vmFD = vmFD
        self.doorbell = doorbell
        self.fd = fd
        self.loop = loop
    }

    func cancel() {
        guard fd >= 0 else { return }
        var request = KVMNotifications.ioeventfd(doorbell, fd: fd)
        request.flags |= UInt32(1) << UInt32(kvm_ioeventfd_flag_nr_deassign)
        _ = kvmIoctl(vmFD, sdm_KVM_IOEVENTFD(), &request)
        loop.removeReader(fd)
        close(fd)
        fd = -1
    }

    deinit { cancel() }
}

/// One MSI-X vector as an irqfd: the GSI and eventfd are set up on first use, the GSI's route
/// follows the message the guest programmed, and firing is one eventfd write.
private final class IrqfdVector: MSIVector, @unchecked Sendable {
    private struct State {
        var fd: Int32 = -1
        var gsi: UInt32 = 0
        var routed: MSIMessage?
        /// Setting up failed once: use KVM_SIGNAL_MSI from then on.
        var fallback = false
    }
    private let kvm: KVMAccelerator
    private weak var provider: KVMNotifications?
    private let state = Mutex(State())

    init(kvm: KVMAccelerator, provider: KVMNotifications) {
        self.kvm = kvm
        self.provider = provider
    }

    func fire(_ message: MSIMessage) {
        let fd = state.withLock { s -> Int32 in
            if s.fallback { return -1 }
            if s.fd < 0 {
                guard let gsi = provider?.allocateGSI() else { s.fallback = true; return -1 }
                let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
                var request = kvm_irqfd()
                request.fd = UInt32(bitPattern: fd)
                request.gsi = gsi
                do { try kvm.routeMSI(gsi: gsi, to: message) } catch {
                    if fd >= 0 { close(fd) }
                    s.fallback = true
                    return -1
                }
                guard fd >= 0, kvmIoctl(kvm.vmFD, sdm_KVM_IRQFD(), &request) == 0 else {
                    if fd >= 0 { close(fd) }
                    s.fallback = true
                    return -1
                }
                s.fd = fd
                s.gsi = gsi
                s.routed = message
            } else if s.routed != message {
                do { try kvm.routeMSI(gsi: s.gsi, to: message) } catch { return -1 }
                s.routed = message
            }
            return s.fd
        }
        guard fd >= 0 else {
            kvm.signalMSI(message)
            return
        }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    deinit {
        state.withLock { s in
            guard s.fd >= 0 else { return }
            var request = kvm_irqfd()
            request.fd = UInt32(bitPattern: s.fd)
            request.gsi = s.gsi
            request.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
            _ = kvmIoctl(kvm.vmFD, sdm_KVM_IRQFD(), &request)
            close(s.fd)
        }
    }
}
