/* The C reference for benchmarks/kvm_exits.py: the same guest, the same ioctls, no Python.
 *
 *   kvm_reference exits  GUEST.bin N      run the guest (an endless `out` loop) for N exits;
 *                                         prints nanoseconds per exit round trip: wall, CPU
 *   kvm_reference create GUEST.bin M      M times: open /dev/kvm, create a VM with 64 KiB, one vCPU,
 *                                         run the guest to hlt, close everything; prints
 *                                         microseconds per cycle: wall, CPU
 *   kvm_reference machine GUEST.bin M     the same, plus what labhelper.kvm.Machine adds: the vCPU
 *                                         gets the host's CPUID table (KVM_SET_CPUID2, as QEMU's
 *                                         -cpu host), asked once per process like Machine does
 *
 * Built by the benchmark with gcc -O2 into a temporary folder. Every step mirrors what
 * labhelper.kvm does (Kvm(), create_vm(), add_memory(), create_vcpu(), real-mode sregs, run()).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define ORIGIN 0x1000
#define TSS_ADDRESS 0xfffbd000

static void die(const char *what) { perror(what); exit(1); }

static double clock_s(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Wall-clock time, and this thread's CPU time (guest time included): the second is less
 * disturbed by other processes on a busy machine. The benchmark prints both. */
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu(void) { return clock_s(CLOCK_THREAD_CPUTIME_ID); }

struct vm {
    int kvm, vm, vcpu;
    uint8_t *mem;
    struct kvm_run *run;
    int run_size;
};

static void vm_open(struct vm *v, const uint8_t *code, size_t len) {
    v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (v->kvm < 0) die("open /dev/kvm");
    if (ioctl(v->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) die("KVM_GET_API_VERSION");
    v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (v->run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
    v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) die("KVM_CREATE_VM");
    if (ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0 &&
        ioctl(v->vm, KVM_SET_TSS_ADDR, TSS_ADDRESS) < 0) die("KVM_SET_TSS_ADDR");
    v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (v->mem == MAP_FAILED) die("mmap memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)v->mem};
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) die("KVM_CREATE_VCPU");
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) die("mmap kvm_run");
    memcpy(v->mem + ORIGIN, code, len);
    struct kvm_sregs sregs;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
    for (int i = 0; i < 6; i++) { segs[i]->base = 0; segs[i]->selector = 0; }
    if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = ORIGIN, .rsp = MEM_SIZE - 0x10, .rflags = 2};
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

/* KVM_GET_SUPPORTED_CPUID once (it is constant per host): room for n entries, more on E2BIG. */
static struct kvm_cpuid2 *supported_cpuid(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open /dev/kvm");
    for (int n = 64; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof c->entries[0]);
        if (!c) die("calloc");
        c->nent = n;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) { close(kvm); return c; }
        if (errno != E2BIG) die("KVM_GET_SUPPORTED_CPUID");
        free(c);
    }
    die("KVM_GET_SUPPORTED_CPUID: too many entries");
    return NULL;
}

static void vm_close(struct vm *v) {
    munmap(v->run, v->run_size);
    close(v->vcpu);
    close(v->vm);
    munmap(v->mem, MEM_SIZE);
    close(v->kvm);
}

static size_t read_guest(const char *path, uint8_t *buf, size_t max) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    size_t n = fread(buf, 1, max, f);
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s exits|create GUEST.bin COUNT\n", argv[0]);
        return 2;
    }
    uint8_t code[4096];
    size_t len = read_guest(argv[2], code, sizeof code);
    long count = atol(argv[3]);
    struct vm v;
    if (strcmp(argv[1], "exits") == 0) {
        vm_open(&v, code, len);
        double t0 = now(), c0 = cpu();
        for (long i = 0; i < count; i++) {
            if (ioctl(v.vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
            if (v.run->exit_reason != KVM_EXIT_IO || v.run->io.direction != KVM_EXIT_IO_OUT) {
                fprintf(stderr, "unexpected exit %u\n", v.run->exit_reason);
                return 1;
            }
        }
        printf("%.1f %.1f\n", (now() - t0) / count * 1e9, (cpu() - c0) / count * 1e9);
        vm_close(&v);
    } else if (strcmp(argv[1], "create") == 0 || strcmp(argv[1], "machine") == 0) {
        struct kvm_cpuid2 *cpuid = strcmp(argv[1], "machine") == 0 ? supported_cpuid() : NULL;
        double t0 = now(), c0 = cpu();
        for (long i = 0; i < count; i++) {
            vm_open(&v, code, len);
            if (cpuid && ioctl(v.vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
            if (ioctl(v.vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
            if (v.run->exit_reason != KVM_EXIT_HLT) {
                fprintf(stderr, "unexpected exit %u\n", v.run->exit_reason);
                return 1;
            }
            vm_close(&v);
        }
        printf("%.1f %.1f\n", (now() - t0) / count * 1e6, (cpu() - c0) / count * 1e6);
        free(cpuid);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
