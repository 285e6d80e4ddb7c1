"""Which part of the kernel a system call talks to: file, process, memory, network, signal.

A program makes hundreds of system calls; sorting them into a few boxes shows at a glance what
it spends them on (starting Python is mostly "file": the import system looking for modules).
The table is the one place that knows the boxes: a parsed :class:`~labhelper.trace.Record` asks
it for its ``category``, the summary counts calls per category, and the strace runner's
``only=`` traces the calls of one category. It sits at the bottom of :mod:`labhelper.trace`:
it imports nothing else from it (only :mod:`labhelper.errors`, for the error it raises).
"""
from __future__ import annotations

from ..errors import Refused

__all__ = ["CATEGORY_NAMES", "CATEGORIES", "CATEGORY_SYSCALLS", "category", "check_category"]

# Categories: which part of the kernel a system call talks to. strace has similar classes
# (-e trace=%file,%process,%memory,%network,%signal); ours put every call in exactly one box,
# and count fd-based I/O (read, write, close, ...) as "file": in Unix, everything is a file.

CATEGORY_NAMES = ("file", "process", "memory", "network", "signal", "other")

_CATEGORY_LISTS = {
    "file": """
        open openat openat2 creat close close_range read pread64 readv preadv preadv2 write
        pwrite64 writev pwritev pwritev2 lseek _llseek stat fstat lstat newfstatat fstatat64
        statx stat64 fstat64 lstat64 statfs fstatfs statfs64 fstatfs64 access faccessat
        faccessat2 readlink readlinkat getdents getdents64 mkdir mkdirat rmdir unlink unlinkat
        rename renameat renameat2 link linkat symlink symlinkat chmod fchmod fchmodat fchmodat2
        chown fchown lchown fchownat truncate ftruncate fsync fdatasync sync syncfs
        sync_file_range dup dup2 dup3 fcntl fcntl64 ioctl flock pipe pipe2 poll ppoll select
        _newselect pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait
        epoll_pwait2 eventfd eventfd2 inotify_init inotify_init1 inotify_add_watch
        inotify_rm_watch fanotify_init fanotify_mark getcwd chdir fchdir chroot mount umount2
        pivot_root sendfile sendfile64 splice tee vmsplice copy_file_range fadvise64 readahead
        fallocate utime utimes utimensat futimesat getxattr lgetxattr fgetxattr setxattr
        lsetxattr fsetxattr listxattr llistxattr flistxattr removexattr lremovexattr
        fremovexattr mknod mknodat umask name_to_handle_at open_by_handle_at open_tree
        move_mount fsopen fsmount fsconfig fspick mount_setattr io_setup io_destroy io_submit
        io_getevents io_cancel io_uring_setup io_uring_enter io_uring_register timerfd_create
        timerfd_settime timerfd_gettime quotactl swapon swapoff
        """,
    "process": """
        execve execveat fork vfork clone clone3 exit exit_group wait4 waitid getpid getppid
        gettid getuid geteuid getgid getegid getresuid getresgid setuid setgid setreuid setregid
        setresuid setresgid setfsuid setfsgid getgroups setgroups setsid getsid setpgid getpgid
        getpgrp prctl arch_prctl set_tid_address set_robust_list get_robust_list rseq futex
        futex_waitv sched_yield sched_getaffinity sched_setaffinity sched_getparam
        sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
        sched_get_priority_min sched_getattr sched_setattr sched_rr_get_interval unshare setns
        capget capset getrlimit setrlimit prlimit64 ugetrlimit getrusage uname sethostname
        setdomainname pidfd_open pidfd_getfd personality ptrace times getpriority setpriority
        seccomp ioprio_get ioprio_set kcmp process_madvise getcpu acct reboot kexec_load
        init_module finit_module delete_module
        """,
    "memory": """
        brk mmap mmap2 munmap mprotect mremap madvise mlock mlock2 munlock mlockall munlockall
        msync mincore pkey_mprotect pkey_alloc pkey_free set_mempolicy get_mempolicy mbind
        migrate_pages move_pages process_vm_readv process_vm_writev memfd_create memfd_secret
        userfaultfd remap_file_pages membarrier map_shadow_stack shmget shmat shmdt shmctl
        """,
    "network": """
        socket socketpair bind listen accept accept4 connect getsockname getpeername sendto
        recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt socketcall
        """,
    "signal": """
        rt_sigaction rt_sigprocmask rt_sigreturn rt_sigsuspend rt_sigpending rt_sigtimedwait
        rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack kill tkill tgkill signalfd signalfd4
        pause pidfd_send_signal alarm restart_syscall sigaction sigprocmask sigreturn
        """,
}

#: category -> its system calls, in the order listed above (strace_argv's only= traces them)
CATEGORY_SYSCALLS: dict[str, tuple[str, ...]] = {cat: tuple(names.split())
                                                 for cat, names in _CATEGORY_LISTS.items()}

#: syscall name -> one of CATEGORY_NAMES (names not listed are "other": clocks, getrandom, ...)
CATEGORIES: dict[str, str] = {name: cat for cat, names in CATEGORY_SYSCALLS.items()
                              for name in names}


def category(syscall: str | None) -> str:
    """The category of a system call: file, process, memory, network, signal or other."""
    return CATEGORIES.get(syscall or "", "other")


def check_category(cat: str | None) -> None:
    """Refuse a category that is not one of CATEGORY_NAMES (None means "any": accepted)."""
    if cat is not None and cat not in CATEGORY_NAMES:
        raise Refused(f"unknown category {cat!r}; choose one of {', '.join(CATEGORY_NAMES)}")
