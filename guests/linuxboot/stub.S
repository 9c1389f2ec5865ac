/*
 * A stand-in "kernel" for direct-kernel-boot tests: the real-mode part of a bzImage (boot
 * sector with a protocol 2.15 setup header, then setup code) and nothing else. The test or
 * benchmark appends any protected-mode payload and sets syssize (0x1F4) to its length / 16.
 *
 * Entered as a boot loader enters Linux (boot.rst): real mode, CS = setup segment + 0x20,
 * IP = 0, DS = ES = SS = setup segment. It switches to flat 32-bit protected mode and reports
 * over COM1 what the loader handed it:
 *   LINUXBOOT cmdline=[<the command line at cmd_line_ptr>]
 *   LINUXBOOT initrd addr=<ramdisk_image> size=<ramdisk_size> sum=<checksum of the initrd>
 *   LINUXBOOT kernel size=<syssize*16> sum=<checksum of that many bytes at 1 MiB>
 *   LINUXBOOT header loader=<type_of_loader> loadflags=<> heap_end=<> cmdline_ptr=<> vid_mode=<>
 *   LINUXBOOT done
 * (all numbers 8 hex digits), then writes 0x31 to isa-debug-exit at 0xF4 (exit status 99).
 * Checksum: s = 0; for each 32-bit little-endian word w (the tail zero-padded): s = rol(s, 1) + w.
 */
    .code16
    .text
    .globl _start
_start:
    .org 0x1F1
    .byte 2                 /* setup_sects: 2 sectors after the boot sector */
    .word 0                 /* root_flags */
    .long 0                 /* syssize: patched to payload length / 16 */
    .word 0                 /* ram_size */
    .word 0                 /* vid_mode */
    .word 0                 /* root_dev */
    .word 0xAA55            /* boot_flag */
    .byte 0xEB, setup_start - 0x202     /* 0x200: short jump to the setup code */
    .ascii "HdrS"           /* 0x202 */
    .word 0x020F            /* 0x206 version 2.15 */
    .long 0                 /* 0x208 realmode_swtch */
    .word 0                 /* 0x20C start_sys_seg */
    .word 0                 /* 0x20E kernel_version */
    .byte 0                 /* 0x210 type_of_loader */
    .byte 0x01              /* 0x211 loadflags: LOADED_HIGH */
    .word 0                 /* 0x212 setup_move_size */
    .long 0x100000          /* 0x214 code32_start */
    .long 0                 /* 0x218 ramdisk_image */
    .long 0                 /* 0x21C ramdisk_size */
    .long 0                 /* 0x220 bootsect_kludge */
    .word 0                 /* 0x224 heap_end_ptr */
    .byte 0, 0              /* 0x226 ext_loader_ver, ext_loader_type */
    .long 0                 /* 0x228 cmd_line_ptr */
    .long 0x7FFFFFFF        /* 0x22C initrd_addr_max */
    .long 0x200000          /* 0x230 kernel_alignment */
    .byte 0, 0              /* 0x234 relocatable_kernel, min_alignment */
    .word 0                 /* 0x236 xloadflags */
    .long 2047              /* 0x238 cmdline_size */
    .long 0                 /* 0x23C hardware_subarch */
    .quad 0                 /* 0x240 hardware_subarch_data */
    .long 0, 0              /* 0x248 payload_offset, payload_length */
    .quad 0                 /* 0x250 setup_data */
    .quad 0x1000000         /* 0x258 pref_address */
    .long 0x100000          /* 0x260 init_size */
    .long 0, 0              /* 0x264 handover_offset, 0x268 kernel_info_offset */

setup_start:
    cli
    cld
    xorl %ebp, %ebp
    movw %ds, %bp
    shll $4, %ebp           /* %ebp = linear address of the setup (offset 0 of this file) */
    movl %ebp, %eax
    addl $gdt, %eax
    movl %eax, gdtr + 2
    lgdtl gdtr
    movl %ebp, %eax
    addl $protected, %eax
    movl %eax, far_target
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *far_target

    .code32
protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leal 0xFFF0(%ebp), %esp

    /* print the string at LABEL, then the header field at OFFSET loaded with LOAD, in hex */
    .macro field label, load, offset
    leal \label(%ebp), %esi
    call puts
    \load \offset(%ebp), %eax
    call puthex
    .endm
    /* print the string at LABEL, then the checksum of %ecx bytes at %esi */
    .macro sum label
    pushl %esi
    pushl %ecx
    leal \label(%ebp), %esi
    call puts
    popl %ecx
    popl %esi
    call checksum
    call puthex
    .endm

    leal s_cmdline(%ebp), %esi
    call puts
    movl 0x228(%ebp), %esi
    movl $4096, %ecx
    call putsn
    leal s_close(%ebp), %esi
    call puts

    field s_initrd, movl, 0x218
    field s_size, movl, 0x21C
    movl 0x218(%ebp), %esi
    movl 0x21C(%ebp), %ecx
    sum s_sum

    leal s_kernel(%ebp), %esi
    call puts
    movl 0x1F4(%ebp), %ecx
    shll $4, %ecx
    movl %ecx, %eax
    call puthex
    movl $0x100000, %esi
    sum s_sum

    field s_header, movzbl, 0x210
    field s_loadflags, movzbl, 0x211
    field s_heap, movzwl, 0x224
    field s_ptr, movl, 0x228
    field s_vid, movzwl, 0x1FA
    leal s_done(%ebp), %esi
    call puts

    movb $0x31, %al
    outb %al, $0xF4
1:  hlt
    jmp 1b

/* %al: one character to COM1, once the transmitter holding register is empty. */
putc:
    pushl %edx
    pushl %eax
    movw $0x3FD, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    popl %eax
    movw $0x3F8, %dx
    outb %al, %dx
    popl %edx
    ret

/* %esi: NUL-terminated string. */
puts:
    movl $0xFFFFFFFF, %ecx
/* %esi: string, %ecx: at most this many characters. */
putsn:
    pushl %esi
    pushl %eax
    pushl %ecx
1:  jecxz 2f
    lodsb
    testb %al, %al
    jz 2f
    call putc
    decl %ecx
    jmp 1b
2:  popl %ecx
    popl %eax
    popl %esi
    ret

/* %eax: printed as 8 hex digits. */
puthex:
    pushl %ebx
    pushl %ecx
    pushl %eax
    movl %eax, %ebx
    movl $8, %ecx
1:  roll $4, %ebx
    movl %ebx, %eax
    andl $0xF, %eax
    cmpb $10, %al
    jb 2f
    addb $('a' - '0' - 10), %al
2:  addb $'0', %al
    call putc
    decl %ecx
    jnz 1b
    popl %eax
    popl %ecx
    popl %ebx
    ret

/* %esi: address, %ecx: length; returns the checksum in %eax. */
checksum:
    pushl %ebx
    pushl %edx
    pushl %edi
    pushl %esi
    xorl %edx, %edx
    movl %ecx, %ebx
    shrl $2, %ecx
    jz 2f
1:  roll $1, %edx
    addl (%esi), %edx
    addl $4, %esi
    decl %ecx
    jnz 1b
2:  andl $3, %ebx
    jz 4f
    xorl %eax, %eax
    xorl %ecx, %ecx
3:  movzbl (%esi), %edi
    shll %cl, %edi
    orl %edi, %eax
    incl %esi
    addb $8, %cl
    decl %ebx
    jnz 3b
    roll $1, %edx
    addl %eax, %edx
4:  movl %edx, %eax
    popl %esi
    popl %edi
    popl %edx
    popl %ebx
    ret

    .p2align 3
gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF    /* 0x08: flat 32-bit code, accessed */
    .quad 0x00CF93000000FFFF    /* 0x10: flat data, accessed */
gdtr:
    .word 23
    .long 0
far_target:
    .long 0
    .word 0x08

s_cmdline:   .asciz "LINUXBOOT cmdline=["
s_close:     .asciz "]\r\n"
s_initrd:    .asciz "LINUXBOOT initrd addr="
s_size:      .asciz " size="
s_sum:       .asciz " sum="
s_kernel:    .asciz "\r\nLINUXBOOT kernel size="
s_header:    .asciz "\r\nLINUXBOOT header loader="
s_loadflags: .asciz " loadflags="
s_heap:      .asciz " heap_end="
s_ptr:       .asciz " cmdline_ptr="
s_vid:       .asciz " vid_mode="
s_done:      .asciz "\r\nLINUXBOOT done\r\n"

    .fill 0x600 - (. - _start), 1, 0
