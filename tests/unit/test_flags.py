"""Kernel flags print by their C names, with the kernel's values."""
from labhelper.flags import CLONE_NEWNS, CLONE_NEWUTS, CloneFlags, MountFlags, UmountFlags


def test_flags_print_by_c_name():
    f = CLONE_NEWUTS | CLONE_NEWNS
    assert str(f) == repr(f) == f"{f}" == "CLONE_NEWNS|CLONE_NEWUTS"
    assert str(CloneFlags(0)) == "0"
    assert str(MountFlags.MS_BIND | MountFlags.MS_REC) == "MS_BIND|MS_REC"
    assert str(UmountFlags.MNT_DETACH | UmountFlags.UMOUNT_NOFOLLOW) == "MNT_DETACH|UMOUNT_NOFOLLOW"


def test_unknown_bits_are_shown_not_dropped():
    assert str(MountFlags(MountFlags.MS_RDONLY | (1 << 30))) == "MS_RDONLY|0x40000000"


def test_flag_values_are_the_kernels():
    # include/uapi/linux/sched.h and mount.h
    assert CloneFlags.CLONE_NEWNS == 0x20000 and CloneFlags.CLONE_NEWPID == 0x20000000
    assert MountFlags.MS_BIND == 4096 and MountFlags.MS_PRIVATE == 1 << 18
