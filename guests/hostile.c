/*
 * hostile: the device model must survive a guest that pokes everything.
 * With interrupts disabled: pseudo-random 8/16/32-bit writes to every I/O
 * port 0x0000-0xFFFF and random-width reads of every port, then writes and
 * reads at a sample of unassigned MMIO addresses and writes to the BIOS ROM.
 * Then the UART is re-initialised and the guest reports PASS.
 *
 * Ports never written (an access is skipped if any byte it covers is here):
 *   0x0064        i8042 command (0xFE pulses CPU reset)
 *   0x0092        port 92 (bit 0 = fast reset)
 *   0x00F4-0x00F7 isa-debug-exit (ends the VM)
 *   0x03F8        COM1 THR (keeps stdout printable; the other UART registers are hit)
 *   0x0510-0x051B fw_cfg (its DMA could overwrite guest memory)
 *   0x0CF8-0x0CFF PCI config mechanism + 0xCF9 reset control (config writes
 *                 could map PIIX4 PM1 control, whose SLP_EN powers off)
 * Reads cover every port. The PIIX4 PM block (PM1 control) is unmapped at
 * reset and stays so because config space is never written.
 */
#include "rt.h"
GUEST("hostile");

#define SEED 0x5EED1234u
static u32 lcg = SEED;
static u32 rnd(void) { lcg = lcg * 1103515245u + 12345u; return (lcg >> 16) | (lcg << 16); }

static const struct { u16 lo, hi; } excluded[] = {
    { 0x0064, 0x0064 }, { 0x0092, 0x0092 }, { 0x00F4, 0x00F7 }, { 0x03F8, 0x03F8 },
    { 0x0510, 0x051B }, { 0x0CF8, 0x0CFF },
};

static int write_ok(u32 port, u32 width)
{
    for (u32 i = 0; i < ARRAY_SIZE(excluded); i++)
        if (port <= excluded[i].hi && port + width - 1 >= excluded[i].lo) return 0;
    return 1;
}

static u32 sink;

void guest_main(void)
{
    cli();
    info("seed 0x%x: random writes to all ports (interrupts off)", SEED);
    u32 writes = 0, reads = 0;
    u64 t0 = rdtsc();
    for (u32 port = 0; port <= 0xFFFF; port++) {
        if (write_ok(port, 1)) { outb((u16)port, (u8)rnd()); writes++; }
        if (write_ok(port, 2)) { outw((u16)port, (u16)rnd()); writes++; }
        if (write_ok(port, 4)) { outl((u16)port, rnd()); writes++; }
        switch (rnd() % 3) {
        case 0: sink += inb((u16)port); break;
        case 1: sink += inw((u16)port); break;
        default: sink += inl((u16)port); break;
        }
        reads++;
    }
    uart_init();                        /* LCR/MCR/IER were just scrambled */
    info("ports done: %u writes, %u reads, %u Mcycles", writes, reads, (u32)((rdtsc() - t0) >> 20));

    /* unassigned MMIO: one page per MiB in 128 MiB .. 0xFEBFFFFF (below the
     * IOAPIC/HPET/LAPIC/BIOS), random offset and width */
    u32 mw = 0, nonzero = 0;
    for (u32 a = 0x08000000u; a < 0xFEC00000u && a >= 0x08000000u; a += 0x100000u) {
        u32 addr = a + (rnd() & 0xFFC);
        switch (rnd() % 3) {
        case 0: mmio_write8(addr, (u8)rnd()); sink += mmio_read8(addr); break;
        case 1: mmio_write16(addr, (u16)rnd()); sink += mmio_read16(addr); break;
        default: mmio_write32(addr, rnd()); break;
        }
        u32 v = mmio_read32(addr);
        if (v) nonzero++;
        mw++;
    }
    info("unassigned MMIO: %u pages written and read, %u reads non-zero", mw, nonzero);
    /* QEMU reads unassigned MMIO as 0 and drops writes */
    CHECK_EQ("unassigned MMIO reads returning non-zero", nonzero, 0);

    /* BIOS ROM: writes are dropped (both the high copy and the 0xF0000 alias) */
    u32 r1 = mmio_read32(0xFFFFFFF0u), r2 = mmio_read32(0x000FFFF0u);
    mmio_write32(0xFFFFFFF0u, rnd());
    mmio_write32(0x000FFFF0u, rnd());
    mmio_write8(0xFFFF0000u, (u8)rnd());
    CHECK_EQ("ROM at 0xFFFFFFF0 after a write", mmio_read32(0xFFFFFFF0u), r1);
    CHECK_EQ("ROM alias at 0xFFFF0 after a write", mmio_read32(0x000FFFF0u), r2);
    CHECK_EQ("ROM alias mirrors the reset vector", r1, r2);

    /* still alive: the UART scratch register and CMOS NVRAM work */
    outb(COM1 + UART_SCR, 0x5A);
    CHECK_EQ("UART scratch after the storm", inb(COM1 + UART_SCR), 0x5A);
    outb(0x70, 0x3F);
    outb(0x71, 0xC3);
    outb(0x70, 0x3F);
    CHECK_EQ("CMOS NVRAM after the storm", inb(0x71), 0xC3);
    info("%u checks (sink 0x%x)", check_count, sink);
}
