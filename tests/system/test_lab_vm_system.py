"""What only the learners' kind of host can show: systemd as PID 1, its delegation of cgroups,
a shared root mount, and the lab's JupyterLab service listening on the VM's addresses.

These tests are marked ``labvm``: `make test` leaves them out, and the lab VM stage (tests/labvm,
`make test-labvm`) runs them in a booted, provisioned lab VM, under
``systemd-run --scope -p Delegate=yes`` and the lab's delegation step, exactly as `make lab`
starts JupyterLab on a systemd host. Elsewhere they skip, naming what is missing ([systemd]).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import capabilities
import pytest
from systest import sh
from test_network_system import _connect
from timing import scaled

from labhelper import container, network, procfs
from labhelper.cgroups import delegation

pytestmark = [pytest.mark.labvm, capabilities.needs("systemd")]

JUPYTER_PORT = 8888          # the lab VM's unit: --ServerApp.port=8888 on 0.0.0.0


def _own_v2_cgroup() -> str:
    mount = delegation.v2_mount()
    assert mount, "the lab VM has cgroup v2"
    return delegation.own_cgroup(mount)


# --- delegation: the lab's cgroups inside what systemd handed over -----------------------------

def test_the_lab_gets_a_delegated_cgroup_and_systemd_leaves_it_alone(g):
    place = os.environ.get(delegation.ROOT_ENV)
    assert place, f"{delegation.ROOT_ENV} is not set: was this run through labhelper.cgroups.delegate?"
    # systemd marked the scope as handed over, and this process was moved into its leaf.
    assert delegation.delegated(place), f"{place} carries no trusted.delegate"
    assert _own_v2_cgroup() == os.path.join(place, delegation.LEAF)
    # The lab's groups are made below the delegated place, with the controllers the lab needs.
    assert g.path.startswith(place + "/"), (g.path, place)
    assert {"memory", "pids", "cpu"} <= set(open(os.path.join(place, "cgroup.subtree_control")).read().split())
    g.limit(memory="64m", pids=32)
    # A process of the group sees itself there (from its own /proc/self/cgroup).
    assert g.run(_own_cgroup_line) == "0::" + g.path[len(delegation.v2_mount()):]
    assert g.stats().pids_current == 0
    # systemd reloads its units (as apt does after installing a service): a cgroup it did not
    # delegate would be reset; the lab's stays, limits and all.
    sh("systemctl daemon-reload")
    assert os.path.isdir(g.path)
    assert open(os.path.join(g.path, "memory.max")).read().strip() == str(64 * 1024 * 1024)


def _own_cgroup_line() -> str:
    with open("/proc/self/cgroup") as fh:
        return fh.read().strip()


def test_without_delegation_the_lab_says_so_and_changes_nothing():
    # The check can fail: a scope that systemd did not delegate is refused by name, and the
    # process is not moved (its cgroup stays as systemd made it).
    script = ("from labhelper.cgroups import delegation\n"
              "import sys\n"
              "before = delegation.own_cgroup(delegation.v2_mount())\n"
              "try:\n"
              "    delegation.prepare()\n"
              "except Exception as exc:\n"
              "    after = delegation.own_cgroup(delegation.v2_mount())\n"
              "    print('refused' if after == before else 'moved', exc)\n"
              "else:\n"
              "    print('accepted')\n")
    done = subprocess.run(["systemd-run", "--scope", "--quiet", "--collect", "--", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("refused"), (done.stdout, done.stderr)
    assert "was not delegated" in done.stdout and "Delegate=yes" in done.stdout


def test_the_jupyterlab_service_gives_its_kernels_a_delegated_place():
    # The unit runs JupyterLab through the delegation step: the server sits in the leaf, and
    # the service's own cgroup enables the controllers for the lab's groups beside it.
    service = "/sys/fs/cgroup/system.slice/labhelper-jupyter.service"
    main_pid = sh("systemctl show -p MainPID --value labhelper-jupyter.service").stdout.strip()
    assert main_pid not in ("", "0"), "the lab VM's JupyterLab service is not running"
    own = [e.path for e in procfs.cgroups_of(int(main_pid)) if e.hierarchy == "0"]
    assert own == ["/system.slice/labhelper-jupyter.service/server"], own
    assert delegation.delegated(service)
    assert {"memory", "pids", "cpu"} <= set(open(os.path.join(service, "cgroup.subtree_control")).read().split())


# --- R13: mount propagation with a shared / -------------------------------------------------------

def _root_is_shared() -> bool:
    return any(m.mountpoint == "/" and any(p.startswith("shared:") for p in m.propagation)
               for m in procfs.mountinfo())


def _points() -> set[str]:
    return {m.mountpoint for m in procfs.mountinfo()}


def test_r13_nothing_a_container_mounts_appears_on_the_shared_host(bb, tmp_path):
    assert _root_is_shared(), "systemd shares / (its default): this test needs it so"
    before = _points()
    box = container.create("busybox", ["true"], store=bb)
    try:
        while box.next != "exec":
            box.step()                       # every mount of init done: /proc, /dev, /sys, the root...
        inside = {m.mountpoint for m in box.mounts()}
        assert {"/proc", "/dev", "/sys"} <= inside, inside
        # Outside, only the container's overlay root is new (the runtime mounts it here, on
        # purpose, and the census knows it); none of init's mounts came back through /.
        new = _points() - before
        assert new == {box.rootfs}, new
    finally:
        box.remove()
    assert _points() == before


def test_r13_the_check_can_fail_a_shared_namespace_does_propagate(tmp_path):
    # The same kind of mount, made in a new mount namespace whose copies stay shared (what a
    # runtime that forgot to make / private would do), does appear here.
    target = tmp_path / "shared-here"
    target.mkdir()
    from labhelper import namespaces

    def mount_inside(where):
        from labhelper import syscalls
        syscalls.mount("lh-r13", where, "tmpfs", 0, "size=1m")
        return True

    try:
        assert namespaces.run(["mnt"], mount_inside, str(target), uid=None, propagation="shared")
        assert str(target) in _points()
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
    assert str(target) not in _points()


# --- R16: the lab's networks and the VM's own JupyterLab -----------------------------------------

def _vm_addresses() -> list[str]:
    out = sh("ip -4 -o addr show scope global").stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if not line.split()[1].startswith(("lh-", "veth"))]


@pytest.mark.usefixtures("network_owner")
def test_r16_the_lab_network_cannot_reach_jupyterlab_on_the_vms_addresses(uid):
    with socket.create_connection(("127.0.0.1", JUPYTER_PORT), timeout=10):
        pass                                 # the service listens here, on every address
    addresses = _vm_addresses()
    assert addresses, "the lab VM has no address of its own (QEMU's user network gives 10.0.2.15)"
    br = network.bridge(f"br{uid}")
    c = network.create(f"c{uid}")
    network.attach(c, br)
    gw = str(network.gateway_of(br).ip)
    # A wait long enough for a handshake on this (maybe emulated) machine: a "timeout" must
    # mean dropped, not slow.
    wait = scaled(0.5)
    for address in [gw, *addresses]:
        assert network.run_in(c, _connect, address, JUPYTER_PORT, wait) == "timeout", address
    # The check can fail: without the bridge's table, the container reaches the root shell.
    sh(f"nft delete table inet {br}")
    for address in [gw, *addresses]:
        assert network.run_in(c, _connect, address, JUPYTER_PORT, wait) == "connected", address
