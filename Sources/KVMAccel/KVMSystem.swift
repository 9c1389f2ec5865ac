import CLinux
import DMCore
#if canImport(Glibc)
import Glibc
#endif

public struct KVMError: Error, CustomStringConvertible {
    public let message: String
    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        message = "KVM: \(operation): \(String(cString: strerror(errno)))"
    }
    public init(message: String) { self.message = message }
    public var description: String { message }
}

@inline(__always)
func kvmIoctl<T>(_ fd: Int32, _ request: UInt, _ argument: inout T) -> Int32 {
    withUnsafeMutablePointer(to: &argument) { sdm_ioctl(fd, request, $0) }
}

/// /dev/kvm: capability checks and the supported-CPUID table.
final class KVMSystem {
    let fd: Int32

    init(path: String = "/dev/kvm") throws(KVMError) {
        fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw KVMError("cannot open \(path)") }
        let version = sdm_ioctl_int(fd, sdm_KVM_GET_API_VERSION(), 0)
        guard version == 12 else {
            close(fd)
            throw KVMError(message: "KVM: unsupported API version \(version)")
        }
    }

    deinit { close(fd) }

    func hasExtension(_ cap: Int32) -> Bool {
        sdm_ioctl_int(fd, sdm_KVM_CHECK_EXTENSION(), UInt(cap)) > 0
    }

    func vcpuMmapSize() throws(KVMError) -> Int {
        let size = sdm_ioctl_int(fd, sdm_KVM_GET_VCPU_MMAP_SIZE(), 0)
        guard size > 0 else { throw KVMError("KVM_GET_VCPU_MMAP_SIZE") }
        return Int(size)
    }

    func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var entries = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: 256)
        let n = sdm_kvm_get_supported_cpuid(fd, &entries, Int32(entries.count))
        guard n >= 0 else { throw KVMError("KVM_GET_SUPPORTED_CPUID") }
        return Array(entries.prefix(Int(n)))
    }
}
