"""container.oci: labhelper run's options written as an OCI runtime spec (no root: nothing runs)."""
from __future__ import annotations

import json
import os

import pytest

from labhelper import capabilities, seccomp
from labhelper.container import config, init, oci, runtime
from labhelper.errors import Refused


def _spec(cgroup2=False, **options):
    cfg = config.check(None, ["/bin/sh", "-c", "true"], rootfs="/var/lib/labhelper/root", **options)
    return oci.spec(cfg, runtime.settings(cfg, None), cfg.rootfs, cgroup2=cgroup2)


def test_the_options_map_to_the_spec():
    s = _spec(name="web", hostname="box", env=["A=1"], workdir="/srv", user="7:8", memory="64m", cpus=0.5, pids=32,
              volumes=["/var/lib/labhelper/data:/data:ro"])
    p = s["process"]
    assert p["args"] == ["/bin/sh", "-c", "true"] and p["cwd"] == "/srv" and p["user"] == {"uid": 7, "gid": 8}
    assert "A=1" in p["env"] and "HOSTNAME=box" in p["env"] and s["hostname"] == "box"
    assert p["noNewPrivileges"] is True and not p["terminal"]
    caps = [f"CAP_{c}" for c in capabilities.DOCKER_DEFAULT]
    assert p["capabilities"] == {"bounding": caps, "effective": caps, "permitted": caps}
    assert len(caps) == 14 and "CAP_SYS_ADMIN" not in caps
    linux = s["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert linux["resources"]["memory"] == {"limit": 64 << 20}
    assert linux["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert linux["resources"]["pids"] == {"limit": 32}
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in linux["resources"]["devices"]
    assert linux["maskedPaths"] == list(init.MASKED) and linux["readonlyPaths"] == list(init.READ_ONLY)
    assert linux["cgroupsPath"] == "/labhelper/oci-web"
    denied = linux["seccomp"]["syscalls"][0]
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW" and denied["action"] == "SCMP_ACT_ERRNO"
    assert "mount" in denied["names"] and set(denied["names"]) <= set(seccomp.DENIED)
    where = {m["destination"]: m for m in s["mounts"]}
    assert where["/data"] == {"destination": "/data", "type": "bind", "source": "/var/lib/labhelper/data",
                              "options": ["rbind", "ro"]}
    assert "ro" in where["/sys"]["options"] and "/sys/fs/cgroup" not in where
    assert s["root"] == {"path": "/var/lib/labhelper/root", "readonly": False}


def test_cgroup2_mounts_the_containers_own_cgroup_and_no_limits_means_none():
    s = _spec(cgroup2=True, seccomp=False)
    assert "ro" in {m["destination"]: m for m in s["mounts"]}["/sys/fs/cgroup"]["options"]
    assert set(s["linux"]["resources"]) == {"devices"} and "seccomp" not in s["linux"]
    assert s["process"]["user"] == {"uid": 0, "gid": 0}


def test_a_bundle_is_written_and_bad_options_write_nothing(tmp_path):
    path = oci.bundle(str(tmp_path), "/var/lib/labhelper/root", ["true"], name="b1")
    assert path == f"{tmp_path}/config.json" and json.load(open(path))["ociVersion"] == oci.VERSION
    os.unlink(path)
    for bad, message in (({"memory": "1k"}, "floor"), ({"name": "a/b"}, "container name")):
        with pytest.raises(Refused, match=message):
            oci.bundle(str(tmp_path), "/var/lib/labhelper/root", ["true"], **bad)
    with pytest.raises(Refused, match="only below"):
        oci.bundle(str(tmp_path), "/etc", ["true"])
    with pytest.raises(Refused, match="no published ports"):
        oci.bundle(str(tmp_path), "/var/lib/labhelper/root", ["true"], publish=["8080:80"])
    assert os.listdir(tmp_path) == []


def test_crun_on_a_hybrid_host_runs_in_a_mount_namespace_of_its_own(monkeypatch):
    monkeypatch.setattr(oci, "hybrid", lambda: "/sys/fs/cgroup/unified")
    assert oci.shell("crun", "crun run x")[:3] == ["unshare", "-m", "--propagation"]
    assert oci.shell("runc", "runc run x") == ["sh", "-c", "runc run x"]
    monkeypatch.setattr(oci, "hybrid", lambda: None)
    assert oci.shell("crun", "crun run x") == ["sh", "-c", "crun run x"]
