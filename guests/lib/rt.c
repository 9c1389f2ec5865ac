/* SwiftDM test guests: runtime (libc-lite, UART, printf, framework, PCI, fw_cfg). */
#include "rt.h"

/* ------------------------------------------------------------ libc-lite */
void *memcpy(void *d, const void *s, size_t n)
{
    u8 *dp = d; const u8 *sp = s;
    while (n--) *dp++ = *sp++;
    return d;
}
void *memset(void *d, int c, size_t n)
{
    u8 *dp = d;
    while (n--) *dp++ = (u8)c;
    return d;
}
int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x - *y;
    return 0;
}
size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

int pattern_sector_ok(const u8 *p, u32 n)
{
    if (*(const u32 *)p != n) return 0;
    for (u32 i = 4; i < 512; i++) if (p[i] != (u8)n) return 0;
    return 1;
}
int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b) return (u8)*a - (u8)*b;
        if (!*a) return 0;
    }
    return 0;
}
int strcmp(const char *a, const char *b) { return strncmp(a, b, 0xFFFFFFFFu); }

/* ------------------------------------------------------------ UART */
void uart_init(void)
{
    outb(COM1 + UART_IER, 0x00);        /* no interrupts */
    outb(COM1 + UART_LCR, 0x80);        /* DLAB */
    outb(COM1 + 0, 0x01);               /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + UART_LCR, 0x03);        /* 8N1, DLAB off */
    outb(COM1 + UART_FCR, 0x07);        /* FIFO on, clear both */
    outb(COM1 + UART_MCR, 0x03);        /* DTR|RTS, no loopback, OUT2 off */
}

void uart_putc(char c)
{
    /* bounded wait for THR empty: never hang on a broken LSR */
    for (u32 i = 0; i < 100000; i++)
        if (inb(COM1 + UART_LSR) & 0x20) break;
    outb(COM1 + UART_THR, (u8)c);
}

void uart_puts(const char *s)
{
    while (*s) {
        if (*s == '\n') uart_putc('\r');
        uart_putc(*s++);
    }
}

/* ------------------------------------------------------------ printf-lite */
struct out { char *buf; size_t n, len; };

/* v /= base, returns the remainder (no libgcc: two 32-bit divl steps) */
static unsigned divmod64(u64 *v, u32 base)
{
    u32 hi = (u32)(*v >> 32), lo = (u32)*v, qhi = hi / base, r = hi % base, qlo;
    __asm__("divl %4" : "=a"(qlo), "=d"(r) : "a"(lo), "d"(r), "rm"(base));
    *v = ((u64)qhi << 32) | qlo;
    return r;
}

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->n) o->buf[o->len] = c;
    o->len++;
}

int vsnprintf(char *buf, size_t n, const char *fmt, __builtin_va_list ap)
{
    struct out o = { buf, n, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') { put(&o, *fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, left = 0;
        if (*fmt == '-') { left = 1; fmt++; }
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        int longlong = 0;
        while (*fmt == 'l') { longlong++; fmt++; }
        char tmp[24];
        int tn = 0;
        const char *s = tmp;
        switch (*fmt) {
        case 'c': tmp[tn++] = (char)__builtin_va_arg(ap, int); break;
        case 's': s = __builtin_va_arg(ap, const char *); if (!s) s = "(null)"; tn = strlen(s); break;
        case '%': tmp[tn++] = '%'; break;
        case 'd': case 'u': case 'x': case 'X': case 'p': {
            u64 v;
            int neg = 0;
            unsigned base = (*fmt == 'd' || *fmt == 'u') ? 10 : 16;
            if (*fmt == 'p') { v = (u32)__builtin_va_arg(ap, void *); pad = '0'; width = 8; }
            else if (longlong >= 2) v = __builtin_va_arg(ap, u64);
            else if (*fmt == 'd') { i32 x = __builtin_va_arg(ap, i32); if (x < 0) { neg = 1; v = (u64)(-(long long)x); } else v = (u64)x; }
            else v = __builtin_va_arg(ap, u32);
            const char *digits = (*fmt == 'X') ? "0123456789ABCDEF" : "0123456789abcdef";
            char rev[24]; int rn = 0;
            do { rev[rn++] = digits[divmod64(&v, base)]; } while (v);
            if (neg) tmp[tn++] = '-';
            while (rn) tmp[tn++] = rev[--rn];
            break;
        }
        default: tmp[tn++] = '%'; tmp[tn++] = *fmt; break;
        }
        if (!left) for (int i = tn; i < width; i++) put(&o, pad);
        for (int i = 0; i < tn; i++) put(&o, s[i]);
        if (left) for (int i = tn; i < width; i++) put(&o, ' ');
        if (!*fmt) break;
    }
    if (o.n) o.buf[o.len < o.n ? o.len : o.n - 1] = 0;
    return (int)o.len;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    __builtin_va_end(ap);
    return r;
}

int printf(const char *fmt, ...)
{
    char buf[256];
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    int r = vsnprintf(buf, sizeof buf, fmt, ap);
    __builtin_va_end(ap);
    uart_puts(buf);
    return r;
}

/* ------------------------------------------------------------ framework */
unsigned check_count, fail_count;
static char first_failure[160];

void info(const char *fmt, ...)
{
    char buf[200];
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    __builtin_va_end(ap);
    printf("%s: %s\n", guest_name, buf);
}

int failf(const char *fmt, ...)
{
    char buf[160];
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    __builtin_va_end(ap);
    printf("%s: check failed: %s\n", guest_name, buf);
    if (!fail_count++) memcpy(first_failure, buf, sizeof buf);
    return 0;
}

void debug_exit(u8 code)
{
    outb(DEBUG_EXIT_PORT, code);
    /* the VMM should be gone; if not, say so and stop */
    uart_puts("debug-exit did not terminate the VM\n");
    for (;;) { cli(); hlt(); }
}

void finish(void)
{
    if (fail_count == 0) {
        printf("PASS %s\n", guest_name);
        debug_exit(0);
    }
    printf("FAIL %s: %s (%u of %u checks failed)\n", guest_name, first_failure,
           fail_count, check_count);
    debug_exit(1);
}

void fatal(const char *fmt, ...)
{
    char buf[160];
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    __builtin_va_end(ap);
    failf("%s", buf);
    finish();
}

void __attribute__((section(".text.c_entry"), noreturn)) c_entry(void)
{
    uart_init();
    idt_init();
    guest_main();
    finish();
}

/* ------------------------------------------------------------ PCI */
u32 pci_cfg_addr(u32 bdf, u32 off) { return 0x80000000u | (bdf << 8) | (off & 0xFC); }
u32 pci_read32(u32 bdf, u32 off) { outl(0xCF8, pci_cfg_addr(bdf, off)); return inl(0xCFC); }
u16 pci_read16(u32 bdf, u32 off) { outl(0xCF8, pci_cfg_addr(bdf, off)); return inw(0xCFC + (off & 2)); }
u8  pci_read8(u32 bdf, u32 off)  { outl(0xCF8, pci_cfg_addr(bdf, off)); return inb(0xCFC + (off & 3)); }
void pci_write32(u32 bdf, u32 off, u32 v) { outl(0xCF8, pci_cfg_addr(bdf, off)); outl(0xCFC, v); }
void pci_write16(u32 bdf, u32 off, u16 v) { outl(0xCF8, pci_cfg_addr(bdf, off)); outw(0xCFC + (off & 2), v); }
void pci_write8(u32 bdf, u32 off, u8 v)   { outl(0xCF8, pci_cfg_addr(bdf, off)); outb(0xCFC + (off & 3), v); }

int pci_find(u16 vendor, u16 device)
{
    u32 want = ((u32)device << 16) | vendor;
    for (u32 dev = 0; dev < 32; dev++) {
        u32 id0 = pci_read32(PCI_BDF(0, dev, 0), 0);
        if (id0 == 0xFFFFFFFFu) continue;
        u32 nfn = (pci_read8(PCI_BDF(0, dev, 0), 0x0E) & 0x80) ? 8 : 1;
        for (u32 fn = 0; fn < nfn; fn++)
            if (pci_read32(PCI_BDF(0, dev, fn), 0) == want)
                return (int)PCI_BDF(0, dev, fn);
    }
    return -1;
}

/* ------------------------------------------------------------ fw_cfg */
void fw_cfg_select(u16 key) { outw(FW_CFG_PORT_SEL, key); }
void fw_cfg_read(void *buf, u32 len) { insb(FW_CFG_PORT_DATA, buf, len); }

u32 fw_cfg_dma_run(volatile struct fw_cfg_dma_access *d)
{
    u64 a = (u32)d;
    outl(FW_CFG_PORT_DMA, bswap32((u32)(a >> 32)));
    outl(FW_CFG_PORT_DMA + 4, bswap32((u32)a));     /* this write starts it */
    /* control reaches 0 (done) or keeps only the error bit */
    u64 t0 = rdtsc();
    for (;;) {
        u32 c = bswap32(d->control);
        if ((c & ~FW_CFG_DMA_ERROR) == 0) return c;
        if (tsc_elapsed(t0, 2 * TSC_SECOND)) return 0xFFFFFFFFu;
        cpu_relax();
    }
}

static struct fw_cfg_dma_access dma_desc;

u32 fw_cfg_dma(u32 control, void *buf, u32 len)
{
    dma_desc.control = bswap32(control);
    dma_desc.length = bswap32(len);
    dma_desc.address = (u64)bswap32((u32)buf) << 32;   /* big-endian 64-bit */
    return fw_cfg_dma_run(&dma_desc);
}

int fw_cfg_find_file(const char *name, u16 *select)
{
    u32 count;
    fw_cfg_select(FW_CFG_FILE_DIR);
    fw_cfg_read(&count, 4);
    count = bswap32(count);
    for (u32 i = 0; i < count && i < 4096; i++) {
        struct fw_cfg_file f;
        fw_cfg_read(&f, sizeof f);
        if (strncmp(f.name, name, sizeof f.name) == 0) {
            if (select) *select = (u16)((f.select >> 8) | (f.select << 8));
            return (int)bswap32(f.size);
        }
    }
    return -1;
}
