/* SwiftDM test guests: IDT, exception reporting, PIC, PIT, LAPIC, IOAPIC. */
#include "rt.h"

struct idt_entry { u16 off_lo, sel; u8 zero, type; u16 off_hi; } __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(8)));
static irq_handler_t handlers[256];
extern const u32 isr_table[256];
volatile u32 unexpected_irqs;

void idt_init(void)
{
    for (int i = 0; i < 256; i++) {
        u32 a = isr_table[i];
        idt[i].off_lo = (u16)a;
        idt[i].sel = 0x08;
        idt[i].zero = 0;
        idt[i].type = 0x8E;             /* present, ring 0, 32-bit interrupt gate */
        idt[i].off_hi = (u16)(a >> 16);
    }
    struct { u16 limit; u32 base; } __attribute__((packed)) d = { sizeof idt - 1, (u32)idt };
    __asm__ volatile("lidt %0" :: "m"(d));
}

void set_irq_handler(u8 vector, irq_handler_t h) { handlers[vector] = h; }

void isr_dispatch(struct irq_frame *f)
{
    if (handlers[f->vector]) { handlers[f->vector](f); return; }
    if (f->vector < 32) {
        u32 cr2;
        __asm__ volatile("mov %%cr2,%0" : "=r"(cr2));
        fatal("CPU exception %u error 0x%x at eip 0x%x (cr2 0x%x)",
              f->vector, f->error, f->eip, cr2);
    }
    unexpected_irqs++;
    printf("%s: unexpected interrupt vector 0x%x\n", guest_name, f->vector);
}

/* ---------------------------------------------------------------- 8259 */
#define PIC1 0x20
#define PIC2 0xA0

void pic_init(u8 base_master, u8 base_slave)
{
    outb(PIC1, 0x11);                   /* ICW1: edge, cascade, ICW4 needed */
    outb(PIC2, 0x11);
    outb(PIC1 + 1, base_master);        /* ICW2: vector base */
    outb(PIC2 + 1, base_slave);
    outb(PIC1 + 1, 0x04);               /* ICW3: slave on IRQ2 */
    outb(PIC2 + 1, 0x02);               /* ICW3: slave identity 2 */
    outb(PIC1 + 1, 0x01);               /* ICW4: 8086 mode, normal EOI */
    outb(PIC2 + 1, 0x01);
    pic_set_mask(0xFFFF);
}

void pic_set_mask(u16 mask)
{
    outb(PIC1 + 1, (u8)mask);
    outb(PIC2 + 1, (u8)(mask >> 8));
}

void pic_eoi(u8 irq)
{
    if (irq >= 8) outb(PIC2, 0x20);
    outb(PIC1, 0x20);
}

void pic_disable(void)
{
    pic_init(0xF0, 0xF8);
    pic_set_mask(0xFFFF);
}

/* ---------------------------------------------------------------- 8254 */
void pic_route_one(u8 irq, irq_handler_t h)
{
    lapic_virtual_wire();
    pic_init(PIC_VECTOR_BASE, PIC_VECTOR_BASE + 8);
    pic_set_mask(0xFFFF & ~((1 << 2) | (1 << irq)));
    set_irq_handler(PIC_VECTOR_BASE + irq, h);
}

void pit_periodic(u32 hz)
{
    u32 div = PIT_HZ / hz;
    outb(0x43, 0x34);                   /* channel 0, lo/hi, mode 2, binary */
    outb(0x40, (u8)div);
    outb(0x40, (u8)(div >> 8));
}

void pit_stop(void)
{
    outb(0x43, 0x30);                   /* channel 0, mode 0: one shot, then quiet */
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
}

/* ---------------------------------------------------------------- APICs */
u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
u32 lapic_id(void) { return lapic_read(0x20) >> 24; }
void lapic_eoi(void) { lapic_write(0xB0, 0); }

void lapic_enable(u8 spurious_vector)
{
    lapic_write(0x80, 0);                               /* TPR: accept all */
    lapic_write(0xF0, 0x100 | spurious_vector);         /* SVR: software enable */
}

void lapic_virtual_wire(void)
{
    /* what a BIOS does: the PIC reaches the CPU through LINT0 as ExtINT.
     * At reset LVT0 is masked, and KVM (like hardware) then drops PIC
     * interrupts; LVT writes only stick once the APIC is software-enabled. */
    lapic_enable(0xFF);
    lapic_write(0x350, 0x700);          /* LVT LINT0: ExtINT, unmasked */
    lapic_write(0x360, 0x400);          /* LVT LINT1: NMI */
}

u32 ioapic_read(u32 reg)
{
    mmio_write32(IOAPIC_BASE, reg);
    return mmio_read32(IOAPIC_BASE + 0x10);
}

void ioapic_write(u32 reg, u32 v)
{
    mmio_write32(IOAPIC_BASE, reg);
    mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(u32 pin, u8 vector, u8 dest_apic, int masked)
{
    ioapic_write(0x11 + 2 * pin, (u32)dest_apic << 24);
    ioapic_write(0x10 + 2 * pin, vector | (masked ? 0x10000u : 0));
}
