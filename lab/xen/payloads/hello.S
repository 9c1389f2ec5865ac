/* hvm-bootsector payload: MBR boot sector (16-bit real mode, loaded at 0x7c00 by SeaBIOS).
   Prints one line on COM1 (I/O port 0x3f8, the 16550 UART emulated by the device model) and the
   same line on port 0xe9 (Xen's HVM debug port, handled inside Xen: shows up in `xl dmesg`), then
   idles. The 0xe9 copy tells "the guest ran but the DM's UART lost the output" from "it never ran". */
        .code16
        .text
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7c00, %sp
        cld
        mov $msg, %si
1:      lodsb
        test %al, %al
        jz 3f
        mov $0x3fd, %dx         /* wait for THR empty (LSR bit 5); bounded, in case the UART is broken */
        mov $1000, %cx
2:      mov %al, %bl
        in %dx, %al
        test $0x20, %al
        mov %bl, %al
        loopz 2b
        mov $0x3f8, %dx
        out %al, %dx
        out %al, $0xe9
        jmp 1b
3:      sti                     /* idle with interrupts on: "cli; hlt" would make Xen power the domain off */
4:      hlt
        jmp 4b
msg:    .asciz "LAB-HELLO: boot sector on IDE disk, output on emulated COM1\r\n"
        .org 510
        .byte 0x55, 0xaa
