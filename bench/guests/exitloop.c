/*
 * exitloop: port-I/O exit round trip. EXITS `outb` to BENCH_PORT, a port
 * that neither a PC nor QEMU's pc machine decodes (0x504: QEMU's I/O map has
 * nothing in 0x4d2-0x50f, fw_cfg starts at 0x510), so every write is a
 * full exit to the VMM and back. Reports the TSC delta over the loop.
 */
#include "rt.h"
GUEST("exitloop");

#ifndef EXITS
#define EXITS 20000
#endif
#define BENCH_PORT 0x504

static inline void out8x(void)
{
    /* 8 exits per loop iteration: keeps loop overhead small (this lab's
     * kvm_pvm emulates every guest instruction) */
    __asm__ volatile(
        "outb %%al, %%dx\n\toutb %%al, %%dx\n\toutb %%al, %%dx\n\toutb %%al, %%dx\n\t"
        "outb %%al, %%dx\n\toutb %%al, %%dx\n\toutb %%al, %%dx\n\toutb %%al, %%dx"
        :: "a"(0), "d"(BENCH_PORT));
}

void guest_main(void)
{
    for (u32 i = 0; i < 64 / 8; i++) out8x();          /* warm-up */
    u64 t0 = rdtsc();
    for (u32 i = 0; i < EXITS / 8; i++) out8x();
    u64 t1 = rdtsc();
    printf("exitloop: exits=%u tsc=%llu\n", (EXITS / 8) * 8, t1 - t0);
}
