/* hvm-vga payload: four sectors of 16-bit real-mode code (the MBR at 0x7c00 loads the other three
   behind itself) that exercise the std VGA the device model emulates (xl vga="stdvga": PCI
   1234:1111).
   1. Text: BIOS mode 3 and a line through the VGA BIOS (int 10h teletype), then LAB-VGA-TEXT on
      COM1; waits ~12 s of BIOS ticks so the lab can take pictures.
   2. Linear framebuffer: finds the VGA's BAR0 by PCI config mechanism #1, programs 1024x768x32
      through the Bochs VBE registers (0x1ce/0x1cf), fills the frame with 8 vertical colour bars
      through "unreal mode" (FS with a 4 GiB limit), prints LAB-VGA-LFB <BAR0 in hex> on COM1.
      3 MiB of stores: fast only when the device model relocated the VRAM to the BAR (one ioreq
      per store otherwise), so the time to this line also tells whether that worked.
   3. Waits ~12 s, draws a white 64x64 box at (32,32), prints LAB-VGA-BOX: a change the display
      must pick up (Xen's dirty-VRAM tracking, or a full redraw). */
        .code16
        .text
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7c00, %sp
        sti
        cld
        mov $0x0203, %ax                /* the rest of the program: sectors 2-4 to 0x7e00 */
        mov $0x0002, %cx                /* (DL still holds the boot drive) */
        xor %dh, %dh
        mov $0x7e00, %bx
        int $0x13
        jnc main
        mov $m_noload, %si
        call com1
        jmp idle

/* pieces the boot sector itself needs */
com1:   lodsb
        test %al, %al
        jz 1f
        call com1_char
        jmp com1
1:      ret

com1_char:
        push %dx
        push %cx
        push %ax
        mov $0x3fd, %dx                 /* THR empty, bounded wait */
        mov $1000, %cx
1:      in %dx, %al
        test $0x20, %al
        loopz 1b
        pop %ax
        mov $0x3f8, %dx
        out %al, %dx
        out %al, $0xe9
        pop %cx
        pop %dx
        ret

idle:   hlt
        jmp idle
m_noload: .asciz "LAB-VGA-NOLOAD\r\n"
        .org 510
        .byte 0x55, 0xaa

main:
        mov $0x0003, %ax                /* text mode 3 through the VGA BIOS */
        int $0x10
        mov $screen, %si
1:      lodsb                           /* teletype: the VGA BIOS writes 0xb8000 */
        test %al, %al
        jz 2f
        mov $0x0e, %ah
        mov $0x0007, %bx
        int $0x10
        jmp 1b
2:      mov $m_text, %si
        call com1
        call pause

        mov $0x80000000, %ebx           /* PCI scan of bus 0 for 1234:1111 */
3:      mov %ebx, %eax
        call cfg_read
        cmp $0x11111234, %eax
        je 4f
        add $0x800, %ebx
        cmp $0x80010000, %ebx
        jb 3b
        mov $m_novga, %si
        call com1
        jmp idle
4:      lea 0x10(%ebx), %eax            /* BAR0: the linear framebuffer */
        call cfg_read
        and $0xfffffff0, %eax
        mov %eax, %ebp

        lgdt gdtr                       /* unreal mode: FS keeps a 4 GiB limit back in real mode */
        cli
        mov %cr0, %eax
        or $1, %al
        mov %eax, %cr0
        jmp 5f
5:      mov $8, %bx
        mov %bx, %fs
        and $0xfe, %al
        mov %eax, %cr0
        jmp 6f
6:      xor %ax, %ax
        mov %ax, %fs
        sti

        mov $dispi, %si                 /* disable, 1024x768, 32 bpp, enable with LFB */
7:      lodsw
        cmp $0xffff, %ax
        je 8f
        mov $0x1ce, %dx
        out %ax, %dx
        lodsw
        inc %dx
        out %ax, %dx
        jmp 7b

8:      mov %ebp, %edi                  /* fill: colour = bars[(x >> 7)] */
        xor %ecx, %ecx
9:      mov %ecx, %ebx
        and $0x3ff, %ebx
        shr $7, %ebx
        mov bars(,%ebx,4), %eax
        addr32 mov %eax, %fs:(%edi)
        add $4, %edi
        inc %ecx
        cmp $(1024 * 768), %ecx
        jb 9b
        mov $m_lfb, %si
        call com1
        mov %ebp, %eax                  /* the BAR address, 8 hex digits */
        mov $8, %cx
10:     rol $4, %eax
        mov %al, %bl
        and $0xf, %bl
        add $'0', %bl
        cmp $'9', %bl
        jbe 11f
        add $('a' - '9' - 1), %bl
11:     push %ax
        mov %bl, %al
        call com1_char
        pop %ax
        loop 10b
        mov $m_crlf, %si
        call com1
        call pause

        lea (32 * 1024 + 32) * 4(%ebp), %edi   /* white box 64x64 at (32,32) */
        mov $64, %dx
12:     mov $64, %cx
        mov %edi, %ebx
13:     addr32 movl $0x00ffffff, %fs:(%ebx)
        add $4, %ebx
        loop 13b
        add $4096, %edi
        dec %dx
        jnz 12b
        mov $m_box, %si
        call com1
        jmp idle

/* eax = config address → eax = dword */
cfg_read:
        mov $0xcf8, %dx
        out %eax, %dx
        mov $0xcfc, %dx
        in %dx, %eax
        ret

/* about 12 s of BIOS ticks (18.2 Hz at 0x46c) */
pause:
        mov 0x46c, %eax
        add $218, %eax
1:      hlt
        cmp 0x46c, %eax
        ja 1b
        ret

        .p2align 2
bars:   .long 0x00ff0000, 0x0000ff00, 0x000000ff, 0x00ffff00, 0x00ff00ff, 0x0000ffff, 0x00808080, 0x00404040
dispi:  .word 4, 0, 1, 1024, 2, 768, 3, 32, 4, 0x41, 0xffff
gdt:    .quad 0
        .quad 0x00cf92000000ffff        /* flat 4 GiB data segment */
gdtr:   .word 15
        .long gdt
screen: .asciz "LAB-VGA text mode"
m_text: .asciz "LAB-VGA-TEXT\r\n"
m_lfb:  .asciz "LAB-VGA-LFB "
m_crlf: .asciz "\r\n"
m_box:  .asciz "LAB-VGA-BOX\r\n"
m_novga: .asciz "LAB-VGA-NODEV\r\n"
        .org 2048
