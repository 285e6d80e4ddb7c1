/* The C reference for benchmarks/kvm_exits.py: the same guest, the same ioctls, no Python.
 *
 * Built by the benchmark with gcc -O2 as a shared library, and called through ctypes from the
 * benchmark's own process, once per round (so ctypes costs nothing per exit):
 *
 *   kvm_reference_exits(vcpu_fd, run, n, sink)
 *       KVM_RUN n times on a vCPU that labhelper.kvm created and set up, reading each exit as a
 *       VMM must (reason, direction, port, size, count, and the bytes written). Python and C then
 *       drive the *same* vCPU of the same VM, in turns: the only difference is the VMM's language.
 *   kvm_reference_create(code, len, n, with_cpuid)
 *       n times: open /dev/kvm, create a VM with 64 KiB, one vCPU, real-mode registers, run the
 *       guest to hlt, close everything. with_cpuid also gives the vCPU the host's CPUID table with
 *       the hypervisor bit set (KVM_SET_CPUID2, as QEMU's -cpu host); the table is asked once per
 *       process and kept, as labhelper.kvm.Machine does.
 *
 * Each returns 0, or -1 with kvm_reference_error() saying which step failed and errno kept.
 * Every step mirrors what labhelper.kvm does (Kvm(), create_vm(), add_memory(), create_vcpu(),
 * real-mode sregs, run()).
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
#include <unistd.h>

#define MEM_SIZE 0x10000
#define ORIGIN 0x1000
#define TSS_ADDRESS 0xfffbd000

static char error[128];

const char *kvm_reference_error(void) { return error; }

/* Record which step failed; errno is left as the failing call set it. */
static int fail(const char *what) {
    int saved = errno;
    snprintf(error, sizeof error, "%s", what);
    errno = saved;
    return -1;
}

int kvm_reference_exits(int vcpu, struct kvm_run *run, long n, uint8_t sink[64]) {
    for (long i = 0; i < n; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) return fail("KVM_RUN");
        if (run->exit_reason != KVM_EXIT_IO || run->io.direction != KVM_EXIT_IO_OUT) {
            errno = EPROTO;
            snprintf(error, sizeof error, "unexpected exit %u", run->exit_reason);
            return -1;
        }
        /* What labhelper's IoOut carries: the port, the size, the count and a copy of the data. */
        size_t len = (size_t)run->io.size * run->io.count;
        if (len > 64) len = 64;
        memcpy(sink, (uint8_t *)run + run->io.data_offset, len);
        sink[len < 64 ? len : 63] ^= (uint8_t)run->io.port;
    }
    return 0;
}

struct vm {
    int kvm, vm, vcpu;
    uint8_t *mem;
    struct kvm_run *run;
    int run_size;
};

static void vm_close(struct vm *v) {
    if (v->run != MAP_FAILED) munmap(v->run, v->run_size);
    if (v->vcpu >= 0) close(v->vcpu);
    if (v->vm >= 0) close(v->vm);
    if (v->mem != MAP_FAILED) munmap(v->mem, MEM_SIZE);
    if (v->kvm >= 0) close(v->kvm);
}

static int vm_open(struct vm *v, const uint8_t *code, size_t len) {
    *v = (struct vm){.kvm = -1, .vm = -1, .vcpu = -1, .mem = MAP_FAILED, .run = MAP_FAILED};
    v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (v->kvm < 0) return fail("open /dev/kvm");
    if (ioctl(v->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return fail("KVM_GET_API_VERSION");
    v->run_size = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (v->run_size < 0) return fail("KVM_GET_VCPU_MMAP_SIZE");
    v->vm = ioctl(v->kvm, KVM_CREATE_VM, 0);
    if (v->vm < 0) return fail("KVM_CREATE_VM");
    if (ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0 &&
        ioctl(v->vm, KVM_SET_TSS_ADDR, TSS_ADDRESS) < 0) return fail("KVM_SET_TSS_ADDR");
    v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (v->mem == MAP_FAILED) return fail("mmap memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)v->mem};
    if (ioctl(v->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return fail("KVM_SET_USER_MEMORY_REGION");
    v->vcpu = ioctl(v->vm, KVM_CREATE_VCPU, 0);
    if (v->vcpu < 0) return fail("KVM_CREATE_VCPU");
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    if (v->run == MAP_FAILED) return fail("mmap kvm_run");
    memcpy(v->mem + ORIGIN, code, len);
    struct kvm_sregs sregs;
    if (ioctl(v->vcpu, KVM_GET_SREGS, &sregs) < 0) return fail("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
    for (int i = 0; i < 6; i++) { segs[i]->base = 0; segs[i]->selector = 0; }
    if (ioctl(v->vcpu, KVM_SET_SREGS, &sregs) < 0) return fail("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = ORIGIN, .rsp = MEM_SIZE - 0x10, .rflags = 2};
    if (ioctl(v->vcpu, KVM_SET_REGS, &regs) < 0) return fail("KVM_SET_REGS");
    return 0;
}

/* KVM_GET_SUPPORTED_CPUID (constant per host): room for n entries, more on E2BIG. Asked once
 * per process and kept, like labhelper.kvm's cache, so neither side pays for it in its rounds. */
static struct kvm_cpuid2 *supported_cpuid(void) {
    static struct kvm_cpuid2 *kept;
    if (kept) return kept;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) { fail("open /dev/kvm"); return NULL; }
    for (int n = 64; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof c->entries[0]);
        if (!c) break;
        c->nent = n;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            close(kvm);
            /* The hypervisor bit (leaf 1, ECX bit 31), which labhelper's guest_cpuid() and QEMU set. */
            for (unsigned i = 0; i < c->nent; i++)
                if (c->entries[i].function == 1) c->entries[i].ecx |= 1u << 31;
            return kept = c;
        }
        int saved = errno;
        free(c);
        if (saved != E2BIG) { errno = saved; break; }
    }
    fail("KVM_GET_SUPPORTED_CPUID");
    close(kvm);
    return NULL;
}

int kvm_reference_create(const uint8_t *code, size_t len, long n, int with_cpuid) {
    if (len > MEM_SIZE - ORIGIN) { errno = EINVAL; return fail("guest code larger than memory"); }
    struct kvm_cpuid2 *cpuid = NULL;
    if (with_cpuid && !(cpuid = supported_cpuid())) return -1;
    int rc = 0;
    for (long i = 0; i < n && rc == 0; i++) {
        struct vm v;
        rc = vm_open(&v, code, len);
        if (rc == 0 && cpuid && ioctl(v.vcpu, KVM_SET_CPUID2, cpuid) < 0) rc = fail("KVM_SET_CPUID2");
        if (rc == 0 && ioctl(v.vcpu, KVM_RUN, 0) < 0) rc = fail("KVM_RUN");
        if (rc == 0 && v.run->exit_reason != KVM_EXIT_HLT) {
            errno = EPROTO;
            snprintf(error, sizeof error, "unexpected exit %u", v.run->exit_reason);
            rc = -1;
        }
        int saved = errno;
        vm_close(&v);
        errno = saved;
    }
    return rc;
}
