/*
 * A boot sector for the cirrus-vga boot test: it asks the VGA BIOS (vgabios-cirrus.bin) for
 * VBE mode 0x111 (640x480, 16 bpp 5-6-5), then draws with the GD5446 blitter only, through
 * the graphics controller ports: a 200x100 red solid fill at (100,100), a copy of it to
 * (300,250), and a green band at (0,400) from a transparent, inverted 8x8 pattern expansion. It reports "CIRRUS DONE" or
 * "CIRRUS VBE FAIL" on the debug console (port 0x402) and halts.
 */
#include "../lib/bootsector.inc"
    sti
    mov $0x4F02, %ax
    mov $0x0111, %bx
    int $0x10
    cmp $0x004F, %ax
    je 1f
    mov $fail, %si
    call puts
    jmp halt
1:  cli
    mov $fill, %si
    call blit
    mov $copy, %si
    call blit
    mov $pattern, %si
    call blit
    mov $done, %si
    call puts
halt:
    hlt
    jmp halt

/* Writes the (index, value) byte pairs at SI to the graphics controller until index 0xFF,
 * then waits for the blitter to go idle (GR31 bit 0). */
blit:
    mov $0x3CE, %dx
1:  lodsw
    cmp $0xFF, %al
    je 2f
    out %ax, %dx
    jmp 1b
2:  mov $0x31, %al
    out %al, %dx
    inc %dx
3:  in %dx, %al
    test $0x01, %al
    jnz 3b
    ret

puts:
    mov $0x402, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

/* 640x480x16: 1280 bytes a row. */
fill:
    .byte 0x01, 0x00, 0x11, 0xF8            /* foreground 0xF800: red */
    .byte 0x20, 0x8F, 0x21, 0x01            /* width 400 bytes */
    .byte 0x22, 0x63, 0x23, 0x00            /* height 100 */
    .byte 0x24, 0x00, 0x25, 0x05            /* destination pitch 1280 */
    .byte 0x28, 0xC8, 0x29, 0xF4, 0x2A, 0x01 /* 100*1280 + 100*2 */
    .byte 0x30, 0xD0, 0x32, 0x0D, 0x33, 0x04 /* 16 bpp pattern+expand, ROP source, solid fill */
    .byte 0x31, 0x02, 0xFF, 0xFF
copy:
    .byte 0x26, 0x00, 0x27, 0x05            /* source pitch 1280 */
    .byte 0x2C, 0xC8, 0x2D, 0xF4, 0x2E, 0x01 /* from the filled rectangle */
    .byte 0x28, 0x58, 0x29, 0xE4, 0x2A, 0x04 /* 250*1280 + 300*2 */
    .byte 0x30, 0x10, 0x33, 0x00            /* 16 bpp forward copy */
    .byte 0x31, 0x02, 0xFF, 0xFF
pattern:
    /* The monochrome pattern is 8 zero bytes of VRAM past the screen; inverted transparency
     * paints its zero bits in the background colour. */
    .byte 0x00, 0xE0, 0x10, 0x07            /* background 0x07E0: green */
    .byte 0x01, 0x1F, 0x11, 0x00            /* foreground 0x001F: blue (unused) */
    .byte 0x20, 0xFF, 0x21, 0x04            /* width 1280 bytes */
    .byte 0x22, 0x0F, 0x23, 0x00            /* height 16 */
    .byte 0x2C, 0x00, 0x2D, 0x60, 0x2E, 0x09 /* pattern at 0x96000 */
    .byte 0x28, 0x00, 0x29, 0xD0, 0x2A, 0x07 /* 400*1280 */
    .byte 0x30, 0xD8, 0x33, 0x02            /* pattern expand, transparent, inverted: zero bits paint */
    .byte 0x31, 0x02, 0xFF, 0xFF

fail: .asciz "CIRRUS VBE FAIL\n"
done: .asciz "CIRRUS DONE\n"

    .org 510
    .byte 0x55, 0xAA
