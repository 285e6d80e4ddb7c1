/* The C reference for benchmarks/cgroups.py: the same system calls labhelper makes to create a
 * cgroup, set a limit, join it, leave it and remove it, with nothing around them.
 * Built with gcc at run time as a shared library and called through ctypes, so that both sides
 * are timed by the same clock in the same process. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int put(const char *dir, const char *file, const char *value) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, value, strlen(value));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* n rounds of: mkdir DIR/NAMEi; write LIMIT to LIMIT_FILE; join; go back to HOME; rmdir. */
int cycle(const char *parent, const char *limit_file, const char *limit, const char *home, int n) {
    char dir[4096], pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    for (int i = 0; i < n; i++) {
        snprintf(dir, sizeof dir, "%s/c-ref-%d", parent, i);
        if (mkdir(dir, 0755) < 0) return -1;
        if (put(dir, limit_file, limit) < 0) return -2;
        if (put(dir, "cgroup.procs", pid) < 0) return -3;
        if (put(home, "cgroup.procs", pid) < 0) return -4;
        if (rmdir(dir) < 0) return -5;
    }
    return 0;
}
