#ifndef CXEN_H
#define CXEN_H
// Atomic loads/stores and barriers on memory shared with Xen and the guest (the ioreq page and
// the buffered ring). Swift has no atomic operations on raw pointers, and these pages are not
// ours to lay out, so the few accesses that need ordering live here. Nothing in this module
// includes or links a Xen header or library: the libraries are dlopen'ed by XenAccel.
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline uint8_t cxen_load_acquire_u8(const void *p) {
    return __atomic_load_n((const volatile uint8_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cxen_store_release_u8(void *p, uint8_t v) {
    __atomic_store_n((volatile uint8_t *)p, v, __ATOMIC_RELEASE);
}
static inline uint32_t cxen_load_acquire_u32(const void *p) {
    return __atomic_load_n((const volatile uint32_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cxen_store_release_u32(void *p, uint32_t v) {
    __atomic_store_n((volatile uint32_t *)p, v, __ATOMIC_RELEASE);
}
static inline uint32_t cxen_fetch_add_u32(void *p, uint32_t v) {
    return __atomic_fetch_add((volatile uint32_t *)p, v, __ATOMIC_SEQ_CST);
}
/// A compare-and-swap on one byte: the simulator uses it to play Xen's side of the state field.
static inline int cxen_cas_u8(void *p, uint8_t expected, uint8_t desired) {
    return __atomic_compare_exchange_n((volatile uint8_t *)p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
/// A 64-bit compare-and-swap: how Xen rebases both buffered-ring pointers at once.
static inline int cxen_cas_u64(void *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n((volatile uint64_t *)p, &expected, desired, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint64_t cxen_load_u64(const void *p) {
    return __atomic_load_n((const volatile uint64_t *)p, __ATOMIC_SEQ_CST);
}
/// Copies `n` bytes out of shared memory with volatile loads, so the compiler can neither
/// re-read the source later (a double fetch) nor elide the copy.
static inline void cxen_copy_from_shared(void *dst, const void *src, unsigned long n) {
    const volatile uint8_t *s = (const volatile uint8_t *)src;
    uint8_t *d = (uint8_t *)dst;
    for (unsigned long i = 0; i < n; i++) d[i] = s[i];
}
static inline void cxen_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void cxen_rmb(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void cxen_wmb(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

/// A non-blocking close-on-exec eventfd (the ioreq thread's wake-up, the simulator's port signal).
static inline int cxen_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
/// An anonymous file (the simulator's guest RAM, mapped shared like foreign frames).
static inline int cxen_memfd(const char *name) { return (int)syscall(SYS_memfd_create, name, 1u /* MFD_CLOEXEC */); }

#endif
