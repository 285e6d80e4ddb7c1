"""Images: a config plus ordered layers, named in the index; built step by step on overlayfs.

An OCI image is three kinds of blob (image-spec/manifest.md, config.md)::

    index.json ── "web:1" ──> manifest ──> config  (architecture, os, rootfs.diff_ids, history)
                                      └──> layers  [base, step 1, step 2 ...]  (bottom first)

A build step is exactly what ``docker build`` does with a RUN line on the overlay storage
driver: mount an overlay whose lower folders are the base image's unpacked layers (top-most
first) and whose upper folder is new and empty; run the command inside the merged
folder (in a forked child: never in the notebook's own process); unmount; the upper folder now
holds exactly the step's changes (copied-up files, new files, whiteouts): tar it (OCI
whiteouts), and that tar is the new layer. The new image's config is the base's, plus one DiffID
and one history entry.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import struct
import subprocess
from dataclasses import dataclass, field

from .. import capabilities, marks, mounts, overlay, process, procfs, syscalls
from ..errors import LabError, Refused, RequirementError
from ..flags import CloneFlags, MountFlags, UmountFlags
from . import layers
from .store import (CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPES, MANIFEST_MEDIA_TYPE, MAX_JSON, Descriptor, Store,
                    check_digest, check_name)

__all__ = ["Layer", "History", "Image", "image", "images", "architecture", "build", "import_tree", "busybox_rootfs",
           "busybox_image", "unpack", "commit", "ensure_layers", "rmi", "Removed", "gc", "SETTINGS", "static_busybox"]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def architecture() -> str:
    """This machine's architecture in the OCI (Go) spelling: x86_64 is "amd64"."""
    return _ARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Layer:
    """One layer of an image: its blob (digest, size, media type), DiffID and ChainID."""
    blob: Descriptor
    diff_id: str
    chain_id: str

    def __repr__(self) -> str:
        return f"Layer(chain {self.chain_id[7:19]}, diff {self.diff_id[7:19]}, {self.blob.size} bytes)"


@dataclass(frozen=True)
class History:
    """One line of ``docker history``: when, what made it, and whether it made a layer."""
    created: str
    created_by: str
    comment: str
    empty_layer: bool

    def __repr__(self) -> str:
        return f"History({self.created_by!r}{' (no layer)' if self.empty_layer else ''})"


@dataclass(frozen=True)
class Image:
    """An image of a store: its name, manifest, config, and its layers bottom first."""
    name: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Layer, ...]
    history: tuple[History, ...]
    architecture: str
    os: str
    settings: dict = field(default_factory=dict, compare=False)    # what it runs: Env, Cmd, WorkingDir...

    @property
    def chain_id(self) -> str:
        """The ChainID of the whole stack: the image's place in the tree of layers."""
        return self.layers[-1].chain_id if self.layers else ""

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    def __repr__(self) -> str:
        n = len(self.layers)
        return f"Image({self.name}: {n} layer{'s' if n != 1 else ''}, manifest {self.manifest.digest[:19]}…)"


# --- reading images ---------------------------------------------------------------------------------

def image(store: Store, name: str) -> Image:
    """The image named ``name``, read and verified from the store."""
    refs = store.refs()
    if check_name(name) not in refs:
        raise Refused(f"no image named {name!r} in {store.root}; there are: {', '.join(sorted(refs)) or 'none'}")
    return load(store, name, refs[name])


def images(store: Store) -> list[Image]:
    """Every named image of the store, by name."""
    return [load(store, name, desc) for name, desc in sorted(store.refs().items())]


def load(store: Store, name: str, manifest: Descriptor) -> Image:
    m = store.read_json(manifest.digest)
    return parse(name, manifest, m, store.read_json(check_digest(m.get("config", {}).get("digest"))))


def parse(name: str, manifest: Descriptor, m: dict, config: dict) -> Image:
    """An Image from its manifest and config, checked against each other (Refused if they disagree:
    an import takes its input from anyone)."""
    try:
        if m.get("schemaVersion") != 2 or m.get("mediaType", MANIFEST_MEDIA_TYPE) != MANIFEST_MEDIA_TYPE:
            raise Refused(f"manifest {manifest.digest}: not an OCI image manifest (schemaVersion 2, mediaType "
                          f"{MANIFEST_MEDIA_TYPE})")
        c = m["config"]
        if c["mediaType"] != CONFIG_MEDIA_TYPE:
            raise Refused(f"manifest {manifest.digest}: config media type {c['mediaType']!r}, not {CONFIG_MEDIA_TYPE}")
        cdesc = Descriptor(c["mediaType"], check_digest(c["digest"]), int(c["size"]))
        rootfs = config["rootfs"]
        if rootfs.get("type") != "layers":
            raise Refused(f"config {cdesc.digest}: rootfs.type must be 'layers', not {rootfs.get('type')!r}")
        diff_ids = [check_digest(d, "DiffID") for d in rootfs["diff_ids"]]
        blobs = []
        for entry in m["layers"]:
            if entry["mediaType"] not in LAYER_MEDIA_TYPES:
                raise Refused(f"manifest {manifest.digest}: layer media type {entry['mediaType']!r}; this lab takes "
                              f"{' and '.join(LAYER_MEDIA_TYPES)}")
            blobs.append(Descriptor(entry["mediaType"], check_digest(entry["digest"]), int(entry["size"])))
        if len(blobs) > overlay.MAX_LAYERS:
            raise Refused(f"manifest {manifest.digest} has {len(blobs)} layers; overlayfs stacks at most "
                          f"{overlay.MAX_LAYERS}, so such an image could never run here")
        if len(blobs) != len(diff_ids):
            raise Refused(f"manifest {manifest.digest} has {len(blobs)} layers but its config lists {len(diff_ids)} "
                          "DiffIDs")
        if not config.get("architecture") or not config.get("os"):
            raise Refused(f"config {cdesc.digest}: architecture and os are required")
        chains = layers.chain_ids(diff_ids)
        history = tuple(History(str(h.get("created", "")), str(h.get("created_by", "")), str(h.get("comment", "")),
                                bool(h.get("empty_layer", False))) for h in config.get("history", []))
        return Image(name, manifest, cdesc, tuple(Layer(b, d, ch) for b, d, ch in zip(blobs, diff_ids, chains)),
                     history, str(config["architecture"]), str(config["os"]),
                     {k: v for k, v in (config.get("config") or {}).items() if k in SETTINGS})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"image {name}: manifest {manifest.digest} or its config is malformed ({exc!r})") from None


# --- making images ----------------------------------------------------------------------------------

def _now(epoch: int | None) -> str:
    when = datetime.datetime.now(datetime.timezone.utc) if epoch is None else \
        datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_layers(store: Store, img: Image) -> None:
    """Unpack every layer of ``img`` that the store has not unpacked yet, in overlay form, into
    layers/<chainid>: first into tmp/, renamed into place when whole (R3)."""
    with store.working():               # gc waits: a half-unpacked layer in tmp/ is work in progress
        for layer in img.layers:
            _ensure_layer(store, img, layer)


def _ensure_layer(store: Store, img: Image, layer: Layer) -> None:
    if not store.has_layer(layer.chain_id):
        tmp = store.new_temp()
        try:
            with store.open_blob(layer.blob.digest) as fh:
                layers.extract(fh, tmp, form="overlay", diff_id=layer.diff_id, within=store.within,
                               label=f"layer {layer.blob.digest[:19]}… of {img.name}")
            place_layer(store, tmp, layer.chain_id)
        finally:
            store.remove_temp(tmp)


def place_layer(store: Store, tmp: str, chain_id: str) -> None:
    """Rename an unpacked folder into layers/<chainid>; if another process got there first, keep
    theirs (the same ChainID is the same content) and the caller removes ours."""
    target = store.layer_dir(chain_id)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if not store.has_layer(chain_id):
            raise LabError(f"cannot put layer {chain_id} in place: {exc}") from None


SETTINGS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "StopSignal")


def _settings(settings: dict | None) -> dict:
    """The runtime settings an image carries (the config's "config": what ``docker run`` starts,
    with which environment, where), checked: a Dockerfile's ENV, CMD, ENTRYPOINT, WORKDIR, USER."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise Refused(f"image settings {unknown}: the lab knows {', '.join(SETTINGS)}")
    for key in ("Env", "Cmd", "Entrypoint"):
        if key in settings and not (isinstance(settings[key], list) and all(isinstance(a, str) for a in settings[key])):
            raise Refused(f"{key} is a list of strings, not {settings[key]!r}")
    if any("=" not in e for e in settings.get("Env", [])):
        raise Refused("each Env entry is NAME=value")
    if "WorkingDir" in settings and not (isinstance(settings["WorkingDir"], str) and settings["WorkingDir"].startswith("/")):
        raise Refused(f"WorkingDir is an absolute path inside the image, not {settings['WorkingDir']!r}")
    return settings


def commit(store: Store, name: str, base: Image | None, layer: layers.LayerBlob | None, created_by: str,
           comment: str = "", epoch: int | None = None, config_extra: dict | None = None,
           settings: dict | None = None) -> Image:
    """Write the config and manifest of ``base`` plus ``layer`` (None: a history-only step), name
    it ``name``, and unpack its layers. ``settings`` change what the image runs (SETTINGS: Env
    entries replace those of the same name). The index is written last: until then no name
    points at the new blobs, and a failure leaves only blobs that gc removes."""
    check_name(name)
    settings = _settings(settings)
    if base is not None:
        config = json.loads(store.read_blob(base.config.digest))
        manifest_layers = [below.blob.to_json() for below in base.layers]
    else:
        config = {"architecture": architecture(), "os": "linux",
                  "config": {"Env": [f"PATH={PATH}"], "Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        manifest_layers = []
    config.update(config_extra or {})
    runtime = config.setdefault("config", {})
    for key, value in settings.items():
        if key == "Env":
            names = {e.split("=", 1)[0] for e in value}
            value = [e for e in runtime.get("Env", []) if e.split("=", 1)[0] not in names] + list(value)
        runtime[key] = value
    created = _now(epoch)
    config["created"] = created
    entry = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if layer is None:
        entry["empty_layer"] = True
    else:
        config["rootfs"]["diff_ids"].append(layer.diff_id)
        manifest_layers.append(layer.blob.to_json())
    config.setdefault("history", []).append(entry)
    cdesc = store.put_blob(_canonical(config), CONFIG_MEDIA_TYPE)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": cdesc.to_json(),
                "layers": manifest_layers}
    mdesc = store.put_blob(_canonical(manifest), MANIFEST_MEDIA_TYPE)
    img = parse(name, mdesc, manifest, config)
    ensure_layers(store, img)
    store.set_ref(name, mdesc)
    return img


def _canonical(value: dict) -> bytes:
    """JSON as this lab writes it: sorted keys, no spaces (the digest depends on every byte)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def import_tree(store: Store, folder: str, name: str, *, created_by: str | None = None, comment: str = "",
                compress: bool = False, epoch: int | None = None, settings: dict | None = None) -> Image:
    """A folder (a root filesystem tree, below a lab folder) as a one-layer image ``name``."""
    check_name(name)
    _settings(settings)
    with store.working():
        with store.writer() as w:
            blob = layers.write_layer(folder, w, compress=compress, epoch=epoch, within=store.within)
        return commit(store, name, None, blob, created_by or f"import {folder}", comment, epoch, settings=settings)


def static_busybox() -> str:
    """The path of a statically linked busybox here; RequirementError when there is none."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(path) and _is_static_elf(path):
            return path
    raise RequirementError("no statically linked busybox here (/bin/busybox or /usr/bin/busybox): a base image "
                           "must not need the host's shared libraries",
                           hint="install it: apt-get install busybox-static", missing=("busybox-static",))


def _is_static_elf(path: str) -> bool:
    """An ELF file with no PT_INTERP program header: nothing loads shared libraries for it."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:          # 64-bit only: the lab's machines
            return False
        end = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack(end + "Q", head[32:40])
        phentsize, phnum = struct.unpack(end + "HH", head[54:58])
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack(end + "I", table[i * phentsize:i * phentsize + 4])[0] != 3 for i in range(phnum))


def busybox_rootfs(folder: str, within: tuple[str, ...] | None = None) -> list[str]:
    """Fill ``folder`` (new, below a lab folder) with a minimal root filesystem: /bin/busybox (the
    static one) and one symlink per applet it lists, /etc/passwd and /etc/group (root and nobody),
    /tmp (1777), and empty /proc, /sys, /dev, /root for a runtime to mount on. Returns the applets."""
    busybox = static_busybox()
    folder = marks.lab_path(folder, "make a root filesystem in", within=within)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True, timeout=30).stdout.split()
    for sub, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("proc", 0o555), ("sys", 0o555),
                      ("dev", 0o755), ("root", 0o700)):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        os.chmod(os.path.join(folder, sub), mode)
    shutil.copy2(busybox, os.path.join(folder, "bin", "busybox"))
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            link = os.path.join(folder, "bin", applet)
            if not os.path.lexists(link):
                os.symlink("busybox", link)
    with open(os.path.join(folder, "etc", "passwd"), "w") as fh:
        fh.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(folder, "etc", "group"), "w") as fh:
        fh.write("root:x:0:\nnogroup:x:65534:\n")
    return applets


def busybox_image(store: Store, name: str = "busybox", *, epoch: int | None = None) -> Image:
    """A one-layer base image made from busybox-static (:func:`busybox_rootfs`)."""
    check_name(name)
    with store.working():               # gc waits: the tree in tmp/ is work in progress
        tmp = store.new_temp()
        try:
            busybox_rootfs(os.path.join(tmp, "rootfs"), within=store.within)
            return import_tree(store, os.path.join(tmp, "rootfs"), name,
                               created_by="busybox-static root filesystem", epoch=epoch)
        finally:
            store.remove_temp(tmp)


# What a build step may do as root: Docker's default capability set (capabilities.DOCKER_DEFAULT).
# Everything else (CAP_SYS_ADMIN above all: mount, pivot_root, namespaces; CAP_SYS_MODULE,
# CAP_SYS_PTRACE, CAP_SYS_RAWIO, CAP_SYS_TIME...) leaves the bounding set before the step's
# program starts, so not even a setuid binary of the image gets it back.
STEP_NAMESPACES = (CloneFlags.CLONE_NEWNS | CloneFlags.CLONE_NEWPID | CloneFlags.CLONE_NEWIPC |
                   CloneFlags.CLONE_NEWUTS | CloneFlags.CLONE_NEWNET | CloneFlags.CLONE_NEWCGROUP)


STEP_DEVICES = ("null", "zero", "full", "random", "urandom")


def _minimal_dev(merged: str) -> None:
    """Give the step a /dev of its own, as docker build does: a small tmpfs over the image's
    /dev folder (so nothing written there lands in the layer), with the host's harmless devices
    bind-mounted in it (a shell opens /dev/null for every `cmd &`). Only where the image has a
    /dev folder (a symlink there is not followed); in the step's own mount namespace only."""
    try:
        fd = os.open(os.path.join(merged, "dev"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        mounts.mount_on(fd, "/dev of the build step", "tmpfs", "tmpfs",
                        MountFlags.MS_NOSUID | MountFlags.MS_NOEXEC, "mode=755,size=64k")
    finally:
        os.close(fd)
    dev = os.open(os.path.join(merged, "dev"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in STEP_DEVICES:
            mounts.bind_file(dev, name, f"/dev/{name}", 0o666)
    finally:
        os.close(dev)


def _run_in_image(merged: str, run, change, env: dict | None = None, workdir: str = "/") -> tuple[int, str]:
    """In the forked child, in namespaces of its own (STEP_NAMESPACES): make every mount
    private (nothing the step mounts reaches the host), make the merged folder the root with
    pivot_root and detach the old root (unlike chroot, nothing of the host is left above it to
    climb back to), keep only Docker's default capabilities, then run the step. Its program is
    PID 1 of a new PID namespace: when it exits, the kernel kills whatever it left running, so
    nothing writes into the layer after the step (a daemon started with `&` included). No
    network: the step's network namespace has only a loopback, down."""
    syscalls.mount(None, "/", None, MountFlags.MS_REC | MountFlags.MS_PRIVATE)
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    _minimal_dev(merged)
    os.chdir(merged)
    syscalls.pivot_root(".", ".")       # pivot_root(2)'s own recipe: the old root is stacked on "."...
    syscalls.umount2(".", UmountFlags.MNT_DETACH)                   # ...and detached from it
    os.chdir("/")
    if change is not None:
        change()                        # the notebook's own Python function: trusted code
        return 0, ""
    capabilities.drop_bounding(capabilities.DOCKER_DEFAULT)
    if workdir != "/":
        os.makedirs(workdir, exist_ok=True)             # inside the image: "/" is its root now
    done = subprocess.run(run, capture_output=True, text=True, env={"PATH": PATH, "HOME": "/root", **(env or {})},
                          stdin=devnull, cwd=workdir)
    return done.returncode, done.stdout + done.stderr


def build(store: Store, base: str | None, name: str, run=None, change=None, *, comment: str = "",
          created_by: str | None = None, timeout: float = 120.0, compress: bool = False,
          epoch: int | None = None, owner: str | None = None, settings: dict | None = None) -> Image:
    """Build ``name`` from the image ``base`` (None: from nothing) with one step: ``run`` (an argv
    list, run with the image's /bin etc.) or ``change`` (a Python function called inside the
    image, its own root), and return the new image; ``settings`` change what it runs (ENV, CMD, ENTRYPOINT,
    WORKDIR: SETTINGS). A failed step (non-zero exit) is a LabError with its output, and leaves
    no image, mount or folder behind."""
    check_name(name)
    _settings(settings)
    if (run is None) == (change is None):
        raise Refused("give either run=[argv...] or change=callable, one of them")
    if run is not None and (isinstance(run, str) or not run or not all(isinstance(a, str) for a in run)):
        raise Refused(f"run must be a non-empty list of strings (argv), not {run!r}; for a shell line use "
                      "['/bin/sh', '-c', '...']")
    with store.working():
        parent = image(store, base) if base is not None else None
        if parent is not None:
            ensure_layers(store, parent)
        tmp = store.new_temp()
        try:
            lowers = [store.layer_dir(layer.chain_id) for layer in reversed(parent.layers)] if parent else []
            if not lowers:
                os.mkdir(os.path.join(tmp, "empty"))
                lowers = [os.path.join(tmp, "empty")]
            upper, work, merged = (os.path.join(tmp, d) for d in ("upper", "work", "merged"))
            for folder in (upper, work):
                os.mkdir(folder)        # the build's, not the mount's: a step that changes nothing leaves it empty
            with overlay.mount(merged, lowers, upper, work, layer=True, owner=owner):
                # A step sees the environment and working directory the image gives (ENV, WORKDIR).
                given = parent.settings if parent is not None else {}
                env = dict(e.split("=", 1) for e in given.get("Env", []))
                code, output = process.run_in_child(_run_in_image, merged, run, change, env,
                                                    given.get("WorkingDir") or "/", unshare=STEP_NAMESPACES,
                                                    timeout=timeout)
            if code != 0:
                raise LabError(f"the build step {run!r} exited with {code}; no image was made:\n{output.rstrip()}")
            with store.writer() as w:
                blob = layers.write_layer(upper, w, compress=compress, epoch=epoch, within=store.within)
            shown = created_by or (" ".join(run) if run is not None else getattr(change, "__name__", "change"))
            return commit(store, name, parent, blob, shown, comment, epoch, settings=settings)
        finally:
            store.remove_temp(tmp)


def unpack(store: Store, name: str, dest: str, within: tuple[str, ...] | None = None) -> list[layers.Extracted]:
    """Apply the layers of ``name`` one after the other onto the new folder ``dest``: a flat root
    filesystem (what ``umoci unpack`` or ``docker export`` gives), whiteouts applied."""
    img = image(store, name)
    dest = marks.lab_path(dest, "unpack an image into", within=within)
    if os.path.lexists(dest):
        raise Refused(f"{dest} exists: unpack into a new folder")
    os.close(marks.open_lab_dir(dest, within or marks.LAB_DIRS, create=True))
    done = []
    for layer in img.layers:
        with store.open_blob(layer.blob.digest) as fh:
            done.append(layers.extract(fh, dest, form="apply", diff_id=layer.diff_id, within=within,
                                       label=f"layer {layer.blob.digest[:19]}… of {name}"))
    return done


# --- removing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Removed:
    """What rmi or gc removed: names, blobs, unpacked layer folders, leftover work folders."""
    names: tuple[str, ...]
    blobs: tuple[str, ...]
    layers: tuple[str, ...]
    temps: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"Removed(names {list(self.names)}, {len(self.blobs)} blobs, {len(self.layers)} layer folders"
                + (f", {len(self.temps)} work folders" if self.temps else "") + ")")


def _referenced(store: Store) -> tuple[set[str], set[str]]:
    """The blobs and ChainIDs every named image uses (the roots of the garbage collection)."""
    blobs: set[str] = set()
    chains: set[str] = set()
    for name, desc in store.refs().items():
        blobs.add(desc.digest)
        try:
            img = load(store, name, desc)
        except LabError:
            # A damaged image (a blob that fails its check): keep whatever its manifest still
            # names, rather than stop every gc; `rmi` of that name frees it.
            blobs |= _named_by_damaged(store, desc)
            continue
        blobs.add(img.config.digest)
        blobs |= {layer.blob.digest for layer in img.layers}
        chains |= {layer.chain_id for layer in img.layers}
    return blobs, chains


def _named_by_damaged(store: Store, manifest: Descriptor) -> set[str]:
    """The digests a manifest names, read without verifying it (best effort, for gc to keep)."""
    try:
        with open(store.blob_path(manifest.digest), "rb") as fh:
            m = json.loads(fh.read(MAX_JSON))
        return {str(m["config"]["digest"])} | {str(entry["digest"]) for entry in m["layers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _in_use_by_mounts(store: Store) -> set[str]:
    """Layer folders some mounted overlay stacks now (never removed under it)."""
    folder = os.path.join(store.root, "layers") + "/"
    used = set()
    for m in procfs.mountinfo():
        if m.fstype == "overlay" and folder in m.super_options:
            for part in m.super_options.replace(":", ",").split(","):
                value = part.split("=", 1)[-1]
                if value.startswith(folder):
                    used.add("sha256:" + value[len(folder):].split("/")[0])
    return used


def gc(store: Store, *, only: tuple[str, ...] | None = None) -> Removed:
    """Remove every blob and unpacked layer no named image uses, and leftover work folders (a
    killed build's). Waits for builds and imports in progress (they hold the store's ``.gc``
    lock shared). ``only``: consider just these blobs and ChainIDs (rmi's own)."""
    with store.collecting():
        blobs, chains = _referenced(store)
        chains |= _in_use_by_mounts(store)
        gone_blobs = []
        with store.blobs_dir() as d:
            for name in sorted(os.listdir(d)):
                digest = "sha256:" + name
                if name.startswith(".tmp-") or (digest not in blobs and (only is None or digest in only)):
                    if len(name) == 64 or name.startswith(".tmp-"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=d)
                        gone_blobs.append(digest if len(name) == 64 else name)
        gone_layers = []
        for name in sorted(os.listdir(os.path.join(store.root, "layers"))):
            chain = "sha256:" + name
            if chain not in chains and (only is None or chain in only):
                store.remove_temp(os.path.join(store.root, "layers", name))
                gone_layers.append(chain)
        temps = []
        if only is None:
            for name in sorted(os.listdir(os.path.join(store.root, "tmp"))):
                try:
                    store.remove_temp(os.path.join(store.root, "tmp", name))
                    temps.append(name)
                except LabError:
                    pass            # an overlay of a killed build is still mounted there: cleanup unmounts it
    return Removed((), tuple(gone_blobs), tuple(gone_layers), tuple(temps))


def rmi(store: Store, name: str) -> Removed:
    """Remove the image name ``name``, then the blobs and layer folders only it used: a layer
    another image uses stays (``docker rmi``: "Untagged", then "Deleted" for what is free)."""
    refs = store.refs()
    if check_name(name) not in refs:
        raise Refused(f"no image named {name!r} in {store.root}; there are: {', '.join(sorted(refs)) or 'none'}")
    try:
        img = image(store, name)
        mine = tuple({img.manifest.digest, img.config.digest} | {layer.blob.digest for layer in img.layers}
                     | {layer.chain_id for layer in img.layers})
    except LabError:
        img, mine = None, None          # damaged: untag it; what it named goes with the next full gc
    store.remove_ref(name)
    freed = gc(store, only=mine) if mine is not None else gc(store)
    return Removed((name,), freed.blobs, freed.layers)
