/* fpu-stress payload: MBR boot sector that keeps every SSE register and the x87 stack busy
   forever (16-bit real mode). While it runs, another domain's programs must still see only their
   own FPU state (lab/xen/scenarios/fpu-stress). Each round ends in CPUID, which Xen intercepts: a
   loop without exits kept a host CPU to itself under TCG's nested SVM (the host's interrupts did
   not take it out of the guest, interrupts on or off), and dom0 stalled. */
        .code16
        .text
        .globl _start
_start:
        sti
        mov %cr0, %eax
        and $~0x4, %eax         /* EM off: no x87 emulation */
        or $0x2, %eax           /* MP on */
        mov %eax, %cr0
        mov %cr4, %eax
        or $0x600, %eax         /* OSFXSR | OSXMMEXCPT: SSE allowed */
        mov %eax, %cr4
        mov $0x12345678, %eax
        movd %eax, %xmm0
        pshufd $0, %xmm0, %xmm0
1:      paddd %xmm0, %xmm1
        paddd %xmm1, %xmm2
        paddd %xmm2, %xmm3
        paddd %xmm3, %xmm4
        paddd %xmm4, %xmm5
        paddd %xmm5, %xmm6
        paddd %xmm6, %xmm7
        paddd %xmm7, %xmm0
        fldpi
        fstp %st(0)
        xor %eax, %eax
        cpuid
        jmp 1b
        .org 510
        .byte 0x55, 0xaa
