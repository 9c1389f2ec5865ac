/* ioreq-bench payload: MBR boot sector that times port-I/O round trips through the device model.
   Timing comes from Xen's console timestamps (Xen boots with console_timestamps=boot): marker lines
   written to port 0xe9 (handled inside Xen, no device model) appear in `xl dmesg` as
   "[  sss.uuuuuu] (dN) BENCH ...", stamped when the line's '\n' arrives.
   Each of ROUNDS rounds:
     "BENCH R<r> A"  NXEN reads of PIT port 0x40             -> VM exits handled inside Xen
     "BENCH R<r> B"  NDM x (outb 0x3ff; inb 0x3ff)           -> 2*NDM ioreqs to the device model
     "BENCH R<r> C"  (COM1 scratch register; every value read back is checked)
   then "BENCH OK" or "BENCH MISMATCH" (the scratch register did not return what was written),
   a line on COM1, and "BENCH DONE". Constants are echoed so the parser does not hard-code them. */
        .code16
        .text
        .globl _start
        .set ROUNDS, 5
        .set NXEN, 2000
        .set NDM, 500
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7c00, %sp
        cld
        xor %di, %di            /* mismatch counter */
        mov $hdr, %si
        call pe9
        mov $'1', %bh           /* round number as ASCII */
round:  movb %bh, rnum
        movb $'A', rph
        call marker
        mov $NXEN, %cx
1:      inb $0x40, %al
        loop 1b
        movb $'B', rph
        call marker
        mov $NDM, %cx
        mov $0x3ff, %dx
2:      mov %cl, %al
        out %al, %dx
        in %dx, %al
        cmp %cl, %al
        je 3f
        inc %di
3:      loop 2b
        movb $'C', rph
        call marker
        inc %bh
        cmp $'0'+ROUNDS, %bh
        jbe round
        mov $ok, %si
        test %di, %di
        jz 4f
        mov $bad, %si
4:      call pe9
        mov $hello, %si
        mov $0x3f8, %dx
5:      lodsb
        test %al, %al
        jz 6f
        out %al, %dx
        jmp 5b
6:      mov $done, %si
        call pe9
        sti                     /* idle (cli; hlt would make Xen power the domain off) */
7:      hlt
        jmp 7b
marker: mov $mk, %si
pe9:    lodsb
        test %al, %al
        jz 8f
        out %al, $0xe9
        jmp pe9
8:      ret
hdr:    .ascii "BENCH CONFIG rounds="
        .byte '0'+ROUNDS
        .asciz " nxen=2000 ndm=500 dm_ios_per_iter=2\n"
mk:     .ascii "BENCH R"
rnum:   .byte '0'
        .ascii " "
rph:    .byte 'A'
        .asciz "\n"
ok:     .asciz "BENCH OK\n"
bad:    .asciz "BENCH MISMATCH\n"
done:   .asciz "BENCH DONE\n"
hello:  .asciz "LAB-HELLO: ioreq-bench finished\r\n"
        .org 510
        .byte 0x55, 0xaa
