"""What a folder holds, as data to compare before and after (a sentinel host folder that must not
change, a layer unpacked twice): every entry's type and mode, owner, and content (a file's
sha256, a symlink's target, a device's number)."""
from __future__ import annotations

import hashlib
import os
import stat


def snapshot(folder) -> dict:
    """``{relative path: (mode, uid, gid, content)}`` for everything below ``folder``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = st.st_rdev
            else:
                content = None
            out[os.path.relpath(path, folder)] = (st.st_mode, st.st_uid, st.st_gid, content)
    return out
