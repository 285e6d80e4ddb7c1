"""labhelper.images without root: the tar writer's bytes and the three identities (checked
against hashlib here), every hostile archive of R17 refused with its member named and nothing
changed outside, the store unchanged after a refused import (R3), blobs verified on read, and
the index, rmi and gc logic. Stores live in a temporary folder (``within``)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from trees import snapshot
from labhelper import images
from labhelper.errors import LabError, Refused


@pytest.fixture(autouse=True)
def _disposable(monkeypatch, tmp_path):
    monkeypatch.setenv("LABHELPER_DISPOSABLE", "1")
    monkeypatch.setenv("LABHELPER_LEDGER", str(tmp_path / "ledger"))


@pytest.fixture
def lab(tmp_path):
    """A temporary folder that stands for a lab folder, and a sentinel host folder beside it."""
    base = tmp_path / "lab"
    base.mkdir()
    sentinel = tmp_path / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "precious.txt").write_text("the learner's work")
    (sentinel / "sub" / "more.txt").write_text("more")
    os.chmod(sentinel / "precious.txt", 0o640)
    return base, sentinel


def store_of(base) -> images.Store:
    return images.Store(str(base / "store"), within=(str(base),))


def make_tree(root) -> None:
    os.makedirs(root / "etc" / "sub")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "sub" / "deep").write_text("deep\n")
    os.link(root / "etc" / "hosts", root / "etc" / "hosts.hard")
    os.symlink("/etc/hosts", root / "etc" / "abs-link")
    os.chmod(root / "etc" / "hosts", 0o4751)
    os.setxattr(root / "etc" / "sub" / "deep", "user.lab", b"\x00\xff\x01binary")
    for p in (root / "etc" / "sub" / "deep", root / "etc" / "hosts", root / "etc" / "sub", root / "etc", root):
        os.utime(p, (1_700_000_000, 1_700_000_000))


# --- the tar writer and the identities ----------------------------------------------------------------

def write(store, folder, **kw) -> images.LayerBlob:
    with store.writer() as w:
        return images.write_layer(str(folder), w, within=store.within, **kw)


def test_the_tar_writer_is_deterministic_and_its_digest_is_the_diffid(lab):
    base, _ = lab
    make_tree(base / "src")
    store = store_of(base)
    one, two = write(store, base / "src"), write(store, base / "src")
    assert one == two
    data = open(store.blob_path(one.blob.digest), "rb").read()
    assert one.blob.digest == one.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert one.blob.size == len(data) and one.blob.media_type == images.LAYER_MEDIA_TYPE
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    # directories before their contents, sorted component by component
    assert names == ["etc", "etc/abs-link", "etc/hosts", "etc/hosts.hard", "etc/sub", "etc/sub/deep"]
    by = {m.name: m for m in members}
    assert by["etc/hosts.hard"].islnk() and by["etc/hosts.hard"].linkname == "etc/hosts"
    assert by["etc/abs-link"].issym() and by["etc/abs-link"].linkname == "/etc/hosts"
    assert by["etc/hosts"].mode == 0o4751 and by["etc/hosts"].mtime == 1_700_000_000
    assert by["etc/hosts"].uname == "" and by["etc/hosts"].uid == os.getuid()
    assert by["etc/sub/deep"].pax_headers["SCHILY.xattr.user.lab"].encode("utf-8", "surrogateescape") == \
        b"\x00\xff\x01binary"


def test_gzip_layers_have_a_blob_digest_that_is_not_the_diffid(lab):
    base, _ = lab
    make_tree(base / "src")
    store = store_of(base)
    plain = write(store, base / "src")
    packed = write(store, base / "src", compress=True)
    assert packed == write(store, base / "src", compress=True)            # deterministic: mtime 0 in gzip
    data = open(store.blob_path(packed.blob.digest), "rb").read()
    assert packed.blob.media_type == images.LAYER_GZIP_MEDIA_TYPE
    assert packed.blob.digest == "sha256:" + hashlib.sha256(data).hexdigest() != packed.diff_id
    assert packed.diff_id == plain.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert images.diff_id_of(io.BytesIO(data)) == plain.diff_id


def test_epoch_clamps_file_times(lab):
    base, _ = lab
    make_tree(base / "src")
    store = store_of(base)
    layer = write(store, base / "src", epoch=1000)
    with tarfile.open(store.blob_path(layer.blob.digest)) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1000}


def test_chain_ids_follow_the_oci_definition():
    d = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (b"one", b"two", b"three")]
    c2 = "sha256:" + hashlib.sha256(f"{d[0]} {d[1]}".encode()).hexdigest()
    c3 = "sha256:" + hashlib.sha256(f"{c2} {d[2]}".encode()).hexdigest()
    assert images.chain_ids(d) == [d[0], c2, c3] and images.chain_id(d) == c3
    with pytest.raises(Refused, match="not a sha256 digest"):
        images.chain_ids(["sha256:../../etc"])


# --- round trips ---------------------------------------------------------------------------------------

def test_a_tree_round_trips_through_a_layer(lab):
    base, _ = lab
    make_tree(base / "src")
    store = store_of(base)
    layer = write(store, base / "src")
    out = base / "out"
    out.mkdir()
    with store.open_blob(layer.blob.digest) as fh:
        got = images.extract(fh, str(out), form="apply", within=store.within)
    assert (got.files, got.hardlinks, got.symlinks, got.dirs) == (2, 1, 1, 2)
    assert snapshot(base / "src") == snapshot(out)
    assert os.stat(out / "etc" / "hosts").st_ino == os.stat(out / "etc" / "hosts.hard").st_ino
    assert os.getxattr(out / "etc" / "sub" / "deep", "user.lab") == b"\x00\xff\x01binary"
    assert os.lstat(out / "etc").st_mtime == 1_700_000_000


def tar_of(*members) -> bytes:
    """A tar made here with tarfile: (name, type, extra) tuples; extra: data for files, the
    target for links, pax headers as a dict."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o644
            data = None
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            elif kind == tarfile.REGTYPE:
                if isinstance(extra, dict):
                    info.pax_headers = extra
                    extra = b""
                data = io.BytesIO(extra or b"")
                info.size = len(extra or b"")
            elif kind == tarfile.DIRTYPE:
                info.mode = 0o755
            elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, data)
    return buf.getvalue()


def test_whiteouts_are_applied_onto_a_tree(lab):
    base, _ = lab
    dest = base / "root"
    for p in ("etc/gone", "etc/keep", "var/old/a", "var/old/b"):
        os.makedirs(os.path.dirname(dest / p), exist_ok=True)
        (dest / p).write_text(p)
    layer = tar_of(("etc/.wh.gone", tarfile.REGTYPE, b""), ("var/old", tarfile.DIRTYPE, None),
                   ("var/old/.wh..wh..opq", tarfile.REGTYPE, b""), ("var/old/new", tarfile.REGTYPE, b"new"))
    got = images.extract(io.BytesIO(layer), str(dest), form="apply", within=(str(base),))
    assert (got.whiteouts, got.opaque) == (1, 1)
    assert sorted(os.listdir(dest / "etc")) == ["keep"] and os.listdir(dest / "var" / "old") == ["new"]


# --- R17: hostile archives ---------------------------------------------------------------------------

def hostile(sentinel):
    s = str(sentinel)
    return {
        "dotdot": ([("../evil", tarfile.REGTYPE, b"x")], "../evil", "'..'"),
        "dotdot-deep": ([("a/../../evil", tarfile.REGTYPE, b"x")], "a/../../evil", "'..'"),
        "absolute": ([(f"{s}/precious.txt", tarfile.REGTYPE, b"x")], f"{s}/precious.txt", "absolute"),
        "symlink-then-file": ([("l", tarfile.SYMTYPE, s), ("l/precious.txt", tarfile.REGTYPE, b"owned")],
                              "l/precious.txt", "symlink"),
        "symlink-then-dir": ([("l", tarfile.SYMTYPE, s), ("l/new", tarfile.DIRTYPE, None)], "l/new", "symlink"),
        "relative-symlink-then-file": ([("a", tarfile.DIRTYPE, None), ("a/l", tarfile.SYMTYPE, "../../sentinel"),
                                        ("a/l/precious.txt", tarfile.REGTYPE, b"owned")], "a/l/precious.txt",
                                       "symlink"),
        "hardlink-outside-absolute": ([("h", tarfile.LNKTYPE, f"{s}/precious.txt")], "h", "absolute"),
        "hardlink-outside-dotdot": ([("h", tarfile.LNKTYPE, "../sentinel/precious.txt")], "h", "'..'"),
        "hardlink-through-symlink": ([("l", tarfile.SYMTYPE, s), ("h", tarfile.LNKTYPE, "l/precious.txt")], "h",
                                     "not a file this archive made"),
        "hardlink-to-nothing": ([("h", tarfile.LNKTYPE, "missing")], "h", "not a file this archive made"),
        "hardlink-before-target": ([("h", tarfile.LNKTYPE, "f"), ("f", tarfile.REGTYPE, b"x")], "h",
                                   "not a file this archive made"),
        "char-device": ([("dev/mem", tarfile.CHRTYPE, None)], "dev/mem", "device node"),
        "block-device": ([("dev/sda", tarfile.BLKTYPE, None)], "dev/sda", "device node"),
        "fifo": ([("pipe", tarfile.FIFOTYPE, None)], "pipe", "FIFO"),
        "file-then-symlink-over-a-folder": ([("d", tarfile.DIRTYPE, None), ("d/x", tarfile.REGTYPE, b"x"),
                                             ("d", tarfile.SYMTYPE, s), ("d/precious.txt", tarfile.REGTYPE, b"o")],
                                            "d/precious.txt", "symlink"),
        "whiteout-empty": ([(".wh.", tarfile.REGTYPE, b"")], ".wh.", "malformed whiteout"),
        "whiteout-dotdot": ([("a/.wh...", tarfile.REGTYPE, b"")], "a/.wh...", "malformed whiteout"),
        "whiteout-aufs": ([("a/.wh..wh.plnk", tarfile.REGTYPE, b"")], "a/.wh..wh.plnk", "AUFS"),
        "whiteout-dir": ([(".wh.etc", tarfile.DIRTYPE, None)], ".wh.etc", "not a plain file"),
        "whiteout-and-file": ([("f", tarfile.REGTYPE, b"x"), (".wh.f", tarfile.REGTYPE, b"")], ".wh.f",
                              "same layer"),
        "whiteout-through-symlink": ([("l", tarfile.SYMTYPE, s), ("l/.wh.precious.txt", tarfile.REGTYPE, b"")],
                                     "l/.wh.precious.txt", "symlink"),
        "overlay-xattr": ([("f", tarfile.REGTYPE, {"SCHILY.xattr.trusted.overlay.redirect": "/etc"})], "f",
                          "trusted.overlay.redirect"),
        "user-overlay-xattr": ([("f", tarfile.REGTYPE, {"SCHILY.xattr.user.overlay.opaque": "y"})], "f",
                               "user.overlay.opaque"),
        "time-nan": ([("t", tarfile.REGTYPE, {"mtime": "nan"})], "t", "no time"),
        "time-huge": ([("t", tarfile.REGTYPE, {"mtime": "1e400"})], "t", "no time"),
        "owner-huge": ([("o", tarfile.REGTYPE, {"uid": "99999999999"})], "o", "outside what the kernel"),
    }


CASES = sorted(hostile("/s"))


@pytest.mark.parametrize("form", ["overlay", "apply"])
@pytest.mark.parametrize("case", CASES)
def test_every_hostile_archive_is_refused_naming_the_member(lab, case, form):
    base, sentinel = lab
    members, member, why = hostile(sentinel)[case]
    before = snapshot(sentinel)
    dest = base / "dest"
    dest.mkdir()
    with pytest.raises(Refused) as info:
        images.extract(io.BytesIO(tar_of(*members)), str(dest), form=form, within=(str(base),))
    assert repr(member) in str(info.value) and why in str(info.value)
    assert snapshot(sentinel) == before
    assert not os.path.lexists(base / "evil") and not os.path.lexists(base.parent / "evil")


def test_a_symlink_then_a_file_through_it_in_two_archives(lab):
    base, sentinel = lab
    before = snapshot(sentinel)
    dest = base / "root"
    dest.mkdir()
    images.extract(io.BytesIO(tar_of(("l", tarfile.SYMTYPE, str(sentinel)))), str(dest), form="apply",
                   within=(str(base),))
    with pytest.raises(Refused, match=r"member 'l/precious.txt' .*symlink"):
        images.extract(io.BytesIO(tar_of(("l/precious.txt", tarfile.REGTYPE, b"owned"))), str(dest), form="apply",
                       within=(str(base),))
    with pytest.raises(Refused, match=r"member 'l/.wh.precious.txt' .*symlink"):
        images.extract(io.BytesIO(tar_of(("l/.wh.precious.txt", tarfile.REGTYPE, b""))), str(dest), form="apply",
                       within=(str(base),))
    assert snapshot(sentinel) == before
    assert os.readlink(dest / "l") == str(sentinel)          # the symlink itself is only stored


def test_truncated_and_non_tar_input_is_refused(lab):
    base, _ = lab
    whole = tar_of(("a", tarfile.REGTYPE, b"x" * 5000), ("b", tarfile.REGTYPE, b"y" * 100))
    dest = base / "dest"
    for cut, match in ((2000, "truncated"), (512 + 5120, "truncated|damaged"), (100, "not a tar|damaged|truncated")):
        dest.mkdir()
        with pytest.raises(Refused, match=match):
            images.extract(io.BytesIO(whole[:cut]), str(dest), within=(str(base),))
        shutil.rmtree(dest)
    dest.mkdir()
    for junk in (b"", b"this is not a tar archive" * 100, b"\x1f\x8b" + b"not gzip" * 10):
        with pytest.raises(Refused):
            images.extract(io.BytesIO(junk), str(dest), within=(str(base),))


def test_a_layer_whose_diffid_does_not_match_is_refused_before_anything_is_written(lab):
    base, _ = lab
    dest = base / "dest"
    dest.mkdir()
    with pytest.raises(Refused, match="DiffID"):
        images.extract(io.BytesIO(tar_of(("f", tarfile.REGTYPE, b"x"))), str(dest), diff_id="sha256:" + "0" * 64,
                       within=(str(base),))
    assert os.listdir(dest) == []


def test_a_host_folder_is_never_a_layer_source_or_destination(lab):
    base, _ = lab
    store = store_of(base)
    for path in ("/", "/etc", "/proc", "/var/lib/labhelper"):
        with pytest.raises(Refused):
            write(store, path)
        with pytest.raises(Refused):
            images.extract(io.BytesIO(b""), path)


# --- the store -----------------------------------------------------------------------------------

def test_blobs_are_atomic_idempotent_and_verified_on_read(lab):
    base, _ = lab
    store = store_of(base)
    desc = store.put_blob(b"hello")
    assert desc.digest == "sha256:" + hashlib.sha256(b"hello").hexdigest() and desc.size == 5
    assert store.put_blob(b"hello") == desc and store.blobs() == [desc.digest]
    assert store.read_blob(desc.digest) == b"hello"
    # a damaged blob: its name is no longer its digest
    with open(store.blob_path(desc.digest), "wb") as fh:
        fh.write(b"jello")
    with pytest.raises(LabError) as info:
        store.read_blob(desc.digest)
    assert desc.digest in str(info.value) and store.blob_path(desc.digest) in str(info.value)
    assert store.put_blob(b"hello") == desc and store.read_blob(desc.digest) == b"hello"   # repaired
    with pytest.raises(LabError, match="missing"):
        store.read_blob("sha256:" + "1" * 64)
    assert [n for n in os.listdir(base / "store" / "blobs" / "sha256") if n.startswith(".")] == []


def test_the_store_is_an_oci_image_layout(lab):
    base, _ = lab
    store = store_of(base)
    assert json.load(open(base / "store" / "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    index = json.load(open(base / "store" / "index.json"))
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    with pytest.raises(Refused):
        images.Store("/etc/images")
    assert store.refs() == {}


@pytest.mark.parametrize("name", ["", ".", "..", "a/../b", "UPPER", "a b", "a;rm", "x:", "web:1:2", "-x", "a\nb"])
def test_bad_image_names_are_refused(name):
    with pytest.raises(Refused):
        images.check_name(name)


def two_images(base):
    """busybox-like "base" (one layer) and "web:1", "web:2" on top of it, made without overlayfs."""
    store = store_of(base)
    make_tree(base / "src")
    first = images.import_tree(store, str(base / "src"), "base")
    for tag in ("1", "2"):
        (base / f"step{tag}" / "etc").mkdir(parents=True)
        (base / f"step{tag}" / "etc" / "motd").write_text(f"web {tag}\n")
        with store.writer() as w:
            layer = images.write_layer(str(base / f"step{tag}"), w, within=store.within)
        images.commit(store, f"web:{tag}", first, layer, f"echo web {tag} > /etc/motd")
    return store, first


def test_images_share_their_base_layer_and_rmi_keeps_it(lab):
    base, _ = lab
    store, first = two_images(base)
    web1, web2 = images.image(store, "web:1"), images.image(store, "web:2")
    assert web1.layers[0] == web2.layers[0] == first.layers[0]
    assert web1.chain_id == images.chain_id([first.layers[0].diff_id, web1.layers[1].diff_id])
    t = images.tree(store)
    shared = [n for n in t.nodes if n.shared]
    assert [n.chain_id for n in shared] == [first.chain_id] and shared[0].users == 3
    assert "Tags: base (shared by 3 images)" in repr(t) and "Tags: web:1" in repr(t)
    assert f'"{first.chain_id}" -> "{web1.chain_id}"' in t.dot()
    sizes = images.sizes(store)
    assert sizes.with_sharing < sizes.without_sharing and sizes.saved == 2 * sizes.per_layer[first.chain_id]
    assert [h.created_by for h in images.history(store, "web:2")] == ["echo web 2 > /etc/motd",
                                                                       f"import {base / 'src'}"]
    gone = images.rmi(store, "web:1")
    assert gone.names == ("web:1",) and gone.layers == (web1.chain_id,)
    assert set(gone.blobs) == {web1.manifest.digest, web1.config.digest, web1.layers[1].blob.digest}
    assert store.has_layer(first.chain_id) and store.has_blob(first.layers[0].blob.digest)
    images.rmi(store, "base")
    assert store.has_layer(first.chain_id)                 # web:2 still uses it
    assert images.image(store, "web:2").layers[0] == first.layers[0]
    orphan = store.put_blob(b"nobody names me")
    removed = images.gc(store)
    assert orphan.digest in removed.blobs and first.layers[0].blob.digest not in removed.blobs
    images.rmi(store, "web:2")
    assert store.blobs() == [] and os.listdir(base / "store" / "layers") == []
    with pytest.raises(Refused, match="no image named"):
        images.rmi(store, "web:2")


def test_export_then_import_keeps_every_digest(lab):
    base, _ = lab
    store, _ = two_images(base)
    images.export(store, "web:1", str(base / "out"), within=(str(base),))
    index = json.load(open(base / "out" / "index.json"))
    assert index["manifests"][0]["annotations"] == {images.REF_NAME: "web:1"}
    other = images.Store(str(base / "other"), within=(str(base),))
    got = images.import_layout(other, str(base / "out"), "web:1", name="copy")
    assert got.manifest == images.image(store, "web:1").manifest
    assert got.layers == images.image(store, "web:1").layers and other.has_layer(got.chain_id)


def hostile_layout(folder, layers_bytes, gzip_it=False):
    """An OCI image layout written here by hand, with the given layer tars."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers_bytes]
    layer_descs = [{"mediaType": images.LAYER_MEDIA_TYPE, **put(t)} for t in layers_bytes]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdesc = {"mediaType": images.CONFIG_MEDIA_TYPE, **put(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": images.MANIFEST_MEDIA_TYPE, "config": cdesc, "layers": layer_descs}
    mdesc = {"mediaType": images.MANIFEST_MEDIA_TYPE, **put(json.dumps(manifest).encode())}
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**mdesc, "annotations": {images.REF_NAME: "evil"}}]}))
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layer_descs


def test_a_refused_import_leaves_the_store_as_it_was(lab):
    base, sentinel = lab
    store, _ = two_images(base)
    before, sentinel_before = snapshot(base / "store"), snapshot(sentinel)
    good = tar_of(("ok", tarfile.REGTYPE, b"fine"))
    for i, (case, (members, member, _)) in enumerate(sorted(hostile(sentinel).items())):
        folder = base / f"layout{i}"
        hostile_layout(folder, [good, tar_of(*members)])
        with pytest.raises(Refused) as info:
            images.import_layout(store, str(folder), "evil")
        assert repr(member) in str(info.value), case
        assert snapshot(base / "store") == before, case            # R3: no blob, no layer folder, no name
    assert snapshot(sentinel) == sentinel_before


def test_an_import_with_a_wrong_digest_or_size_is_refused(lab):
    base, _ = lab
    store = store_of(base)
    before = snapshot(base / "store")
    descs = hostile_layout(base / "layout", [tar_of(("ok", tarfile.REGTYPE, b"fine"))])
    blob = base / "layout" / "blobs" / "sha256" / descs[0]["digest"].split(":")[1]
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    with pytest.raises(Refused, match="the manifest says"):
        images.import_layout(store, str(base / "layout"), "evil")
    blob.write_bytes(blob.read_bytes() + b"more")
    with pytest.raises(Refused, match="more than"):
        images.import_layout(store, str(base / "layout"), "evil")
    blob.unlink()
    os.symlink("/etc/passwd", blob)
    with pytest.raises(Refused, match="symlink"):
        images.import_layout(store, str(base / "layout"), "evil")
    with pytest.raises(Refused, match="names 0 manifests"):
        images.import_layout(store, str(base / "layout"), "other")
    assert snapshot(base / "store") == before


def test_image_settings_are_checked_and_env_entries_replace_their_namesakes():
    import importlib
    from labhelper.errors import Refused
    image_mod = importlib.import_module("labhelper.images.image")
    for bad in ({"Cmd": "sh -c x"}, {"Env": ["NOEQUALS"]}, {"WorkingDir": "relative"}, {"Volumes": {}},
                {"Entrypoint": [1]}):
        with pytest.raises(Refused):
            image_mod._settings(bad)
    assert image_mod._settings({"Env": ["A=1"], "WorkingDir": "/srv"}) == {"Env": ["A=1"], "WorkingDir": "/srv"}


def test_a_layer_that_inflates_past_the_limit_is_refused(lab, monkeypatch):
    import gzip as gz
    from labhelper.images import layers as layers_mod
    base, _ = lab
    monkeypatch.setattr(layers_mod, "MAX_LAYER_BYTES", 64 << 10)
    big = tar_of(("f", tarfile.REGTYPE, b"\0" * (256 << 10)))
    dest = base / "dest"
    dest.mkdir()
    with pytest.raises(Refused, match="inflates to more than"):
        images.extract(io.BytesIO(gz.compress(big, mtime=0)), str(dest), within=(str(base),))
    with pytest.raises(Refused, match="past"):
        images.extract(io.BytesIO(big), str(dest), within=(str(base),))
    with pytest.raises(Refused, match="inflates to more than"):
        images.diff_id_of(io.BytesIO(gz.compress(big, mtime=0)))
    assert os.listdir(dest) == [] or not (dest / "f").exists() or (dest / "f").stat().st_size < (256 << 10)


def test_a_sparse_member_is_refused_before_its_holes_are_written(lab):
    # 1 kB of archive that says "64 MiB of zeros": tarfile would write every one of them out.
    base, sentinel = lab
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("s")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s",
                            "GNU.sparse.realsize": str(64 << 20)}
        sparse_map = b"1\n0\n0\n".ljust(512, b"\0")        # one region, at 0, of 0 bytes: the rest is a hole
        info.size = len(sparse_map)
        tar.addfile(info, io.BytesIO(sparse_map))
    dest = base / "dest"
    dest.mkdir()
    with pytest.raises(Refused, match="'s' is a sparse file"):
        images.extract(io.BytesIO(buf.getvalue()), str(dest), within=(str(base),))
    assert os.listdir(dest) == []
    with pytest.raises(Refused, match="damaged header"):      # a sparse map that is not there
        bad = tar_of(("t", tarfile.REGTYPE, b"x"), ("s", tarfile.REGTYPE, {"GNU.sparse.major": "1",
                     "GNU.sparse.minor": "0", "GNU.sparse.name": "s", "GNU.sparse.realsize": "1"}))
        images.extract(io.BytesIO(bad), str(dest), within=(str(base),))


def test_a_damaged_image_can_be_removed_and_does_not_stop_gc(lab):
    base, _ = lab
    store = store_of(base)
    src = base / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "a").write_text("a")
    images.import_tree(store, str(src), "a:1", epoch=1)
    (src / "etc" / "b").write_text("b")
    images.import_tree(store, str(src), "b:1", epoch=1)
    config = images.image(store, "a:1").config.digest
    os.chmod(store.blob_path(config), 0o644)
    with open(store.blob_path(config), "ab") as fh:         # damage a:1's config
        fh.write(b" ")
    with pytest.raises(LabError):
        images.image(store, "a:1")
    images.gc(store)                                         # not stopped by the damaged one
    removed = images.rmi(store, "b:1")                       # b:1 goes whole, a:1 still listed
    assert removed.names == ("b:1",) and [n for n in store.refs()] == ["a:1"]
    assert images.rmi(store, "a:1").names == ("a:1",) and store.refs() == {}
    with pytest.raises(Refused, match="no image named"):
        images.rmi(store, "a:1")
