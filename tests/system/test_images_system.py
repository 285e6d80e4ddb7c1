"""labhelper.images against the real kernel: a busybox base and images built on it through
overlayfs, shared layers, the tree, docker diff and history, rmi and gc, whiteouts both ways,
security.capability kept, export/import round trips, two processes building at once (R27), and
an import refused halfway (R3). Chapter 06. Every store is removed at the end (the census checks)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import time
import textwrap

import pytest

import capabilities
from labhelper import images, overlay
from trees import snapshot
from labhelper.errors import LabError, Refused

pytestmark = pytest.mark.images

CAP_NET_RAW = 13
# struct vfs_cap_data, revision 2 (include/uapi/linux/capability.h): magic_etc (revision 2, effective), then
# (permitted, inheritable) for the low and the high 32 capabilities.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << CAP_NET_RAW, 0, 0, 0)


@pytest.fixture(autouse=True)
def _needs_overlay_and_busybox():
    capabilities.need("overlay", "overlayfs is not available in this kernel")
    if not any(os.path.isfile(p) for p in ("/bin/busybox", "/usr/bin/busybox")):
        pytest.skip(capabilities.reason("busybox", "busybox-static is not installed (apt-get install busybox-static)"))


@pytest.fixture
def web(store):
    """busybox, and web:1 (a file added, one deleted) and web:2 (an opaque /etc) on top of it."""
    images.busybox_image(store)
    images.build(store, "busybox", "web:1", run=["/bin/sh", "-c", "echo hello > /etc/motd && rm /etc/group"])
    images.build(store, "busybox", "web:2", run=["/bin/sh", "-c", "rm -r /etc && mkdir /etc && echo x > /etc/new"],
                 comment="a new /etc")
    return store


def test_images_built_on_one_base_share_it(web):
    base, web1, web2 = (images.image(web, n) for n in ("busybox", "web:1", "web:2"))
    assert web1.layers[0] == web2.layers[0] == base.layers[0]
    assert len(os.listdir(f"{web.root}/layers")) == 3              # the base is unpacked once
    assert web1.chain_id == images.chain_id(web1.diff_ids) != web2.chain_id
    # the new layers are tars with OCI whiteouts
    with tarfile.open(web.blob_path(web1.layers[1].blob.digest)) as tar:
        assert tar.getnames() == ["etc", "etc/.wh.group", "etc/motd"]
    with tarfile.open(web.blob_path(web2.layers[1].blob.digest)) as tar:
        assert tar.getnames() == ["etc", "etc/.wh..wh..opq", "etc/new"]
    # ...unpacked back in overlay form: a char device 0/0, and the opaque attribute
    assert overlay.is_whiteout(os.lstat(f"{web.layer_dir(web1.chain_id)}/etc/group"))
    assert overlay.is_opaque(f"{web.layer_dir(web2.chain_id)}/etc")
    # the base image's files: busybox and its applets, the folders a runtime mounts on
    root = web.layer_dir(base.chain_id)
    assert os.readlink(f"{root}/bin/sh") == "busybox" and stat.S_IMODE(os.lstat(f"{root}/tmp").st_mode) == 0o1777
    tree = images.tree(web)
    assert [n.chain_id for n in tree.nodes if n.shared] == [base.chain_id]
    assert "Tags: busybox (shared by 3 images)" in repr(tree) and "digraph" in tree.dot()
    assert [repr(c) for c in images.diff(web, "web:1")] == ["C /etc", "D /etc/group", "A /etc/motd"]
    assert [repr(c) for c in images.diff(web, "web:2")] == ["C /etc", "A /etc/new"]
    hist = images.history(web, "web:2")
    assert [h.created_by for h in hist] == ["/bin/sh -c rm -r /etc && mkdir /etc && echo x > /etc/new",
                                            "busybox-static root filesystem"]
    assert hist[0].comment == "a new /etc" and hist[0].chain_id == web2.chain_id
    sizes = images.sizes(web)
    assert sizes.saved >= 2 * sizes.per_layer[base.chain_id] > 1_000_000


def test_rmi_keeps_shared_layers_and_gc_removes_the_rest(web):
    base, web1 = images.image(web, "busybox"), images.image(web, "web:1")
    gone = images.rmi(web, "busybox")
    assert gone.layers == () and web.has_layer(base.chain_id)      # web:1 and web:2 still use it
    gone = images.rmi(web, "web:1")
    assert gone.layers == (web1.chain_id,) and web.has_layer(base.chain_id)
    with overlay.mount(f"{web.root}/tmp/m", [web.layer_dir(base.chain_id)], f"{web.root}/tmp/u",
                       f"{web.root}/tmp/w") as ov:
        images.rmi(web, "web:2")                                    # the base is mounted: gc keeps it
        assert web.has_layer(base.chain_id) and os.path.exists(f"{ov.target}/bin/busybox")
    images.gc(web)
    assert os.listdir(f"{web.root}/layers") == [] and web.blobs() == []


def test_a_failed_step_leaves_no_image_and_no_mount(store):
    images.busybox_image(store)
    with pytest.raises(LabError, match="exited with 3"):
        images.build(store, "busybox", "bad", run=["/bin/sh", "-c", "echo oops; exit 3"])
    assert "bad" not in store.refs() and os.listdir(f"{store.root}/tmp") == []
    assert not any(f"{store.root}/" in line for line in open("/proc/self/mountinfo"))


def test_security_capability_survives_a_layer_and_a_round_trip(store, uid):
    images.busybox_image(store)

    def give_ping_a_capability():
        import shutil
        shutil.copy("/bin/busybox", "/bin/ping-cap")
        os.setxattr("/bin/ping-cap", "security.capability", CAPABILITY)

    img = images.build(store, "busybox", "ping:1", change=give_ping_a_capability, compress=True)
    assert img.layers[1].blob.media_type == images.LAYER_GZIP_MEDIA_TYPE
    assert img.layers[1].blob.digest != img.layers[1].diff_id
    assert os.getxattr(f"{store.layer_dir(img.chain_id)}/bin/ping-cap", "security.capability") == CAPABILITY
    out = f"/var/lib/labhelper/test-images-{uid}/tmp/export"
    images.export(store, "ping:1", out)
    other = images.Store(f"{store.root}/tmp/other")
    got = images.import_layout(other, out, "ping:1", name="copy")
    assert got.manifest == img.manifest and got.layers == img.layers
    assert os.getxattr(f"{other.layer_dir(got.chain_id)}/bin/ping-cap", "security.capability") == CAPABILITY
    flat = f"{store.root}/tmp/flat"
    images.unpack(store, "ping:1", flat)
    assert os.getxattr(f"{flat}/bin/ping-cap", "security.capability") == CAPABILITY


def test_export_import_round_trip_keeps_digests_and_whiteouts(web):
    out = f"{web.root}/tmp/export"
    images.export(web, "web:1", out)
    assert json.load(open(f"{out}/index.json"))["manifests"][0]["annotations"] == {images.REF_NAME: "web:1"}
    other = images.Store(f"{web.root}/tmp/other")
    got = images.import_layout(other, out, "web:1")
    want = images.image(web, "web:1")
    assert (got.manifest, got.config, got.layers) == (want.manifest, want.config, want.layers)
    assert overlay.is_whiteout(os.lstat(f"{other.layer_dir(got.chain_id)}/etc/group"))
    assert snapshot(other.layer_dir(got.chain_id)) == snapshot(web.layer_dir(want.chain_id))


BUILDER = textwrap.dedent("""
    import sys
    from labhelper import images
    store = images.Store(sys.argv[1])
    for i in range(3):
        images.build(store, "busybox", f"{sys.argv[2]}:{i}", run=["/bin/sh", "-c", f"echo {sys.argv[2]} {i} > /f"])
""")


def test_r27_two_processes_build_on_one_base_at_once(store):
    images.busybox_image(store)
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, store.root, name], stderr=subprocess.PIPE, text=True)
             for name in ("one", "two")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sorted(store.refs()) == ["busybox"] + [f"{n}:{i}" for n in ("one", "two") for i in range(3)]
    every = images.images(store)
    chains = {layer.chain_id for img in every for layer in img.layers}
    assert {"sha256:" + n for n in os.listdir(f"{store.root}/layers")} == chains
    assert len({img.layers[0] for img in every}) == 1                # one base, shared by all
    for img in every:
        images.ensure_layers(store, img)                             # every blob verifies
    assert images.gc(store).blobs == () and os.listdir(f"{store.root}/tmp") == []


def _tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = extra
                tar.addfile(info)
            else:
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
    return buf.getvalue()


def test_r3_an_import_refused_halfway_leaves_the_store_as_it_was(web, tmp_path, host_folder):
    out = f"{web.root}/tmp/export"
    images.export(web, "web:1", out)
    # Add a third layer that writes through a symlink, with every digest right.
    evil = _tar(("ok", tarfile.REGTYPE, b"fine"), ("l", tarfile.SYMTYPE, str(host_folder)),
                ("l/precious.txt", tarfile.REGTYPE, b"owned"))
    index = json.load(open(f"{out}/index.json"))
    manifest = json.load(open(f"{out}/blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
    config = json.load(open(f"{out}/blobs/sha256/{manifest['config']['digest'][7:]}"))

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(f"{out}/blobs/sha256/{digest}", "wb") as fh:
            fh.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(evil).hexdigest())
    manifest["layers"].append({"mediaType": images.LAYER_MEDIA_TYPE, **put(evil)})
    manifest["config"] = {"mediaType": images.CONFIG_MEDIA_TYPE, **put(json.dumps(config).encode())}
    index["manifests"][0].update(put(json.dumps(manifest).encode()))
    with open(f"{out}/index.json", "w") as fh:
        json.dump(index, fh)
    other = images.Store(f"{web.root}/tmp/other")
    before, host_before = snapshot(other.root), snapshot(host_folder)
    with pytest.raises(Refused, match=r"member 'l/precious.txt'.*symlink"):
        images.import_layout(other, out, "web:1")
    assert snapshot(other.root) == before and snapshot(host_folder) == host_before
    with pytest.raises(Refused):
        images.build(web, "busybox", "x", run=["/bin/true"], change=print)


@pytest.mark.parametrize("path", ["/", "/etc", "/proc", "/var/lib/labhelper"])
def test_host_paths_are_refused_as_layer_sources_and_stores(path, store):
    with pytest.raises(Refused):
        images.import_tree(store, path, "host")
    with pytest.raises(Refused):
        images.Store(path)


def test_a_step_that_changes_nothing_makes_an_empty_layer(store):
    images.busybox_image(store, "busybox", epoch=1)
    img = images.build(store, "busybox", "same", run=["/bin/true"], epoch=1)
    assert len(img.layers) == 2 and images.diff(store, "same") == []


def test_a_build_step_is_contained(store):
    # Its own PID, network, UTS and IPC namespaces, the image as its root (pivot_root, the old
    # root detached), Docker's capabilities only; and what it leaves running dies with it.
    images.busybox_image(store, "busybox", epoch=1)
    script = ("hostname step-host; echo pid=$$ > /report; "
              "mount -t proc proc /proc 2>> /report || echo mount-refused >> /report; "
              "(while :; do date >> /late; sleep 0.05; done) & echo started >> /report; echo x > /dev/null; sleep 0.2")
    img = images.build(store, "busybox", "contained", run=["/bin/sh", "-c", script], epoch=1)
    upper = overlay.listing(store.layer_dir(img.chain_id))
    report = open(os.path.join(store.layer_dir(img.chain_id), "report")).read()
    assert "pid=1" in report and "mount-refused" in report and "started" in report
    assert os.uname().nodename != "step-host"
    assert not any(p.startswith("dev") for p in upper)         # /dev is the step's own tmpfs
    assert "late" in upper                                      # the loop ran while the step did...
    time.sleep(0.2)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:2] == [b"sleep", b"0.05"]:
                left.append(pid)
        except OSError:
            pass
    assert left == []                                           # ...and died with it: nothing writes later


def test_a_folder_with_a_mount_inside_is_refused_as_a_layer_source(store, owner, host_folder):
    from labhelper import mounts, syscalls
    from labhelper.flags import MountFlags
    src = mounts.make_dir(f"{store.root}-src", owner=owner)
    os.makedirs(f"{src}/etc")
    os.makedirs(f"{src}/data")
    syscalls.mount(str(host_folder), f"{src}/data", None, MountFlags.MS_BIND)
    try:
        with pytest.raises(Refused, match="another mount"):
            images.import_tree(store, src, "leaky")
        assert "leaky" not in store.refs()
    finally:
        syscalls.umount2(f"{src}/data", 2)
