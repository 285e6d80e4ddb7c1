"""labhelper.images checked against real tools from Debian (chapter 06): what labhelper exports,
``umoci unpack`` unpacks to the same files (whiteouts and opaque folders applied); a layout
``umoci repack`` made, labhelper imports with the very same blobs; ``skopeo copy`` and
``skopeo inspect`` read our layout; and runc runs an exported image as its config says
(entrypoint, command, environment, working folder).

**Which bytes are canonical.** A digest names bytes. labhelper never rewrites a blob it imports
or exports: the blob files are copied byte for byte, so the layer digests stay the ones the
producer (labhelper, umoci) wrote. Whoever *recompresses* makes new bytes: ``skopeo copy`` into
an ``oci:`` layout gzips every uncompressed layer (its default), so the blob digests change
while the DiffIDs (sha256 of the uncompressed tar), the config blob and so the ChainIDs stay.
With ``--dest-oci-accept-uncompressed-layers`` it copies the blobs as they are.

Every store lives below /var/lib/labhelper and is removed at the end; runc's container is
deleted in a ``finally``, and its cgroup, state folder and mounts are checked gone.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import tarfile

import pytest

import capabilities
from labhelper import images

pytestmark = pytest.mark.images

EPOCH = 1_700_000_000          # a fixed time for the base image's files: the same bytes each run
REF = "v1"                     # the ref.name our exports carry (a plain tag: "oci:DIR:v1" parses one way)

# A step that makes every kind of change a layer can carry, on top of a step that gave /opt/data
# content to hide: a file added, a base file deleted (.wh.group), a folder replaced (opaque:
# .wh..wh..opq), setuid and private modes, a hard link and a symlink.
FIRST = "mkdir -p /opt/data/sub && echo old > /opt/data/old && echo older > /opt/data/sub/older"
SECOND = ("echo added > /etc/added && rm /etc/group "
          "&& rm -r /opt/data && mkdir /opt/data && echo fresh > /opt/data/new "
          "&& cp /bin/busybox /bin/suid-box && chmod 4755 /bin/suid-box "
          "&& echo secret > /etc/secret && chmod 600 /etc/secret "
          "&& ln /etc/added /etc/added-link && ln -s ../etc/added /bin/added-symlink")


@pytest.fixture(autouse=True)
def _needs_overlay_and_busybox():
    capabilities.need("overlay", "overlayfs is not available in this kernel")
    capabilities.need("busybox", "busybox-static is not installed (apt-get install busybox-static)")


def need_tool(name: str) -> None:
    capabilities.need(name, f"{name} is not installed: apt-get install {name}")


def run(*argv: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a tool; a failure shows its output."""
    done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n" \
                                 f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
    return done


def snapshot(root: str) -> dict:
    """Every path below ``root`` (not the root itself): type and mode bits, owner, size, content
    (sha256), link target, the mtime of what is not a folder; and which names are one inode."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                content = None
            else:
                content = f"rdev {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            mtime = None if stat.S_ISDIR(st.st_mode) else int(st.st_mtime)
            out[rel] = (oct(st.st_mode), st.st_uid, st.st_gid, size, content, mtime)
    out["(hard links)"] = sorted(sorted(names) for names in inodes.values() if len(names) > 1)
    return out


def blob(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def read_json(path: str) -> dict:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def layout_manifest(layout: str, ref: str) -> tuple[dict, dict, dict]:
    """(the index's descriptor, the manifest, the config) of ``ref``, read without labhelper."""
    index = read_json(os.path.join(layout, "index.json"))
    desc, = [m for m in index["manifests"] if m.get("annotations", {}).get(images.REF_NAME) == ref]
    manifest = read_json(blob(layout, desc["digest"]))
    return desc, manifest, read_json(blob(layout, manifest["config"]["digest"]))


def sha256_file(path: str, unzip: bool = False) -> str:
    opener = gzip.open if unzip else open
    h = hashlib.sha256()
    with opener(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def chain_ids(diff_ids) -> list[str]:
    """The image spec's ChainIDs, computed here (not by labhelper)."""
    out = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def build_interop(store) -> images.Image:
    images.busybox_image(store, epoch=EPOCH)
    images.build(store, "busybox", "interop-base", run=["/bin/sh", "-c", FIRST])
    return images.build(store, "interop-base", "interop", run=["/bin/sh", "-c", SECOND])


def unpacked_alike(store, layout: str, ref: str, name: str, bundle_name: str) -> tuple[str, str, dict]:
    """umoci unpacks ``layout:ref`` and labhelper unpacks the image ``name`` of the store: the
    two root filesystems must be the same. Returns (umoci's bundle, our folder, its snapshot)."""
    bundle = f"{store.root}/tmp/{bundle_name}"
    run("umoci", "unpack", "--image", f"{layout}:{ref}", bundle)
    flat = f"{store.root}/tmp/flat"
    images.unpack(store, name, flat)
    theirs, ours = snapshot(f"{bundle}/rootfs"), snapshot(flat)
    assert theirs == ours, {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours)
                            if theirs.get(k) != ours.get(k)}
    return bundle, flat, ours


def export(store, name: str = "interop") -> str:
    out = f"{store.root}/tmp/export-{name}"
    images.export(store, name, out, ref=REF)
    return out


# --- umoci unpacks what labhelper exported ------------------------------------------------------

def test_umoci_unpacks_our_export_to_the_files_labhelper_unpacks(store):
    need_tool("umoci")
    img = build_interop(store)
    # The top layer really says all of it the OCI way (read with Python's tarfile, not labhelper).
    with tarfile.open(store.blob_path(img.layers[-1].blob.digest)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"etc/.wh.group", "opt/data/.wh..wh..opq", "opt/data/new"} <= set(members)
    assert members["etc/added-link"].islnk() and members["etc/added-link"].linkname == "etc/added"
    assert members["bin/added-symlink"].issym() and members["bin/suid-box"].mode == 0o4755
    layout = export(store)
    bundle, _, _ = unpacked_alike(store, layout, REF, "interop", "bundle")
    # ...and that common result is the right one: whiteouts applied, the opaque folder holds only
    # the new content, modes and links kept.
    root = f"{bundle}/rootfs"
    assert not os.path.lexists(f"{root}/etc/group") and os.path.isfile(f"{root}/etc/passwd")
    assert sorted(os.listdir(f"{root}/opt/data")) == ["new"]
    assert stat.S_IMODE(os.lstat(f"{root}/bin/suid-box").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(f"{root}/etc/secret").st_mode) == 0o600
    assert os.lstat(f"{root}/etc/added").st_ino == os.lstat(f"{root}/etc/added-link").st_ino
    assert os.readlink(f"{root}/bin/added-symlink") == "../etc/added"
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(root) for name in dirs + files)


# --- labhelper imports a layout umoci made ------------------------------------------------------

def test_we_import_a_layout_umoci_made_with_its_very_blobs(store):
    need_tool("umoci")
    layout = f"{store.root}/tmp/umoci-layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    # Layer 1: files, a folder, a setuid file with a hard link, a symlink, a private file.
    b1 = f"{store.root}/tmp/umoci-b1"
    run("umoci", "unpack", "--image", f"{layout}:base", b1)
    r = f"{b1}/rootfs"
    os.makedirs(f"{r}/etc/conf.d/deep")
    for rel, text in (("etc/app", "app"), ("etc/gone", "to be deleted"), ("etc/conf.d/old", "old"),
                      ("etc/conf.d/deep/older", "older"), ("etc/private", "secret")):
        with open(f"{r}/{rel}", "w") as fh:
            fh.write(text)
    os.chmod(f"{r}/etc/app", 0o4755)
    os.chmod(f"{r}/etc/private", 0o600)
    os.link(f"{r}/etc/app", f"{r}/etc/app-link")
    os.symlink("app", f"{r}/etc/app-symlink")
    run("umoci", "repack", "--image", f"{layout}:next", b1)
    # Layer 2, on top of it: a file deleted, a folder replaced, a file added (umoci's whiteouts).
    b2 = f"{store.root}/tmp/umoci-b2"
    run("umoci", "unpack", "--image", f"{layout}:next", b2)
    r = f"{b2}/rootfs"
    os.unlink(f"{r}/etc/gone")
    for rel in ("etc/conf.d/deep/older", "etc/conf.d/old"):
        os.unlink(f"{r}/{rel}")
    os.rmdir(f"{r}/etc/conf.d/deep")
    with open(f"{r}/etc/conf.d/new", "w") as fh:
        fh.write("new")
    run("umoci", "repack", "--image", f"{layout}:next2", b2)

    desc, manifest, config = layout_manifest(layout, "next2")
    assert [layer["mediaType"] for layer in manifest["layers"]] == [images.LAYER_GZIP_MEDIA_TYPE] * 2
    img = images.import_layout(store, layout, "next2", name="from-umoci")
    # The same manifest, config and layer blobs: labhelper stored umoci's bytes as they were.
    assert img.manifest.digest == desc["digest"] and img.config.digest == manifest["config"]["digest"]
    assert [layer.blob.digest for layer in img.layers] == [layer["digest"] for layer in manifest["layers"]]
    for digest in [desc["digest"], manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]:
        with open(blob(layout, digest), "rb") as theirs, open(store.blob_path(digest), "rb") as ours:
            assert theirs.read() == ours.read(), digest
        assert sha256_file(store.blob_path(digest)) == digest
    # The DiffIDs check out: sha256 of each gunzipped blob, as umoci's config lists them.
    diff_ids = [sha256_file(blob(layout, layer["digest"]), unzip=True) for layer in manifest["layers"]]
    assert diff_ids == config["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert [layer.chain_id for layer in img.layers] == chain_ids(diff_ids)
    assert all(store.has_layer(c) for c in chain_ids(diff_ids))
    # And it unpacks to what umoci unpacks.
    bundle, flat, ours = unpacked_alike(store, layout, "next2", "from-umoci", "umoci-b3")
    assert not os.path.lexists(f"{flat}/etc/gone") and sorted(os.listdir(f"{flat}/etc/conf.d")) == ["new"]
    assert stat.S_IMODE(os.lstat(f"{flat}/etc/app").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(f"{flat}/etc/private").st_mode) == 0o600
    assert ["etc/app", "etc/app-link"] in ours["(hard links)"] and os.readlink(f"{flat}/etc/app-symlink") == "app"


# --- skopeo copies and inspects our layout ------------------------------------------------------

def test_skopeo_copy_of_our_export_imports_back_with_our_layers(store):
    need_tool("skopeo")
    img = build_interop(store)
    layout = export(store)
    ours = [layer.blob.digest for layer in img.layers]
    # 1. Told to keep uncompressed layers, skopeo copies every blob byte for byte: the same layer
    #    digests, the same config; imported into a second store, the same image.
    same = f"{store.root}/tmp/copy-as-is"
    run("skopeo", "copy", "--dest-oci-accept-uncompressed-layers", f"oci:{layout}:{REF}", f"oci:{same}:{REF}")
    _, manifest, _ = layout_manifest(same, REF)
    assert [layer["digest"] for layer in manifest["layers"]] == ours
    assert manifest["config"]["digest"] == img.config.digest
    for digest in ours:
        with open(blob(same, digest), "rb") as theirs, open(store.blob_path(digest), "rb") as mine:
            assert theirs.read() == mine.read(), digest
    other = images.Store(f"{store.root}/tmp/other-store")
    got = images.import_layout(other, same, REF, name="copy")
    assert got.layers == img.layers and got.config == img.config
    # 2. By default skopeo gzips uncompressed layers on their way into an oci: layout. New bytes,
    #    new blob digests; the uncompressed tars are the same bytes, so the DiffIDs, the config
    #    blob (which lists them) and the ChainIDs stay. The DiffID is what stays canonical.
    gz = f"{store.root}/tmp/copy-gzip"
    run("skopeo", "copy", f"oci:{layout}:{REF}", f"oci:{gz}:{REF}")
    _, manifest, config = layout_manifest(gz, REF)
    theirs = [layer["digest"] for layer in manifest["layers"]]
    media = {layer["mediaType"] for layer in manifest["layers"]}
    if media == {images.LAYER_MEDIA_TYPE}:
        assert theirs == ours                       # a skopeo that does not recompress: byte for byte
    else:
        assert media == {images.LAYER_GZIP_MEDIA_TYPE} and not set(theirs) & set(ours)
    assert [sha256_file(blob(gz, d), unzip=media != {images.LAYER_MEDIA_TYPE}) for d in theirs] \
        == config["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert manifest["config"]["digest"] == img.config.digest
    back = images.import_layout(store, gz, REF, name="copy-gzip")       # into the same store: shared layers
    assert back.diff_ids == img.diff_ids and [layer.chain_id for layer in back.layers] \
        == [layer.chain_id for layer in img.layers]
    assert [layer.blob.digest for layer in back.layers] == theirs
    flat_a, flat_b = f"{store.root}/tmp/flat-ours", f"{store.root}/tmp/flat-gzip"
    images.unpack(store, "interop", flat_a)
    images.unpack(store, "copy-gzip", flat_b)
    assert snapshot(flat_a) == snapshot(flat_b)


def test_skopeo_inspect_reads_our_layout(store):
    need_tool("skopeo")
    img = build_interop(store)
    layout = export(store)
    said = json.loads(run("skopeo", "inspect", f"oci:{layout}:{REF}").stdout)
    assert said["Digest"] == img.manifest.digest
    assert (said["Architecture"], said["Os"]) == (img.architecture, img.os) == (images.architecture(), "linux")
    assert said["Layers"] == [layer.blob.digest for layer in img.layers]
    assert said["Env"] == img.settings["Env"]
    # --raw: skopeo hands back our exact bytes, the manifest and the config.
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:{REF}").stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == img.manifest.digest
    raw_config = run("skopeo", "inspect", "--config", "--raw", f"oci:{layout}:{REF}").stdout
    assert "sha256:" + hashlib.sha256(raw_config).hexdigest() == img.config.digest
    assert json.loads(raw_config)["rootfs"]["diff_ids"] == list(img.diff_ids)


# --- runc runs an exported image as its config says ---------------------------------------------

HELLO = """#!/bin/sh
echo "entrypoint ran with: $*"
echo "pwd=$(pwd)"
echo "GREETING=$GREETING"
"""


def _cgroup_mounts() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[:1] in (["cgroup"], ["cgroup2"]):
                points.append(left.split()[4])
    return points


def test_runc_runs_our_export_with_its_entrypoint_env_and_workdir(store, uid):
    need_tool("umoci")
    need_tool("runc")
    images.busybox_image(store, epoch=EPOCH)

    def add_hello():
        os.makedirs("/usr/local/bin")
        with open("/usr/local/bin/hello", "w") as fh:
            fh.write(HELLO)
        os.chmod("/usr/local/bin/hello", 0o755)
        os.makedirs("/srv/app")               # the working folder exists only in this layer

    settings = {"Entrypoint": ["/usr/local/bin/hello"], "Cmd": ["from-cmd", "two"],
                "Env": ["GREETING=hello from the image"], "WorkingDir": "/srv/app"}
    img = images.build(store, "busybox", "hello", change=add_hello, settings=settings)
    assert {k: img.settings[k] for k in ("Entrypoint", "Cmd", "WorkingDir")} == \
        {k: settings[k] for k in ("Entrypoint", "Cmd", "WorkingDir")}
    layout = export(store, "hello")
    bundle = f"{store.root}/tmp/runc-bundle"
    run("umoci", "unpack", "--image", f"{layout}:{REF}", bundle)
    path = f"{bundle}/config.json"
    spec = read_json(path)
    # umoci translated the image's config into the runtime's (runtime-spec's config.json)...
    assert spec["process"]["args"] == ["/usr/local/bin/hello", "from-cmd", "two"]
    assert spec["process"]["cwd"] == "/srv/app" and "GREETING=hello from the image" in spec["process"]["env"]
    # ...for a terminal, which a test has not: output goes to runc's stdout instead. The cgroup gets
    # a name of ours, to look for afterwards; everything else stays as umoci wrote it.
    cgroup = f"/lh-interop-{uid}"
    spec["process"]["terminal"] = False
    spec["linux"]["cgroupsPath"] = cgroup
    with open(path, "w") as fh:
        json.dump(spec, fh)
    cid = f"lh-interop-{uid}"
    try:
        done = run("runc", "run", "--bundle", bundle, cid, timeout=60)
    finally:
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True, timeout=60)
    assert done.stdout.decode().splitlines() == ["entrypoint ran with: from-cmd two", "pwd=/srv/app",
                                                 "GREETING=hello from the image"]
    # Nothing of the container is left: no state, no cgroup, no mount.
    assert subprocess.run(["runc", "state", cid], capture_output=True, timeout=30).returncode != 0
    listed = run("runc", "list", "--quiet").stdout.decode().split()
    assert cid not in listed
    assert not os.path.exists(f"/run/runc/{cid}")
    left = [p + cgroup for p in _cgroup_mounts() if os.path.exists(p + cgroup)]
    assert left == [], f"runc left its cgroup: {left}"
    with open("/proc/self/mountinfo") as fh:
        assert not [line for line in fh if bundle in line]
