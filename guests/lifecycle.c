/*
 * lifecycle: every way a PC guest resets or powers off, in one guest that survives its own
 * resets. A CMOS NVRAM byte (0x40, kept across resets as on real hardware) counts boots; each
 * boot prints "lifecycle: boot N" and ends in a different way:
 *   1: PIIX3 reset control register (0xCF9 <- 0x06)
 *   2: i8042 pulse-reset command (0x64 <- 0xFE)
 *   3: System Control Port A fast reset (0x92 bit 0)
 *   4: ACPI S5 through PIIX4 PM (SLP_TYP 0 | SLP_EN): the VMM powers off (exit status 0)
 * The test checks the sequence, and that -no-reboot ends after boot 1 and -no-shutdown keeps
 * the process alive after boot 4. A boot counter already at 4 or more starts again at 1.
 * (A triple fault cannot be tested on this lab's KVM: its instruction emulator fails on
 * exception delivery through an empty IDT, under QEMU as under swiftdm.)
 */
#include "rt.h"
GUEST("lifecycle");

#define CMOS_BOOT_COUNT 0x40
#define PM_BASE 0x600
#define PIIX4_PM PCI_BDF(0, 1, 3)

static u8 cmos_read(u8 index) { outb(0x70, index); return inb(0x71); }
static void cmos_write(u8 index, u8 value) { outb(0x70, index); outb(0x71, value); }

static void __attribute__((noreturn)) hang(const char *what)
{
    fatal("%s did not reset or power off the machine", what);
}

void guest_main(void)
{
    u8 boot = cmos_read(CMOS_BOOT_COUNT);
    if (boot >= 4) boot = 0;
    boot++;
    cmos_write(CMOS_BOOT_COUNT, boot);
    info("boot %u", boot);
    switch (boot) {
    case 1:
        outb(0xCF9, 0x02);
        outb(0xCF9, 0x06);
        hang("0xCF9 reset");
    case 2:
        outb(0x64, 0xFE);
        hang("i8042 pulse reset");
    case 3:
        outb(0x92, inb(0x92) | 0x01);
        hang("port 0x92 fast reset");
    default:
        pci_write32(PIIX4_PM, 0x40, PM_BASE | 1);
        pci_write8(PIIX4_PM, 0x80, 0x01);
        cmos_write(CMOS_BOOT_COUNT, 0);
        info("powering off");
        outw(PM_BASE + 4, (0 << 10) | (1 << 13));
        hang("ACPI S5");
    }
}
