/*
 * rtl8139: a tiny RTL8139 driver in C mode that asks a real DHCP server for an address.
 * Finds 10ec:8139 (rev 0x10 under SwiftDM, 0x20 under QEMU), programs its I/O BAR and the PIRQ
 * link (IRQ 11), resets it, reads the station address from the 93C46 EEPROM by bit-banging
 * 9346CR (words 7-9) and compares it with IDR0-5, then sets up an 8 KiB receive ring (WRAP)
 * and broadcasts a DHCPDISCOVER through TSD/TSAD, retrying every ~2 s, until a DHCPOFFER for
 * its own transaction arrives. Prints "rtl8139: DHCPOFFER a.b.c.d from s.s.s.s" and PASS.
 * Also checks TOK/ROK arrive as INTx on IRQ 11 and that CAPR/CBR and BUFE move as expected.
 * Needs -netdev tap,...  -device rtl8139,netdev=... on a tap with a DHCP server
 * (NetworkTests runs dnsmasq).
 */
#include "rt.h"
GUEST("rtl8139");

#define IOBASE   0xC000
#define RXRING   0x300000u          /* 8 KiB + 16 + 1536 (WRAP) */
#define RXSIZE   8192u
#define TXBUF    0x310000u

#define IDR0 0x00
#define TSD0 0x10
#define TSAD0 0x20
#define RBSTART 0x30
#define CR 0x37
#define CAPR 0x38
#define CBR 0x3A
#define IMR 0x3C
#define ISR 0x3E
#define TCR 0x40
#define RCR 0x44
#define CFG9346 0x50
#define MSR 0x58
#define BMSR 0x64

static volatile u32 irq_count, isr_seen;
static u8 mac[6];
static const u32 xid = 0x5D3F1A2Bu;

static void on_irq11(struct irq_frame *f)
{
    u16 s = inw(IOBASE + ISR);
    isr_seen |= s;
    outw(IOBASE + ISR, s);
    irq_count++;
    pic_eoi(11);
}

/* 93C46 read of `word`: CS, then start bit + opcode 10 + 6 address bits, then 16 bits out. */
static u16 eeprom_read(u32 word)
{
    u32 cmd = (0x6u << 6) | (word & 0x3F);
    outb(IOBASE + CFG9346, 0x80);
    outb(IOBASE + CFG9346, 0x88);
    for (int i = 8; i >= 0; i--) {
        u8 di = (cmd >> i) & 1 ? 0x02 : 0;
        outb(IOBASE + CFG9346, 0x88 | di);
        outb(IOBASE + CFG9346, 0x8C | di);
    }
    outb(IOBASE + CFG9346, 0x88);
    u16 v = 0;
    for (int i = 0; i < 16; i++) {
        outb(IOBASE + CFG9346, 0x8C);
        v = (u16)(v << 1) | (inb(IOBASE + CFG9346) & 1);
        outb(IOBASE + CFG9346, 0x88);
    }
    outb(IOBASE + CFG9346, 0x00);
    return v;
}

static u16 ip_checksum(const u8 *p, u32 n)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < n; i += 2) sum += (u32)p[i] << 8 | p[i + 1];
    if (n & 1) sum += (u32)p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)~sum;
}

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }
static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static u32 get32(const u8 *p) { return (u32)get16(p) << 16 | get16(p + 2); }

/* Ethernet + IPv4 + UDP 68->67 + BOOTP DHCPDISCOVER, broadcast flag set. */
static u32 build_discover(u8 *f)
{
    memset(f, 0, 14 + 20 + 8 + 300);
    memset(f, 0xFF, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, 0x0800);
    u8 *ip = f + 14, *udp = ip + 20, *b = udp + 8;
    b[0] = 1; b[1] = 1; b[2] = 6;
    put32(b + 4, xid);
    put16(b + 10, 0x8000);
    memcpy(b + 28, mac, 6);
    put32(b + 236, 0x63825363);
    u8 *o = b + 240;
    *o++ = 53; *o++ = 1; *o++ = 1;                 /* DHCPDISCOVER */
    *o++ = 55; *o++ = 2; *o++ = 1; *o++ = 3;       /* subnet mask, router */
    *o++ = 255;
    u32 blen = 300;
    put16(udp + 0, 68); put16(udp + 2, 67); put16(udp + 4, (u16)(8 + blen));
    ip[0] = 0x45; put16(ip + 2, (u16)(20 + 8 + blen)); ip[8] = 64; ip[9] = 17;
    put32(ip + 16, 0xFFFFFFFFu);
    put16(ip + 10, ip_checksum(ip, 20));
    return 14 + 20 + 8 + blen;
}

static u32 tx_slot;
static void send_frame(const u8 *frame, u32 len)
{
    u32 n = tx_slot++ & 3;
    memcpy((void *)(TXBUF + n * 0x800), frame, len);
    outl(IOBASE + TSAD0 + 4 * n, TXBUF + n * 0x800);
    outl(IOBASE + TSD0 + 4 * n, len);              /* OWN clear: transmit */
    u64 t0 = rdtsc();
    while (!(inl(IOBASE + TSD0 + 4 * n) & 0x8000) && !tsc_elapsed(t0, TSC_SECOND)) cpu_relax();
    CHECK(inl(IOBASE + TSD0 + 4 * n) & 0xA000, "TSD%u OWN|TOK after transmit: %08x", n, inl(IOBASE + TSD0 + 4 * n));
}

/* Looks at one received frame; returns 1 if it is our DHCPOFFER. */
static int offer(const u8 *f, u32 len)
{
    if (len < 14 + 20 + 8 + 240 || get16(f + 12) != 0x0800) return 0;
    const u8 *ip = f + 14;
    u32 ihl = (ip[0] & 0xF) * 4;
    if (ip[9] != 17 || len < 14 + ihl + 8 + 240) return 0;
    const u8 *udp = ip + ihl, *b = udp + 8;
    if (get16(udp + 2) != 68 || b[0] != 2 || get32(b + 4) != xid || memcmp(b + 28, mac, 6)) return 0;
    if (get32(b + 236) != 0x63825363) return 0;
    const u8 *o = b + 240, *end = f + len;
    u32 type = 0, server = 0;
    while (o < end && *o != 255) {
        if (*o == 0) { o++; continue; }
        if (o + 2 > end || o + 2 + o[1] > end) break;
        if (o[0] == 53 && o[1] == 1) type = o[2];
        if (o[0] == 54 && o[1] == 4) server = get32(o + 2);
        o += 2 + o[1];
    }
    if (type != 2) return 0;
    u32 yi = get32(b + 16);
    printf("rtl8139: DHCPOFFER %u.%u.%u.%u from %u.%u.%u.%u\n", yi >> 24, (yi >> 16) & 255, (yi >> 8) & 255, yi & 255,
           server >> 24, (server >> 16) & 255, (server >> 8) & 255, server & 255);
    return 1;
}

void guest_main(void)
{
    cli();
    pic_route_one(11, on_irq11);
    sti();

    int bdf = pci_find(0x10EC, 0x8139);
    if (bdf < 0) fatal("no 10ec:8139 on bus 0");
    u32 slot = ((u32)bdf >> 3) & 31;
    info("RTL8139 at 00:%02x.0", slot);
    /* SwiftDM: rev 0x10 + RTL8139C (C mode only, Linux binds 8139too); QEMU: rev 0x20 +
     * RTL8139C+ (Linux binds 8139cp). This driver uses C mode, which both have. */
    u32 rev = pci_read8(bdf, 0x08);
    CHECK(rev == 0x10 || rev == 0x20, "revision %02x", rev);
    CHECK_EQ("class", pci_read32(bdf, 0x08) >> 8, 0x020000u);
    CHECK_EQ("interrupt pin", pci_read8(bdf, 0x3D), 1);
    pci_write32(bdf, 0x10, 0xFFFFFFFFu);
    CHECK_EQ("BAR0 probe (256 B I/O)", pci_read32(bdf, 0x10), 0xFFFFFF01u);
    pci_write32(bdf, 0x14, 0xFFFFFFFFu);
    CHECK_EQ("BAR1 probe (256 B memory)", pci_read32(bdf, 0x14), 0xFFFFFF00u);
    pci_write32(bdf, 0x14, 0);
    pci_write32(bdf, 0x10, IOBASE);
    pci_write16(bdf, 0x04, 0x0005);                /* I/O decode, bus master */
    pci_write8(PCI_BDF(0, 1, 0), 0x60 + ((slot - 1) & 3), 11);   /* INTA via the PIIX swizzle */

    outb(IOBASE + CR, 0x10);
    u64 t0 = rdtsc();
    while ((inb(IOBASE + CR) & 0x10) && !tsc_elapsed(t0, TSC_SECOND)) cpu_relax();
    CHECK_EQ("CR after reset (BUFE)", inb(IOBASE + CR), 0x01);
    CHECK_EQ("TCR hardware version (RTL8139C, or C+ at rev 0x20)", inl(IOBASE + TCR) & 0x7CC00000u,
             rev == 0x10 ? 0x74000000u : 0x74800000u);
    info("revision %02x, TCR version %08x", rev, inl(IOBASE + TCR) & 0x7CC00000u);
    CHECK_EQ("BMSR link up", inw(IOBASE + BMSR) & 0x0004, 0x0004);
    CHECK_EQ("MSR link (LINKB clear)", inb(IOBASE + MSR) & 0x04, 0);

    CHECK_EQ("EEPROM word 0", eeprom_read(0), 0x8129);
    CHECK_EQ("EEPROM vendor", eeprom_read(1), 0x10EC);
    for (u32 i = 0; i < 3; i++) {
        u16 w = eeprom_read(7 + i);
        mac[2 * i] = (u8)w;
        mac[2 * i + 1] = (u8)(w >> 8);
    }
    for (u32 i = 0; i < 6; i++) CHECK_EQ("IDR matches the EEPROM", inb(IOBASE + IDR0 + i), mac[i]);
    info("MAC %02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);

    memset((void *)RXRING, 0, RXSIZE + 16 + 1536);
    outl(IOBASE + RBSTART, RXRING);
    outl(IOBASE + RCR, 0x8E);                      /* WRAP, broadcast, multicast, physical match; 8 KiB */
    outl(IOBASE + TCR, 0x03000600);
    outw(IOBASE + IMR, 0x001F);                    /* ROK RER TOK TER RXOVW */
    outb(IOBASE + CR, 0x0C);                       /* RE, TE */

    static u8 frame[600];
    u32 len = build_discover(frame);
    u32 rx = 0, frames = 0;
    int got = 0;
    for (int attempt = 0; attempt < 8 && !got; attempt++) {
        send_frame(frame, len);
        info("DHCPDISCOVER sent (%u bytes, attempt %d)", len, attempt + 1);
        t0 = rdtsc();
        while (!got && !tsc_elapsed(t0, 2 * TSC_SECOND)) {
            if (inb(IOBASE + CR) & 0x01) { cpu_relax(); continue; }   /* BUFE */
            const u8 *entry = (const u8 *)(RXRING + rx);
            u16 status = (u16)(entry[0] | entry[1] << 8), elen = (u16)(entry[2] | entry[3] << 8);
            if (!(status & 1) || elen < 64 || elen > 1796) {
                failf("bad ring entry at %u: status %04x length %u", rx, status, elen);
                break;
            }
            frames++;
            got = offer(entry + 4, elen - 4u);
            rx = (rx + 4 + elen + 3) & ~3u;
            rx %= RXSIZE;
            outw(IOBASE + CAPR, (u16)(rx - 16));
            CHECK_EQ("CAPR reads back", inw(IOBASE + CAPR), (u16)(rx - 16));
        }
    }
    CHECK(got, "no DHCPOFFER after %u frames", frames);
    CHECK(irq_count > 0, "no INTx on IRQ 11");
    CHECK((isr_seen & 0x05) == 0x05, "ISR bits seen by the handler: %04x (want TOK and ROK)", isr_seen);
    info("%u frames received, %u interrupts, CBR %u", frames, irq_count, inw(IOBASE + CBR));
    finish();
}
