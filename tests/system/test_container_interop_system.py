"""labhelper's container next to runc's and crun's (chapter 08): the same root filesystem, the
same options written as an OCI bundle (container.oci), and what the process sees from inside
compared line by line: namespaces, mounts, capabilities, no_new_privs and seccomp, its cgroup
and limits, /dev, the environment, its user, host name and folder. Any difference not listed in
oci.DELIBERATE fails the test."""
from __future__ import annotations

import os

import pytest

import capabilities
from labhelper import cleanup, container, images, mounts, overlay
from labhelper.container import oci

PROBE = r"""
for n in cgroup ipc mnt net pid uts; do echo "ns $n $(readlink /proc/self/ns/$n)"; done
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' | sed 's/^/status /'
echo "id $(id -u):$(id -g)"; echo "cwd $(pwd)"; echo "hostname $(hostname)"
env | sort | sed 's/^/env /'
ls -A /dev | sort | sed 's/^/dev /'
while read -r line; do
  set -- $line; mp=$5; opts=$6; rest=${line#* - }; set -- $rest
  echo "mount $mp $1 ${opts%%,*}"
done < /proc/self/mountinfo
for f in memory.max pids.max cpu.max; do [ -f /sys/fs/cgroup/$f ] && echo "limit $f $(cat /sys/fs/cgroup/$f)"; done
sed 's/^/cgroup /' /proc/self/cgroup
"""
OPTIONS = dict(name="probe", hostname="probe", env=["GREETING=hi"], workdir="/tmp", memory="64m", cpus=0.5, pids=64)


@pytest.fixture
def shared_root(store, uid):
    """One overlay of the busybox layer, used as it is by every runtime (like for like)."""
    capabilities.need("overlay")
    capabilities.need("busybox")
    owner = f"systest-{uid}"
    img = images.busybox_image(store)
    base = mounts.make_dir(f"/var/lib/labhelper/interop-{uid}", owner=owner)
    for sub in ("upper", "work", "rootfs", "bundle"):
        os.mkdir(f"{base}/{sub}")
    root = overlay.mount(f"{base}/rootfs", [store.layer_dir(img.layers[0].chain_id)], f"{base}/upper",
                         f"{base}/work", owner=owner)
    yield base, root.target
    root.unmount()
    cleanup.cleanup(owner=owner)


def _seen(output: str, host_ns: dict) -> dict:
    """The probe's lines, grouped: namespaces as 'new' or 'host's', mounts as a sorted list."""
    seen: dict = {}
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ns":
            name, link = rest.split(" ", 1)
            rest = f"{name} {'host' if link == host_ns[name] else 'new'}"
        seen.setdefault(kind, []).append(rest)
    return {k: sorted(v) if k in ("mount", "env", "dev") else v for k, v in seen.items()}


def _deliberate(mounts_seen: list[str]) -> list[str]:
    """Mounts as seen, less what oci.DELIBERATE explains: the device nodes bound in ("/dev nodes"),
    and which /dev/null is bound over a masked file, read-only or not ("masked files")."""
    out = []
    for line in mounts_seen:
        where, fstype, mode = line.split()
        if where in {f"/dev/{d}" for d in container.DEVICES}:
            continue
        if where in container.MASKED and fstype in ("devtmpfs", "tmpfs"):
            fstype = mode = "a /dev/null"       # whose, and read-only or not
        out.append(f"{where} {fstype} {mode}")
    return out


def _host_ns() -> dict:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in ("cgroup", "ipc", "mnt", "net", "pid", "uts")}


# runc also in the guest stage (pure cgroup v2, where the limits are compared too); crun on the
# host only, to keep `make test` under 15 minutes.
@pytest.mark.cgroups
@pytest.mark.parametrize("runtime", ["runc", pytest.param("crun", marks=pytest.mark.hostonly)])
def test_the_same_container_under_labhelper_and_an_oci_runtime(shared_root, runtime, uid):
    capabilities.need(runtime, f"{runtime} is the OCI runtime compared with (apt-get install {runtime})")
    base, rootfs = shared_root
    before = cleanup.census().names()
    ours = container.run(None, ["/bin/sh", "-c", PROBE], rootfs=rootfs, **OPTIONS)
    assert ours.exit_code == 0, ours
    oci.bundle(f"{base}/bundle", rootfs, ["/bin/sh", "-c", PROBE], **OPTIONS)
    theirs = oci.run_bundle(runtime, f"{base}/bundle", f"lh-interop-{uid}")
    assert theirs.returncode == 0, theirs.stderr
    host = _host_ns()
    a, b = _seen(ours.output, host), _seen(theirs.stdout, host)
    assert a["ns"] == [f"{n} new" for n in ("cgroup", "ipc", "mnt", "net", "pid", "uts")]
    assert {"NoNewPrivs:1", "Seccomp:2"} <= set(a["status"]) and a["id"] == ["0:0"] and a["cwd"] == ["/tmp"]
    assert "env GREETING=hi" in [f"env {e}" for e in a["env"]] and "null" in a["dev"]
    a["mount"], b["mount"] = _deliberate(a["mount"]), _deliberate(b["mount"])
    b["dev"] = [d for d in b["dev"] if d != "core"]          # oci.DELIBERATE["/dev/core"]
    differences = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert not differences, "\n".join(f"{k}:\n  labhelper {x}\n  {runtime} {y}" for k, (x, y) in differences.items())
    assert cleanup.census().names() == before
