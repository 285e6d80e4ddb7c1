"""Chapter 06 exercises: layers made by hand and by image builds, checked by mounting them.

A check never trusts a listing alone: it lays the learner's folder or image over what it should
change, mounts the overlay read-only, and looks at what the merged view shows.
"""
from __future__ import annotations

import os

from .. import images, marks, mounts, overlay
from ..errors import LabError
from . import Exercise, right, wrong

__all__ = ["q1", "q2", "q3", "prepare_q1"]


# --- q1: a whiteout by hand -------------------------------------------------------------------------------

def _merged_view(upper: str, lower: str) -> dict[str, str | None]:
    """What a read-only overlay of ``upper`` over ``lower`` shows in etc/: name -> content."""
    target = f"/run/labhelper/ch06-check-{os.getpid()}"
    with overlay.mount(target, [upper, lower], owner="ch06"):
        seen = {}
        etc = os.path.join(target, "etc")
        for name in sorted(os.listdir(etc)) if os.path.isdir(etc) else []:
            path = os.path.join(etc, name)
            seen[name] = open(path).read() if os.path.isfile(path) else None
        return seen


def _check_whiteout(answer, lower: str | None = None) -> object:
    lower = lower or EX1_LOWER
    if not isinstance(answer, str):
        return wrong("give the path of your upper folder, as a string.")
    try:
        upper = marks.lab_path(answer, "use as your upper folder")
    except LabError as exc:
        return wrong(exc.message)
    if not os.path.isdir(upper):
        return wrong(f"{upper} is not a folder (yet).")
    if marks.is_under(upper, lower) or marks.is_under(lower, upper):
        return wrong("the upper folder must be beside the lower one, not inside it.")
    try:
        seen = _merged_view(upper, lower)
    except LabError as exc:
        return wrong(f"the overlay of your folder over {lower} could not be mounted: {exc.message}")
    if seen.get("keep") != KEEP:
        return wrong("etc/keep must still show, unchanged: your layer hides or replaces it.")
    if "secret" in seen:
        if seen["secret"] == SECRET:
            return wrong("etc/secret still shows: nothing in your layer hides it.")
        return wrong("etc/secret still shows, with other content: a file of the same name *replaces* the lower "
                     "one; to hide it, the upper layer needs a whiteout.")
    extra = sorted(set(seen) - {"keep"})
    if extra:
        return wrong(f"your layer adds {', '.join('etc/' + n for n in extra)}: hide etc/secret and change nothing else.")
    return right("mounted over the lower folder, your layer hides etc/secret and keeps etc/keep: a whiteout, as "
                 "the kernel makes on rm.")


EX1_LOWER = "/var/lib/labhelper/ch06/ex1/lower"
SECRET, KEEP = "a password\n", "keep me\n"


def prepare_q1(base: str = "/var/lib/labhelper/ch06/ex1", owner: str = "ch06") -> str:
    """Make exercise 1's lower folder (etc/secret and etc/keep) in a recorded lab folder of
    chapter 06's; returns the lower folder's path."""
    mounts.make_dir(base, owner=owner)
    lower = os.path.join(base, "lower")
    os.makedirs(os.path.join(lower, "etc"), exist_ok=True)
    for name, text in (("secret", SECRET), ("keep", KEEP)):
        with open(os.path.join(lower, "etc", name), "w") as fh:
            fh.write(text)
    return lower


q1 = Exercise(
    "06.1",
    f"`{EX1_LOWER}` holds `etc/secret` and `etc/keep`. Make an upper folder (say "
    "`/var/lib/labhelper/ch06/ex1/upper`) that, laid over it, hides `etc/secret` and changes nothing else, "
    "without touching the lower folder; then `ch06.q1.check(upper)`. The check mounts your folder over the lower one.",
    _check_whiteout,
    "Deleting a lower file through an overlay leaves a whiteout in upper: a character device with device number "
    "0/0, of the same name. `os.mknod` makes one (root may), and so does `overlay.make_whiteout(dir_fd, name)`.",
    "`os.makedirs(upper + '/etc')`, then `os.mknod(upper + '/etc/secret', stat.S_IFCHR, os.makedev(0, 0))`. "
    "A plain file named `secret` would replace the lower one instead of hiding it.",
)


# --- q2: which layer introduced a file ------------------------------------------------------------------

def _introduced_by(store, name: str, path: str) -> str | None:
    """The DiffID of the lowest layer of ``name`` that has ``path`` as a file (not a whiteout)."""
    img = images.image(store, name)
    images.ensure_layers(store, img)
    for layer in img.layers:
        kind = overlay.listing(store.layer_dir(layer.chain_id)).get(path.strip("/"))
        if kind not in (None, "dir", "opaque", "whiteout"):
            return layer.diff_id
    return None


def _check_layer(answer, store=None, name: str = "web:2", path: str = "/www/index.html") -> object:
    if store is None:
        return wrong("pass the store too: ch06.q2.check(answer, store)")
    if not isinstance(answer, str) or not answer.startswith("sha256:"):
        return wrong("answer with a DiffID: 'sha256:' and 64 hex digits (an Image's layers have .diff_id).")
    try:
        img = images.image(store, name)
    except LabError as exc:
        return wrong(exc.message)
    want = _introduced_by(store, name, path)
    if want is None:
        return wrong(f"{name} has no {path}: build the chapter's images first.")
    if answer == want:
        return right(f"that layer is the first to hold {path}: everything above only inherits it.")
    if answer in img.diff_ids:
        above = img.diff_ids.index(answer) > img.diff_ids.index(want)
        return wrong(f"that is a layer of {name}, but {'a later' if above else 'an earlier'} one: "
                     f"{'it only inherits' if above else 'it does not have'} {path}.")
    if any(answer == layer.chain_id for layer in img.layers):
        return wrong("that is a ChainID (the stack up to a layer); the question asks for the layer's own DiffID.")
    if any(answer == layer.blob.digest for layer in img.layers):
        return wrong("that is a blob digest; for an uncompressed layer it equals the DiffID, but check which layer.")
    return wrong(f"that digest is not one of {name}'s layers.")


q2 = Exercise(
    "06.2",
    "Which layer of `web:2` introduced `/www/index.html`? Answer with that layer's DiffID: "
    "`ch06.q2.check(diff_id, store)`.",
    _check_layer,
    "An image's layers, bottom first: `images.image(store, 'web:2').layers`; each is unpacked in "
    "`store.layer_dir(layer.chain_id)`, and `overlay.listing(folder)` lists what it holds. `docker history` "
    "(`images.history`) says which step made each layer.",
    "`next(l.diff_id for l in images.image(store, 'web:2').layers if "
    "'www/index.html' in overlay.listing(store.layer_dir(l.chain_id)))`: the first layer, from the bottom, that "
    "has the file.",
)


# --- q3: a layer that deletes a file -----------------------------------------------------------------------

def _check_delete(store=None, name: str = "slim", base: str = "busybox", path: str = "/bin/vi") -> object:
    if store is None:
        return wrong("pass the store: ch06.q3.check(store)")
    try:
        img, below = images.image(store, name), images.image(store, base)
    except LabError as exc:
        return wrong(exc.message)
    if img.diff_ids[:-1] != below.diff_ids or len(img.layers) != len(below.layers) + 1:
        return wrong(f"{name} must be {base} plus one layer of its own.")
    changes = images.diff(store, name)
    deleted = [c.path for c in changes if c.kind == "D"]
    if path not in deleted:
        return wrong(f"the top layer of {name} does not delete {path}: its changes are {changes}.")
    others = [c for c in changes if c.path != path and not (c.kind == "C" and path.startswith(c.path + "/"))]
    if others:
        return wrong(f"the layer should delete {path} and change nothing else; it also has {others}.")
    if not overlay.listing(store.layer_dir(below.layers[-1].chain_id)).get(path.strip("/")):
        return wrong(f"{base} no longer has {path}: its layer must stay as it was.")
    return right(f"{name}'s layer is one whiteout: {path} is gone from {name}, and still in {base}, which it shares.")


q3 = Exercise(
    "06.3",
    "Build an image `slim` on `busybox` whose one layer deletes `/bin/vi` and changes nothing else; then "
    "`ch06.q3.check(store)`.",
    _check_delete,
    "A build step runs a command in an overlay over the base; what it deletes from the base becomes a whiteout "
    "in the new layer: `images.build(store, base, name, run=[...])`.",
    "`images.build(store, 'busybox', 'slim', run=['/bin/rm', '/bin/vi'])`. (Deleting a file of a lower layer "
    "frees no space: the base layer still holds it. That is why Dockerfiles delete in the same RUN step that "
    "made the file.)",
)
