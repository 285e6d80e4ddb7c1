"""The safety guard: on a machine not declared disposable, every call that would change kernel
state (or the ledger) refuses, with NotDisposableError, and changes nothing.

One table of calls, CALLS; the removers of every kind in marks.KINDS are covered by themselves.
A new state-changing function is one line in CALLS; a new kind of object needs none.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from labhelper import cgroups, cleanup, container, host, images, loop, marks, mounts, network, overlay, registry, syscalls
from labhelper.cleanup.inventory import function_of
from labhelper.errors import NotDisposableError
from labhelper.teach import lab

LAB = "/run/labhelper/guard-test"

# A name per kind that carries the kind's mark, so the refusal is the guard's, not a bad name's.
SAMPLE = {"process": marks.Obj("process", "4194303", ident=1), "mount": marks.Obj("mount", f"{LAB}/m"),
          "link": marks.Obj("link", "lh-guard"), "netns": marks.Obj("netns", "lh-guard"),
          "cgroup": marks.Obj("cgroup", "/sys/fs/cgroup/unified/labhelper/guard"),
          "dir": marks.Obj("dir", f"{LAB}/d"), "firewall": marks.Obj("firewall", "lh-guard"),
          "loop": marks.Obj("loop", "/dev/loop7")}


def _one_object_census(*args, **kwargs):
    return cleanup.Census([SAMPLE["mount"]], [], [])


CALLS = {
    "Ledger.add": lambda led: led.add("mount", f"{LAB}/m"),
    "Ledger.remove": lambda led: led.remove("mount", f"{LAB}/m"),
    "Ledger.forget_file": lambda led: led.forget_file("mount.0123.json"),
    "Ledger.creating": lambda led: led.creating("mount", f"{LAB}/m").__enter__(),
    "Ledger.removing": lambda led: led.removing("mount", f"{LAB}/m").__enter__(),
    "mounts.mount_tmpfs": lambda led: mounts.mount_tmpfs(f"{LAB}/m"),
    "mounts.unmount": lambda led: mounts.unmount(f"{LAB}/m"),
    "mounts.unmount(record=False)": lambda led: mounts.unmount(f"{LAB}/m", record=False),
    "mounts.detach": lambda led: mounts.detach(f"{LAB}/m"),
    "mounts.remove_tree": lambda led: mounts.remove_tree(f"{LAB}/d"),
    "overlay.mount": lambda led: overlay.mount(f"{LAB}/m", [f"{LAB}/l1", f"{LAB}/l2"], f"{LAB}/u", f"{LAB}/w"),
    "overlay.unmount": lambda led: overlay.unmount(f"{LAB}/m"),
    "cleanup.execute": lambda led: cleanup.execute([cleanup.Action("unmount", SAMPLE["mount"])], led),
    "cleanup.cleanup": lambda led: cleanup.cleanup(),
    "lab.reset": lambda led: lab.reset(),
    "network.create": lambda led: network.create("guard"),
    "network.remove_ns": lambda led: network.remove_ns("guard"),
    "network.veth": lambda led: network.veth((None, "guard1"), (None, "guard2")),
    "network.bridge": lambda led: network.bridge("guard"),
    "network.attach": lambda led: network.attach("guard", "guard"),
    "network.up": lambda led: network.up(None, "guard"),
    "network.down": lambda led: network.down(None, "guard"),
    "network.add_address": lambda led: network.add_address(None, "guard", "10.213.0.1/24"),
    "network.route": lambda led: network.route(None, "10.213.0.0/24", dev="guard"),
    "network.delete_link": lambda led: network.delete_link("guard"),
    "network.firewall.create": lambda led: network.firewall.create("lh-guard"),
    "network.open_port": lambda led: network.open_port("lh-guard", 8888),
    "network.close_port": lambda led: network.close_port("lh-guard", 8888),
    "network.nat": lambda led: network.nat("lh-guard", "10.213.0.0/24"),
    "mounts.make_dir": lambda led: mounts.make_dir(f"{LAB}/d"),
    "loop.attach": lambda led: loop.attach(),
    "cgroups.group": lambda led: cgroups.group("guard"),
    "images.Store": lambda led: images.Store(f"{LAB}/images"),
    "container.run": lambda led: container.run("busybox", ["true"]),
}


@pytest.fixture
def not_disposable(monkeypatch, tmp_path):
    """This machine, declared not disposable whatever it really is; the kernel calls that could
    change something are replaced by recorders, so a broken guard fails the test harmlessly."""
    monkeypatch.delenv("LABHELPER_DISPOSABLE", raising=False)
    monkeypatch.setattr(host, "DISPOSABLE_MARKER", tmp_path / "no-marker")
    ledger_dir = tmp_path / "ledger"
    monkeypatch.setenv("LABHELPER_LEDGER", str(ledger_dir))
    monkeypatch.setattr(cleanup, "census", _one_object_census)
    made = []
    for name in ("mount", "umount2", "unshare", "setns", "pivot_root", "sethostname"):
        monkeypatch.setattr(syscalls, name, lambda *a, _n=name, **k: made.append(_n))
    for name in ("mkdir", "rmdir", "unlink", "makedirs", "kill", "replace"):
        monkeypatch.setattr(os, name, lambda *a, _n=name, **k: made.append(_n))
    # The network's changes: netlink requests that make or delete (reads go through), the
    # helper's requests (a new namespace), and programs run (nft).
    real_request = network.rtnl.Rtnl.request

    def request(self, what, *args, **kwargs):
        if what.startswith(("RTM_NEW", "RTM_DEL")):
            made.append(what)
            return []
        return real_request(self, what, *args, **kwargs)
    monkeypatch.setattr(network.rtnl.Rtnl, "request", request)
    monkeypatch.setattr(network.netns._helper, "call", lambda *a, **k: made.append("helper"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: made.append("subprocess.run"))
    return registry.Ledger(ledger_dir), made, ledger_dir


def _refused(call, led, made, ledger_dir):
    with pytest.raises(NotDisposableError, match="not declared disposable"):
        call(led)
    assert made == [], f"changed the system before refusing: {made}"
    assert not ledger_dir.exists(), "wrote the ledger before refusing"


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_state_changing_call_refuses(name, not_disposable):
    _refused(CALLS[name], *not_disposable)


@pytest.mark.parametrize("kind", [k.name for k in marks.KINDS])
def test_every_remover_refuses(kind, not_disposable):
    assert kind in SAMPLE, f"add a sample object of kind {kind!r} to SAMPLE"
    remover = function_of(marks.kind(kind), "remove")
    _refused(lambda led: remover(SAMPLE[kind], led), *not_disposable)


def test_the_refusal_says_how_to_opt_in(not_disposable):
    led, _, _ = not_disposable
    with pytest.raises(NotDisposableError) as info:
        led.add("dir", f"{LAB}/d")
    assert "LABHELPER_DISPOSABLE=1" in str(info.value) and "touch" in str(info.value)


def test_read_only_calls_work_without_the_guard(not_disposable):
    led, made, _ = not_disposable
    assert led.records() == [] and cleanup.plan(cleanup.census()) != []
    assert cleanup.cleanup(dry_run=True).actions and made == []
