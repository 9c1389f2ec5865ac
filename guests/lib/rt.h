/* SwiftDM test guests: tiny freestanding runtime (32-bit protected mode). */
#ifndef GUEST_RT_H
#define GUEST_RT_H

typedef unsigned char      u8;
typedef unsigned short     u16;
typedef unsigned int       u32;
typedef unsigned long long u64;
typedef int                i32;
typedef unsigned int       size_t;
#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- port and MMIO accessors ---- */
static inline void outb(u16 p, u8 v)  { __asm__ volatile("outb %0,%1" :: "a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0,%1" :: "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0,%1" :: "a"(v), "Nd"(p)); }
static inline u8  inb(u16 p) { u8 v;  __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1,%0" : "=a"(v) : "Nd"(p)); return v; }
static inline void insb(u16 p, void *buf, u32 n)
{ __asm__ volatile("cld; rep insb" : "+D"(buf), "+c"(n) : "d"(p) : "memory"); }
static inline void outsb(u16 p, const void *buf, u32 n)
{ __asm__ volatile("cld; rep outsb" : "+S"(buf), "+c"(n) : "d"(p) : "memory"); }

static inline u8  mmio_read8(u32 a)  { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u32 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u32 a) { return *(volatile u32 *)a; }
static inline void mmio_write8(u32 a, u8 v)   { *(volatile u8 *)a = v; }
static inline void mmio_write16(u32 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u32 a, u32 v) { *(volatile u32 *)a = v; }

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
static inline u32 bswap32(u32 v) { return __builtin_bswap32(v); }

/* ---- libc-lite ---- */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* ---- UART (COM1, 0x3F8) and printf-lite ---- */
#define COM1 0x3F8
void uart_init(void);
void uart_putc(char c);
void uart_puts(const char *s);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vsnprintf(char *buf, size_t n, const char *fmt, __builtin_va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- guest framework ---- */
/* Each guest defines GUEST_NAME via guest_name and implements guest_main(). */
extern const char guest_name[];
void guest_main(void);
#define GUEST(name) const char guest_name[] = name

/* progress line "NAME: ..." */
void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* record a failed check (first reason is kept); returns 0 */
int failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern unsigned check_count, fail_count;
#define CHECK(cond, ...) ((++check_count, (cond)) ? 1 : failf(__VA_ARGS__))
#define CHECK_EQ(what, got, exp) do {                                          \
        u32 _g = (u32)(got), _e = (u32)(exp);                                  \
        CHECK(_g == _e, "%s: got 0x%x, expected 0x%x", (what), _g, _e);        \
    } while (0)
/* end the guest now: prints PASS/FAIL line and leaves via isa-debug-exit */
void __attribute__((noreturn)) finish(void);
void __attribute__((noreturn)) fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* isa-debug-exit at 0xf4: VMM exits with status (code << 1) | 1 */
#define DEBUG_EXIT_PORT 0xF4
void __attribute__((noreturn)) debug_exit(u8 code);

/* The test disks' pattern: sector n starts with n (LE32) and is filled with n's low byte. */
int pattern_sector_ok(const u8 *p, u32 n);

/* ---- timing: TSC based, no calibration needed for watchdogs ---- */
/* true when `cycles` TSC ticks have passed since `start` */
static inline int tsc_elapsed(u64 start, u64 cycles) { return rdtsc() - start >= cycles; }
#define TSC_SECOND 3000000000ULL   /* ~1 s on a 2-3.5 GHz host: watchdogs only */

/* ---- PCI config mechanism #1 (0xCF8/0xCFC) ---- */
#define PCI_BDF(b, d, f) (((u32)(b) << 8) | ((u32)(d) << 3) | (u32)(f))
u32 pci_cfg_addr(u32 bdf, u32 off);
u32 pci_read32(u32 bdf, u32 off);
u16 pci_read16(u32 bdf, u32 off);
u8  pci_read8(u32 bdf, u32 off);
void pci_write32(u32 bdf, u32 off, u32 v);
void pci_write16(u32 bdf, u32 off, u16 v);
void pci_write8(u32 bdf, u32 off, u8 v);
/* first function on bus 0 with this vendor:device, or -1 */
int pci_find(u16 vendor, u16 device);

/* ---- fw_cfg (PIO 0x510/0x511, DMA 0x514) ---- */
#define FW_CFG_PORT_SEL   0x510
#define FW_CFG_PORT_DATA  0x511
#define FW_CFG_PORT_DMA   0x514
#define FW_CFG_SIGNATURE  0x0000
#define FW_CFG_ID         0x0001
#define FW_CFG_FILE_DIR   0x0019
#define FW_CFG_DMA_ERROR  0x01
#define FW_CFG_DMA_READ   0x02
#define FW_CFG_DMA_SKIP   0x04
#define FW_CFG_DMA_SELECT 0x08
#define FW_CFG_DMA_WRITE  0x10
struct fw_cfg_dma_access {     /* all fields big-endian */
    u32 control;
    u32 length;
    u64 address;
} __attribute__((packed, aligned(16)));
struct fw_cfg_file {           /* directory entry, big-endian numbers */
    u32 size;
    u16 select;
    u16 reserved;
    char name[56];
};
void fw_cfg_select(u16 key);
void fw_cfg_read(void *buf, u32 len);
/* run one DMA descriptor at `d` (caller fills it, big-endian); returns the
 * host-endian control word after completion, or 0xFFFFFFFF on timeout */
u32 fw_cfg_dma_run(volatile struct fw_cfg_dma_access *d);
u32 fw_cfg_dma(u32 control, void *buf, u32 len);
/* look a file up in the directory; returns its size, or -1 */
int fw_cfg_find_file(const char *name, u16 *select);

/* ---- interrupts ---- */
struct irq_frame {
    u32 edi, esi, ebp, esp, ebx, edx, ecx, eax;
    u32 vector, error;
    u32 eip, cs, eflags;
};
typedef void (*irq_handler_t)(struct irq_frame *f);
void idt_init(void);
void set_irq_handler(u8 vector, irq_handler_t h);
extern volatile u32 unexpected_irqs;

/* 8259 PIC pair */
void pic_init(u8 base_master, u8 base_slave);
void pic_set_mask(u16 mask);   /* bit n masks IRQ n */
void pic_eoi(u8 irq);
void pic_disable(void);        /* remap to 0xF0/0xF8 and mask everything */
/* legacy PIC mode for one device: LAPIC virtual wire, PIC vectors from 0x20, only the cascade
   and ISA line `irq` unmasked, `h` on its vector. Call with interrupts off. */
#define PIC_VECTOR_BASE 0x20
void pic_route_one(u8 irq, irq_handler_t h);

/* 8254 PIT channel 0, mode 2 (rate generator) */
#define PIT_HZ 1193182
void pit_periodic(u32 hz);
void pit_stop(void);

/* Local APIC (xAPIC MMIO) and IOAPIC */
#define LAPIC_BASE  0xFEE00000u
#define IOAPIC_BASE 0xFEC00000u
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
void lapic_enable(u8 spurious_vector);
void lapic_eoi(void);
void lapic_virtual_wire(void);     /* SVR on, LINT0 = ExtINT, LINT1 = NMI */
u32 lapic_id(void);
u32 ioapic_read(u32 reg);
void ioapic_write(u32 reg, u32 v);
/* route IOAPIC pin to vector (fixed, physical, edge, active high) on dest */
void ioapic_route(u32 pin, u8 vector, u8 dest_apic, int masked);

/* 16550 UART registers */
#define UART_THR 0
#define UART_RBR 0
#define UART_IER 1
#define UART_IIR 2
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#endif
