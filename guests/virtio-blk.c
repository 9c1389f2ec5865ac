/*
 * virtio-blk: a virtio 1.x driver in firmware, the way Linux's virtio_pci + virtio_blk work:
 * finds the function (1af4:1042 modern-only or 1af4:1001 transitional), programs BAR1 (MSI-X)
 * and BAR4 (modern registers) itself, walks the vendor capabilities, negotiates VERSION_1 and
 * INDIRECT_DESC, sets up queue 0 with MSI-X vector 1 aimed at this CPU's LAPIC, and then:
 * a two-sector read, a write through an indirect table read back, an out-of-range read
 * (IOERR), get-id, and a completion while the vector is masked (pending bit, delivered on
 * unmask). Every completion must arrive as an MSI. On KVM the doorbell is an ioeventfd and the
 * MSI an irqfd. Needs a 1024-sector disk patterned like ide-dma's and serial=VIRTIO-SERIAL.
 */
#include "rt.h"
GUEST("virtio-blk");

#define VEC_MSI   0x40
#define VEC_SPUR  0xFF
#define BAR1_ADDR 0xFEB00000u
#define BAR4_ADDR 0xFE000000u
#define DESC      0x300000u
#define AVAIL     0x301000u
#define USED      0x302000u
#define TABLE     0x303000u
#define HDR       0x304000u
#define STATUS    0x305000u
#define DATA      0x310000u
#define QSIZE     8

static volatile u32 msi_count;
static u32 common, notify, isr, devcfg, notify_mul;
static u16 avail_idx;

static void on_msi(struct irq_frame *f)
{
    msi_count++;
    lapic_eoi();
}

struct desc { u64 addr; u32 len; u16 flags; u16 next; } __attribute__((packed));

static void set_desc(volatile struct desc *table, u16 i, u32 addr, u32 len, u16 flags, u16 next)
{
    table[i].addr = addr; table[i].len = len; table[i].flags = flags; table[i].next = next;
}

/* Makes chain `head` available, rings the doorbell and waits for MSI number `n` and the used
 * ring entry; returns the status byte. */
static u8 run(u16 head, u32 n, const char *what)
{
    volatile u16 *avail = (volatile u16 *)AVAIL;
    avail[2 + avail_idx % QSIZE] = head;
    barrier();
    avail[1] = ++avail_idx;
    barrier();
    mmio_write16(notify, 0);
    u64 t0 = rdtsc();
    while ((msi_count < n || *(volatile u16 *)(USED + 2) != avail_idx) && !tsc_elapsed(t0, TSC_SECOND * 3)) cpu_relax();
    CHECK(msi_count >= n, "%s: no MSI (%u)", what, msi_count);
    CHECK_EQ(what, *(volatile u16 *)(USED + 2), avail_idx);
    return *(volatile u8 *)STATUS;
}

static void header(u32 type, u32 sector)
{
    volatile u32 *h = (volatile u32 *)HDR;
    h[0] = type; h[1] = 0; h[2] = sector; h[3] = 0;
    *(volatile u8 *)STATUS = 0xEE;
}

void guest_main(void)
{
    cli();
    pic_disable();
    lapic_enable(VEC_SPUR);
    set_irq_handler(VEC_MSI, on_msi);
    sti();

    int bdf = pci_find(0x1AF4, 0x1042);
    if (bdf < 0) bdf = pci_find(0x1AF4, 0x1001);
    CHECK(bdf >= 0, "no virtio-blk function");
    if (bdf < 0) finish();
    info("virtio-blk at %02x.%x, device %04x", bdf >> 3, bdf & 7, pci_read16(bdf, 0x02));
    pci_write32(bdf, 0x14, BAR1_ADDR);
    pci_write32(bdf, 0x20, BAR4_ADDR);
    pci_write32(bdf, 0x24, 0);
    pci_write16(bdf, 0x04, 0x0006);

    /* Capabilities: the virtio structures in BAR4 and MSI-X. */
    u32 msix = 0;
    for (u32 cap = pci_read8(bdf, 0x34); cap; cap = pci_read8(bdf, cap + 1)) {
        u8 id = pci_read8(bdf, cap);
        if (id == 0x11) { msix = cap; continue; }
        if (id != 0x09) continue;
        u8 type = pci_read8(bdf, cap + 3);
        if (type < 1 || type > 4) continue;
        CHECK_EQ("capability BAR", pci_read8(bdf, cap + 4), 4);
        u32 at = BAR4_ADDR + pci_read32(bdf, cap + 8);
        if (type == 1) common = at;
        if (type == 2) { notify = at; notify_mul = pci_read32(bdf, cap + 16); }
        if (type == 3) isr = at;
        if (type == 4) devcfg = at;
    }
    CHECK(common && notify && isr && devcfg && msix, "capabilities missing");
    if (!(common && notify && isr && devcfg && msix)) finish();

    /* MSI-X: both vectors at this CPU, vector 1 (the queue's) unmasked, then enable. */
    u32 table = BAR1_ADDR + (pci_read32(bdf, msix + 4) & ~7u);
    for (u32 v = 0; v < 2; v++) {
        mmio_write32(table + 16 * v, 0xFEE00000u | (lapic_id() << 12));
        mmio_write32(table + 16 * v + 4, 0);
        mmio_write32(table + 16 * v + 8, VEC_MSI);
    }
    mmio_write32(table + 16 + 12, 0);
    pci_write16(bdf, msix + 2, 0x8000);

    /* Initialisation: reset, ACKNOWLEDGE | DRIVER, features, FEATURES_OK. */
    mmio_write8(common + 0x14, 0);
    mmio_write8(common + 0x14, 3);
    mmio_write32(common + 0x00, 1);
    CHECK(mmio_read32(common + 0x04) & 1, "VERSION_1 offered");
    mmio_write32(common + 0x08, 0);
    mmio_write32(common + 0x0C, 1u << 28);        /* INDIRECT_DESC */
    mmio_write32(common + 0x08, 1);
    mmio_write32(common + 0x0C, 1);               /* VERSION_1 */
    mmio_write8(common + 0x14, 0x0B);
    CHECK_EQ("FEATURES_OK accepted", mmio_read8(common + 0x14), 0x0B);
    CHECK_EQ("capacity", mmio_read32(devcfg), 1024);

    memset((void *)DESC, 0, 0x3000);
    mmio_write16(common + 0x16, 0);
    mmio_write16(common + 0x18, QSIZE);
    mmio_write32(common + 0x20, DESC);  mmio_write32(common + 0x24, 0);
    mmio_write32(common + 0x28, AVAIL); mmio_write32(common + 0x2C, 0);
    mmio_write32(common + 0x30, USED);  mmio_write32(common + 0x34, 0);
    mmio_write16(common + 0x1A, 1);
    CHECK_EQ("queue vector", mmio_read16(common + 0x1A), 1);
    notify += notify_mul * mmio_read16(common + 0x1E);
    mmio_write16(common + 0x1C, 1);
    mmio_write8(common + 0x14, 0x0F);

    volatile struct desc *d = (volatile struct desc *)DESC;
    /* Read sectors 3-4. */
    header(0, 3);
    set_desc(d, 0, HDR, 16, 1, 1);
    set_desc(d, 1, DATA, 1024, 3, 2);
    set_desc(d, 2, STATUS, 1, 2, 0);
    CHECK_EQ("read status", run(0, 1, "read"), 0);
    CHECK(pattern_sector_ok((u8 *)DATA, 3) && pattern_sector_ok((u8 *)DATA + 512, 4), "read data");
    CHECK_EQ("used length", *(volatile u32 *)(USED + 8), 1025);

    /* Write two sectors at 10 through an indirect table, then read them back. */
    for (u32 i = 0; i < 1024; i++) ((u8 *)DATA)[i] = (u8)(i * 7 + 1);
    volatile struct desc *t = (volatile struct desc *)TABLE;
    header(1, 10);
    set_desc(t, 0, HDR, 16, 1, 1);
    set_desc(t, 1, DATA, 1024, 1, 2);
    set_desc(t, 2, STATUS, 1, 2, 0);
    set_desc(d, 3, TABLE, 48, 4, 0);
    CHECK_EQ("indirect write status", run(3, 2, "indirect write"), 0);
    memset((void *)DATA, 0, 1024);
    header(0, 10);
    CHECK_EQ("read-back status", run(0, 3, "read back"), 0);
    u32 bad = 0;
    for (u32 i = 0; i < 1024; i++) bad += ((u8 *)DATA)[i] != (u8)(i * 7 + 1);
    CHECK_EQ("read-back mismatches", bad, 0);

    /* Past the end: IOERR, still an interrupt. */
    header(0, 1023);
    CHECK_EQ("out-of-range status", run(0, 4, "out of range"), 1);

    /* get-id */
    header(8, 0);
    set_desc(d, 4, HDR, 16, 1, 5);
    set_desc(d, 5, DATA, 20, 3, 6);
    set_desc(d, 6, STATUS, 1, 2, 0);
    CHECK_EQ("get-id status", run(4, 5, "get-id"), 0);
    CHECK(!memcmp((void *)DATA, "VIRTIO-SERIAL", 14), "serial '%s'", (char *)DATA);

    /* Masked vector: the completion waits in the PBA until the guest unmasks. */
    mmio_write32(table + 16 + 12, 1);
    header(4, 0);
    set_desc(d, 4, HDR, 16, 1, 6);
    volatile u16 *avail = (volatile u16 *)AVAIL;
    avail[2 + avail_idx % QSIZE] = 4;
    barrier();
    avail[1] = ++avail_idx;
    mmio_write16(notify, 0);
    u64 t0 = rdtsc();
    while (*(volatile u16 *)(USED + 2) != avail_idx && !tsc_elapsed(t0, TSC_SECOND * 3)) cpu_relax();
    CHECK_EQ("flush completed", *(volatile u16 *)(USED + 2), avail_idx);
    CHECK_EQ("no MSI while masked", msi_count, 5);
    CHECK_EQ("PBA", mmio_read32(BAR1_ADDR + 0x800) & 2, 2);
    mmio_write32(table + 16 + 12, 0);
    t0 = rdtsc();
    while (msi_count < 6 && !tsc_elapsed(t0, TSC_SECOND * 3)) cpu_relax();
    CHECK_EQ("MSI after unmask", msi_count, 6);
    CHECK_EQ("PBA after unmask", mmio_read32(BAR1_ADDR + 0x800) & 2, 0);
    finish();
}
