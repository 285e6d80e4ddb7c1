"""Chapter 06 exercises: layers made by hand and by image builds, checked by mounting them.

A check never trusts a listing alone: it lays the learner's folder or image over what it should
change, mounts the overlay read-only, and looks at what the merged view shows.
"""
from __future__ import annotations

import os

from .. import marks, mounts, overlay
from ..errors import LabError
from . import Exercise, right, wrong

__all__ = ["q1"]


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
