"""OCI image layouts in and out: one image as a folder any OCI tool reads, and back.

An OCI image layout (image-spec/image-layout.md) is a folder::

    oci-layout     {"imageLayoutVersion": "1.0.0"}
    index.json     manifests, each named by its org.opencontainers.image.ref.name annotation
    blobs/sha256/  the blobs, each named by its digest

:func:`export` writes one image of the store that way (``umoci unpack --image DIR:NAME`` and
``skopeo inspect oci:DIR:NAME`` read it). :func:`import_layout` takes one in from anyone, so it
trusts nothing: every blob is read without following a symlink, its size and sha256 checked
against the descriptor that names it, every media type checked, every layer unpacked by the
safe extractor (R17), its DiffID checked against the config. All of it happens in the store's
tmp/ (blobs in nameless files, layers in a temporary folder); only when everything passed are
the blobs named, the layers renamed into place and, last, the name written in the index (R3):
a refused import leaves the store as it was.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat

from .. import marks
from ..errors import LabError, Refused
from . import layers
from .image import Image, image, parse, place_layer
from .store import (INDEX_MEDIA_TYPE, LAYOUT_VERSION, MANIFEST_MEDIA_TYPE, MAX_JSON, REF_NAME, Descriptor, Store,
                    check_digest, check_name)

__all__ = ["export", "import_layout"]

_CHUNK = 1 << 20


def export(store: Store, name: str, dest: str, *, ref: str | None = None,
           within: tuple[str, ...] | None = None, progress=None) -> Image:
    """Write the image ``name`` as a standalone OCI image layout in the new folder ``dest`` (below
    a lab folder, or one of ``within``), named ``ref`` (default: ``name``) in its index.json. The
    blobs are copied verified, byte for byte: the digests stay the same. ``progress(done, total,
    what)`` is called after each blob (a progress bar)."""
    img = image(store, name)
    ref = check_name(ref or name)
    dest = marks.lab_path(dest, "export an image into", within=within)
    if os.path.lexists(dest):
        raise Refused(f"{dest} exists: export into a new folder")
    allowed = within or marks.LAB_DIRS
    made: list[str] = []
    top = marks.open_lab_dir(os.path.join(dest, "blobs", "sha256"), allowed, create=True, made=made)
    try:
        blobs = (img.manifest, img.config, *(layer.blob for layer in img.layers))
        for done, desc in enumerate(blobs, 1):
            hexname = desc.digest.split(":", 1)[1]
            with store.open_blob(desc.digest) as src:
                fd = os.open(hexname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=top)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
            if progress is not None:
                progress(done, len(blobs), f"blob {desc.digest[7:19]} ({desc.size} bytes)")
    finally:
        os.close(top)
    root = marks.open_lab_dir(dest, allowed)
    try:
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                 "manifests": [{**img.manifest.to_json(), "annotations": {REF_NAME: ref}}]}
        Store.write_file(root, "index.json", json.dumps(index, indent=2).encode() + b"\n")
        Store.write_file(root, "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
    finally:
        os.close(root)
    return img


class _Layout:
    """A layout folder we only read: every file opened without following a symlink."""

    def __init__(self, path: str):
        self.path = os.path.normpath(os.fspath(path))
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise Refused(f"cannot open the image layout {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def open(self, rel: str):
        """``rel`` (a/b/c) as a binary file, each component opened with O_NOFOLLOW."""
        fd = os.dup(self.fd)
        parts = rel.split("/")
        try:
            for part in parts[:-1]:
                sub = os.open(part, marks.DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
            try:
                f = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as exc:
            why = "a symlink (never followed)" if exc.errno == errno.ELOOP else exc.strerror
            raise Refused(f"{self.path}/{rel}: {why}") from None
        if not stat.S_ISREG(os.fstat(f).st_mode):
            os.close(f)
            raise Refused(f"{self.path}/{rel} is not a plain file")
        return os.fdopen(f, "rb")

    def small(self, rel: str) -> bytes:
        with self.open(rel) as fh:
            data = fh.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise Refused(f"{self.path}/{rel} is larger than {MAX_JSON} bytes")
        return data

    def json(self, rel: str) -> dict:
        try:
            value = json.loads(self.small(rel))
        except ValueError as exc:
            raise Refused(f"{self.path}/{rel} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Refused(f"{self.path}/{rel} is not a JSON object")
        return value


def _blob_rel(desc: Descriptor) -> str:
    return "blobs/sha256/" + check_digest(desc.digest).split(":", 1)[1]


def _verified_small(layout: _Layout, desc: Descriptor) -> bytes:
    data = layout.small(_blob_rel(desc))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != desc.digest or len(data) != desc.size:
        raise Refused(f"blob {desc.digest} in {layout.path}: the file has {len(data)} bytes and digest {got}; the "
                      f"descriptor says {desc.size} bytes: it is not the blob it claims to be")
    return data


def _find_manifest(layout: _Layout, ref: str) -> Descriptor:
    index = layout.json("index.json")
    found = []
    for m in index.get("manifests", []) if isinstance(index.get("manifests"), list) else []:
        if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == ref:
            found.append(m)
    if len(found) != 1:
        names = sorted({str((m.get("annotations") or {}).get(REF_NAME)) for m in index.get("manifests", [])
                        if isinstance(m, dict)})
        raise Refused(f"{layout.path}/index.json names {len(found)} manifests {ref!r} (one is needed); its names: "
                      f"{', '.join(names) or 'none'}")
    m = found[0]
    try:
        desc = Descriptor(str(m["mediaType"]), check_digest(m["digest"]), int(m["size"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, Refused):
            raise
        raise Refused(f"{layout.path}/index.json: the descriptor of {ref!r} is malformed ({exc!r})") from None
    if desc.media_type != MANIFEST_MEDIA_TYPE:
        raise Refused(f"{ref!r} in {layout.path} is a {desc.media_type}; this lab imports one image manifest "
                      f"({MANIFEST_MEDIA_TYPE}), not an index of several platforms")
    return desc


def import_layout(store: Store, src: str, ref: str, name: str | None = None, *, progress=None) -> Image:
    """Import the image ``ref`` of the OCI image layout at ``src`` into the store as ``name``
    (default ``ref``). Everything is checked before the store changes (module docstring); a
    refusal names the blob or layer member that failed, and the store is left as it was.
    ``progress(done, total, what)`` is called after each layer is verified and unpacked."""
    name = check_name(name or ref)
    layout = _Layout(src)
    try:
        try:
            version = layout.json("oci-layout").get("imageLayoutVersion")
        except Refused:
            raise Refused(f"{layout.path} is not an OCI image layout: no readable oci-layout file") from None
        if version != LAYOUT_VERSION:
            raise Refused(f"{layout.path}/oci-layout: imageLayoutVersion {version!r}, this lab reads {LAYOUT_VERSION}")
        mdesc = _find_manifest(layout, ref)
        mbytes = _verified_small(layout, mdesc)
        try:
            manifest = json.loads(mbytes)
            cdesc = Descriptor(str(manifest["config"]["mediaType"]), check_digest(manifest["config"]["digest"]),
                               int(manifest["config"]["size"]))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, Refused):
                raise
            raise Refused(f"manifest {mdesc.digest} in {layout.path} is malformed ({exc!r})") from None
        cbytes = _verified_small(layout, cdesc)
        try:
            config = json.loads(cbytes)
        except ValueError as exc:
            raise Refused(f"config {cdesc.digest} in {layout.path} is not JSON ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(config, dict):
            raise Refused(f"the manifest or config of {ref!r} in {layout.path} is not a JSON object")
        img = parse(name, mdesc, manifest, config)        # media types, rootfs, diff_ids vs layers
        return _stage_and_commit(store, layout, img, mbytes, cbytes, progress)
    finally:
        layout.close()


def _stage_and_commit(store: Store, layout: _Layout, img: Image, mbytes: bytes, cbytes: bytes, progress=None) -> Image:
    with store.working():
        writers = []
        tmp = store.new_temp()
        try:
            unpacked: list[tuple[str, str]] = []
            for i, layer in enumerate(img.layers):
                w = store.writer()
                writers.append(w)
                with layout.open(_blob_rel(layer.blob)) as fh:
                    while chunk := fh.read(_CHUNK):
                        w.write(chunk)
                        if w.size > layer.blob.size:
                            break
                if w.size != layer.blob.size or w.digest != layer.blob.digest:
                    raise Refused(f"layer {i + 1} of {img.name}: the file {layout.path}/{_blob_rel(layer.blob)} has "
                                  f"{'more than ' if w.size > layer.blob.size else ''}{w.size} bytes and digest "
                                  f"{w.digest}; the manifest says {layer.blob.size} bytes, {layer.blob.digest}")
                if store.has_layer(layer.chain_id):
                    # Unpacked already (the same ChainID): its tar must still be the one the config names.
                    with os.fdopen(os.dup(w.fd), "rb") as fh:
                        got = layers.diff_id_of(fh)
                    if got != layer.diff_id:
                        raise Refused(f"layer {i + 1} ({layer.blob.digest[:19]}…) of {img.name}: its uncompressed "
                                      f"tar has sha256 {got}, but the config says its DiffID is {layer.diff_id}")
                    if progress is not None:
                        progress(i + 1, len(img.layers), f"layer {layer.blob.digest[7:19]} (had it already)")
                    continue
                folder = os.path.join(tmp, str(i))
                os.mkdir(folder)
                with os.fdopen(os.dup(w.fd), "rb") as fh:
                    layers.extract(fh, folder, form="overlay", diff_id=layer.diff_id, within=store.within,
                                   label=f"layer {i + 1} ({layer.blob.digest[:19]}…) of {img.name}")
                unpacked.append((folder, layer.chain_id))
                if progress is not None:
                    progress(i + 1, len(img.layers), f"layer {layer.blob.digest[7:19]} ({layer.blob.size} bytes)")
            # Everything passed: name the blobs, put the layers in place, and the image last.
            for w in writers:
                w.commit()
            for desc, data in ((img.config, cbytes), (img.manifest, mbytes)):
                got = store.put_blob(data, desc.media_type)
                if got.digest != desc.digest:
                    raise LabError(f"stored {desc.digest} as {got.digest}: the store is inconsistent")
            for folder, chain in unpacked:
                place_layer(store, folder, chain)
            store.set_ref(img.name, img.manifest)
            return img
        finally:
            for w in writers:
                w.close()
            store.remove_temp(tmp)
