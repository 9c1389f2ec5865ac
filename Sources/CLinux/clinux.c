#include "clinux.h"
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/epoll.h>
#include <pthread.h>

#define REQ(name) unsigned long sdm_##name(void) { return name; }
REQ(KVM_GET_API_VERSION) REQ(KVM_CREATE_VM) REQ(KVM_CHECK_EXTENSION) REQ(KVM_GET_VCPU_MMAP_SIZE)
REQ(KVM_CREATE_VCPU) REQ(KVM_SET_USER_MEMORY_REGION) REQ(KVM_SET_TSS_ADDR)
REQ(KVM_SET_IDENTITY_MAP_ADDR) REQ(KVM_CREATE_IRQCHIP) REQ(KVM_CREATE_PIT2) REQ(KVM_IRQ_LINE)
REQ(KVM_SIGNAL_MSI) REQ(KVM_RUN) REQ(KVM_GET_REGS) REQ(KVM_SET_REGS) REQ(KVM_GET_SREGS)
REQ(KVM_SET_SREGS) REQ(KVM_SET_MP_STATE) REQ(KVM_GET_LAPIC) REQ(KVM_SET_LAPIC) REQ(KVM_SET_FPU)
REQ(KVM_SET_MSRS) REQ(KVM_ENABLE_CAP) REQ(KVM_SET_CLOCK)
REQ(KVM_GET_IRQCHIP) REQ(KVM_SET_IRQCHIP) REQ(KVM_GET_PIT2) REQ(KVM_SET_PIT2) REQ(KVM_IOEVENTFD) REQ(KVM_IRQFD)

int sdm_ioctl(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int sdm_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

int sdm_kvm_get_supported_cpuid(int kvm_fd, struct kvm_cpuid_entry2 *entries, int capacity) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (size_t)capacity * sizeof(*entries));
    if (!c) { errno = ENOMEM; return -1; }
    c->nent = (uint32_t)capacity;
    int r = ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
    if (r == 0) { memcpy(entries, c->entries, c->nent * sizeof(*entries)); r = (int)c->nent; }
    free(c);
    return r;
}

int sdm_kvm_set_cpuid(int vcpu_fd, const struct kvm_cpuid_entry2 *entries, int count) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (size_t)count * sizeof(*entries));
    if (!c) { errno = ENOMEM; return -1; }
    c->nent = (uint32_t)count;
    memcpy(c->entries, entries, (size_t)count * sizeof(*entries));
    int r = ioctl(vcpu_fd, KVM_SET_CPUID2, c);
    free(c);
    return r;
}

int sdm_kvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, int count) {
    struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)count * sizeof(struct kvm_msr_entry));
    if (!m) { errno = ENOMEM; return -1; }
    m->nmsrs = (uint32_t)count;
    for (int i = 0; i < count; i++) { m->entries[i].index = indices[i]; m->entries[i].data = values[i]; }
    int r = ioctl(vcpu_fd, KVM_SET_MSRS, m);
    free(m);
    return r;
}

int sdm_kvm_set_gsi_routing(int vm_fd, const struct kvm_irq_routing_entry *entries, int count) {
    struct kvm_irq_routing *r = calloc(1, sizeof(*r) + (size_t)count * sizeof(*entries));
    if (!r) { errno = ENOMEM; return -1; }
    r->nr = (uint32_t)count;
    memcpy(r->entries, entries, (size_t)count * sizeof(*entries));
    int ret = ioctl(vm_fd, KVM_SET_GSI_ROUTING, r);
    free(r);
    return ret;
}

int sdm_kvm_get_dirty_log(int vm_fd, uint32_t slot, uint64_t *bitmap) {
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof(log));
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log);
}

void sdm_run_io(struct kvm_run *run, struct sdm_io_exit *out) {
    out->direction = run->io.direction; out->size = run->io.size; out->port = run->io.port;
    out->count = run->io.count; out->data_offset = run->io.data_offset;
}
void sdm_run_mmio(struct kvm_run *run, struct sdm_mmio_exit *out) {
    out->phys_addr = run->mmio.phys_addr; out->data = run->mmio.data;
    out->len = run->mmio.len; out->is_write = run->mmio.is_write;
}
uint32_t sdm_run_system_event_type(struct kvm_run *run) { return run->system_event.type; }
uint64_t sdm_run_fail_entry_reason(struct kvm_run *run) { return run->fail_entry.hardware_entry_failure_reason; }
uint32_t sdm_run_internal_suberror(struct kvm_run *run) { return run->internal.suberror; }

static void noop_handler(int signo) { (void)signo; }
int sdm_install_noop_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = noop_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}

static void fill(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}
int sdm_sigmask(int how, const int *signals, int count) {
    sigset_t set; fill(&set, signals, count);
    return pthread_sigmask(how, &set, NULL);
}
int sdm_signalfd(const int *signals, int count) {
    sigset_t set; fill(&set, signals, count);
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int sdm_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = { .events = events, .data.u64 = token };
    return epoll_ctl(epfd, op, fd, &ev);
}

int sdm_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event evs[64];
    if (capacity > 64) capacity = 64;
    int n = epoll_wait(epfd, evs, capacity, timeout_ms);
    for (int i = 0; i < n; i++) { tokens[i] = evs[i].data.u64; events[i] = evs[i].events; }
    return n;
}

#include <fcntl.h>
#include <unistd.h>
#include <net/if.h>
#include <linux/if_tun.h>

int sdm_tap_open(const char *ifname, char *actual, size_t actual_size) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    if (ifname) {
        size_t n = strlen(ifname);
        if (n == 0 || n >= IFNAMSIZ) { errno = EINVAL; return -1; }
        memcpy(ifr.ifr_name, ifname, n);
    }
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (actual && actual_size > 0) {
        strncpy(actual, ifr.ifr_name, actual_size - 1);
        actual[actual_size - 1] = 0;
    }
    return fd;
}

int sdm_tap_query(int fd, char *actual, size_t actual_size) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    if (ioctl(fd, TUNGETIFF, &ifr) < 0) return -1;
    if (actual && actual_size > 0) {
        strncpy(actual, ifr.ifr_name, actual_size - 1);
        actual[actual_size - 1] = 0;
    }
    return ifr.ifr_flags & 0xFFFF;
}
int sdm_IFF_TAP(void) { return IFF_TAP; }
int sdm_IFF_NO_PI(void) { return IFF_NO_PI; }
int sdm_IFF_VNET_HDR(void) { return IFF_VNET_HDR; }
