/*
 * ports: port-I/O dispatch.
 * CMOS index/data, UART scratch register, fw_cfg signature, unassigned ports
 * (all-ones for 8/16/32-bit reads), port 0x92 A20 bit, string I/O.
 */
#include "rt.h"
GUEST("ports");

/* No PC or QEMU pc device decodes these (see README: QEMU's I/O map). */
static const u16 unassigned_ports[] = { 0x0100, 0x0504, 0x0600, 0x2000, 0x9000 };

static u8 cmos_read(u8 idx) { outb(0x70, idx); return inb(0x71); }
static void cmos_write(u8 idx, u8 v) { outb(0x70, idx); outb(0x71, v); }
static int is_bcd(u8 v, u8 max) { return (v & 0x0F) <= 9 && (v >> 4) <= 9 && v <= max; }

static void test_cmos(void)
{
    /* NVRAM bytes 0x38..0x3F: no RTC meaning, plain storage */
    u8 saved[8];
    for (int i = 0; i < 8; i++) saved[i] = cmos_read(0x38 + i);
    for (int i = 0; i < 8; i++) cmos_write(0x38 + i, (u8)(0xA5 ^ (i * 0x11)));
    for (int i = 0; i < 8; i++) {
        char what[32];
        snprintf(what, sizeof what, "CMOS[0x%x]", 0x38 + i);
        CHECK_EQ(what, cmos_read(0x38 + i), (u8)(0xA5 ^ (i * 0x11)));
    }
    /* bit 7 of the index port is the NMI mask, not part of the index */
    outb(0x70, 0x80 | 0x3A);
    CHECK_EQ("CMOS[0x3A] via index|0x80", inb(0x71), (u8)(0xA5 ^ 0x22));
    for (int i = 0; i < 8; i++) cmos_write(0x38 + i, saved[i]);
    outb(0x70, 0x0D);                   /* leave NMI enabled, harmless index */

    u8 a = cmos_read(0x0A), b = cmos_read(0x0B), d = cmos_read(0x0D);
    u8 sec = cmos_read(0x00), min = cmos_read(0x02), hour = cmos_read(0x04);
    info("CMOS status A=0x%x B=0x%x D=0x%x time %x:%x:%x", a, b, d, hour, min, sec);
    CHECK_EQ("CMOS status A (divider 32.768 kHz, 1024 Hz rate)", a & 0x7F, 0x26);
    CHECK_EQ("CMOS status B (24h, BCD, no interrupts)", b, 0x02);
    CHECK_EQ("CMOS status D (valid RAM and time)", d, 0x80);
    CHECK(is_bcd(sec, 0x59), "CMOS seconds not BCD 00-59: 0x%x", sec);
    CHECK(is_bcd(min, 0x59), "CMOS minutes not BCD 00-59: 0x%x", min);
    CHECK(is_bcd(hour, 0x23), "CMOS hours not BCD 00-23: 0x%x", hour);
}

static void test_uart_scratch(void)
{
    static const u8 pat[] = { 0x00, 0xFF, 0x5A, 0xA5, 0x3C };
    for (u32 i = 0; i < sizeof pat; i++) {
        outb(COM1 + UART_SCR, pat[i]);
        CHECK_EQ("UART scratch 0x3FF", inb(COM1 + UART_SCR), pat[i]);
    }
    /* LCR is readable too */
    CHECK_EQ("UART LCR", inb(COM1 + UART_LCR), 0x03);
}

static void test_fw_cfg_sig(void)
{
    char sig[5] = { 0 };
    outw(FW_CFG_PORT_SEL, FW_CFG_SIGNATURE);
    for (int i = 0; i < 4; i++) sig[i] = (char)inb(FW_CFG_PORT_DATA);
    info("fw_cfg signature \"%s\"", sig);
    CHECK(memcmp(sig, "QEMU", 4) == 0, "fw_cfg signature via 0x511 is \"%s\"", sig);

    /* string I/O: rep insb from the data port */
    char sig2[9] = { 0 };
    fw_cfg_select(FW_CFG_SIGNATURE);
    insb(FW_CFG_PORT_DATA, sig2, 4);
    CHECK(memcmp(sig2, "QEMU", 4) == 0, "rep insb from 0x511 gave \"%s\"", sig2);
    /* reading past the end of an item returns zeros */
    fw_cfg_select(FW_CFG_SIGNATURE);
    insb(FW_CFG_PORT_DATA, sig2, 8);
    CHECK(memcmp(sig2, "QEMU\0\0\0\0", 8) == 0, "fw_cfg read past item end is not zero");
}

static void test_unassigned(void)
{
    for (u32 i = 0; i < ARRAY_SIZE(unassigned_ports); i++) {
        u16 p = unassigned_ports[i];
        char what[48];
        outb(p, 0x12); outw(p, 0x1234); outl(p, 0x12345678);   /* writes are ignored */
        snprintf(what, sizeof what, "inb(0x%x) unassigned", p);
        CHECK_EQ(what, inb(p), 0xFF);
        snprintf(what, sizeof what, "inw(0x%x) unassigned", p);
        CHECK_EQ(what, inw(p), 0xFFFF);
        snprintf(what, sizeof what, "inl(0x%x) unassigned", p);
        CHECK_EQ(what, inl(p), 0xFFFFFFFFu);
    }
}

static void test_port92(void)
{
    u8 v = inb(0x92);
    info("port 0x92 reads 0x%x", v);
    CHECK((v & 1) == 0, "port 0x92 bit 0 (reset) reads as set: 0x%x", v);
    /* toggle A20 (bit 1) without ever writing bit 0, which resets the CPU */
    outb(0x92, (u8)((v | 0x02) & ~0x01));
    CHECK_EQ("port 0x92 after setting A20", inb(0x92) & 0x03, 0x02);
    outb(0x92, (u8)(v & ~0x03));
    CHECK_EQ("port 0x92 after clearing A20", inb(0x92) & 0x03, 0x00);
    outb(0x92, (u8)((v | 0x02) & ~0x01));   /* leave A20 enabled */
    CHECK_EQ("port 0x92 restored", inb(0x92) & 0x03, 0x02);
}

static void test_rep_outsb(void)
{
    /* string output to the UART; the harness sees this line on stdout */
    static const char msg[] = "ports: rep outsb to 0x3f8 ok\r\n";
    outsb(COM1 + UART_THR, msg, sizeof msg - 1);
    /* and a 16-bit string input from an unassigned port: all ones */
    u16 buf[4] = { 0, 0, 0, 0 };
    u32 n = 4;
    void *p = buf;
    __asm__ volatile("cld; rep insw" : "+D"(p), "+c"(n) : "d"(0x0504) : "memory");
    for (int i = 0; i < 4; i++) CHECK_EQ("rep insw from unassigned 0x504", buf[i], 0xFFFF);
}

void guest_main(void)
{
    info("start");
    test_cmos();
    test_uart_scratch();
    test_fw_cfg_sig();
    test_unassigned();
    test_port92();
    test_rep_outsb();
    info("%u checks", check_count);
}
