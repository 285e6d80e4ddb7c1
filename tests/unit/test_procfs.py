"""procfs: reading /proc and /sys from a fake tree, odd bytes included (B7)."""
import os

from labhelper import procfs

from fake import V1_MOUNTINFO, V2_MOUNTINFO, proc_tree, stat_line, write


def test_mountinfo_fields_and_escapes():
    text = "95 25 0:54 / /run/labhelper/odd\\040name rw,nosuid shared:9 master:2 - tmpfs lab\\011src rw,size=4k\n"
    (m,) = procfs.parse_mountinfo(text)
    assert (m.mount_id, m.parent_id, m.device, m.root) == (95, 25, "0:54", "/")
    assert m.mountpoint == "/run/labhelper/odd name" and m.source == "lab\tsrc"
    assert m.propagation == ("shared:9", "master:2") and m.fstype == "tmpfs" and m.super_options == "rw,size=4k"
    assert m.upperdir is None and repr(m) == "Mount(tmpfs on /run/labhelper/odd name)"
    over = procfs.parse_mountinfo("1 2 0:1 / /x rw - overlay o rw,lowerdir=/a,upperdir=/u,workdir=/w\n")[0]
    assert over.upperdir == "/u"
    assert procfs.unescape("/a\\040b\\134c") == "/a b\\c" and procfs.unescape("/plain") == "/plain"


def test_lines_that_do_not_fit_are_skipped():
    assert procfs.parse_mountinfo("garbage\nx y - z\nnot-a-number 1 0:1 / /a rw - tmpfs t rw\n") == []


def test_mountinfo_reads_paths_that_are_not_utf8(tmp_path):
    # B7: any mount on the host may have such a name; reading mountinfo must not fail.
    proc = proc_tree(tmp_path, V2_MOUNTINFO)
    with open(proc / "self" / "mountinfo", "ab") as fh:
        fh.write(b"96 22 0:60 / /mnt/caf\xe9\\040x rw - tmpfs tmpfs rw\n")
    points = [m.mountpoint for m in procfs.mountinfo(proc)]
    assert os.fsdecode(b"/mnt/caf\xe9 x") in points
    assert os.fsencode(points[-1]) == b"/mnt/caf\xe9 x"  # the same bytes go back to a system call


def test_read_text_is_bounded_and_never_raises(tmp_path):
    big = write(tmp_path / "big", "x" * 5000)
    assert len(procfs.read_text(big, limit=100)) == 100
    assert len(procfs.read_text(big, limit=None)) == 5000
    assert procfs.read_text(tmp_path / "absent", default="?") == "?"
    assert procfs.read_text(tmp_path, default="dir") == "dir"   # a folder: EISDIR, the default


def test_start_time_and_zombies(tmp_path):
    proc = proc_tree(tmp_path, "", {4242: ("0::/\n", 5000)})
    assert procfs.start_time(4242, proc) == 5000   # the command name "odd ) name" has a ')'
    assert procfs.start_time(4243, proc) is None and not procfs.is_zombie(4243, proc)
    assert not procfs.is_zombie(4242, proc)
    write(proc / "4242" / "stat", stat_line(4242, "x) Z (", 5000).replace(") S ", ") Z ", 1))
    assert procfs.is_zombie(4242, proc)
    assert procfs.start_time(os.getpid()) > 0


def test_cgroup_membership_becomes_host_folders(tmp_path):
    proc = proc_tree(tmp_path, V1_MOUNTINFO, {7: ("4:memory:/labhelper/c1\n3:cpu,cpuacct:/x\n0::/labhelper/c1\n", 1)})
    entries = procfs.cgroups_of(7, proc)
    assert [(e.hierarchy, e.controllers, e.path) for e in entries] == [
        ("4", ("memory",), "/labhelper/c1"), ("3", ("cpu", "cpuacct"), "/x"), ("0", (), "/labhelper/c1")]
    table = procfs.mountinfo(proc)
    assert procfs.cgroup_host_paths(entries[0], table) == ["/sys/fs/cgroup/memory/labhelper/c1"]
    assert procfs.cgroup_host_paths(entries[1], table) == ["/sys/fs/cgroup/cpu,cpuacct/x"]
    assert procfs.cgroup_host_paths(entries[2], table) == ["/sys/fs/cgroup/unified/labhelper/c1"]
    assert procfs.cgroups_of(8, proc) == []


def test_mount_id_of_an_fd():
    fd = os.open("/", os.O_RDONLY)
    try:
        root = next(m for m in procfs.mountinfo() if m.mountpoint == "/")
        assert procfs.mount_id(fd) == root.mount_id
    finally:
        os.close(fd)
    assert procfs.mount_id(10 ** 6) == -1
