/* hvm-lifecycle payload: MBR boot sector that stays alive and keeps talking through the device model.
   Every ~1 s (18 BIOS timer ticks: PIT IRQ0 -> SeaBIOS handler -> BDA 0x46c) it prints
   "LAB-TICK nnnn" on COM1 (emulated UART) with a 16-bit counter kept in guest RAM. After `xl save` +
   `xl restore` the counter continues from where it was, which shows that guest RAM, vCPU state,
   timer interrupts and the restored device model's UART all work. */
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
        movw $0, counter
        sti
next:   mov 0x46c, %bx          /* BIOS tick count (low word) */
        add $18, %bx
wait:   hlt                     /* sleep until an interrupt (PIT tick) */
        mov 0x46c, %ax
        sub %bx, %ax
        js wait                 /* signed compare handles wrap-around */
        incw counter
        mov $tick, %si
        call puts
        mov counter, %ax
        call puthex16
        mov $crlf, %si
        call puts
        jmp next
/* print NUL-terminated string at %si on COM1 */
puts:   lodsb
        test %al, %al
        jz 1f
        call putc
        jmp puts
1:      ret
putc:   mov $0x3f8, %dx
        out %al, %dx
        ret
/* print %ax as 4 hex digits */
puthex16:
        mov $4, %cx
1:      rol $4, %ax
        push %ax
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $7, %al
2:      call putc
        pop %ax
        loop 1b
        ret
tick:   .asciz "LAB-TICK "
crlf:   .asciz "\r\n"
counter: .word 0
        .org 510
        .byte 0x55, 0xaa
