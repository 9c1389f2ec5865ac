/*
 * pci: PCI configuration space of QEMU's pc (i440FX) machine, bus 0.
 * Required: 00.0 8086:1237 i440FX, 01.0 8086:7000 PIIX3 (multi-function),
 * 01.3 8086:7113 PIIX4 ACPI. IDs, class codes, header types, read-only
 * fields, write masks, BAR sizing, nonexistent functions, byte/word and
 * unaligned accesses, and the PIIX4 PM I/O window (config 0x40/0x80).
 * Values are QEMU 7.2's, which is what swiftdm must reproduce.
 */
#include "rt.h"
GUEST("pci");

#define HB   PCI_BDF(0, 0, 0)
#define ISA  PCI_BDF(0, 1, 0)
#define IDE  PCI_BDF(0, 1, 1)
#define PM   PCI_BDF(0, 1, 3)

static char what[96];
#define W(...) (snprintf(what, sizeof what, __VA_ARGS__), what)

struct devinfo {
    u32 bdf; u32 id; u32 class_rev; u8 header; u16 status; const char *name;
};
static const struct devinfo required[] = {
    { HB,  0x12378086, 0x06000002, 0x00, 0x0000, "i440FX host bridge" },
    { ISA, 0x70008086, 0x06010000, 0x80, 0x0200, "PIIX3 ISA bridge" },
    { PM,  0x71138086, 0x06800003, 0x00, 0x0280, "PIIX4 ACPI" },
};

static void enumerate(void)
{
    int found = 0;
    for (u32 dev = 0; dev < 32; dev++) {
        u32 id0 = pci_read32(PCI_BDF(0, dev, 0), 0);
        if (id0 == 0xFFFFFFFFu) continue;
        u32 multi = pci_read8(PCI_BDF(0, dev, 0), 0x0E) & 0x80;
        for (u32 fn = 0; fn < (multi ? 8u : 1u); fn++) {
            u32 b = PCI_BDF(0, dev, fn), id = pci_read32(b, 0);
            if (id == 0xFFFFFFFFu) continue;
            info("00:%02x.%x %04x:%04x class %06x hdr 0x%02x", dev, fn, id & 0xFFFF,
                 id >> 16, pci_read32(b, 8) >> 8, pci_read8(b, 0x0E));
            found++;
        }
    }
    CHECK(found >= 3, "only %d functions on bus 0", found);
    for (u32 i = 0; i < ARRAY_SIZE(required); i++) {
        const struct devinfo *d = &required[i];
        CHECK_EQ(W("%s vendor:device", d->name), pci_read32(d->bdf, 0), d->id);
        CHECK_EQ(W("%s class/revision", d->name), pci_read32(d->bdf, 8), d->class_rev);
        CHECK_EQ(W("%s header type", d->name), pci_read8(d->bdf, 0x0E), d->header);
        CHECK_EQ(W("%s status", d->name), pci_read16(d->bdf, 0x06), d->status);
    }
}

static void nonexistent(void)
{
    CHECK_EQ("00:1f.0 (empty slot)", pci_read32(PCI_BDF(0, 31, 0), 0), 0xFFFFFFFFu);
    CHECK_EQ("00:00.1 (single-function device)", pci_read32(PCI_BDF(0, 0, 1), 0), 0xFFFFFFFFu);
    CHECK_EQ("00:01.5 (absent function)", pci_read32(PCI_BDF(0, 1, 5), 0), 0xFFFFFFFFu);
    CHECK_EQ("01:00.0 (no such bus)", pci_read32(PCI_BDF(1, 0, 0), 0), 0xFFFFFFFFu);
    CHECK_EQ("00:1f.0 byte read", pci_read8(PCI_BDF(0, 31, 0), 0x0E), 0xFF);
    CHECK_EQ("00:1f.0 word read", pci_read16(PCI_BDF(0, 31, 0), 0x02), 0xFFFF);
    pci_write32(PCI_BDF(0, 31, 0), 0x3C, 0x12);         /* writes vanish */
    CHECK_EQ("00:1f.0 after write", pci_read32(PCI_BDF(0, 31, 0), 0x3C), 0xFFFFFFFFu);
    /* enable bit clear: data port reads all ones */
    outl(0xCF8, 0x00000000);
    CHECK_EQ("CFC with CF8 enable bit clear", inl(0xCFC), 0xFFFFFFFFu);
}

static void read_only_fields(void)
{
    for (u32 i = 0; i < ARRAY_SIZE(required); i++) {
        const struct devinfo *d = &required[i];
        pci_write32(d->bdf, 0x00, 0xFFFFFFFFu);
        CHECK_EQ(W("%s IDs after write", d->name), pci_read32(d->bdf, 0), d->id);
        pci_write32(d->bdf, 0x08, 0xFFFFFFFFu);
        CHECK_EQ(W("%s class after write", d->name), pci_read32(d->bdf, 8), d->class_rev);
        pci_write8(d->bdf, 0x0E, 0x7F);
        CHECK_EQ(W("%s header type after write", d->name), pci_read8(d->bdf, 0x0E), d->header);
        /* status is read-only / write-1-to-clear: nothing is set, nothing changes */
        pci_write16(d->bdf, 0x06, 0xFFFF);
        CHECK_EQ(W("%s status after write", d->name), pci_read16(d->bdf, 0x06), d->status);
    }
    /* PIIX4 interrupt pin (0x3D) is read-only, = INTA */
    pci_write8(PM, 0x3D, 0x04);
    CHECK_EQ("PIIX4 interrupt pin", pci_read8(PM, 0x3D), 0x01);
}

static void write_masks(void)
{
    static const u32 devs[] = { HB, ISA, PM };
    for (u32 i = 0; i < ARRAY_SIZE(devs); i++) {
        u32 b = devs[i];
        const char *n = required[i].name;
        u16 cmd = pci_read16(b, 0x04);
        pci_write16(b, 0x04, 0xFFFF);
        /* I/O, memory, bus master, SERR#, INTx disable */
        CHECK_EQ(W("%s command write mask", n), pci_read16(b, 0x04), 0x0507);
        pci_write16(b, 0x04, cmd);
        CHECK_EQ(W("%s command restored", n), pci_read16(b, 0x04), cmd);

        u8 line = pci_read8(b, 0x3C);
        for (u32 v = 0; v < 256; v += 0x55) {
            pci_write8(b, 0x3C, (u8)v);
            CHECK_EQ(W("%s interrupt line r/w", n), pci_read8(b, 0x3C), v);
        }
        pci_write8(b, 0x3C, line);

        pci_write32(b, 0x0C, 0xFFFFFFFFu);               /* cache line size only */
        CHECK_EQ(W("%s 0x0C write mask", n), pci_read32(b, 0x0C), ((u32)required[i].header << 16) | 0xFF);
        pci_write8(b, 0x0C, 0);

        pci_write32(b, 0x10, 0xFFFFFFFFu);               /* no BARs on these */
        CHECK_EQ(W("%s BAR0 probe (no BAR)", n), pci_read32(b, 0x10), 0);
        pci_write32(b, 0x30, 0xFFFFFFFFu);
        CHECK_EQ(W("%s ROM BAR probe (no ROM)", n), pci_read32(b, 0x30), 0);
    }

    /* i440FX PAM registers 0x59..0x5F: read/write */
    for (u32 off = 0x59; off <= 0x5F; off++) {
        u8 old = pci_read8(HB, off);
        pci_write8(HB, off, 0x11);
        CHECK_EQ(W("i440FX PAM 0x%x", off), pci_read8(HB, off), 0x11);
        pci_write8(HB, off, 0x22);
        CHECK_EQ(W("i440FX PAM 0x%x", off), pci_read8(HB, off), 0x22);
        pci_write8(HB, off, old);
    }
    /* PIIX3 PIRQ route registers 0x60..0x63 (0x80 = disabled at reset) */
    CHECK_EQ("PIIX3 PIRQ route registers at reset", pci_read32(ISA, 0x60), 0x80808080u);
    pci_write8(ISA, 0x61, 0x0B);
    CHECK_EQ("PIIX3 PIRQB route", pci_read32(ISA, 0x60), 0x80800B80u);
    pci_write8(ISA, 0x61, 0x80);

    /* BAR sizing on a real BAR: PIIX3 IDE BAR4 (bus master, 16 bytes of I/O) */
    if (pci_read32(IDE, 0) == 0x70108086) {
        u32 old = pci_read32(IDE, 0x20);
        CHECK_EQ("PIIX3 IDE BAR4 at reset", old, 0x00000001);
        pci_write32(IDE, 0x20, 0xFFFFFFFFu);
        CHECK_EQ("PIIX3 IDE BAR4 probe (16 B I/O)", pci_read32(IDE, 0x20), 0xFFFFFFF1u);
        pci_write32(IDE, 0x20, old);
        CHECK_EQ("PIIX3 IDE BAR4 restored", pci_read32(IDE, 0x20), old);
    }
}

/* PIIX4 PM: base at 0x40 (bit 0 = I/O indicator), enable at 0x80 bit 0,
 * SMBus base at 0x90. QEMU keeps these registers fully writable (unlike
 * the datasheet, which fixes bit 0 and bits 5:1). */
static void piix4_pm(void)
{
    CHECK_EQ("PIIX4 PM base at reset", pci_read32(PM, 0x40), 0x00000001);
    CHECK_EQ("PIIX4 PM enable (0x80) at reset", pci_read8(PM, 0x80), 0x00);
    CHECK_EQ("PIIX4 SMBus base at reset", pci_read32(PM, 0x90), 0x0000B101);
    CHECK_EQ("PIIX4 SMBus host config (0xD2)", pci_read8(PM, 0xD2), 0x09);

    pci_write32(PM, 0x40, 0xFFFFFFFFu);
    u32 probe = pci_read32(PM, 0x40);
    info("PIIX4 PM base probe with 0xFFFFFFFF: 0x%x (datasheet part: 0xFFC1)", probe);
    CHECK_EQ("PIIX4 PM base probe (QEMU: fully writable)", probe, 0xFFFFFFFFu);
    pci_write32(PM, 0x90, 0xFFFFFFFFu);
    probe = pci_read32(PM, 0x90);
    info("PIIX4 SMBus base probe with 0xFFFFFFFF: 0x%x", probe);
    CHECK_EQ("PIIX4 SMBus base probe (QEMU: fully writable)", probe, 0xFFFFFFFFu);
    pci_write32(PM, 0x90, 0x0000B101);
    CHECK_EQ("PIIX4 SMBus base restored", pci_read32(PM, 0x90), 0x0000B101);

    /* map the PM block at 0x6000 and watch the ACPI PM timer (base + 8) */
    const u16 base = 0x6000;
    pci_write32(PM, 0x40, base | 1);
    CHECK_EQ("PM timer while PM I/O is disabled", inl(base + 8), 0xFFFFFFFFu);
    pci_write8(PM, 0x80, 0x01);
    u32 t0 = inl(base + 8), t1 = t0;
    u64 s = rdtsc();
    while (t1 == t0 && !tsc_elapsed(s, TSC_SECOND)) t1 = inl(base + 8);
    info("ACPI PM timer at 0x%x: 0x%x -> 0x%x", base + 8, t0, t1);
    CHECK((t0 >> 24) == 0 && (t1 >> 24) == 0, "PM timer is not a 24-bit counter: 0x%x 0x%x", t0, t1);
    CHECK(t1 != t0, "PM timer does not count: 0x%x", t0);
    pci_write8(PM, 0x80, 0x00);
    CHECK_EQ("PM timer after disabling PM I/O", inl(base + 8), 0xFFFFFFFFu);
    pci_write32(PM, 0x40, 0x00000001);
}

static void access_sizes(void)
{
    /* byte and word reads of the i440FX ID dword through CFC..CFF */
    outl(0xCF8, 0x80000000);
    CHECK_EQ("inb CFC", inb(0xCFC), 0x86);
    CHECK_EQ("inb CFD", inb(0xCFD), 0x80);
    CHECK_EQ("inb CFE", inb(0xCFE), 0x37);
    CHECK_EQ("inb CFF", inb(0xCFF), 0x12);
    CHECK_EQ("inw CFC", inw(0xCFC), 0x8086);
    CHECK_EQ("inw CFE", inw(0xCFE), 0x1237);
    CHECK_EQ("CF8 reads back", inl(0xCF8), 0x80000000u);
    /* byte/word writes land in the right byte lanes (PIIX3 0x60..0x63) */
    pci_write8(ISA, 0x62, 0x05);
    pci_write16(ISA, 0x60, 0x0A09);
    CHECK_EQ("byte+word config writes", pci_read32(ISA, 0x60), 0x80050A09u);
    pci_write32(ISA, 0x60, 0x80808080u);
    /* 8/16-bit writes to CF8 do not change the latched address */
    outl(0xCF8, 0x80000800);                             /* 01.0 */
    outw(0xCFA, 0x1234);
    CHECK_EQ("CF8 after 16-bit write to CFA", inl(0xCF8), 0x80000800u);
    /* QEMU quirks (swiftdm must match): bits 1:0 of CF8 are kept and added
     * to the CFC port offset; reserved bits 30:24 are ignored */
    outl(0xCF8, 0x80000002);
    CHECK_EQ("CF8 bits 1:0 kept", inl(0xCF8), 0x80000002u);
    CHECK_EQ("inl CFC with CF8 offset 2 (QEMU reads offset 2..5)", inl(0xCFC), 0x00001237u);
    outl(0xCF8, 0x80000000);
    CHECK_EQ("unaligned inw CFD (offset 1..2)", inw(0xCFD), 0x3780);
    outl(0xCF8, 0x81000000);
    CHECK_EQ("CF8 reserved bits 30:24 ignored", inl(0xCFC), 0x12378086u);
}

void guest_main(void)
{
    enumerate();
    nonexistent();
    read_only_fields();
    write_masks();
    piix4_pm();
    access_sizes();
    info("%u checks", check_count);
}
