/*
 * ahci: ICH9 AHCI (8086:2922, first free slot, 00:02.0) on KVM, the way an OS driver uses it.
 * Programs BAR5 and the PIRQ link itself (it runs as firmware), resets the HBA, brings up
 * port 0, IDENTIFY by PIO (PIO Setup + D2H FISes), READ DMA EXT through a two-entry PRDT,
 * four NCQ reads at once (Set Device Bits completions), an NCQ write read back, an
 * out-of-range read (TFES, then the port is restarted), every completion as INTx on IRQ 11
 * through the 8259; then MSI to the local APIC; then ATAPI READ (10) by DMA on port 1.
 * The test's disk has sector n starting with n (LE32) and filled with n's low byte; its CD the
 * same with 2048-byte blocks.
 */
#include "rt.h"
GUEST("ahci");

#define MSI_VEC   0x50
#define ABAR      0xFEBF0000u
#define LIST      0x300000u   /* port p: LIST + p * 0x400 */
#define FIS       0x310000u   /* port p: FIS + p * 0x100 */
#define TABLES    0x320000u   /* port p, slot s: TABLES + (p * 32 + s) * 0x100 */
#define DATA      0x400000u
#define DATA2     0x480000u

#define PORT(p, r) (ABAR + 0x100 + (p) * 0x80 + (r))
#define PxIS  0x10
#define PxIE  0x14
#define PxCMD 0x18
#define PxTFD 0x20
#define PxSIG 0x24
#define PxSSTS 0x28
#define PxSACT 0x34
#define PxCI  0x38

static volatile u32 intx_count, msi_count, port_status[2];

/* Collects and acknowledges what the HBA reports, as an interrupt handler does. */
static void take_interrupt(void)
{
    u32 is = mmio_read32(ABAR + 0x08);
    for (int p = 0; p < 2; p++) {
        if (!(is & (1u << p))) continue;
        u32 s = mmio_read32(PORT(p, PxIS));
        port_status[p] |= s;
        mmio_write32(PORT(p, PxIS), s);
    }
    mmio_write32(ABAR + 0x08, is);
}

static void on_irq11(struct irq_frame *f)
{
    take_interrupt();
    intx_count++;
    pic_eoi(11);
}

static void on_msi(struct irq_frame *f)
{
    take_interrupt();
    msi_count++;
    lapic_eoi();
}

static void wait_count(volatile u32 *count, u32 n, const char *what)
{
    u64 t0 = rdtsc();
    while (*count < n && !tsc_elapsed(t0, TSC_SECOND * 5)) cpu_relax();
    CHECK(*count >= n, "%s: no interrupt (%u of %u)", what, *count, n);
}

static u8 *table(int p, int slot) { return (u8 *)(TABLES + (p * 32 + slot) * 0x100); }

/* Builds slot `slot`: a register H2D FIS and `n` PRDT entries (address, bytes). */
static void command(int p, int slot, u8 cmd, u32 lba, u16 count, u16 features, int write,
                    const u32 *prdt, int n)
{
    u8 *t = table(p, slot);
    memset(t, 0, 0x80 + 16 * n);
    t[0] = 0x27; t[1] = 0x80; t[2] = cmd; t[3] = features & 0xFF;
    t[4] = lba; t[5] = lba >> 8; t[6] = lba >> 16; t[7] = 0x40;
    t[8] = lba >> 24; t[11] = features >> 8;
    t[12] = count & 0xFF; t[13] = count >> 8;
    volatile u32 *e = (volatile u32 *)(t + 0x80);
    for (int i = 0; i < n; i++) { e[4 * i] = prdt[2 * i]; e[4 * i + 3] = prdt[2 * i + 1] - 1; }
    volatile u32 *h = (volatile u32 *)(LIST + p * 0x400 + slot * 32);
    h[0] = (u32)n << 16 | (write ? 1 << 6 : 0) | 5;
    h[1] = 0;
    h[2] = (u32)t;
    h[3] = 0;
}

static int sector_ok(const u8 *p, u32 n, u32 size)
{
    if (*(const u32 *)p != n) return 0;
    for (u32 i = 4; i < size; i++) if (p[i] != (u8)n) return 0;
    return 1;
}

static void start_port(int p)
{
    mmio_write32(PORT(p, 0x00), LIST + p * 0x400);
    mmio_write32(PORT(p, 0x04), 0);
    mmio_write32(PORT(p, 0x08), FIS + p * 0x100);
    mmio_write32(PORT(p, 0x0C), 0);
    mmio_write32(PORT(p, PxCMD), mmio_read32(PORT(p, PxCMD)) | 0x10);
    u64 t0 = rdtsc();
    while ((mmio_read32(PORT(p, PxSSTS)) & 0xF) != 3 && !tsc_elapsed(t0, TSC_SECOND)) cpu_relax();
    CHECK_EQ("link up", mmio_read32(PORT(p, PxSSTS)), 0x113);
    mmio_write32(PORT(p, 0x30), 0xFFFFFFFF);
    mmio_write32(PORT(p, PxIS), 0xFFFFFFFF);
    mmio_write32(PORT(p, PxIE), 0x7DC000FF);
    mmio_write32(PORT(p, PxCMD), mmio_read32(PORT(p, PxCMD)) | 0x01);
}

void guest_main(void)
{
    cli();
    pic_route_one(11, on_irq11);
    set_irq_handler(MSI_VEC, on_msi);
    sti();

    int bdf = pci_find(0x8086, 0x2922);
    CHECK_EQ("AHCI at 00:02.0", bdf, 2 << 3);
    CHECK_EQ("class", pci_read32(bdf, 0x08), 0x01060102);
    CHECK_EQ("capability list", pci_read8(bdf, 0x34), 0x80);
    pci_write32(bdf, 0x24, ABAR);
    pci_write16(bdf, 0x04, 0x0006);             /* memory decode, bus master */
    pci_write8(PCI_BDF(0, 1, 0), 0x61, 11);     /* slot 2 INTA is PIRQB (PIIX swizzle: slot - 1 + pin) */

    mmio_write32(ABAR + 0x04, 1);               /* GHC.HR */
    CHECK_EQ("HR self-clears", mmio_read32(ABAR + 0x04) & 1, 0);
    mmio_write32(ABAR + 0x04, 0x80000002);      /* AE, IE */
    CHECK_EQ("CAP", mmio_read32(ABAR + 0x00), 0xC0141F05);
    CHECK_EQ("PI", mmio_read32(ABAR + 0x0C), 0x3F);
    start_port(0);
    CHECK_EQ("disk signature", mmio_read32(PORT(0, PxSIG)), 0x101);

    /* IDENTIFY DEVICE by PIO: the HBA moves the data and reports PIO Setup and D2H FISes. */
    u32 prdt[4] = { DATA, 512 };
    command(0, 0, 0xEC, 0, 0, 0, 0, prdt, 1);
    mmio_write32(PORT(0, PxCI), 1);
    wait_count(&intx_count, 1, "IDENTIFY");
    CHECK_EQ("IDENTIFY CI", mmio_read32(PORT(0, PxCI)), 0);
    CHECK_EQ("IDENTIFY PxIS", port_status[0] & 3, 3);
    CHECK_EQ("IDENTIFY TFD", mmio_read32(PORT(0, PxTFD)), 0x50);
    const u16 *id = (const u16 *)DATA;
    char model[9];
    for (int i = 0; i < 4; i++) { model[2 * i] = id[27 + i] >> 8; model[2 * i + 1] = id[27 + i] & 0xFF; }
    model[8] = 0;
    CHECK(!strcmp(model, "QEMU HAR"), "model '%s'", model);
    CHECK_EQ("capacity", id[100], 1024);
    CHECK_EQ("NCQ depth", id[75], 31);
    CHECK_EQ("PIO Setup FIS", *(volatile u8 *)(FIS + 0x20), 0x5F);
    CHECK_EQ("D2H FIS", *(volatile u32 *)(FIS + 0x40), 0x00504034);

    /* READ DMA EXT: 16 sectors from LBA 100, split 3000 + 5192 bytes. */
    prdt[0] = DATA; prdt[1] = 3000; prdt[2] = DATA2; prdt[3] = 16 * 512 - 3000;
    command(0, 1, 0x25, 100, 16, 0, 0, prdt, 2);
    mmio_write32(PORT(0, PxCI), 2);
    wait_count(&intx_count, 2, "READ DMA EXT");
    CHECK_EQ("PRDBC", *(volatile u32 *)(LIST + 32 + 4), 16 * 512);
    static u8 joined[16 * 512];
    memcpy(joined, (void *)DATA, 3000);
    memcpy(joined + 3000, (void *)DATA2, 16 * 512 - 3000);
    int good = 0;
    for (u32 s = 0; s < 16; s++) good += sector_ok(joined + 512 * s, 100 + s, 512);
    CHECK_EQ("sectors read by DMA", good, 16);

    /* Four NCQ reads at once (tag = slot), completed by Set Device Bits FISes. */
    for (int tag = 0; tag < 4; tag++) {
        u32 one[2] = { DATA + tag * 0x1000, 1024 };
        command(0, tag, 0x60, 300 + 2 * tag, tag << 3, 2, 0, one, 1);
    }
    port_status[0] = 0;
    mmio_write32(PORT(0, PxSACT), 0xF);
    mmio_write32(PORT(0, PxCI), 0xF);
    u64 t0 = rdtsc();
    while (mmio_read32(PORT(0, PxSACT)) && !tsc_elapsed(t0, TSC_SECOND * 5)) cpu_relax();
    CHECK_EQ("SACT drained", mmio_read32(PORT(0, PxSACT)), 0);
    CHECK_EQ("CI after NCQ", mmio_read32(PORT(0, PxCI)), 0);
    t0 = rdtsc();
    while (!(port_status[0] & 8) && !tsc_elapsed(t0, TSC_SECOND)) cpu_relax();
    CHECK_EQ("SDB FIS interrupt", port_status[0] & 8, 8);
    good = 0;
    for (int tag = 0; tag < 4; tag++)
        for (int s = 0; s < 2; s++) good += sector_ok((u8 *)(DATA + tag * 0x1000 + s * 512), 300 + 2 * tag + s, 512);
    CHECK_EQ("NCQ sectors", good, 8);

    /* WRITE FPDMA QUEUED of 4 sectors at LBA 200, then READ DMA back. */
    for (u32 i = 0; i < 4 * 512; i++) ((u8 *)DATA)[i] = (u8)(i * 13 + 7);
    prdt[0] = DATA; prdt[1] = 4 * 512;
    command(0, 7, 0x61, 200, 7 << 3, 4, 1, prdt, 1);
    u32 before = intx_count;
    mmio_write32(PORT(0, PxSACT), 1 << 7);
    mmio_write32(PORT(0, PxCI), 1 << 7);
    wait_count(&intx_count, before + 1, "WRITE FPDMA QUEUED");
    t0 = rdtsc();
    while (mmio_read32(PORT(0, PxSACT)) && !tsc_elapsed(t0, TSC_SECOND * 5)) cpu_relax();
    prdt[0] = DATA2;
    command(0, 0, 0xC8, 200, 4, 0, 0, prdt, 1);
    before = intx_count;
    mmio_write32(PORT(0, PxCI), 1);
    wait_count(&intx_count, before + 1, "READ DMA");
    CHECK(!memcmp((void *)DATA, (void *)DATA2, 4 * 512), "NCQ write read back differs");

    /* Out of range: TFES with ERR/ABRT; the port restarts after ST is cleared. */
    prdt[0] = DATA; prdt[1] = 512;
    command(0, 0, 0x25, 1024, 1, 0, 0, prdt, 1);
    port_status[0] = 0;
    before = intx_count;
    mmio_write32(PORT(0, PxCI), 1);
    wait_count(&intx_count, before + 1, "out-of-range READ DMA");
    CHECK_EQ("TFES", port_status[0] & 0x40000000, 0x40000000);
    CHECK_EQ("TFD error", mmio_read32(PORT(0, PxTFD)), 0x0441);
    CHECK_EQ("CI kept for the error handler", mmio_read32(PORT(0, PxCI)), 1);
    mmio_write32(PORT(0, PxCMD), mmio_read32(PORT(0, PxCMD)) & ~1u);
    CHECK_EQ("ST clear empties CI", mmio_read32(PORT(0, PxCI)), 0);
    mmio_write32(PORT(0, PxCMD), mmio_read32(PORT(0, PxCMD)) | 1);
    info("%u INTx interrupts on IRQ 11", intx_count);

    /* MSI: FLUSH CACHE completes on the local APIC vector, not on IRQ 11. */
    lapic_enable(0xFF);
    pci_write32(bdf, 0x84, LAPIC_BASE);
    pci_write32(bdf, 0x88, 0);
    pci_write16(bdf, 0x8C, MSI_VEC);
    pci_write16(bdf, 0x82, pci_read16(bdf, 0x82) | 1);
    before = intx_count;
    command(0, 0, 0xE7, 0, 0, 0, 0, prdt, 0);
    mmio_write32(PORT(0, PxCI), 1);
    wait_count(&msi_count, 1, "FLUSH CACHE by MSI");
    CHECK_EQ("no INTx with MSI on", intx_count, before);
    pci_write16(bdf, 0x82, pci_read16(bdf, 0x82) & ~1);

    /* The CD on port 1: PACKET with READ (10) of blocks 5-6 by DMA. */
    start_port(1);
    CHECK_EQ("CD signature", mmio_read32(PORT(1, PxSIG)), 0xEB140101);
    prdt[0] = DATA; prdt[1] = 4096;
    command(1, 0, 0xA0, 0, 0, 1, 0, prdt, 1);
    *(volatile u32 *)(LIST + 0x400) |= 1 << 5;  /* ATAPI */
    static const u8 cdb[12] = { 0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0, 0, 0 };
    memcpy(table(1, 0) + 0x40, cdb, sizeof cdb);
    before = intx_count;
    mmio_write32(PORT(1, PxCI), 1);
    wait_count(&intx_count, before + 1, "ATAPI READ (10)");
    CHECK_EQ("ATAPI TFD", mmio_read32(PORT(1, PxTFD)) & 0x89, 0);
    CHECK_EQ("block 5", *(volatile u32 *)DATA, 5);
    CHECK_EQ("block 6", *(volatile u32 *)(DATA + 2048), 6);
    CHECK_EQ("block 6 fill", *(volatile u8 *)(DATA + 4095), 6);
    finish();
}
