/* The C reference for benchmarks/syscall_cost.py: the same calls as labhelper.syscost, from C.
 *
 * Build and run (the benchmark does it for you, in a temporary folder):
 *     gcc -O2 -o syscall_cost syscall_cost.c && ./syscall_cost SAMPLES BATCH READ_SIZE
 *
 * For each call it takes SAMPLES samples; each sample times BATCH back-to-back calls with
 * clock_gettime(CLOCK_MONOTONIC) and keeps the mean per call. It prints one line per call:
 *     key median_ns p10_ns p90_ns
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char buffer[1 << 20];
static int zero_fd;
static size_t read_size;

/* noinline + an empty asm statement: the compiler must really call it, and cannot drop it. */
__attribute__((noinline)) static void empty(void) { __asm__ volatile(""); }
static void call_empty(void) { empty(); }
static void call_vdso(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* glibc jumps into the vDSO: no mode switch */
}
static void call_getpid(void) { (void)getpid(); }                  /* glibc's wrapper: a real syscall */
static void call_syscall_getpid(void) { (void)syscall(SYS_getpid); } /* syscall(2) by number */
static void call_read_1(void) {
    if (read(zero_fd, buffer, 1) != 1) abort();
}
static void call_read_big(void) {
    if (read(zero_fd, buffer, read_size) != (ssize_t)read_size) abort();
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *sorted, int n, double q) {
    double pos = (n - 1) * q / 100.0;
    int lo = (int)pos, hi = lo + 1 < n ? lo + 1 : n - 1;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

struct bench { const char *key; void (*fn)(void); };

int main(int argc, char **argv) {
    int samples = argc > 1 ? atoi(argv[1]) : 200;
    int batch = argc > 2 ? atoi(argv[2]) : 200;
    read_size = argc > 3 ? (size_t)atol(argv[3]) : 65536;
    if (samples < 1 || batch < 1 || read_size < 1 || read_size > sizeof buffer) {
        fprintf(stderr, "usage: %s SAMPLES BATCH READ_SIZE (READ_SIZE <= %zu)\n", argv[0], sizeof buffer);
        return 2;
    }
    zero_fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (zero_fd < 0) { perror("open /dev/zero"); return 1; }
    struct bench benches[] = {
        {"call", call_empty}, {"vdso", call_vdso}, {"getpid", call_getpid},
        {"syscall_getpid", call_syscall_getpid}, {"read_1", call_read_1}, {"read_64k", call_read_big},
    };
    int n = sizeof benches / sizeof benches[0];
    double *results = calloc((size_t)n * samples, sizeof(double));
    if (!results) return 1;
    for (int b = 0; b < n; b++)             /* warm up */
        for (int i = 0; i < batch; i++) benches[b].fn();
    for (int s = 0; s < samples; s++) {     /* interleaved, as labhelper.syscost does */
        for (int b = 0; b < n; b++) {
            double t0 = now_ns();
            for (int i = 0; i < batch; i++) benches[b].fn();
            results[b * samples + s] = (now_ns() - t0) / batch;
        }
    }
    for (int b = 0; b < n; b++) {
        double *r = results + b * samples;
        qsort(r, samples, sizeof(double), cmp);
        printf("%s %.1f %.1f %.1f\n", benches[b].key, percentile(r, samples, 50),
               percentile(r, samples, 10), percentile(r, samples, 90));
    }
    free(results);
    close(zero_fd);
    return 0;
}
