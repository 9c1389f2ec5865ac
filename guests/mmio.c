/*
 * mmio: MMIO (and PCI I/O BAR) dispatch through QEMU's pci-testdev (1b36:0005).
 * Run with `-device pci-testdev`. No BIOS runs, so the guest programs the
 * BARs itself.
 *
 * Device facts (QEMU hw/misc/pci-testdev.c, docs/specs/pci-testdev.rst):
 *  BAR0 = 4 KiB memory, BAR1 = 256 B I/O. Each starts with a header:
 *    +0 u8 test (write selects test n; n >= 3 deselects), read: test index
 *    +1 u8 width (1), +4 u32 offset, +8 u8 data, +12 u32 count, +16 name[]
 *  Tests per BAR: 0 no-eventfd (data 0xFA), 1 wildcard-eventfd (data 0xCE),
 *  2 datamatch-eventfd (data 0xFA). Memory test n sits at offset 2048 + n,
 *  I/O test n at 128 + 3 + n, and its header reports test index (3 + n).
 *  A byte write of `data` at `offset` increments count (no-eventfd test;
 *  eventfd tests may be absorbed by KVM ioeventfds, so their count is not
 *  checked). Reads past the header, or with no test selected, return 0.
 */
#include "rt.h"
GUEST("mmio");

#define MEM_BASE  0xE0000000u
#define MEM_BASE2 0xE0100000u
#define IO_BASE   0xC000u

static u32 bdf;

struct expect { u8 index; u32 offset; u8 data; const char *name; };

static void check_header_mem(u32 base, const struct expect *e)
{
    char what[64];
    snprintf(what, sizeof what, "%s: test byte", e->name);
    CHECK_EQ(what, mmio_read8(base + 0), e->index);
    snprintf(what, sizeof what, "%s: width byte", e->name);
    CHECK_EQ(what, mmio_read8(base + 1), 1);
    snprintf(what, sizeof what, "%s: offset (32-bit read)", e->name);
    CHECK_EQ(what, mmio_read32(base + 4), e->offset);
    snprintf(what, sizeof what, "%s: offset (16-bit read)", e->name);
    CHECK_EQ(what, mmio_read16(base + 4), e->offset & 0xFFFF);
    snprintf(what, sizeof what, "%s: offset high byte (8-bit read)", e->name);
    CHECK_EQ(what, mmio_read8(base + 5), (e->offset >> 8) & 0xFF);
    snprintf(what, sizeof what, "%s: unaligned 16-bit read at +5", e->name);
    CHECK_EQ(what, mmio_read16(base + 5), (e->offset >> 8) & 0xFFFF);
    snprintf(what, sizeof what, "%s: data", e->name);
    CHECK_EQ(what, mmio_read32(base + 8), e->data);
    char name[40];
    u32 n = 0;
    for (; n < sizeof name - 1; n++) {
        name[n] = (char)mmio_read8(base + 16 + n);
        if (!name[n]) break;
    }
    name[n] = 0;
    CHECK(strcmp(name, e->name) == 0, "MMIO header name \"%s\", expected \"%s\"", name, e->name);
    /* a 32-bit read of the first 4 name bytes */
    u32 w = mmio_read32(base + 16), x;
    memcpy(&x, e->name, 4);
    snprintf(what, sizeof what, "%s: name (32-bit read)", e->name);
    CHECK_EQ(what, w, x);
}

static void check_header_io(u16 base, const struct expect *e)
{
    char what[64];
    snprintf(what, sizeof what, "%s: test byte", e->name);
    CHECK_EQ(what, inb(base + 0), e->index);
    snprintf(what, sizeof what, "%s: width byte", e->name);
    CHECK_EQ(what, inb(base + 1), 1);
    snprintf(what, sizeof what, "%s: offset (32-bit in)", e->name);
    CHECK_EQ(what, inl(base + 4), e->offset);
    snprintf(what, sizeof what, "%s: offset (16-bit in)", e->name);
    CHECK_EQ(what, inw(base + 4), e->offset & 0xFFFF);
    snprintf(what, sizeof what, "%s: data", e->name);
    CHECK_EQ(what, inb(base + 8), e->data);
    char name[40];
    u32 n = 0;
    for (; n < sizeof name - 1; n++) {
        name[n] = (char)inb(base + 16 + n);
        if (!name[n]) break;
    }
    name[n] = 0;
    CHECK(strcmp(name, e->name) == 0, "I/O header name \"%s\", expected \"%s\"", name, e->name);
}

static u32 probe_bar(u32 off)
{
    u32 old = pci_read32(bdf, off);
    pci_write32(bdf, off, 0xFFFFFFFFu);
    u32 v = pci_read32(bdf, off);
    pci_write32(bdf, off, old);
    return v;
}

void guest_main(void)
{
    int f = pci_find(0x1B36, 0x0005);
    if (f < 0) fatal("pci-testdev 1b36:0005 not found on bus 0 (run with -device pci-testdev)");
    bdf = (u32)f;
    info("pci-testdev at 00:%x.%x", (bdf >> 3) & 31, bdf & 7);

    /* BAR sizing */
    u32 p0 = probe_bar(0x10), p1 = probe_bar(0x14), p2 = probe_bar(0x18);
    info("BAR probe: BAR0 0x%x BAR1 0x%x BAR2 0x%x", p0, p1, p2);
    CHECK_EQ("BAR0 probe (4 KiB, 32-bit memory)", p0, 0xFFFFF000u);
    CHECK_EQ("BAR1 probe (256 B I/O; QEMU keeps bits 31:16 writable)", p1, 0xFFFFFF01u);
    CHECK_EQ("BAR2 probe (absent)", p2, 0);
    CHECK_EQ("command register at reset", pci_read16(bdf, 0x04) & 0x7, 0);

    /* program the BARs, then enable decoding */
    pci_write32(bdf, 0x10, MEM_BASE);
    pci_write32(bdf, 0x14, IO_BASE);
    CHECK_EQ("BAR0 read back", pci_read32(bdf, 0x10), MEM_BASE);
    CHECK_EQ("BAR1 read back", pci_read32(bdf, 0x14), IO_BASE | 1);
    u32 before = mmio_read32(MEM_BASE + 4);
    info("BAR0 read with decoding off: 0x%x", before);
    pci_write16(bdf, 0x04, 0x0003);                     /* I/O + memory */
    CHECK_EQ("command register", pci_read16(bdf, 0x04) & 0x7, 3);

    /* --- memory BAR --- */
    static const struct expect mem[3] = {
        { 0, 2048, 0xFA, "mmio-no-eventfd" },
        { 1, 2049, 0xCE, "mmio-wildcard-eventfd" },
        { 2, 2050, 0xFA, "mmio-datamatch-eventfd" },
    };
    for (int t = 2; t >= 0; t--) {
        mmio_write8(MEM_BASE + 0, (u8)t);
        check_header_mem(MEM_BASE, &mem[t]);
    }
    /* count writes on test 0 (no eventfd: every matching write reaches the device) */
    mmio_write32(MEM_BASE + 0, 0);                      /* 32-bit write selects test 0 too */
    CHECK_EQ("count after select", mmio_read32(MEM_BASE + 12), 0);
    for (int i = 0; i < 5; i++) mmio_write8(MEM_BASE + 2048, 0xFA);
    CHECK_EQ("count after 5 matching writes", mmio_read32(MEM_BASE + 12), 5);
    mmio_write8(MEM_BASE + 2048, 0x11);                 /* wrong data */
    mmio_write8(MEM_BASE + 2047, 0xFA);                 /* wrong offset */
    mmio_write8(MEM_BASE + 2049, 0xFA);
    CHECK_EQ("count after non-matching writes", mmio_read32(MEM_BASE + 12), 5);
    CHECK_EQ("16-bit read of count", mmio_read16(MEM_BASE + 12), 5);
    CHECK_EQ("8-bit read of count", mmio_read8(MEM_BASE + 12), 5);
    /* past the header: 0 */
    CHECK_EQ("read past header", mmio_read32(MEM_BASE + 0x100), 0);
    CHECK_EQ("read at end of BAR", mmio_read8(MEM_BASE + 0xFFF), 0);
    /* invalid test number deselects: everything reads 0 */
    mmio_write8(MEM_BASE + 0, 7);
    CHECK_EQ("offset with no test selected", mmio_read32(MEM_BASE + 4), 0);
    CHECK_EQ("test byte with no test selected", mmio_read8(MEM_BASE + 0), 0);

    /* --- I/O BAR --- */
    static const struct expect io[3] = {
        { 3, 131, 0xFA, "portio-no-eventfd" },
        { 4, 132, 0xCE, "portio-wildcard-eventfd" },
        { 5, 133, 0xFA, "portio-datamatch-eventfd" },
    };
    for (int t = 0; t < 3; t++) {
        outb(IO_BASE + 0, (u8)t);
        check_header_io(IO_BASE, &io[t]);
    }
    outb(IO_BASE + 0, 0);
    for (int i = 0; i < 3; i++) outb(IO_BASE + 131, 0xFA);
    outb(IO_BASE + 131, 0x00);
    CHECK_EQ("I/O count after 3 matching writes", inl(IO_BASE + 12), 3);
    /* selecting an I/O test deselected the memory test (one current test) */
    CHECK_EQ("MMIO test byte while an I/O test is selected", mmio_read8(MEM_BASE + 0), 3);

    /* --- decoding off: the BAR must stop responding --- */
    mmio_write8(MEM_BASE + 0, 0);                       /* select mmio test 0 */
    pci_write16(bdf, 0x04, 0x0001);                     /* I/O only */
    u32 off_val = mmio_read32(MEM_BASE + 4);
    info("BAR0 read with memory decoding off: 0x%x", off_val);
    CHECK(off_val != 2048, "BAR0 still decodes with memory decoding disabled");
    CHECK_EQ("BAR0 read with memory decoding off", off_val, 0);
    mmio_write8(MEM_BASE + 0, 2);                       /* must be dropped */
    CHECK_EQ("I/O BAR still works with memory off", inl(IO_BASE + 4), 2048);
    pci_write16(bdf, 0x04, 0x0002);                     /* memory only */
    CHECK_EQ("write with decoding off was dropped", mmio_read8(MEM_BASE + 0), 0);
    u32 io_off = inl(IO_BASE + 4);
    info("BAR1 read with I/O decoding off: 0x%x", io_off);
    CHECK_EQ("I/O BAR with I/O decoding off (unassigned port)", io_off, 0xFFFFFFFFu);

    /* --- moving BAR0 --- */
    pci_write32(bdf, 0x10, MEM_BASE2);
    CHECK_EQ("BAR0 at new address", mmio_read32(MEM_BASE2 + 4), 2048);
    CHECK_EQ("BAR0 old address after move", mmio_read32(MEM_BASE + 4), 0);
    pci_write16(bdf, 0x04, 0x0000);
    info("%u checks", check_count);
}
