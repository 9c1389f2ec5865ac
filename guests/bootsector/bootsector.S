/*
 * A 512-byte boot sector for the storage boot tests: SeaBIOS loads it from an IDE disk (MBR)
 * or a CD (El Torito, no emulation) at 0:7C00. It prints "SWIFTDM BOOT OK DL=xx" on COM1
 * (written directly, so it works whether or not the BIOS console is redirected), with the BIOS
 * drive number it was booted from, and leaves through isa-debug-exit with 0x31 (status 99).
 */
#include "../lib/bootsector.inc"
    mov %dl, boot_drive
    mov $message, %si
    call puts
    mov boot_drive, %al
    shr $4, %al
    call puthex
    mov boot_drive, %al
    call puthex
    mov $newline, %si
    call puts
    mov $0x501, %dx
    mov $0x31, %al
    out %al, %dx
1:  hlt
    jmp 1b

/* Low nibble of AL as a hex digit. */
puthex:
    and $0x0F, %al
    add $'0', %al
    cmp $'9', %al
    jbe 1f
    add $('A' - '9' - 1), %al
1:  jmp putc

puts:
    lodsb
    test %al, %al
    jz 2f
    call putc
    jmp puts
2:  ret

/* Waits for the transmitter holding register, then sends AL. */
putc:
    mov %al, %bl
    mov $0x3FD, %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    mov $0x3F8, %dx
    mov %bl, %al
    out %al, %dx
    ret

message: .asciz "SWIFTDM BOOT OK DL="
newline: .asciz "\r\n"
boot_drive: .byte 0

    .org 510
    .byte 0x55, 0xAA
