"""Layers: an upper folder as a tar (overlay whiteouts to OCI ones), a tar unpacked safely, and
the three identities of a layer.

**Three names for one layer** (image-spec/config.md, "Layer DiffID" and "Layer ChainID"):

* the *blob digest*: sha256 of the bytes stored and shipped, compressed or not. It names the
  blob in blobs/sha256 and in the manifest.
* the *DiffID*: sha256 of the *uncompressed* tar. The config lists them (rootfs.diff_ids): it
  does not change when a registry recompresses a layer. Uncompressed, blob digest == DiffID.
* the *ChainID*: the stack so far. ChainID(L1) = DiffID(L1); ChainID(L1..Ln) =
  sha256(ChainID(L1..Ln-1) + " " + DiffID(Ln)), over the strings "sha256:<hex>". The same
  change on two different bases gives the same DiffID and two ChainIDs: a layer's files only
  mean something on top of the layers below it. Since Docker 1.10 a pulled image has no parent
  ids: the image tree is the tree of ChainIDs (:mod:`labhelper.images.view`).

**Which bytes are canonical.** A digest names bytes, not files: two tools that tar the same
folder agree on the DiffID only if they write the same bytes. This writer's bytes are: POSIX
PAX format; entries sorted by name, component by component, each folder right before its
contents; numeric owners (uid/gid) with empty user and group names; permission bits with
setuid/setgid/sticky; the file's mtime in whole seconds (clamped to ``epoch`` when given, as
SOURCE_DATE_EPOCH builds do; no atime, no ctime); hard links as tar hard links to the first
name met; extended attributes of the ``user.`` and ``security.`` namespaces as PAX
``SCHILY.xattr.<name>`` records (security.capability included: Python's tarfile keeps
xattrs only when they are written as such records, and a ``ping`` without its capability
breaks). The same folder gives the same bytes, here or on another machine; another tool
(Docker, buildah) gives the same DiffID only if it makes exactly these choices, which in
general it does not.

**Whiteouts.** In an upper folder overlayfs marks a deleted name with a character device 0/0
and a folder whose lower contents are hidden with ``trusted.overlay.opaque=y``. Neither
survives a plain tar, nor means anything outside overlayfs, so a layer says them the OCI way:
an empty file ``.wh.<name>`` next to where ``name`` was, and ``.wh..wh..opq`` inside an opaque
folder. Unpacking turns them back (``form="overlay"``: the folder can be a lower folder of an
overlay mount), or applies them to a tree (``form="apply"``: delete, as ``docker export`` would
show the result).

**Never trust an archive** (R17). :func:`extract` walks the destination by file descriptor:
every folder on a member's way is opened with O_NOFOLLOW|O_DIRECTORY relative to the one
before, so nothing is ever written through a symlink, whatever an earlier member made. A symlink
member itself may point anywhere: it is only stored. Refused, naming the member: absolute
names, ``..``, hard links to anything but a file this archive made before, device nodes and
FIFOs, malformed whiteouts, ``trusted.overlay.*`` attributes (they would steer overlayfs),
truncated or non-tar input. The caller unpacks into a fresh folder and renames it into place
only when everything passed (R3).
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass

from .. import marks, overlay, procfs, syscalls
from ..errors import LabError, Refused
from .store import BlobWriter, Descriptor, LAYER_GZIP_MEDIA_TYPE, LAYER_MEDIA_TYPE, check_digest

__all__ = ["WHITEOUT_PREFIX", "OPAQUE_MARKER", "KEPT_XATTRS", "chain_ids", "chain_id", "diff_id_of", "LayerBlob",
           "write_layer", "Extracted", "extract", "uncompressed"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
KEPT_XATTRS = ("user.", "security.")        # the namespaces a layer carries (trusted.* is overlayfs' own)
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20


# --- identities -----------------------------------------------------------------------------------

def chain_ids(diff_ids) -> list[str]:
    """The ChainID of each layer of a stack, bottom first (the OCI image spec's definition)."""
    out: list[str] = []
    for diff in diff_ids:
        check_digest(diff, "DiffID")
        if not out:
            out.append(diff)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff}".encode()).hexdigest())
    return out


def chain_id(diff_ids) -> str:
    """The ChainID of the whole stack ``diff_ids`` (bottom first)."""
    ids = chain_ids(diff_ids)
    if not ids:
        raise Refused("a ChainID needs at least one layer")
    return ids[-1]


def diff_id_of(fileobj, limit: int | None = None) -> str:
    """The DiffID of a layer: sha256 of its uncompressed tar (gzip is undone on the way, nothing
    is kept; more than ``limit`` bytes, MAX_LAYER_BYTES by default, is Refused)."""
    limit = MAX_LAYER_BYTES if limit is None else limit
    fileobj.seek(0)
    gzipped = fileobj.read(2) == b"\x1f\x8b"
    fileobj.seek(0)
    h = hashlib.sha256()
    total = 0
    try:
        source = gzip.GzipFile(fileobj=fileobj, mode="rb") if gzipped else fileobj
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise Refused(f"the layer inflates to more than {limit >> 20} MiB: refused (a gzip bomb?)")
            h.update(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise Refused(f"the layer is not a whole gzip stream: {exc}") from None
    return "sha256:" + h.hexdigest()


# --- writing a layer from an upper folder ----------------------------------------------------------

@dataclass(frozen=True)
class LayerBlob:
    """A layer written to the store: the blob (``blob``: digest of the bytes stored, compressed
    or not), and the DiffID (digest of the uncompressed tar)."""
    blob: Descriptor
    diff_id: str
    entries: int

    def __repr__(self) -> str:
        same = "blob digest == DiffID" if self.blob.digest == self.diff_id else f"DiffID {self.diff_id[:19]}…"
        return f"LayerBlob({self.blob.digest[:19]}… {self.blob.size} bytes, {self.entries} entries; {same})"


class _Tee:
    """A file that hashes what passes through it on its way to another file (the uncompressed
    tar on its way into gzip: that hash is the DiffID)."""

    def __init__(self, inner):
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.inner.flush()


def write_layer(source: str, out: BlobWriter, *, compress: bool = False, epoch: int | None = None,
                within: tuple[str, ...] | None = None) -> LayerBlob:
    """Tar the folder ``source`` (an upper folder, or a root filesystem tree) into the blob
    ``out`` and commit it. Overlay whiteouts become ``.wh.`` files, an opaque folder gets a
    ``.wh..wh..opq``. ``compress``: gzip it (deterministic: no name, mtime 0 in the gzip header),
    so the blob digest differs from the DiffID. ``source`` must be a lab folder (or below one
    of ``within``): a host folder is never a layer source (R19)."""
    source = marks.lab_path(source, "capture as a layer", within=within)
    top = marks.open_lab_dir(source, within or marks.LAB_DIRS)
    tee = gz = None
    try:
        if compress:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6)
            tee = _Tee(gz)
            sink = tee
        else:
            sink = out
        tar = tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                           errors="surrogateescape")
        writer = _Writer(tar, epoch, procfs.mount_id(top))
        writer.walk(top, "")
        tar.close()
        if gz is not None:
            gz.close()
    finally:
        os.close(top)
    diff_id = "sha256:" + tee.hash.hexdigest() if tee is not None else out.digest
    blob = out.commit(LAYER_GZIP_MEDIA_TYPE if compress else LAYER_MEDIA_TYPE)
    return LayerBlob(blob, diff_id, writer.entries)


class _Writer:
    def __init__(self, tar: tarfile.TarFile, epoch: int | None, mount: int | None = None):
        self.tar = tar
        self.epoch = epoch
        self.mount = mount          # the source's mount: a folder on another one is not the layer's (R19)
        self.links: dict[tuple[int, int], str] = {}
        self.entries = 0

    def _info(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        mtime = int(st.st_mtime)
        info.mtime = min(mtime, self.epoch) if self.epoch is not None else mtime
        return info

    def _add(self, info: tarfile.TarInfo, data=None) -> None:
        self.tar.addfile(info, data)
        self.entries += 1

    def walk(self, dfd: int, rel: str) -> None:
        with os.scandir(dfd) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            path = f"{rel}{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            mode = st.st_mode
            if overlay.is_whiteout(st):
                # A deleted name: the OCI whiteout is an empty file next to it (what moby's
                # overlay converter writes: the device's owner, mode and time, no data).
                info = self._info(f"{rel}{WHITEOUT_PREFIX}{name}", st, tarfile.REGTYPE)
                self._add(info)
            elif stat.S_ISDIR(mode):
                sub = os.open(name, marks.DIR_FLAGS, dir_fd=dfd)
                try:
                    if self.mount is not None and procfs.mount_id(sub) != self.mount:
                        raise Refused(f"{path} is another mount (a bind mount of a host folder?): a layer is "
                                      "made of one folder's own files, never of what is mounted inside it")
                    info = self._info(path, st, tarfile.DIRTYPE)
                    info.pax_headers = self._xattrs(sub)
                    self._add(info)
                    if overlay.is_opaque(sub):
                        # First in its folder: whoever applies the layer in order hides the
                        # lower contents before this layer's own files arrive.
                        self._add(self._info(f"{path}/{OPAQUE_MARKER}", st, tarfile.REGTYPE))
                    self.walk(sub, path + "/")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in self.links:
                    info = self._info(path, st, tarfile.LNKTYPE)
                    info.linkname = self.links[key]
                    self._add(info)
                    continue
                self.links[key] = path
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                with os.fdopen(fd, "rb") as fh:
                    info = self._info(path, st, tarfile.REGTYPE)
                    info.size = st.st_size
                    info.pax_headers = self._xattrs(fd)
                    self._add(info, fh)
            elif stat.S_ISLNK(mode):
                info = self._info(path, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(name, dir_fd=dfd)
                self._add(info)
            elif stat.S_ISSOCK(mode):
                continue            # a socket is a live object, not content: tar skips it too
            else:
                what = "a FIFO" if stat.S_ISFIFO(mode) else "a device node"
                raise Refused(f"{path} is {what}: this lab's layers hold none (a layer unpacked elsewhere "
                              "must not create devices); remove it before capturing the layer")

    @staticmethod
    def _xattrs(fd: int) -> dict[str, str]:
        """The extended attributes a layer keeps, as PAX records. Values are bytes (a capability
        set is binary): kept exactly through surrogateescape, which tarfile writes back raw."""
        out = {}
        try:
            names = os.listxattr(fd)
        except OSError:
            return out
        for key in sorted(names):
            if not key.startswith(KEPT_XATTRS):
                continue
            try:
                value = os.getxattr(fd, key)
            except OSError:
                continue
            out[_XATTR_PAX + key] = value.decode("utf-8", "surrogateescape")
        return out


# --- reading a layer -------------------------------------------------------------------------------

MAX_LAYER_BYTES = 8 << 30      # the most an uncompressed layer may hold: gzip and sparse "bombs" stop here


@contextlib.contextmanager
def uncompressed(fileobj, tmp_dir: str | None = None, limit: int | None = None):
    """``(file, diff_id)``: the uncompressed tar as a seekable file at offset 0, and its sha256.
    A gzip stream (magic 1f 8b) is undone into a temporary file first (in ``tmp_dir``: the
    store's own folder, not /tmp, which is often memory), at most ``limit`` bytes of it; a
    truncated or corrupt one is Refused."""
    limit = MAX_LAYER_BYTES if limit is None else limit
    fileobj.seek(0)
    magic = fileobj.read(2)
    fileobj.seek(0)
    h = hashlib.sha256()
    if magic != b"\x1f\x8b":
        while chunk := fileobj.read(_CHUNK):
            h.update(chunk)
        fileobj.seek(0)
        yield fileobj, "sha256:" + h.hexdigest()
        return
    with tempfile.TemporaryFile(dir=tmp_dir) as tmp:
        try:
            with gzip.GzipFile(fileobj=fileobj, mode="rb") as gz:
                total = 0
                while chunk := gz.read(_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise Refused(f"the layer inflates to more than {limit >> 20} MiB: refused (a gzip bomb?)")
                    h.update(chunk)
                    tmp.write(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise Refused(f"the layer is not a whole gzip stream: {exc}") from None
        tmp.seek(0)
        yield tmp, "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract` made: counts by kind, and the whiteouts it turned into overlay ones
    (or applied)."""
    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    whiteouts: int
    opaque: int
    diff_id: str

    def __repr__(self) -> str:
        return (f"Extracted({self.files} files, {self.dirs} folders, {self.symlinks} symlinks, {self.hardlinks} "
                f"hard links, {self.whiteouts} whiteouts, {self.opaque} opaque; DiffID {self.diff_id[:19]}…)")


def extract(fileobj, dest: str, *, form: str = "overlay", diff_id: str | None = None,
            within: tuple[str, ...] | None = None, label: str = "the layer") -> Extracted:
    """Unpack the layer in ``fileobj`` (a tar, or gzip of one) into the folder ``dest``.

    ``form="overlay"``: into an empty folder, whiteouts made overlay ones (a char device 0/0,
    ``trusted.overlay.opaque=y``): the folder can be an overlay lower folder. ``form="apply"``:
    onto an existing tree (a root filesystem), whiteouts applied (the names removed). ``diff_id``:
    what the uncompressed tar's sha256 must be (a mismatch is Refused before anything is
    written). Everything refused names the member (module docstring); owners are set only as
    root. ``dest`` is a lab folder (or below one of ``within``)."""
    if form not in ("overlay", "apply"):
        raise Refused(f"form {form!r}: 'overlay' (an overlay lower folder) or 'apply' (onto a tree)")
    dest = marks.lab_path(dest, "unpack a layer into", within=within)
    with uncompressed(fileobj, tmp_dir=os.path.dirname(dest)) as (tarfh, computed):
        if diff_id is not None and computed != diff_id:
            raise Refused(f"{label}: its uncompressed tar has sha256 {computed}, but the image says its DiffID is "
                          f"{diff_id}: the layer is not the one the image was made with")
        root = marks.open_lab_dir(dest, within or marks.LAB_DIRS)
        try:
            ex = _Extractor(root, form, label)
            ex.run(tarfh)
        finally:
            os.close(root)
    c = ex.counts
    return Extracted(c["file"], c["dir"], c["symlink"], c["hardlink"], c["whiteout"], c["opaque"], computed)


def _member_path(name: str, label: str, what: str = "member") -> tuple[str, ...]:
    """A member's name as components: relative, no ``..``, no empty or ``.`` component (a
    leading ``./`` is what `tar -C dir .` writes and is dropped)."""
    if "\0" in name:
        raise Refused(f"{label}: {what} {marks.printable(name)!r} has a NUL in its name")
    if name.startswith("/"):
        raise Refused(f"{label}: {what} {marks.printable(name)!r} has an absolute name: a layer's names are "
                      "relative to the root it is unpacked into")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(f"{label}: {what} {marks.printable(name)!r} has a '..' component: it would leave the folder "
                      "it is unpacked into")
    for p in parts:
        if len(os.fsencode(p)) > 255:
            raise Refused(f"{label}: {what} {marks.printable(name)[:80]!r}...: a component longer than 255 bytes")
    return tuple(parts)


class _Extractor:
    def __init__(self, root: int, form: str, label: str):
        self.root = root
        self.root_mount = procfs.mount_id(root)
        self.form = form
        self.label = label
        self.made: dict[tuple[str, ...], str] = {}      # what this archive made: path -> kind
        self.whiteouts: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        self.counts = dict.fromkeys(("file", "dir", "symlink", "hardlink", "whiteout", "opaque"), 0)
        self.as_root = os.geteuid() == 0
        self.total = 0                  # bytes of file content so far

    def refuse(self, member: str, why: str) -> Refused:
        return Refused(f"{self.label}: member {marks.printable(member)!r} {why}; nothing of it was written "
                       "outside the folder it was being unpacked into")

    def run(self, fh) -> None:
        try:
            tar = tarfile.open(fileobj=fh, mode="r:", encoding="utf-8", errors="surrogateescape")
        except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
            raise Refused(f"{self.label} is not a tar archive: {exc}") from None
        name = "(the first header)"
        try:
            while True:
                try:
                    m = tar.next()
                except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
                    # (a PAX record tarfile cannot make sense of, such as a sparse map that is
                    # not there, ends in ValueError deep inside tarfile)
                    raise Refused(f"{self.label}: a damaged header after member {marks.printable(name)!r}: "
                                  f"{exc}") from None
                if m is None:
                    break
                name = m.name
                self.member(tar, m)
            # tarfile stops silently at a header it cannot read, or at the end of the data: a
            # whole archive ends with zero blocks, so one must be there.
            fh.seek(tar.offset)
            if fh.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise Refused(f"{self.label} is truncated or damaged after member {marks.printable(name)!r}: "
                              "no end-of-archive block follows it")
            self.finish_dirs()
        finally:
            tar.close()

    # --- walking the destination by fd ---

    def open_parent(self, parts: tuple[str, ...], member: str, create: bool = True) -> int:
        """The folder that holds ``parts[-1]``, walked from the root without following anything;
        missing folders are made (as tar does) when ``create``."""
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    sub = os.open(part, marks.DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self.made[parts[:i + 1]] = "dir"
                    sub = os.open(part, marks.DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
                        raise self.refuse(member, f"would be written through {'/'.join(parts[:i + 1])!r}, which "
                                                  f"is {what}") from None
                    raise
                os.close(fd)
                fd = sub
                if procfs.mount_id(fd) != self.root_mount:
                    raise self.refuse(member, f"would be written across a mount at {'/'.join(parts[:i + 1])!r}")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def remove_at(self, dfd: int, name: str) -> None:
        """Remove ``name`` in the open folder (a folder with everything in it), by fd, following
        nothing and never crossing a mount."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dfd)
            return
        sub = os.open(name, marks.DIR_FLAGS, dir_fd=dfd)
        try:
            if procfs.mount_id(sub) != self.root_mount:
                raise LabError(f"{self.label}: refusing to remove {name!r}: another filesystem is mounted there")
            for entry in os.listdir(sub):
                self.remove_at(sub, entry)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dfd)

    # --- one member ---

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _member_path(m.name, self.label)
        if not parts:
            if m.isdir():
                return          # "./": the root itself, which the caller made
            raise self.refuse(m.name, "has an empty name")
        if m.ischr() or m.isblk():
            raise self.refuse(m.name, f"is a device node ({m.devmajor}:{m.devminor}): a layer may not create "
                                      "devices (a container's /dev is made by its runtime)")
        if m.isfifo():
            raise self.refuse(m.name, "is a FIFO: this lab's layers hold none")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise self.refuse(m.name, f"has tar type {m.type!r}, which a layer may not have")
        if m.issparse():
            raise self.refuse(m.name, "is a sparse file: its holes would be written out in full (a layer of a "
                                      "few kB could fill the disk); this lab's layers hold none")
        if not (0 <= m.uid < 2**32 and 0 <= m.gid < 2**32):
            raise self.refuse(m.name, f"has owner {m.uid}:{m.gid}, outside what the kernel can store")
        if not (isinstance(m.mtime, (int, float)) and m.mtime == m.mtime and -2**62 < m.mtime < 2**62 // 10**9):
            raise self.refuse(m.name, f"has the time {m.mtime!r}, which is no time a file can have")
        self.total += max(m.size, 0)
        if self.total > MAX_LAYER_BYTES:
            raise self.refuse(m.name, f"brings the layer past {MAX_LAYER_BYTES >> 20} MiB: refused")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(m, parts)
            return
        if parts in self.whiteouts:
            raise self.refuse(m.name, "has a whiteout in the same layer: a layer deletes a name or makes it, "
                                      "not both")
        xattrs = self.xattrs_of(m)
        parent = self.open_parent(parts, m.name)
        try:
            try:
                old = os.stat(base, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None and not (m.isdir() and stat.S_ISDIR(old.st_mode)):
                # A later member replaces an earlier one (or a lower layer's file, when applying).
                self.remove_at(parent, base)
                for done in [p for p in self.made if p[:len(parts)] == parts]:
                    del self.made[done]
            if m.isdir():
                if old is None or not stat.S_ISDIR(old.st_mode):
                    os.mkdir(base, 0o700, dir_fd=parent)
                self.made[parts] = "dir"
                self.dirs.append((parts, m))
                self.counts["dir"] += 1
            elif m.isreg():
                self.regular(tar, m, parent, base, xattrs)
                self.made[parts] = "file"
                self.counts["file"] += 1
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=parent)     # stored, never followed by us
                if self.as_root:
                    os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
                os.utime(base, ns=(int(m.mtime) * 10**9, int(m.mtime) * 10**9), dir_fd=parent, follow_symlinks=False)
                self.made[parts] = "symlink"
                self.counts["symlink"] += 1
            else:
                self.hardlink(m, parts, parent, base)
                self.counts["hardlink"] += 1
        finally:
            os.close(parent)

    def xattrs_of(self, m: tarfile.TarInfo) -> dict[str, bytes]:
        out = {}
        for key, value in m.pax_headers.items():
            if not key.startswith(_XATTR_PAX):
                continue
            name = key[len(_XATTR_PAX):]
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                raise self.refuse(m.name, f"carries the attribute {name}: overlayfs' own, which would steer the "
                                          "overlay this layer becomes part of")
            if name.startswith(KEPT_XATTRS):
                out[name] = value.encode("utf-8", "surrogateescape")
        return out

    def set_meta(self, fd: int, m: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
        # Order matters: chown(2) clears setuid bits and security.capability, so owner first,
        # then the mode, then the attributes, then the times.
        if self.as_root:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        for key, value in xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except PermissionError:
                if self.as_root:
                    raise
        os.utime(fd, ns=(int(m.mtime) * 10**9, int(m.mtime) * 10**9))

    def regular(self, tar, m, parent: int, base: str, xattrs) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            src = tar.extractfile(m)
            left = m.size
            while left > 0:
                try:
                    chunk = src.read(min(_CHUNK, left))
                except (tarfile.TarError, EOFError, OSError) as exc:
                    raise self.refuse(m.name, f"is truncated: {exc}") from None
                if not chunk:
                    raise self.refuse(m.name, "is truncated: unexpected end of data")
                view = memoryview(chunk)
                while view:                     # a short write is not the end: write the rest
                    try:
                        view = view[os.write(fd, view):]
                    except OSError as exc:      # ENOSPC, EIO, EDQUOT: this machine's, not the archive's
                        raise syscalls.error("write", {"file": f"{self.label}: {m.name}"}, exc.errno) from None
                left -= len(chunk)
            self.set_meta(fd, m, xattrs)
        finally:
            os.close(fd)

    def hardlink(self, m, parts, parent: int, base: str) -> None:
        target = _member_path(m.linkname, self.label, f"member {marks.printable(m.name)!r}: hard link target")
        if not target:
            raise self.refuse(m.name, "is a hard link to the root folder")
        if self.made.get(target) not in ("file", "symlink", "hardlink"):
            raise self.refuse(m.name, f"is a hard link to {marks.printable(m.linkname)!r}, which is not a file this "
                                      "archive made before it (a link to a file outside would let the layer "
                                      "change it)")
        tparent = self.open_parent(target, m.name, create=False)
        try:
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        self.made[parts] = "hardlink"

    def whiteout(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if not m.isreg():
            raise self.refuse(m.name, "is a whiteout that is not a plain file")
        if base == OPAQUE_MARKER:
            self.opaque(m, parts[:-1])
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if base.startswith(WHITEOUT_PREFIX * 2):
            raise self.refuse(m.name, "is an AUFS-internal whiteout (.wh..wh.*): only .wh..wh..opq is an OCI one")
        if hidden in ("", ".", ".."):
            raise self.refuse(m.name, f"is a malformed whiteout: it names {hidden!r}")
        path = parts[:-1] + (hidden,)
        if path in self.made:
            raise self.refuse(m.name, "deletes a name the same layer made: a layer deletes a name or makes it, "
                                      "not both")
        if path in self.whiteouts:
            raise self.refuse(m.name, "is a whiteout given twice")
        parent = self.open_parent(path, m.name)
        try:
            if self.form == "overlay":
                overlay.make_whiteout(parent, hidden)
                if self.as_root:
                    os.chown(hidden, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            else:
                self.remove_at(parent, hidden)
        finally:
            os.close(parent)
        self.whiteouts.add(path)
        self.counts["whiteout"] += 1

    def opaque(self, m: tarfile.TarInfo, folder: tuple[str, ...]) -> None:
        if self.form == "overlay":
            if folder:
                parent = self.open_parent(folder, m.name)
                try:
                    try:
                        fd = os.open(folder[-1], marks.DIR_FLAGS, dir_fd=parent)
                    except FileNotFoundError:
                        os.mkdir(folder[-1], 0o755, dir_fd=parent)
                        self.made[folder] = "dir"
                        fd = os.open(folder[-1], marks.DIR_FLAGS, dir_fd=parent)
                    except OSError:
                        raise self.refuse(m.name, "marks as opaque something that is not a folder") from None
                finally:
                    os.close(parent)
            else:
                fd = os.dup(self.root)
            try:
                overlay.make_opaque(fd)
            finally:
                os.close(fd)
        else:
            # Hide what the layers below put in the folder: everything this archive did not make.
            probe = folder + ("x",)
            parent = self.open_parent(probe, m.name)
            try:
                for entry in os.listdir(parent):
                    if folder + (entry,) not in self.made:
                        self.remove_at(parent, entry)
            finally:
                os.close(parent)
        self.counts["opaque"] += 1

    def finish_dirs(self) -> None:
        """Folders get their mode, owner and time last, deepest first: writing into a folder
        changes its mtime, and a read-only mode would stop the writes."""
        for parts, m in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):
            if self.made.get(parts) != "dir":
                continue
            parent = self.open_parent(parts, m.name, create=False)
            try:
                fd = os.open(parts[-1], marks.DIR_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
            try:
                self.set_meta(fd, m, self.xattrs_of(m))
            finally:
                os.close(fd)
