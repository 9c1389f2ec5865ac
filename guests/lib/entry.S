/*
 * SwiftDM test guests: 16-bit reset stub.
 *
 * The image is a flat 64 KiB "BIOS". The VMM maps it at 0xFFFF0000 (and
 * aliases it at 0xF0000). The CPU starts in real mode at 0xFFFFFFF0 with
 * CS base 0xFFFF0000, so IP == offset inside the image. This section is
 * placed by link.ld at image offset 0xF000 and is exactly 4 KiB long, so
 * the reset vector lands at image offset 0xFFF0.
 *
 * The stub loads a flat GDT, enters 32-bit protected mode, copies the whole
 * image to its link address (1 MiB), zeroes .bss, sets a stack and jumps to
 * the C entry point.
 */
#define SECT_OFF   0xF000          /* image offset of this section */
#define ROM_BASE   0xFFFF0000      /* where the image sits below 4 GiB */
#define IMG(x)     (SECT_OFF + ((x) - reset16_base))

        .section .reset16, "ax"
        .code16
        .globl reset16_base
reset16_base:
start16:
        cli
        cld
#ifdef FIRST_BYTE
        /* benchmark hook: report "first guest instruction" on COM1 */
        movw    $0x3f8, %dx
        movb    $FIRST_BYTE, %al
        outb    %al, %dx
#endif
        lgdtl   %cs:IMG(gdt_desc)
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $(ROM_BASE + IMG(start32))

        .code32
start32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        /* copy the image from ROM to its link address */
        movl    $ROM_BASE, %esi
        movl    $__image_start, %edi
        movl    $(0x10000 / 4), %ecx
        rep movsl
        lgdtl   gdt_desc_ram            /* use the RAM copy of the GDT from now on */
        /* zero .bss */
        movl    $__bss_start, %edi
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        xorl    %eax, %eax
        rep stosb
        movl    $__stack_top, %esp
        xorl    %ebp, %ebp
        movl    $c_entry, %eax
        jmp     *%eax

        .p2align 3
gdt:
        .quad   0x0000000000000000      /* null */
        /* accessed bits pre-set: the CPU must not write to the GDT in ROM */
        .quad   0x00CF9B000000FFFF      /* 0x08: code, flat 4 GiB, 32-bit */
        .quad   0x00CF93000000FFFF      /* 0x10: data, flat 4 GiB */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   ROM_BASE + IMG(gdt)
        .globl  gdt_desc_ram
gdt_desc_ram:                           /* same GDT, at its RAM copy */
        .word   gdt_end - gdt - 1
        .long   gdt

        /* reset vector: image offset 0xFFF0 */
        .org    0xFF0
        .code16
        jmp     start16
        .org    0x1000, 0xF4
