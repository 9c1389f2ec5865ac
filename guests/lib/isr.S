/* SwiftDM test guests: 256 interrupt entry stubs and the common path. */
        .text
        .code32

        /* one 16-byte stub per vector: [push $0,] push $vector, jmp isr_common */
        .p2align 4
isr_stubs:
        .set    i, 0
        .rept   256
        .p2align 4
        .if (i == 8) || ((i >= 10) && (i <= 14)) || (i == 17) || (i == 21) || (i == 29) || (i == 30)
        .else
        pushl   $0                      /* CPU pushed no error code */
        .endif
        pushl   $i
        jmp     isr_common
        .set    i, i + 1
        .endr

isr_common:
        pushal
        cld
        pushl   %esp                    /* struct irq_frame * */
        call    isr_dispatch
        addl    $4, %esp
        popal
        addl    $8, %esp                /* vector + error code */
        /*
         * Return without IRET. On this lab's /dev/kvm (kvm_pvm) every guest
         * instruction goes through KVM's x86 emulator, which only handles
         * IRET in real mode. CS never changes here (flat 0x08), so restore
         * EFLAGS from the frame and do a near return that drops CS+EFLAGS.
         * Stack now: [eip] [cs] [eflags].
         */
        pushl   8(%esp)
        popfl
        ret     $8

        .section .rodata
        .p2align 2
        .globl  isr_table
isr_table:
        .set    i, 0
        .rept   256
        .long   isr_stubs + 16 * i
        .set    i, i + 1
        .endr
