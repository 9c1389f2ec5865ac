/*
 * s3: ACPI S3 (suspend to RAM) the way an OS enters it, and what the firmware sees on wake-up.
 * First boot: programs the PIIX4 PM base, leaves a marker in RAM and writes SLP_TYP 1 | SLP_EN
 * to PM1_CNT (1 is S3 in SeaBIOS's, QEMU's and Xen's _S3); the VMM stops the CPU (QMP SUSPEND,
 * status "suspended"). The test sends `system_wakeup`: the CPU starts again at the reset
 * vector and this firmware finds CMOS shutdown status 0xFE (what sends SeaBIOS to the OS's
 * waking vector), its marker still in RAM, the PM base still programmed and WAK_STS set.
 * Passes on QEMU 7.2 too.
 */
#include "rt.h"
GUEST("s3");

#define PM_BASE 0x600
#define PIIX4_PM PCI_BDF(0, 1, 3)
#define CMOS_SHUTDOWN_STATUS 0x0F
#define WAK_STS 0x8000
#define MARKER ((volatile u32 *)0x00800000)   /* 8 MiB: above the image, its bss and stack */
#define MAGIC 0x53335333u

static u8 cmos_read(u8 index) { outb(0x70, index); return inb(0x71); }
static void cmos_write(u8 index, u8 value) { outb(0x70, index); outb(0x71, value); }

void guest_main(void)
{
    u8 status = cmos_read(CMOS_SHUTDOWN_STATUS);
    if (status != 0xFE) {
        pci_write32(PIIX4_PM, 0x40, PM_BASE | 1);
        pci_write8(PIIX4_PM, 0x80, 0x01);
        outw(PM_BASE, WAK_STS);   /* write-one-to-clear, as an OS before sleeping */
        *MARKER = MAGIC;
        info("suspending to RAM");
        outw(PM_BASE + 4, (1 << 10) | (1 << 13));
        cli();
        for (;;) hlt();
    }
    cmos_write(CMOS_SHUTDOWN_STATUS, 0);
    info("woke up (shutdown status 0x%x)", status);
    CHECK_EQ("RAM marker", *MARKER, MAGIC);
    CHECK_EQ("PM base", pci_read32(PIIX4_PM, 0x40) & 0xFFC0, PM_BASE);
    CHECK_EQ("PM1_STS.WAK_STS", inw(PM_BASE) & WAK_STS, WAK_STS);
    finish();
}
