/*
 * fwcfg: QEMU fw_cfg, PIO (0x510 selector, 0x511 data) and DMA (0x514).
 * Signature, ID features (DMA bit), DMA signature "QEMU CFG", the file
 * directory, one file read by PIO and by DMA and compared byte for byte,
 * DMA skip, DMA select-only, offset sharing between PIO and DMA, reads past
 * the end of an item (zero fill), a write to a read-only item (error bit),
 * a descriptor at an unmapped address and a huge DMA length (VMM survives).
 */
#include "rt.h"
GUEST("fwcfg");

#define MAXFILE 8192
static u8 buf_pio[MAXFILE], buf_dma[MAXFILE + 64];

static u32 be32(u32 v) { return bswap32(v); }

static void test_basics(void)
{
    char sig[8];
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(sig, 4);
    CHECK(memcmp(sig, "QEMU", 4) == 0, "signature is not QEMU");

    u32 id;
    fw_cfg_select(FW_CFG_ID);
    fw_cfg_read(&id, 4);
    info("ID (features) = 0x%x", id);
    CHECK_EQ("ID: traditional + DMA interface", id, 0x3);

    /* DMA register reads as the big-endian "QEMU CFG" signature */
    u32 hi = inl(FW_CFG_PORT_DMA), lo = inl(FW_CFG_PORT_DMA + 4);
    memcpy(sig, &hi, 4);
    memcpy(sig + 4, &lo, 4);
    info("DMA port reads 0x%x 0x%x", hi, lo);
    CHECK(memcmp(sig, "QEMU CFG", 8) == 0, "DMA signature at 0x514: %08x %08x", hi, lo);
}

static int pick_file(u16 *sel, char *name)
{
    u32 count;
    fw_cfg_select(FW_CFG_FILE_DIR);
    fw_cfg_read(&count, 4);
    count = be32(count);
    info("file directory: %u files", count);
    CHECK(count > 0 && count < 1000, "implausible file count %u", count);
    int size = -1, first_size = -1;
    u16 first_sel = 0;
    char first_name[56] = "";
    for (u32 i = 0; i < count && i < 1000; i++) {
        struct fw_cfg_file f;
        fw_cfg_read(&f, sizeof f);
        u16 s = (u16)((f.select >> 8) | (f.select << 8));
        u32 sz = be32(f.size);
        info("  file 0x%x %u bytes %s", s, sz, f.name);
        CHECK(s >= 0x20, "file %s has selector 0x%x below 0x20", f.name, s);
        CHECK(f.name[55] == 0, "file name not NUL terminated");
        if (i == 0) { first_size = (int)sz; first_sel = s; memcpy(first_name, f.name, 56); }
        if (strcmp(f.name, "etc/e820") == 0) { size = (int)sz; *sel = s; memcpy(name, f.name, 56); }
    }
    if (size < 0) { size = first_size; *sel = first_sel; memcpy(name, first_name, 56); }
    /* the lookup helper agrees */
    u16 s2 = 0;
    CHECK_EQ("fw_cfg_find_file size", fw_cfg_find_file(name, &s2), size);
    CHECK_EQ("fw_cfg_find_file selector", s2, *sel);
    return size;
}

void guest_main(void)
{
    test_basics();

    u16 sel = 0;
    char name[56];
    int size = pick_file(&sel, name);
    if (size <= 0) fatal("no usable fw_cfg file");
    if (size > MAXFILE) size = MAXFILE;
    info("reading %s (selector 0x%x, %d bytes)", name, sel, size);

    /* PIO */
    fw_cfg_select(sel);
    fw_cfg_read(buf_pio, (u32)size);
    if (strcmp(name, "etc/e820") == 0) {
        /* entries: u64 address, u64 length, u32 type; RAM at 0 of 64 MiB */
        CHECK_EQ("etc/e820 size is a multiple of 20", size % 20, 0);
        int ram = 0;
        for (int i = 0; i + 20 <= size; i += 20) {
            u32 *e = (u32 *)(buf_pio + i);
            info("e820: addr 0x%x%08x len 0x%x%08x type %u", e[1], e[0], e[3], e[2], e[4]);
            if (e[0] == 0 && e[1] == 0 && e[4] == 1) {
                ram = 1;
                CHECK_EQ("e820 RAM at 0: length (-m 64)", e[2], 64u << 20);
            }
        }
        CHECK(ram, "etc/e820 has no RAM entry at address 0");
    }

    /* DMA select + read, compared byte for byte */
    memset(buf_dma, 0xAA, sizeof buf_dma);
    u32 c = fw_cfg_dma(((u32)sel << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, buf_dma, (u32)size);
    CHECK_EQ("DMA select+read control", c, 0);
    CHECK(memcmp(buf_pio, buf_dma, (u32)size) == 0, "DMA and PIO contents differ");
    CHECK_EQ("byte after the DMA'd range untouched", buf_dma[size], 0xAA);

    /* DMA skip then read the rest */
    u32 skip = (u32)size / 2;
    memset(buf_dma, 0xAA, sizeof buf_dma);
    c = fw_cfg_dma(((u32)sel << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_SKIP, NULL, skip);
    CHECK_EQ("DMA select+skip control", c, 0);
    c = fw_cfg_dma(FW_CFG_DMA_READ, buf_dma, (u32)size - skip);
    CHECK_EQ("DMA read after skip control", c, 0);
    CHECK(memcmp(buf_pio + skip, buf_dma, (u32)size - skip) == 0, "DMA read after skip differs");

    /* PIO and DMA share the item offset; a DMA select-only sets it to 0 */
    fw_cfg_select(sel);
    u8 head[4];
    fw_cfg_read(head, 4);
    memset(buf_dma, 0xAA, sizeof buf_dma);
    c = fw_cfg_dma(FW_CFG_DMA_READ, buf_dma, 4);
    CHECK_EQ("DMA read continuing a PIO read", c, 0);
    CHECK(memcmp(buf_dma, buf_pio + 4, 4) == 0, "DMA did not continue at the PIO offset");
    c = fw_cfg_dma(((u32)FW_CFG_SIGNATURE << 16) | FW_CFG_DMA_SELECT, NULL, 0);
    CHECK_EQ("DMA select-only control", c, 0);
    fw_cfg_read(head, 4);
    CHECK(memcmp(head, "QEMU", 4) == 0, "PIO after DMA select-only does not read the signature");

    /* read past the end of an item: the tail is zero-filled, no error */
    memset(buf_dma, 0xAA, 64);
    c = fw_cfg_dma(((u32)FW_CFG_SIGNATURE << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, buf_dma, 16);
    CHECK_EQ("DMA read past item end control", c, 0);
    CHECK(memcmp(buf_dma, "QEMU\0\0\0\0\0\0\0\0\0\0\0\0", 16) == 0, "read past end not zero filled");
    CHECK_EQ("byte after the DMA'd range untouched", buf_dma[16], 0xAA);

    /* write to a read-only item: error bit, item unchanged */
    memcpy(buf_dma, "XXXX", 4);
    c = fw_cfg_dma(((u32)FW_CFG_SIGNATURE << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_WRITE, buf_dma, 4);
    info("DMA write to read-only item: control 0x%x", c);
    CHECK_EQ("DMA write to read-only item sets the error bit", c, FW_CFG_DMA_ERROR);
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(head, 4);
    CHECK(memcmp(head, "QEMU", 4) == 0, "read-only item modified by a DMA write");

    /* invalid selector: reads give zeros (PIO) / zero fill (DMA), no error */
    fw_cfg_select(0x7FFF);
    fw_cfg_read(head, 4);
    CHECK(memcmp(head, "\0\0\0\0", 4) == 0, "PIO read of a missing item is not zero");
    memset(buf_dma, 0xAA, 8);
    c = fw_cfg_dma((0x7FFFu << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ, buf_dma, 8);
    CHECK_EQ("DMA read of a missing item control", c, 0);
    CHECK(memcmp(buf_dma, "\0\0\0\0\0\0\0\0", 8) == 0, "DMA read of a missing item is not zero filled");

    /* descriptor at an unmapped guest-physical address: nothing to observe,
     * but the VMM must survive it */
    outl(FW_CFG_PORT_DMA, 0);
    outl(FW_CFG_PORT_DMA + 4, bswap32(0x90000000u));
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(head, 4);
    CHECK(memcmp(head, "QEMU", 4) == 0, "fw_cfg broken after a DMA descriptor at an unmapped address");

    /* huge length: 128 MiB read into the last 4 KiB of RAM (64 MiB). QEMU
     * copies the item, zero-fills the rest of RAM and runs on into unmapped
     * space (the PCI hole, no device there). Whatever it reports, the VMM
     * must survive and RAM below the target must be intact. */
    u32 target = (64u << 20) - 4096;
    mmio_write32(target - 4, 0x5A5AA5A5);
    memset((void *)target, 0xAA, 4096);
    u64 t0 = rdtsc();
    c = fw_cfg_dma(((u32)FW_CFG_SIGNATURE << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ,
                   (void *)target, 0x08000000u);
    info("128 MiB DMA into the top of RAM: control 0x%x, %u Mcycles", c, (u32)((rdtsc() - t0) >> 20));
    CHECK(c != 0xFFFFFFFFu, "huge DMA never completed");
    CHECK(c == 0 || c == FW_CFG_DMA_ERROR, "huge DMA: unexpected control 0x%x", c);
    CHECK(memcmp((void *)target, "QEMU", 4) == 0, "huge DMA did not copy the item");
    CHECK_EQ("huge DMA zero-fills after the item", mmio_read32(target + 4), 0);
    CHECK_EQ("huge DMA zero-fills to the end of RAM", mmio_read32(target + 4092), 0);
    CHECK_EQ("RAM below the huge DMA target intact", mmio_read32(target - 4), 0x5A5AA5A5);
    fw_cfg_select(FW_CFG_SIGNATURE);
    fw_cfg_read(head, 4);
    CHECK(memcmp(head, "QEMU", 4) == 0, "fw_cfg broken after the huge DMA");
    info("%u checks", check_count);
}
