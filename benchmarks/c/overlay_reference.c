/* The C reference for benchmarks/overlay.py: the system calls labhelper makes to mount an
 * overlay of N lower folders with the new mount API and to unmount it, with nothing around
 * them: open the mount point (it exists, as a container's root folder does) and ask statx
 * whether something is mounted there already, fsopen, one fsconfig per parameter, each folder
 * (every "lowerdir+", "upperdir", "workdir") opened with openat2 without following a symlink and
 * handed over as that open folder (FSCONFIG_SET_FD, Linux 6.13; by path with --paths, or on an
 * older kernel), create, fsmount, move_mount onto the opened folder, then umount2(MNT_DETACH)
 * and rmdir the overlay's scratch folders in work.
 * Built with gcc at run time as a shared library and called through ctypes, so that both sides
 * are timed by the same clock in the same process. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <stdint.h>

#ifndef FSCONFIG_SET_STRING
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_SET_FD 5
#define FSCONFIG_CMD_CREATE 6
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define REF_RESOLVE_NO_MAGICLINKS 0x02
#define REF_RESOLVE_NO_SYMLINKS 0x04
#define REF_STATX_ATTR_MOUNT_ROOT 0x2000
#define REF_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define REF_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define REF_MOUNT_ATTR_NOSUID 0x2
#define REF_MOUNT_ATTR_NODEV 0x4

static int set(int fs, const char *key, const char *value) {
    return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

/* One folder of the overlay: opened without following a symlink, handed over as that open
 * folder (by_fd), or by path. */
static int set_folder(int fs, const char *key, const char *path, int by_fd) {
    if (!by_fd)
        return set(fs, key, path);
    struct { uint64_t flags, mode, resolve; } how = {
        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, REF_RESOLVE_NO_SYMLINKS | REF_RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) return -1;
    int rc = (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_FD, key, NULL, fd);
    close(fd);
    return rc;
}

/* n rounds of mount + unmount. lowers: nl paths; target, upper, work: paths; by_fd: hand the
 * folders over open (1) or by path (0). */
int cycle(const char **lowers, int nl, const char *target, const char *upper, const char *work, int n, int by_fd) {
    char scratch[4096];
    for (int i = 0; i < n; i++) {
        int dir = open(target, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir < 0) return -2;
        struct statx stx;
        if (statx(dir, "", AT_EMPTY_PATH, 0, &stx) < 0) return -12;
        if (stx.stx_attributes & REF_STATX_ATTR_MOUNT_ROOT) return -13;    /* mounted on already */
        int fs = (int)syscall(SYS_fsopen, "overlay", 1);
        if (fs < 0) return -3;
        if (set(fs, "source", "overlay") < 0) return -4;
        for (int j = 0; j < nl; j++)
            if (set_folder(fs, "lowerdir+", lowers[j], by_fd) < 0) return -5;
        if (set_folder(fs, "upperdir", upper, by_fd) < 0 || set_folder(fs, "workdir", work, by_fd) < 0) return -6;
        if (set(fs, "redirect_dir", "off") < 0 || set(fs, "metacopy", "off") < 0 || set(fs, "index", "off") < 0)
            return -7;
        if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) return -8;
        int mnt = (int)syscall(SYS_fsmount, fs, 1, REF_MOUNT_ATTR_NOSUID | REF_MOUNT_ATTR_NODEV);
        if (mnt < 0) return -9;
        if (syscall(SYS_move_mount, mnt, "", dir, "", REF_MOVE_MOUNT_F_EMPTY_PATH | REF_MOVE_MOUNT_T_EMPTY_PATH) < 0)
            return -10;
        close(mnt);
        close(fs);
        close(dir);
        if (umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW) < 0) return -11;
        snprintf(scratch, sizeof scratch, "%s/work", work);
        rmdir(scratch);
        snprintf(scratch, sizeof scratch, "%s/index", work);
        rmdir(scratch);
    }
    return 0;
}
