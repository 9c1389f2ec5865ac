/*
 * ide-dma: PIIX3 IDE at 00:01.1 on KVM, the way ata_piix drives it. Programs BAR4 itself (it
 * runs as firmware), IDENTIFY by PIO, READ DMA EXT through a two-entry PRD table, WRITE DMA
 * then READ SECTORS back, and an out-of-range READ DMA; every completion must arrive as
 * IRQ 14 through the 8259; then an ATAPI READ (10) by DMA on the secondary channel, on IRQ 15.
 * The test's disk has sector n starting with n (LE32) and filled with n's low byte; its CD the
 * same with 2048-byte blocks.
 */
#include "rt.h"
GUEST("ide-dma");

#define VEC_BASE 0x20
#define BM       0xC000
#define PRD      0x3F0000u
#define DATA     0x400000u
#define DATA2    0x480000u
static volatile u32 irq14_count, irq15_count;

static void on_irq15(struct irq_frame *f)
{
    irq15_count++;
    pic_eoi(15);
}

static void on_irq14(struct irq_frame *f)
{
    irq14_count++;
    pic_eoi(14);
}

/* Waits for IRQ 14 number `n`; returns the status register (which acknowledges it). */
static u8 wait_irq(u32 n, const char *what)
{
    u64 t0 = rdtsc();
    while (irq14_count < n && !tsc_elapsed(t0, TSC_SECOND * 5)) cpu_relax();
    CHECK(irq14_count >= n, "%s: no IRQ 14", what);
    return inb(0x1F7);
}

static void lba48(u8 cmd, u32 lba, u16 count)
{
    outb(0x1F6, 0x40);
    outb(0x1F2, count >> 8); outb(0x1F2, count & 0xFF);
    outb(0x1F3, lba >> 24);  outb(0x1F3, lba & 0xFF);
    outb(0x1F4, 0);          outb(0x1F4, (lba >> 8) & 0xFF);
    outb(0x1F5, 0);          outb(0x1F5, (lba >> 16) & 0xFF);
    outb(0x1F7, cmd);
}

void guest_main(void)
{
    cli();
    lapic_virtual_wire();
    pic_init(VEC_BASE, VEC_BASE + 8);
    pic_set_mask(0xFFFF & ~((1 << 2) | (1 << 14) | (1 << 15)));
    set_irq_handler(VEC_BASE + 14, on_irq14);
    set_irq_handler(VEC_BASE + 15, on_irq15);
    sti();

    int bdf = pci_find(0x8086, 0x7010);
    CHECK_EQ("PIIX3 IDE at 00:01.1", bdf, (1 << 3) | 1);
    CHECK_EQ("prog-if", pci_read8(bdf, 0x09), 0x80);
    pci_write32(bdf, 0x20, BM | 1);
    pci_write16(bdf, 0x04, 0x0005);           /* I/O decode, bus master */
    pci_write16(bdf, 0x40, 0x8000);           /* IDETIM decode enable, as SeaBIOS does */
    CHECK_EQ("BAR4", pci_read32(bdf, 0x20), BM | 1);

    /* IDENTIFY by PIO. */
    outb(0x3F6, 0x00);
    outb(0x1F6, 0xA0);
    outb(0x1F7, 0xEC);
    u8 st = wait_irq(1, "IDENTIFY");
    CHECK_EQ("IDENTIFY status", st & 0xC9, 0x48);
    u16 id[256];
    for (int i = 0; i < 256; i++) id[i] = inw(0x1F0);
    char model[9];
    for (int i = 0; i < 4; i++) { model[2 * i] = id[27 + i] >> 8; model[2 * i + 1] = id[27 + i] & 0xFF; }
    model[8] = 0;
    CHECK(!strcmp(model, "QEMU HAR"), "model '%s'", model);
    CHECK_EQ("LBA48 capacity", id[100], 1024);
    CHECK_EQ("status after IDENTIFY", inb(0x1F7), 0x50);

    /* READ DMA EXT: 16 sectors from LBA 100, split 3000 + 5192 bytes. */
    volatile u32 *prd = (volatile u32 *)PRD;
    prd[0] = DATA;  prd[1] = 3000;
    prd[2] = DATA2; prd[3] = 0x80000000u | (16 * 512 - 3000);
    outl(BM + 4, PRD);
    outb(BM + 2, 0x06);
    outb(BM, 0x08);                            /* direction: to memory */
    lba48(0x25, 100, 16);
    outb(BM, 0x09);                            /* start */
    st = wait_irq(2, "READ DMA EXT");
    CHECK_EQ("READ DMA status", st, 0x50);
    CHECK_EQ("BM status after read", inb(BM + 2) & 0x07, 0x04);
    outb(BM, 0x00);
    static u8 joined[16 * 512];
    memcpy(joined, (void *)DATA, 3000);
    memcpy(joined + 3000, (void *)DATA2, 16 * 512 - 3000);
    int good = 0;
    for (u32 s = 0; s < 16; s++) good += pattern_sector_ok(joined + 512 * s, 100 + s);
    CHECK_EQ("sectors read by DMA", good, 16);

    /* WRITE DMA of 4 sectors at LBA 200, then READ SECTORS back by PIO. */
    for (u32 i = 0; i < 4 * 512; i++) ((u8 *)DATA)[i] = (u8)(i * 13 + 7);
    prd[0] = DATA; prd[1] = 0x80000000u | (4 * 512);
    outb(BM + 2, 0x06);
    outb(BM, 0x00);                            /* direction: from memory */
    outb(0x1F6, 0xE0); outb(0x1F2, 4); outb(0x1F3, 200); outb(0x1F4, 0); outb(0x1F5, 0);
    outb(0x1F7, 0xCA);
    outb(BM, 0x01);
    st = wait_irq(3, "WRITE DMA");
    CHECK_EQ("WRITE DMA status", st, 0x50);
    outb(BM, 0x00);
    outb(0x1F6, 0xE0); outb(0x1F2, 4); outb(0x1F3, 200); outb(0x1F4, 0); outb(0x1F5, 0);
    outb(0x1F7, 0x20);
    u32 mismatches = 0;
    for (u32 s = 0; s < 4; s++) {
        wait_irq(4 + s, "READ SECTORS block");
        for (u32 w = 0; w < 256; w++) {
            u16 v = inw(0x1F0);
            u32 i = s * 512 + 2 * w;
            if (v != (u16)(((u8)(i * 13 + 7)) | ((u8)((i + 1) * 13 + 7)) << 8)) mismatches++;
        }
    }
    CHECK_EQ("PIO read-back of DMA write", mismatches, 0);
    CHECK_EQ("status after the last block", inb(0x3F6), 0x50);

    /* Out of range: aborted, with an interrupt and the BM error bit. */
    prd[0] = DATA; prd[1] = 0x80000000u | 512;
    outb(BM + 2, 0x06);
    outb(BM, 0x08);
    lba48(0x25, 1024, 1);
    outb(BM, 0x09);
    st = wait_irq(8, "out-of-range READ DMA");
    CHECK_EQ("aborted", st & 0x01, 0x01);
    CHECK_EQ("error register ABRT", inb(0x1F1), 0x04);
    outb(BM, 0x00);
    info("%u interrupts on IRQ 14", irq14_count);

    /* The CD-ROM on the secondary master (2048-byte blocks patterned like the disk's sectors):
     * PACKET with READ (10) of blocks 5-6 by DMA, completion on IRQ 15. */
    outb(0x376, 0x00);
    outb(0x176, 0xA0);
    CHECK_EQ("packet signature", inb(0x174) | inb(0x175) << 8, 0xEB14);
    prd[0] = DATA; prd[1] = 0x80000000u | 4096;
    outl(BM + 8 + 4, PRD);
    outb(BM + 8 + 2, 0x06);
    outb(BM + 8, 0x08);
    outb(0x171, 0x01);                          /* DMA */
    outb(0x174, 0x00); outb(0x175, 0x10);
    outb(0x177, 0xA0);
    u64 t0 = rdtsc();
    while ((inb(0x376) & 0x88) != 0x08 && !tsc_elapsed(t0, TSC_SECOND)) cpu_relax();
    static const u16 cdb[6] = { 0x0028, 0x0000, 0x0500, 0x0000, 0x0002, 0x0000 };  /* READ(10) LBA 5, 2 blocks */
    for (int i = 0; i < 6; i++) outw(0x170, cdb[i]);
    outb(BM + 8, 0x09);
    t0 = rdtsc();
    while (irq15_count < 1 && !tsc_elapsed(t0, TSC_SECOND * 5)) cpu_relax();
    CHECK(irq15_count >= 1, "ATAPI DMA: no IRQ 15");
    st = inb(0x177);
    CHECK_EQ("ATAPI status", st & 0x89, 0x00);
    CHECK_EQ("ATAPI interrupt reason (status phase)", inb(0x172) & 3, 3);
    CHECK_EQ("secondary BM status", inb(BM + 8 + 2) & 0x07, 0x04);
    outb(BM + 8, 0x00);
    CHECK_EQ("block 5", *(volatile u32 *)DATA, 5);
    CHECK_EQ("block 6", *(volatile u32 *)(DATA + 2048), 6);
    CHECK_EQ("block 6 fill", *(volatile u8 *)(DATA + 4095), 6);
    finish();
}
