// Thin C shim: the Linux and KVM calls Swift cannot make directly (variadic ioctl, macro request
// numbers, the anonymous unions of struct kvm_run). No policy lives here.
#ifndef SWIFTDM_CLINUX_H
#define SWIFTDM_CLINUX_H

#include <stdint.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

// Request numbers as functions, since the _IO* macros do not import into Swift.
unsigned long sdm_KVM_GET_API_VERSION(void);
unsigned long sdm_KVM_CREATE_VM(void);
unsigned long sdm_KVM_CHECK_EXTENSION(void);
unsigned long sdm_KVM_GET_VCPU_MMAP_SIZE(void);
unsigned long sdm_KVM_CREATE_VCPU(void);
unsigned long sdm_KVM_SET_USER_MEMORY_REGION(void);
unsigned long sdm_KVM_SET_TSS_ADDR(void);
unsigned long sdm_KVM_SET_IDENTITY_MAP_ADDR(void);
unsigned long sdm_KVM_CREATE_IRQCHIP(void);
unsigned long sdm_KVM_CREATE_PIT2(void);
unsigned long sdm_KVM_IRQ_LINE(void);
unsigned long sdm_KVM_SIGNAL_MSI(void);
unsigned long sdm_KVM_RUN(void);
unsigned long sdm_KVM_GET_REGS(void);
unsigned long sdm_KVM_SET_REGS(void);
unsigned long sdm_KVM_GET_SREGS(void);
unsigned long sdm_KVM_SET_SREGS(void);
unsigned long sdm_KVM_SET_MP_STATE(void);
unsigned long sdm_KVM_GET_LAPIC(void);
unsigned long sdm_KVM_SET_LAPIC(void);
unsigned long sdm_KVM_SET_FPU(void);
unsigned long sdm_KVM_SET_MSRS(void);
unsigned long sdm_KVM_ENABLE_CAP(void);
unsigned long sdm_KVM_SET_CLOCK(void);
unsigned long sdm_KVM_GET_IRQCHIP(void);
unsigned long sdm_KVM_SET_IRQCHIP(void);
unsigned long sdm_KVM_GET_PIT2(void);
unsigned long sdm_KVM_SET_PIT2(void);
unsigned long sdm_KVM_IOEVENTFD(void);
unsigned long sdm_KVM_IRQFD(void);

int sdm_ioctl(int fd, unsigned long request, void *arg);
int sdm_ioctl_int(int fd, unsigned long request, unsigned long arg);

// CPUID: the kvm_cpuid2 header with its flexible array is allocated here.
int sdm_kvm_get_supported_cpuid(int kvm_fd, struct kvm_cpuid_entry2 *entries, int capacity);
int sdm_kvm_set_cpuid(int vcpu_fd, const struct kvm_cpuid_entry2 *entries, int count);
// MSRs: same reason (struct kvm_msrs ends in a flexible array).
int sdm_kvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, int count);

// KVM_SET_GSI_ROUTING: struct kvm_irq_routing ends in a flexible array of these entries.
int sdm_kvm_set_gsi_routing(int vm_fd, const struct kvm_irq_routing_entry *entries, int count);

// KVM_GET_DIRTY_LOG: struct kvm_dirty_log keeps its bitmap pointer in an anonymous union.
int sdm_kvm_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap);

// struct kvm_run's exit payloads live in an anonymous union.
struct sdm_io_exit { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; };
struct sdm_mmio_exit { uint64_t phys_addr; uint8_t *data; uint32_t len; uint8_t is_write; };
void sdm_run_io(struct kvm_run *run, struct sdm_io_exit *out);
void sdm_run_mmio(struct kvm_run *run, struct sdm_mmio_exit *out);
uint32_t sdm_run_system_event_type(struct kvm_run *run);
uint64_t sdm_run_fail_entry_reason(struct kvm_run *run);
uint32_t sdm_run_internal_suberror(struct kvm_run *run);

// A signal handler that does nothing: delivering it interrupts KVM_RUN with EINTR.
int sdm_install_noop_handler(int signo);
// Blocks (how=SIG_BLOCK) or unblocks the given signals in the calling thread.
int sdm_sigmask(int how, const int *signals, int count);
int sdm_signalfd(const int *signals, int count);

// epoll, without the packed struct epoll_event crossing into Swift.
int sdm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
int sdm_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms);

// Tap interfaces: TUNSETIFF with IFF_TAP | IFF_NO_PI on a new non-blocking /dev/net/tun
// descriptor (the kernel's name goes to `actual`), and TUNGETIFF on a descriptor we were given
// (returns its flags, or -1).
int sdm_tap_open(const char *ifname, char *actual, size_t actual_size);
int sdm_tap_query(int fd, char *actual, size_t actual_size);
int sdm_IFF_TAP(void);
int sdm_IFF_NO_PI(void);
int sdm_IFF_VNET_HDR(void);

#endif
