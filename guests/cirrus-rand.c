/*
 * cirrus-rand: a seeded stream of GD5446 blits for a side-by-side picture with QEMU.
 * Programs a 320x200, 32 bpp extended mode itself (no VGA BIOS), fills the first 256 KiB of
 * VRAM with a pattern through the 0xA0000 window, then runs 2000 random blits — every kind the
 * two implementations define alike: forward and backward copies, transparent copies (8/16 bpp),
 * colour expansion opaque/transparent/inverted with left clipping, 8x8 pattern fills
 * (8/16/32 bpp) and pattern expansion, solid fills, system-source copies, expansions and
 * patterns fed through the window, every ROP code of GR32 (unknown ones included).
 * Everything stays well inside VRAM so neither side refuses a blit. Prints
 * "cirrus-rand: done" on COM1 and halts with the picture on screen (no debug-exit).
 */
#include "rt.h"
GUEST("cirrus-rand");

#define WINDOW 0xA0000u
#ifndef BLITS
#define BLITS 2000
#endif
static u32 seed = 0x5EED1234u;
static u32 rnd(u32 n) { seed = seed * 1103515245u + 12345u; return ((seed >> 8) & 0xFFFFFF) % n; }

static void sr(u8 i, u8 v) { outb(0x3C4, i); outb(0x3C5, v); }
static void gr(u8 i, u8 v) { outb(0x3CE, i); outb(0x3CF, v); }
static u8 gr_read(u8 i) { outb(0x3CE, i); return inb(0x3CF); }
static void cr(u8 i, u8 v) { outb(0x3D4, i); outb(0x3D5, v); }
static void gr16(u8 i, u32 v) { gr(i, v & 0xFF); gr(i + 1, (v >> 8) & 0xFF); }
static void gr24(u8 i, u32 v) { gr16(i, v); gr(i + 2, (v >> 16) & 0xFF); }

static const u8 rops[] = { 0x00, 0x05, 0x06, 0x09, 0x0B, 0x0D, 0x0E, 0x50, 0x59, 0x6D, 0x90, 0x95,
                           0xAD, 0xD0, 0xD6, 0xDA, 0x42 };

static void wait_idle(void) { while (gr_read(0x31) & 0x01) cpu_relax(); }

void guest_main(void)
{
    outb(0x3C2, 0x67);
    sr(0x06, 0x12);
    sr(0x07, 0x09);                       /* extended, 32 bpp */
    gr(0x05, 0x40);                       /* 256-colour shifting */
    gr(0x06, 0x05);                       /* graphics, 64 KiB window at 0xA0000 */
    cr(0x11, 0x00);
    cr(0x01, 39); cr(0x12, 199); cr(0x07, 0x00); cr(0x13, 160); cr(0x1B, 0x00); cr(0x1A, 0x00);
    cr(0x0C, 0); cr(0x0D, 0); cr(0x1D, 0);
    inb(0x3DA); outb(0x3C0, 0x20);        /* screen on */

    /* VRAM 0-256 KiB through bank 0 (4 KiB units), a byte pattern from the seed. */
    gr(0x0B, 0x00);
    for (u32 base = 0; base < 0x40000; base += 0x8000) {
        gr(0x09, base >> 12);
        for (u32 i = 0; i < 0x8000; i++) mmio_write8(WINDOW + i, (u8)rnd(256));
    }
    gr(0x09, 0);

    for (int n = 0; n < BLITS; n++) {
        u32 pb = rnd(4) + 1;
        u32 kind = rnd(9);
        u8 mode = (u8)((pb - 1) << 4), ext = 0;
        u32 width = rnd(96) + 1, height = rnd(24) + 1;
        /* Rows never overlap (QEMU skips such copies) and pitches are at least the width. */
        u32 dpitch = width + rnd(1184), spitch = width + rnd(1184);
        u32 dst = 0x10000 + rnd(0x10000), src = 0x8000 + rnd(0x20000);
        u32 sys_bytes = 0;
        /* In 24 bpp a clip past 23 bytes skips more than 7 source bits, where QEMU's shifts
         * go negative (undefined in C): not compared. */
        u8 clip = (u8)(rnd(3) ? 0 : rnd(pb == 3 ? 24 : 32));
        switch (kind) {
        case 0: break;                                        /* forward copy */
        case 1: mode |= 0x01; dst += 0x30000; src += 0x30000; break;   /* backwards */
        case 2:                                               /* transparent, whole pixels */
            if (pb > 2) pb = 2;
            mode = (u8)(((pb - 1) << 4) | 0x08);
            width = width < pb ? pb : width - width % pb;
            break;
        case 3: mode |= 0x80 | (rnd(2) ? 0x08 : 0); ext = rnd(2) ? 0x02 : 0; break;
        case 4: if (pb == 3) { pb = 4; mode = 0x30; } mode |= 0x40; src &= ~0xFFu; break;
        case 5: mode |= 0xC0 | (rnd(2) ? 0x08 : 0); ext = rnd(2) ? 0x02 : 0; src &= ~0xFFu; break;
        case 6: mode |= 0xC0; ext = 0x04; break;              /* solid fill */
        case 7:                                               /* system-source copy or expansion */
            /* Whole pixels and no clipping: how many bytes a row takes is then the same rule
             * on both sides. */
            mode |= 0x04 | (rnd(2) ? 0x80 : 0);
            width = width < pb ? pb : width - width % pb;
            sys_bytes = (mode & 0x80) ? ((width / pb + 7) >> 3) * height : ((width + 3) & ~3u) * height;
            src = 0;
            clip = 0;
            break;
        default:                                              /* system-source pattern */
            if (pb == 3) { pb = 4; mode = 0x30; }
            mode |= 0x44 | (rnd(2) ? 0x80 : 0);
            sys_bytes = (mode & 0x80) ? 8 : 64 * pb;
            src = 0;
            clip = 0;
            break;
        }
        gr(0x00, (u8)rnd(256)); gr(0x10, (u8)rnd(256)); gr(0x12, (u8)rnd(256)); gr(0x14, (u8)rnd(256));
        gr(0x01, (u8)rnd(256)); gr(0x11, (u8)rnd(256)); gr(0x13, (u8)rnd(256)); gr(0x15, (u8)rnd(256));
        gr16(0x20, width - 1);
        gr16(0x22, height - 1);
        gr16(0x24, dpitch);
        gr16(0x26, spitch);
        gr24(0x2C, src);
        gr(0x2F, clip);
        gr(0x30, mode);
        gr(0x32, rops[rnd(ARRAY_SIZE(rops))]);
        gr(0x33, ext);
        gr(0x34, (u8)rnd(256)); gr(0x35, (u8)rnd(256));
        gr(0x38, 0); gr(0x39, 0);
#ifdef TRACE
        printf("blit %d kind %u mode %x ext %x w %u h %u dp %u sp %u dst %x src %x clip %u rop %x key %x%x\n", n, kind,
               mode, ext, width, height, dpitch, spitch, dst, src, clip, gr_read(0x32), gr_read(0x35), gr_read(0x34));
#endif
        gr24(0x28, dst);
        gr(0x31, 0x02);
        for (u32 i = 0; i < sys_bytes; i++) mmio_write8(WINDOW, (u8)rnd(256));
        wait_idle();
    }
    uart_puts("cirrus-rand: done\n");
    for (;;) { cli(); hlt(); }
}
