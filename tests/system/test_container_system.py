"""labhelper.container against the real kernel (chapter 07): what a container is, seen from
inside it, the limits and refusals the kernel enforces, hostile images and bad requests refused
with nothing changed, and a kill at each step of run() cleaned up (R1, R3, R18, R19, R20, R21,
R23). The tests marked ``cgroups`` run again in the guest stage, on pure cgroup v2: those whose
outcome depends on the cgroup version (the cgroup namespace, limits, device rules, what the
container sees of its cgroup); the others do the same on both."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import capabilities
from labhelper import capabilities as caps
from labhelper import cgroups, cleanup, container, images, mounts, process, procfs, registry
from labhelper.errors import LabError, Refused

@pytest.fixture(autouse=True)
def _needs():
    capabilities.need("overlay", "a container's root is an overlay")
    capabilities.need("busybox", "the image is made from busybox-static")


@pytest.fixture
def bb(store):
    images.busybox_image(store)
    return store


def run(store, *command, **options):
    return container.run("busybox", list(command) if command else None, store=store, **options)


def sh(store, line, **options):
    return run(store, "/bin/sh", "-c", line, **options)


def _census():
    return cleanup.census().names()


@pytest.mark.cgroups
def test_hello_from_inside_its_own_namespaces_as_pid_1(bb):
    before = _census()
    r = sh(bb, "echo hello from $(hostname); echo pid $$; cat /proc/self/cgroup; ls /proc | grep -c '^[0-9]'",
           name="hello", hostname="box")
    assert r.exit_code == 0 and not r.error and not r.timed_out and not r.oom_killed, r
    lines = r.output.splitlines()
    assert lines[0] == "hello from box" and lines[1] == "pid 1"
    assert all(line.endswith(":/") for line in lines[2:-1])     # its cgroup is its cgroup namespace's root
    assert int(lines[-1]) <= 3                                  # it sees only its own processes
    assert repr(r) == "Result(hello: exit 0)"
    assert _census() == before and not os.path.exists(f"{container.CONTAINERS}/hello")


def test_exit_codes_as_docker_reports_them(bb):
    assert sh(bb, "exit 3").exit_code == 3
    missing = run(bb, "no-such-command")
    assert missing.exit_code == container.EXIT_NOT_FOUND == 127
    assert "'no-such-command': executable file not found in $PATH" in missing.error
    assert run(bb, "/etc/passwd").exit_code == container.EXIT_CANNOT_RUN == 126
    # A signal N is 128+N: sh kills its own child with SIGKILL and exits with what the child got.
    assert sh(bb, "sleep 5 & kill -9 $!; wait $!").exit_code == 137
    slow = run(bb, "sleep", "30", timeout=0.5)
    assert slow.exit_code == 137 and slow.timed_out and slow.seconds < 20


def test_what_root_inside_keeps_and_what_it_cannot_do(bb):
    r = sh(bb, "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
               "unshare -n true 2>&1; mount -t tmpfs x /mnt 2>&1; echo 1 > /proc/sys/kernel/ostype 2>&1; "
               "touch /sys/x 2>&1; echo end")
    status = dict(line.split(":\t") for line in r.output.splitlines() if ":\t" in line)
    assert caps.decode(status["CapBnd"]) == caps.decode(status["CapEff"])
    assert set(caps.decode(status["CapBnd"])) == set(caps.DOCKER_DEFAULT) & set(caps.NAMES[:caps.last() + 1])
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert "Operation not permitted" in r.output                     # unshare: the seccomp filter
    assert "permission denied" in r.output                           # mount: no CAP_SYS_ADMIN, and seccomp
    assert r.output.count("Read-only file system") == 2              # /proc/sys and /sys
    assert r.output.rstrip().endswith("end")


@pytest.mark.cgroups
def test_only_the_harmless_devices_and_nothing_made_with_mknod(bb, owner, uid):
    # mknod is allowed (CAP_MKNOD is in Docker's set); using the node is not: on a volume (a host
    # folder, mounted without nodev) the cgroup's device rules say EPERM; in the root, nodev says
    # EACCES first. /dev/null made the same way works: it is on the allowed list.
    vol = mounts.make_dir(f"/var/lib/labhelper/test-vol-{uid}", owner=owner)
    r = sh(bb, "mknod /data/kvm c 10 232 && cat /data/kvm 2>&1; mknod /data/null c 1 3 && echo x > /data/null "
               "&& echo null-ok; mknod /kvm c 10 232 && cat /kvm 2>&1; ls /dev", volumes=[f"{vol}:/data"])
    lines = r.output.splitlines()
    assert "cat: can't open '/data/kvm': Operation not permitted" in lines
    assert "null-ok" in lines
    assert "cat: can't open '/kvm': Permission denied" in lines
    assert set(container.DEVICES) <= set(lines) and "kvm" not in lines[lines.index("null-ok") + 2:]


def test_masked_and_read_only_kernel_files(bb):
    r = sh(bb, "for f in /proc/keys /proc/timer_list /proc/interrupts; do [ -e $f ] && wc -c < $f; done; "
               "ls /sys/firmware | wc -l; grep -c . /proc/sys/kernel/ostype")
    numbers = [int(x) for x in r.output.split()]
    assert numbers[:-1] == [0] * (len(numbers) - 1)        # the masked ones read empty
    assert numbers[-1] == 1                                # /proc/sys is readable, only not writable


@pytest.mark.cgroups
def test_limits_the_kernel_enforces(bb):
    # On v2 the container sees its own cgroup, read-only, with its limit in it; v1 shows none.
    seen = sh(bb, "cat /sys/fs/cgroup/memory.max 2>&1; echo x > /sys/fs/cgroup/memory.max 2>&1", memory="32m")
    if cgroups.version() == 2:
        assert seen.output.splitlines()[0] == str(32 << 20) and "Read-only file system" in seen.output
    else:
        assert "No such file or directory" in seen.output
    oom = sh(bb, "x=a; while true; do x=$x$x; done", memory="16m")
    assert oom.exit_code == 137 and oom.oom_killed and not oom.timed_out
    bomb = sh(bb, "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; echo started", pids=8)
    assert bomb.exit_code != 0 and "can't fork" in bomb.output


def test_volumes_read_write_and_read_only(bb, owner, uid):
    vol = mounts.make_dir(f"/var/lib/labhelper/test-vol-{uid}", owner=owner)
    with open(f"{vol}/f", "w") as fh:
        fh.write("from the host\n")
    rw = sh(bb, "cat /data/f; echo from the container > /data/g", volumes=[f"{vol}:/data"])
    assert rw.exit_code == 0 and rw.output == "from the host\n"
    assert open(f"{vol}/g").read() == "from the container\n"
    ro = sh(bb, "cat /data/f; echo no > /data/h", volumes=[f"{vol}:/data:ro"])
    assert ro.exit_code != 0 and "Read-only file system" in ro.output and not os.path.exists(f"{vol}/h")


def test_workdir_user_env_and_the_image_settings(bb):
    r = sh(bb, "pwd; id; echo $GREETING $PATH", workdir="/srv/../srv/app", user="1000:100",
           env={"GREETING": "hi"})
    assert r.output.splitlines() == ["/srv/app", "uid=1000 gid=100",
                                     "hi /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    up = sh(bb, "pwd", workdir="/../../..")            # '..' never climbs above the container's root
    assert up.output == "/\n"
    fds = sh(bb, "ls /proc/$$/fd; true")               # only 0, 1 and 2 crossed the exec
    assert fds.output.split() == ["0", "1", "2"], fds.output


def test_a_hostile_image_cannot_send_a_mount_or_a_write_to_the_host(bb, owner, uid):
    # An image whose /proc is a link to the host's /proc (through ".."), and whose /data is an
    # absolute link to /etc: the runtime refuses the first, and resolves the second inside the root.
    def hostile():
        os.rmdir("/proc")
        os.symlink("../../../../proc", "/proc")
    images.build(bb, "busybox", "evil-proc", change=hostile)

    def data_to_etc():
        os.symlink("/etc", "/data")
    images.build(bb, "busybox", "evil-data", change=data_to_etc)
    before = _census()
    hostname = open("/etc/hostname").read()
    with pytest.raises(LabError, match=r"could not start: /proc: /proc in the image is a symlink"):
        container.run("evil-proc", ["true"], store=bb)
    assert _census() == before
    vol = mounts.make_dir(f"/var/lib/labhelper/test-vol-{uid}", owner=owner)
    with open(f"{vol}/hostname", "w") as fh:
        fh.write("not the host's\n")
    r = container.run("evil-data", ["cat", "/etc/hostname"], store=bb, volumes=[f"{vol}:/data"])
    assert r.output == "not the host's\n"              # the volume went on the image's own /etc
    assert open("/etc/hostname").read() == hostname and not any(m.mountpoint == "/etc" for m in procfs.mountinfo())


@pytest.mark.parametrize("options, message", [
    ({"volumes": ["/:/data"]}, "refusing to share as a volume '/'"),
    ({"volumes": ["/etc:/data"]}, "refusing to share as a volume '/etc'"),
    ({"volumes": ["/proc:/data"]}, "refusing to share as a volume '/proc'"),
    ({"volumes": ["/run/labhelper/ledger:/data"]}, "holds the lab's own state"),
    ({"volumes": ["/var/lib/labhelper/images:/data"]}, "holds the lab's own state"),
    ({"workdir": "/proc/self/fd/3"}, "not in /proc"),
    ({"workdir": "../../.."}, "must be an absolute path"),
    ({"memory": "1k"}, "below the lab's floor"),
    ({"pids": -1}, "0 or more"),
    ({"cpus": 1000}, "more than the"),
    ({"name": "../x"}, "is not a container name"),
    ({"hostname": "-x"}, "hostname"),
    ({"env": ["NOEQUALS"]}, "NAME=VALUE"),
])
def test_bad_requests_are_refused_and_change_nothing(bb, options, message):
    before = _census()
    with pytest.raises(Refused, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(bb, "true", **options)
    assert _census() == before


def test_a_missing_image_a_symlinked_volume_and_a_name_in_use(bb, owner, uid, tmp_path):
    before = _census()
    with pytest.raises(Refused, match="no image 'nope'"):
        container.run("nope", ["true"], store=bb)
    link = f"/var/lib/labhelper/test-link-{uid}"
    os.symlink("/etc", link)
    try:
        with pytest.raises(Refused, match="it is a symlink"):
            run(bb, "true", volumes=[f"{link}:/data"])
    finally:
        os.unlink(link)
    assert _census() == before
    mounts.make_dir(f"{container.CONTAINERS}/taken-{uid}", owner=owner)
    with pytest.raises(Refused, match="exists already"):
        run(bb, "true", name=f"taken-{uid}")


@pytest.mark.parametrize("step", ["container-bundle", "container-rootfs", "container-cgroup", "container-network"])
@pytest.mark.parametrize("how", ["sigkill", "raise"])
def test_r1_a_kill_at_each_step_of_run_then_cleanup_leaves_nothing(bb, uid, step, how, network_owner):
    from labhelper import network
    bridge = network.bridge(f"r{uid}") if step == "container-network" else None
    before = _census()
    net = f", net='bridge', network='r{uid}'" if bridge else ""
    code = (f"from labhelper import container, images; "
            f"container.run('busybox', ['true'], store=images.Store({bb.root!r}), name='r1-{uid}', "
            f"owner='systest-{uid}-r1'{net}); print('not reached')")
    p = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABHELPER_FAULT=f"{step}:{how}"),
                       capture_output=True, text=True, start_new_session=True, timeout=120)
    assert "not reached" not in p.stdout
    if how == "sigkill":
        assert p.returncode == -signal.SIGKILL
        assert registry.ledger().find("dir", f"{container.CONTAINERS}/r1-{uid}") is not None
        result = cleanup.cleanup(owner=f"systest-{uid}-r1")
        assert result.ok, result.failures
    else:
        assert p.returncode == 1 and "FaultInjected" in p.stderr, p.stderr
    assert _census() == before
    assert not os.path.exists(f"{container.CONTAINERS}/r1-{uid}")
    assert not any(f"r1-{uid}" in path for path in cgroups.tree_of())
    if bridge:
        network.delete_link(bridge)


def test_r4_a_runtime_killed_while_its_container_runs_leaves_no_process(bb, uid):
    # Only the runtime is killed, as a Jupyter restart kills the kernel: its fork server and the
    # container's init (the runtime's child, though the server cloned it) die with it
    # (PR_SET_PDEATHSIG), and PID 1 takes its namespace along; cleanup removes the rest.
    before = _census()
    code = (f"from labhelper import container, images, process; "
            f"box = container.create('busybox', ['sleep', '60'], store=images.Store({bb.root!r}), "
            f"name='r4-{uid}', owner='systest-{uid}-r4'); box.start(); "
            f"print(process.fork_server().pid, box.pid, flush=True); box.wait()")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        server, init_pid = map(int, p.stdout.readline().split())
        inside = set(cgroups.existing(f"ct-r4-{uid}").procs())
        assert init_pid in inside
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in inside | {server}) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in inside | {server} if os.path.exists(f"/proc/{pid}")]
    result = cleanup.cleanup(owner=f"systest-{uid}-r4")
    assert result.ok, result.failures
    assert _census() == before


def test_a_root_filesystem_from_the_hosts_own_programs_when_busybox_is_missing(store):
    from labhelper import rootfs
    seen = []
    img = rootfs.host_image(store, "host-tools", programs=("sh", "ls", "cat"),
                            progress=lambda done, total, what: seen.append((done, total, what)))
    assert seen == [(1, 3, "sh"), (2, 3, "ls"), (3, 3, "cat")] and len(img.layers) == 1
    r = container.run("host-tools", ["sh", "-c", "ls /; cat /etc/passwd"], store=store)
    assert r.exit_code == 0 and "root:x:0:0:root:/root:/bin/sh" in r.output and "proc" in r.output.split()
    # The base image: made once (busybox-static here), then found in the store.
    first = rootfs.base_image(store)
    assert rootfs.base_image(store).manifest == first.manifest


@pytest.mark.cgroups
def test_create_then_step_by_step_shows_the_state_after_each_step(bb):
    # runc create / runc start: init waits before each step; the namespace's mounts and the
    # process's status are looked at from outside between them.
    before = _census()
    with container.create("busybox", ["sh", "-c", "echo ran as $(id -u) on $(hostname)"], store=bb,
                          name="stepper", user="1000:1000") as box:
        assert box.steps[:2] == ["cgroup namespace", "session"] and box.steps[-1] == "exec" and "user" in box.steps
        assert repr(box).startswith("Container(stepper: busybox, pid ") and "next: cgroup namespace" in repr(box)
        seen = {}
        while box.next:
            name = box.step()
            seen[name] = ({m.mountpoint for m in box.mounts()}, box.status())
        # Before pivot_root the container's mounts are below its root folder, among the host's...
        root = box.rootfs
        assert f"{root}/proc" not in seen["session"][0] and f"{root}/proc" in seen["/proc"][0]
        assert f"{root}/dev/pts" in seen["/dev"][0] and f"{root}/proc/sys" in seen["masked paths"][0]
        assert "/sys/fs/cgroup" in seen["masked paths"][0]                 # (a host mount)
        # ...after it, only the container's are left, at their own names.
        after = seen["pivot_root"][0]
        assert {"/", "/proc", "/dev/pts", "/proc/sys"} <= after and not any(p.startswith(root) for p in after)
        assert ("/sys/fs/cgroup" in after) == (cgroups.version() == 2)
        full = seen["working directory"][1]
        assert caps.decode(full["CapBnd"]) != caps.decode(seen["capabilities"][1]["CapBnd"])
        assert seen["user"][1]["Uid"].split()[0] == "1000" and seen["seccomp"][1]["Seccomp"] == "2"
        with pytest.raises(Refused, match="no step left"):
            box.step()
        r = box.wait()
        assert r.output == "ran as 1000 on stepper\n" and r.exit_code == 0
    assert _census() == before


def test_a_created_container_removed_before_its_start_leaves_nothing(bb):
    before = _census()
    box = container.create("busybox", ["true"], store=bb)
    box.step()
    box.step()
    assert os.path.exists(f"/proc/{box.pid}")
    box.remove()
    box.remove()                                        # idempotent
    assert _census() == before and not os.path.exists(f"/proc/{box.pid}/status") or \
        procfs.read_text(f"/proc/{box.pid}/cmdline", "") == ""


ESCAPE_C = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
/* The double-chroot escape: chroot into a folder below while the working directory stays above
   it, climb "..", chroot("."). Against a chroot-only jail it reaches the host's root. */
int main(void) {
    mkdir("/tmp/deeper", 0755);
    if (chroot("/tmp/deeper") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 100; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    puts(access("/var/lib/labhelper", F_OK) == 0 ? "ESCAPED" : "CONTAINED");
    return 0;
}
"""


def test_r8_the_double_chroot_escape_stays_inside_and_r12_a_setuid_program_gains_nothing(bb, owner, uid, tmp_path):
    capabilities.need("gcc", "the escape is a small static C program")
    tools = mounts.make_dir(f"/var/lib/labhelper/test-tools-{uid}", owner=owner)
    (tmp_path / "escape.c").write_text(ESCAPE_C)
    built = subprocess.run(["gcc", "-static", "-O1", "-o", f"{tools}/escape", str(tmp_path / "escape.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"[n/a] no static libc to build the escape with: {built.stderr.strip()[:200]}")
    # The same program escapes a plain chroot of the same tree (so the test can fail)...
    jail = f"{tools}/jail"
    images.unpack(bb, "busybox", jail)
    os.makedirs(f"{jail}/tools")
    os.link(f"{tools}/escape", f"{jail}/tools/escape")
    plain = subprocess.run(["chroot", jail, "/tools/escape"], capture_output=True, text=True)
    assert plain.stdout.strip() == "ESCAPED", plain
    # ...and stays inside a container.
    r = run(bb, "/tools/escape", volumes=[f"{tools}:/tools:ro"])
    assert r.exit_code == 0 and r.output.strip() == "CONTAINED", r
    # R12: a setuid-root program run by uid 1000 stays uid 1000 (no_new_privs ignores the bit).
    os.makedirs(f"{tools}/suid")
    shutil.copy2(f"{jail}/bin/busybox", f"{tools}/suid/busybox")
    os.chmod(f"{tools}/suid/busybox", 0o4755)
    r = run(bb, "/tools/suid/busybox", "id", "-u", volumes=[f"{tools}:/tools"], user="1000:1000")
    assert r.output.strip() == "1000", r


def test_net_bridge_two_containers_talk_and_none_reaches_nothing(bb, uid, network_owner):
    from labhelper import network
    before = _census()
    bridge = network.bridge(f"b{uid}")
    try:
        server = container.detach("busybox", ["sh", "-c", "while true; do echo pong | nc -l -p 7000; done"],
                                  store=bb, name=f"pong-{uid}", net="bridge", network=f"b{uid}")
        address = container.inspect(server)["address"]
        gateway = str(network.gateway_of(f"b{uid}"))
        assert address.endswith("/24") and address != gateway
        r = sh(bb, f"ip -4 addr show eth0 | grep -c inet; ip route | grep -c default; nc {address.split('/')[0]} 7000",
               net="bridge", network=f"b{uid}")
        assert r.output.split() == ["1", "1", "pong"], r.output
        alone = sh(bb, f"nc -w 1 {address.split('/')[0]} 7000; echo rc=$?")
        assert "rc=1" in alone.output and "pong" not in alone.output
        with pytest.raises(Refused, match="needs the lab bridge"):
            run(bb, "true", net="bridge")
        container.rm(server, force=True)
    finally:
        network.delete_link(bridge)
    assert _census() == before


def test_a_root_folder_given_as_it_is(bb, owner, uid):
    # runc's bundle: a folder (not a mount point: bound onto itself in the container's namespace).
    before = _census()
    folder = mounts.make_dir(f"/var/lib/labhelper/test-rootfs-{uid}", owner=owner)
    images.unpack(bb, "busybox", f"{folder}/rootfs")
    r = container.run(None, ["sh", "-c", "echo hi > /written; ls /"], rootfs=f"{folder}/rootfs")
    assert r.exit_code == 0 and "proc" in r.output.split(), r
    assert open(f"{folder}/rootfs/written").read() == "hi\n"          # no layer of its own: written in place
    for kwargs, message in (({"rootfs": "/"}, "labhelper does that only below"),
                            ({"rootfs": f"{folder}/nope"}, "does not exist"),
                            ({"rootfs": "/var/lib/labhelper/images"}, "lab's own state")):
        with pytest.raises(Refused, match=message):
            container.run(None, ["true"], **kwargs)
    with pytest.raises(Refused, match="not both"):
        container.run("busybox", ["true"], rootfs=f"{folder}/rootfs")
    with pytest.raises(Refused, match="give the command"):
        container.run(None, None, rootfs=f"{folder}/rootfs")
    with pytest.raises(Refused, match="needs an image"):
        container.detach(None, ["true"], rootfs=f"{folder}/rootfs")
    assert _census() - {("dir", folder)} == before


def test_r23_a_container_at_half_a_cpu_uses_at_most_0_55_and_r24_its_timeout(bb):
    # A busy loop for 3 s at --cpus 0.5: the cgroup's own count of CPU time over the wall time.
    before = _census()
    with container.create("busybox", ["sh", "-c", "while true; do :; done"], store=bb, cpus=0.5,
                          timeout=3) as box:
        t0 = time.monotonic()
        result = box.wait()
        wall = time.monotonic() - t0
        used = box.group.stats().cpu_usage_us / 1e6
    assert result.exit_code == 137 and result.timed_out                 # R24: killed at its timeout
    assert 2.5 < wall < 15, wall
    assert 0.2 < used / wall <= 0.55, f"{used:.2f} s of CPU in {wall:.2f} s"
    assert _census() == before


@pytest.mark.parametrize("step", ["container-cgroup", "container-rootfs"])
def test_a_failed_start_leaves_no_file_descriptor_and_no_child_here(bb, uid, step, monkeypatch):
    # In this process: init is asked of the fork server before its cgroup is made, and the
    # pipes to it are the runtime's; a failure on either side closes them all and reaps init.
    process.fork_server()       # this process's, which stays: started before the count
    before, fds, kids = _census(), sorted(os.listdir("/proc/self/fd")), procfs.children()
    monkeypatch.setenv("LABHELPER_FAULT", f"{step}:raise")
    from labhelper.errors import FaultInjected
    with pytest.raises(FaultInjected):
        run(bb, "true", name=f"fail-{uid}")
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert procfs.children() == kids
    assert _census() == before


def test_init_failing_to_make_its_namespaces_says_so_and_leaves_nothing(bb, uid, monkeypatch):
    # init (a clone of the fork server) makes its mount, UTS, IPC and network namespaces
    # itself, while the runtime makes its cgroup: a refusal there is the error, whichever side
    # notices. The server is a copy of this process as it was: one started after the patch.
    from labhelper import syscalls
    real, here = syscalls.unshare, os.getpid()

    def refused_in_init(flags):
        if os.getpid() != here:
            raise OSError(1, "Operation not permitted (injected)")
        return real(flags)
    monkeypatch.setattr(syscalls, "unshare", refused_in_init)
    process.stop_fork_server()
    try:
        process.fork_server()
        before, fds, kids = _census(), sorted(os.listdir("/proc/self/fd")), procfs.children()
        with pytest.raises(LabError, match="did not start: namespaces: .*injected"):
            run(bb, "true", name=f"nons-{uid}")
        assert sorted(os.listdir("/proc/self/fd")) == fds
        assert procfs.children() == kids
        assert _census() == before
    finally:
        process.stop_fork_server()      # none with the patch is left for the next tests


@pytest.mark.cgroups
def test_init_makes_no_flag_combination_of_its_own(bb, owner, uid, monkeypatch):
    # Each container's init is a fresh copy of the fork server: a flag combination made there
    # (a new enum member, tens of microseconds) is made again by every container, so init's
    # mount flags are combined once, at import (init.py). This fails if a step combines some
    # itself: enum makes a combination it has not seen in _missing_, refused here in init.
    import enum
    real = enum.Flag._missing_.__func__

    def none_made_in_init(cls, value):
        if os.getpid() == 1:                # a container's init: PID 1 of its PID namespace
            raise RuntimeError(f"{cls.__name__}({value:#x}) was combined in the container's init")
        return real(cls, value)
    monkeypatch.setattr(enum.Flag, "_missing_", classmethod(none_made_in_init))
    vol = mounts.make_dir(f"/var/lib/labhelper/test-vol-{uid}", owner=owner)
    process.stop_fork_server()
    try:
        process.fork_server()               # a copy of this process with the patch
        # Every step: a read-only volume, /proc, /dev, /sys (and, on cgroup v2, the cgroup2
        # mount: the guest stage), the masked and read-only paths, pivot_root.
        r = sh(bb, "echo ok", name=f"flags-{uid}", volumes=[f"{vol}:/data:ro"])
        assert r.exit_code == 0 and r.output == "ok\n" and not r.error, r
    finally:
        process.stop_fork_server()      # none with the patch is left for the next tests


def test_removing_a_frozen_container_ends_it(bb, uid):
    # A SIGKILL waits while its group is frozen: remove() kills through the group, which thaws
    # it, and comes back (it used to be waited for without end).
    before = _census()
    box = container.create("busybox", ["sleep", "60"], store=bb, name=f"frozen-{uid}")
    try:
        box.start()
        deadline = time.monotonic() + 10
        while not box.group.procs() and time.monotonic() < deadline:
            time.sleep(0.01)
        box.group.freeze()
        started = time.monotonic()
    finally:
        box.remove()
    assert time.monotonic() - started < 20
    assert _census() == before


def test_a_stepped_container_s_timeout_counts_from_its_start(bb, uid):
    # Nothing reads its error pipe between start() and wait(): its timeout counts from start().
    box = container.create("busybox", ["sleep", "60"], store=bb, name=f"late-{uid}", timeout=1)
    try:
        box.start()
        time.sleep(1.5)
        started = time.monotonic()
        result = box.wait()
    finally:
        box.remove()
    assert result.timed_out and result.exit_code == 137, result
    assert time.monotonic() - started < 1.0
