/*
 * kvm-floor: the smallest KVM VMM that runs SwiftDM's bench guests.
 * It is the floor for the port-I/O exit round trip: KVM_RUN, complete the
 * exit, KVM_RUN again, with no device model at all.
 *
 *   kvm-floor [QEMU-style args...] -bios IMAGE [-m MiB]
 *   kvm-floor --tsc-hz            print the host TSC frequency (calibrated)
 *
 * Memory: RAM at 0..0xC0000 and 1 MiB..top, the image at the top of 4 GiB
 * and its last 64 KiB at 0xF0000 (read-only slots). One vCPU, reset state.
 * Exits: OUT to 0x3F8 goes to stdout (unbuffered), OUT to 0xF4 ends the
 * process with status (value << 1) | 1 like isa-debug-exit, other OUTs are
 * dropped, INs read all-ones, MMIO reads 0, HLT sleeps until killed.
 * Unknown arguments are ignored so it accepts the same command line as QEMU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "kvm-floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int tsc_hz(void)
{
    double best = 0;
    for (int i = 0; i < 3; i++) {
        double t0 = now();
        uint64_t c0 = rdtsc();
        while (now() - t0 < 0.2) { }
        double t1 = now();
        uint64_t c1 = rdtsc();
        double hz = (c1 - c0) / (t1 - t0);
        if (i == 0 || hz < best) best = hz;
    }
    printf("%.0f\n", best);
    return 0;
}

static void add_slot(int vm, uint32_t slot, uint64_t gpa, uint64_t size, void *host, int ro)
{
    struct kvm_userspace_memory_region r = {
        .slot = slot, .flags = ro ? KVM_MEM_READONLY : 0,
        .guest_phys_addr = gpa, .memory_size = size, .userspace_addr = (uintptr_t)host,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
        if (ro) { add_slot(vm, slot, gpa, size, host, 0); return; }   /* no RO slots: plain RAM */
        die("KVM_SET_USER_MEMORY_REGION");
    }
}

int main(int argc, char **argv)
{
    const char *bios = NULL;
    uint64_t ram_mb = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tsc-hz")) return tsc_hz();
        if (!strcmp(argv[i], "-bios") && i + 1 < argc) bios = argv[++i];
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) ram_mb = strtoull(argv[++i], NULL, 0);
    }
    if (!bios) { fprintf(stderr, "usage: kvm-floor [-m MiB] -bios IMAGE\n"); return 2; }

    int fd = open(bios, O_RDONLY);
    if (fd < 0) die(bios);
    struct stat st;
    fstat(fd, &st);
    size_t rom_size = (size_t)st.st_size;
    if (rom_size < 0x10000 || rom_size % 0x10000 || rom_size > (16u << 20)) {
        fprintf(stderr, "kvm-floor: %s: size must be a multiple of 64 KiB\n", bios);
        return 2;
    }
    uint8_t *rom = mmap(NULL, rom_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (rom == MAP_FAILED) die("mmap image");
    uint8_t *alias = mmap(NULL, 0x10000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(alias, rom + rom_size - 0x10000, 0x10000);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);         /* VMX wants it; harmless elsewhere */

    uint64_t ram_size = ram_mb << 20;
    uint8_t *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED) die("mmap RAM");
    add_slot(vm, 0, 0, 0xC0000, ram, 0);
    add_slot(vm, 1, 0xF0000, 0x10000, alias, 1);
    add_slot(vm, 2, 0x100000, ram_size - 0x100000, ram + 0x100000, 0);
    add_slot(vm, 3, (1ULL << 32) - rom_size, rom_size, rom, 1);

    int cpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (cpu < 0) die("KVM_CREATE_VCPU");
    /* CPUID as KVM supports it, so guests can rely on rdtsc and friends */
    struct { struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[256]; } cpuid = { .c.nent = 256 };
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) == 0)
        ioctl(cpu, KVM_SET_CPUID2, &cpuid);
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    for (;;) {
        if (ioctl(cpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            uint32_t bytes = (uint32_t)run->io.size * run->io.count;
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                if (run->io.port == 0x3F8) {
                    for (uint32_t i = 0; i < run->io.count; i++)
                        if (write(1, data + i * run->io.size, 1) < 0) { }
                } else if (run->io.port == 0xF4) {
                    exit((data[0] << 1) | 1);
                }
            } else {
                memset(data, 0xFF, bytes);
            }
            break;
        }
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write) memset(run->mmio.data, 0, sizeof run->mmio.data);
            break;
        case KVM_EXIT_HLT:
            /* no interrupt sources here: a halted vCPU sleeps until killed */
            for (;;) pause();
        case KVM_EXIT_INTR:
            break;
        default:
            fprintf(stderr, "kvm-floor: unhandled exit reason %u\n", run->exit_reason);
            return 2;
        }
    }
}
