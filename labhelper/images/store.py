"""The content-addressed store: blobs named by their sha256, an index of names, and the locks.

The store *is* an OCI image layout (image-spec/image-layout.md), so that real tools (umoci,
skopeo) can read it as it is::

    <root>/oci-layout             {"imageLayoutVersion": "1.0.0"}
    <root>/index.json             the names: one manifest descriptor per image name
                                  (annotation org.opencontainers.image.ref.name = "web:1")
    <root>/blobs/sha256/<hex>     every config, manifest and layer, named by the sha256 of its bytes
    <root>/layers/<chainid-hex>/  each layer unpacked in overlayfs' own format (not OCI's): the
                                  lower folders an overlay mount stacks, as containerd's
                                  overlay snapshotter keeps them
    <root>/tmp/                   work in progress (builds, imports): renamed into place at the end
    <root>/.lock, <root>/.gc      flock(2) files (below)

Content addressing makes three promises cheap to keep:

* **A blob is written once and never changes.** Its bytes go into a file with no name
  (O_TMPFILE) and only then get their name with link(2): a reader sees the whole blob or none,
  even after a SIGKILL mid-write. Writing a blob that exists already changes nothing (the one
  there is checked, not rewritten): the same bytes have the same name. Durability comes once
  per image, not per blob: before a name is written into the index, one syncfs(2) puts every
  blob and layer folder of the store on disk; so after a power cut a named image is whole, and
  a blob that never made it (no name points at it) fails its check on read, is replaced by the
  next write of the same bytes, and goes with the next gc.
* **A blob is verified on every read**: its sha256 must be its name, or the read fails naming
  the digest and the file. A disk error, or someone editing a file by hand, cannot slip a
  different layer into an image.
* **Sharing is free**: two images that use the same base layer name the same blob; nothing is
  copied.

Concurrency (R27): the index is rewritten whole (a temporary file renamed over the old one) under
an exclusive flock on ``.lock``, so two processes adding names at once both land. A build or an
import holds ``.gc`` shared while it works; garbage collection takes it exclusively, so it never
removes the blobs of an image that is being made and not yet named.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import stat
import threading
import uuid
from dataclasses import dataclass

from .. import marks, mounts, registry
from ..syscalls import syncfs
from ..errors import LabError, Refused

__all__ = ["DEFAULT_ROOT", "REF_NAME", "INDEX_MEDIA_TYPE", "MANIFEST_MEDIA_TYPE", "CONFIG_MEDIA_TYPE",
           "LAYER_MEDIA_TYPE", "LAYER_GZIP_MEDIA_TYPE", "LAYER_MEDIA_TYPES", "Descriptor", "Store", "BlobWriter",
           "check_digest", "check_name", "sha256_of", "MAX_JSON", "read_bounded"]

DEFAULT_ROOT = "/var/lib/labhelper/images"
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_MEDIA_TYPES = (LAYER_MEDIA_TYPE, LAYER_GZIP_MEDIA_TYPE)
LAYOUT_VERSION = "1.0.0"
MAX_JSON = 4 << 20          # an index, manifest or config is a few kB: read no more than this

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# An image name as docker and the OCI ref.name annotation write it: "busybox", "web:1",
# "lab/web:v1.2". No "..", no spaces, nothing a shell or a path would read otherwise.
_NAME = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")
_CHUNK = 1 << 20


def check_digest(digest, what: str = "digest") -> str:
    """``digest`` if it is ``sha256:`` and 64 lowercase hex digits; else Refused. A digest from
    an archive or an index names a file in blobs/: "sha256:../../etc/passwd" must never pass."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise Refused(f"{what} {marks.printable(str(digest))[:100]!r} is not a sha256 digest "
                      "('sha256:' and 64 lowercase hex digits)")
    return digest


def check_name(name) -> str:
    """An image name: ``busybox``, ``web:1``, ``lab/web:v2`` (lowercase repository, an optional
    tag after ':'); Refused otherwise (R18)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or "//" in name \
            or name.split(":")[0].endswith(("/", ".", "-")):
        raise Refused(f"image name {marks.printable(str(name))[:100]!r}: use a lowercase name of letters, digits "
                      "and '._/-', and an optional ':tag' ('busybox', 'web:1')")
    return name


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """What an OCI descriptor says of a blob: its media type, digest and size in bytes."""
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def __repr__(self) -> str:
        return f"Descriptor({self.media_type.rsplit('.', 1)[-1]} {self.digest[:19]}… {self.size} bytes)"


class BlobWriter:
    """A blob being written: bytes go to a file with no name in blobs/sha256 (O_TMPFILE), hashed
    as they pass; :meth:`commit` names it by its digest. Closed without a commit, it vanishes
    (the kernel frees a nameless file with its last fd): a failed write leaves nothing.

    It has ``write``/``tell``/``flush``, which is all tarfile and gzip ask of a file."""

    def __init__(self, blobs_fd: int):
        self._dir = os.dup(blobs_fd)
        self._tmp: str | None = None
        try:
            self.fd = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=self._dir)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                os.close(self._dir)
                raise
            # No O_TMPFILE on this filesystem: a hidden temporary name (gc removes strays).
            self._tmp = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                              dir_fd=self._dir)
        self.hash = hashlib.sha256()
        self.size = 0
        # Hashing and writing happen in a second thread, a megabyte at a time, while this one
        # reads and tars the next files: the way `tar | sha256sum` runs its two programs side
        # by side. (sha256 and write(2) release the GIL on big buffers, so the two overlap.)
        self._buf = bytearray()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="blob-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if chunk is None:
                    return
                if self._failed is None:
                    self.hash.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(self.fd, view):]
            except BaseException as exc:        # ENOSPC, EIO: said by the next write or the commit
                self._failed = exc
            finally:
                self._queue.task_done()

    def _hand_off(self) -> None:
        if self._buf:
            chunk, self._buf = self._buf, bytearray()
            self._queue.put(chunk)
        if self._failed is not None:
            raise self._failed

    def _settle(self) -> None:
        """Wait until every byte written so far is hashed and in the file."""
        self._hand_off()
        self._queue.join()
        if self._failed is not None:
            raise self._failed

    def write(self, data) -> int:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._buf += data
        self.size += n
        if len(self._buf) >= _CHUNK:
            self._hand_off()
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._settle()

    @property
    def digest(self) -> str:
        self._settle()
        return "sha256:" + self.hash.hexdigest()

    def commit(self, media_type: str = "application/octet-stream") -> Descriptor:
        """Give the blob its name (durable with the image that names it: Store.set_ref). If a
        blob of that name exists it is checked: the same bytes are not written twice; a damaged
        one is replaced (atomically, by rename)."""
        self._settle()
        name = self.hash.hexdigest()
        src = self._tmp
        if src is None:
            try:
                os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=self._dir, follow_symlinks=True)
                return Descriptor(media_type, self.digest, self.size)
            except FileExistsError:
                pass
        if _file_digest(self._dir, name) == self.digest:
            return Descriptor(media_type, self.digest, self.size)      # idempotent: the same bytes are there
        # A damaged blob of that name (or no O_TMPFILE): put ours in its place in one step.
        if src is None:
            src = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.link(f"/proc/self/fd/{self.fd}", src, dst_dir_fd=self._dir, follow_symlinks=True)
        os.rename(src, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        self._tmp = None
        return Descriptor(media_type, self.digest, self.size)

    def close(self) -> None:
        if self._thread.is_alive():
            self._buf = bytearray()
            self._queue.put(None)
            self._thread.join()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp, dir_fd=self._dir)
            self._tmp = None
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file_digest(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        return "sha256:" + h.hexdigest()
    finally:
        os.close(fd)


class Store:
    """An image store at ``root``: an OCI image layout plus unpacked layers (module docstring).

    ``root`` lies below a lab folder (default :data:`DEFAULT_ROOT`); it is made, when missing,
    as a recorded lab folder (mounts.make_dir: ``labhelper cleanup`` removes it, the census
    lists it). ``within``: tests keep a store in a temporary folder instead (not recorded).
    Every file is reached from the root by file descriptor, never through a symlink.
    """

    def __init__(self, root: str = DEFAULT_ROOT, *, owner: str | None = None, within: tuple[str, ...] | None = None):
        self.within = tuple(os.path.normpath(w) for w in within) if within is not None else None
        self.root = marks.lab_path(os.fspath(root), "keep an image store in", within=self.within)
        self.allowed = self.within if self.within is not None else marks.LAB_DIRS
        if not os.path.lexists(self.root):
            if self.within is None:
                try:
                    mounts.make_dir(self.root, owner)
                except Refused:
                    if not os.path.isdir(self.root):     # another process recorded and made it: fine
                        raise
            else:
                os.makedirs(self.root, 0o755, exist_ok=True)
        for sub in ("blobs/sha256", "layers", "tmp"):
            os.close(self.open_dir(sub, create=True))
        # Root's only: an image's files keep their owners and setuid bits, so a setuid-root
        # binary of an unpacked layer must not be within reach of the machine's other users
        # (Docker keeps /var/lib/docker 0710 for the same reason).
        with self.open_root() as top:
            os.fchmod(top, 0o700)
        with self.open_root() as top:
            for lock in (".lock", ".gc"):       # made now, so that a read-only look changes no file
                os.close(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=top))
            if not _exists(top, "oci-layout"):
                self.write_file(top, "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
            if not _exists(top, "index.json"):
                with self.lock():
                    if not _exists(top, "index.json"):
                        self.write_file(top, "index.json", _index_json([]))

    def __repr__(self) -> str:
        return f"Store({self.root})"

    # --- folders ----------------------------------------------------------------------------------

    def open_dir(self, sub: str = "", create: bool = False) -> int:
        """An fd on ``root/sub``, opened without following a symlink anywhere (close it)."""
        path = os.path.join(self.root, sub) if sub else self.root
        return marks.open_lab_dir(path, self.allowed, create=create)

    @contextlib.contextmanager
    def open_root(self):
        fd = self.open_dir()
        try:
            yield fd
        finally:
            os.close(fd)

    def layer_dir(self, chain_id: str) -> str:
        """Where the layer whose ChainID is ``chain_id`` is unpacked (an overlay lower folder)."""
        return os.path.join(self.root, "layers", check_digest(chain_id, "ChainID").split(":", 1)[1])

    def has_layer(self, chain_id: str) -> bool:
        return os.path.isdir(self.layer_dir(chain_id)) and not os.path.islink(self.layer_dir(chain_id))

    def new_temp(self) -> str:
        """A new empty folder in ``tmp/`` for work in progress (renamed into place, or removed)."""
        path = os.path.join(self.root, "tmp", uuid.uuid4().hex[:16])
        os.close(marks.open_lab_dir(path, self.allowed, create=True))
        return path

    def remove_temp(self, path: str) -> None:
        """Remove a folder of ``tmp/`` (or a layer folder) and all in it: never through a symlink
        or across a mount (mounts.remove_tree)."""
        with contextlib.suppress(FileNotFoundError):
            mounts.remove_tree(path, allowed=self.allowed)

    # --- locks --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, name: str, how: int):
        with self.open_root() as top:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=top)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)            # closing the last fd releases the lock, also after SIGKILL

    def lock(self):
        """Exclusive, short: around a read-modify-write of index.json."""
        return self._flock(".lock", fcntl.LOCK_EX)

    def working(self):
        """Shared, long: a build or an import in progress (its blobs are not named yet)."""
        return self._flock(".gc", fcntl.LOCK_SH)

    def collecting(self):
        """Exclusive: garbage collection, once no build or import is in progress."""
        return self._flock(".gc", fcntl.LOCK_EX)

    # --- blobs --------------------------------------------------------------------------------------

    def writer(self) -> BlobWriter:
        fd = self.open_dir("blobs/sha256")
        try:
            return BlobWriter(fd)
        finally:
            os.close(fd)

    def put_blob(self, data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
        """Store ``data`` as a blob (atomic, idempotent) and describe it."""
        with self.writer() as w:
            w.write(data)
            return w.commit(media_type)

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", check_digest(digest).split(":", 1)[1])

    def has_blob(self, digest: str) -> bool:
        with self.blobs_dir() as d:
            return _exists(d, check_digest(digest).split(":", 1)[1])

    @contextlib.contextmanager
    def blobs_dir(self):
        """blobs/sha256, open (a context manager yielding its fd)."""
        fd = self.open_dir("blobs/sha256")
        try:
            yield fd
        finally:
            os.close(fd)

    def open_blob(self, digest: str):
        """The blob ``digest``, verified (its sha256 is its name), as a binary file at offset 0.
        A missing or damaged blob is a LabError naming the digest and the file."""
        hexname = check_digest(digest).split(":", 1)[1]
        with self.blobs_dir() as d:
            try:
                fd = os.open(hexname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            except FileNotFoundError:
                raise LabError(f"blob {digest} is missing from the store ({self.blob_path(digest)})",
                               hint="an image that names it is damaged: remove it (rmi) and build or import "
                                    "it again") from None
        fh = os.fdopen(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LabError(f"blob {digest} ({self.blob_path(digest)}) is not a plain file")
            h = hashlib.sha256()
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise LabError(f"blob {digest} is damaged: the file {self.blob_path(digest)} has sha256:"
                               f"{h.hexdigest()}; content addressing means its name must be its digest",
                               hint="remove the images that use it (rmi), run gc, and build or import them again")
            fh.seek(0)
            return fh
        except BaseException:
            fh.close()
            raise

    def read_blob(self, digest: str, limit: int = MAX_JSON) -> bytes:
        """A small blob's bytes (a manifest, a config), verified."""
        with self.open_blob(digest) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise LabError(f"blob {digest} is larger than {limit} bytes: not a manifest or config of this lab")
        return data

    def read_json(self, digest: str) -> dict:
        data = self.read_blob(digest)
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise LabError(f"blob {digest} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise LabError(f"blob {digest} is JSON but not an object")
        return value

    def blobs(self) -> list[str]:
        """The digests of every blob stored."""
        with self.blobs_dir() as d:
            return sorted("sha256:" + n for n in os.listdir(d) if re.fullmatch(r"[0-9a-f]{64}", n))

    # --- the index: names ---------------------------------------------------------------------------

    def refs(self) -> dict[str, Descriptor]:
        """Every image name and the manifest it names, from index.json."""
        with self.open_root() as top:
            raw = read_bounded(top, "index.json", f"{self.root}/index.json")
        try:
            index = json.loads(raw)
            manifests = index["manifests"]
            out = {}
            for m in manifests:
                name = (m.get("annotations") or {}).get(REF_NAME)
                if name is None:
                    continue
                out[check_name(name)] = Descriptor(m["mediaType"], check_digest(m["digest"]), int(m["size"]))
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LabError(f"{self.root}/index.json is not an OCI image index this lab wrote: {exc}") from None

    def set_ref(self, name: str, manifest: Descriptor) -> None:
        """Name ``manifest`` ``name`` in index.json (a name given again now names the new one)."""
        check_name(name)
        with self.open_root() as top:
            syncfs(top)             # the blobs and layers it names reach the disk before the name does
        with self.lock():
            refs = self.refs()
            refs[name] = manifest
            self._write_index(refs)

    def remove_ref(self, name: str) -> Descriptor | None:
        with self.lock():
            refs = self.refs()
            gone = refs.pop(name, None)
            if gone is not None:
                self._write_index(refs)
            return gone

    def _write_index(self, refs: dict[str, Descriptor]) -> None:
        with self.open_root() as top:
            self.write_file(top, "index.json", _index_json(sorted(refs.items())))

    @staticmethod
    def write_file(dir_fd: int, name: str, data: bytes) -> None:
        """Replace ``name`` whole: a temporary file, fsync'ed, renamed over it (rename(2) is atomic)."""
        tmp = f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    # --- removing the store itself ------------------------------------------------------------------

    def remove(self) -> None:
        """Remove the whole store (its record too, for a recorded lab folder). Overlays mounted
        from its layers must be unmounted first: the removal never crosses a mount."""
        if self.within is not None:
            self.remove_temp(self.root)
            return
        mounts.remove_dir(marks.Obj("dir", self.root, where=(self.root,)), registry.ledger())


def _index_json(items) -> bytes:
    manifests = [{**desc.to_json(), "annotations": {REF_NAME: name}} for name, desc in items]
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests},
                      indent=2).encode() + b"\n"


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def read_bounded(dir_fd: int, name: str, shown: str, limit: int = MAX_JSON) -> bytes:
    """A small plain file in an open folder, not through a symlink, at most ``limit`` bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise LabError(f"cannot open {shown}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LabError(f"{shown} is not a plain file")
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, _CHUNK)):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LabError(f"{shown} is larger than {limit} bytes")
    return data
