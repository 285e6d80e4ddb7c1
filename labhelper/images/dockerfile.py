"""``docker build`` for a Dockerfile subset: FROM, RUN, COPY, ENV, WORKDIR, CMD (chapter 07).

Each instruction is one step of chapter 06's machinery, as in Docker's classic builder:

* ``FROM name``            the base image (``scratch``: none);
* ``RUN command``          a build step in an overlay over the image so far (images.build): its
                           upper folder becomes a layer; it sees the ENV and WORKDIR set above it;
* ``COPY src... dest``     files of the build context, as a layer of their own (a folder laid out
                           at ``dest``, tarred): sources are looked up below the context only, never
                           through ``..`` or a symlink that leaves it;
* ``ENV K=V``, ``WORKDIR /path``, ``CMD [...]``   settings in the config: a history entry, no layer.

Steps in between are images of their own under temporary names, removed at the end (their layers
stay, shared with the result), so that a failed build leaves no name behind.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import uuid
from dataclasses import dataclass

from .. import syscalls
from ..errors import LabError, Refused
from . import layers
from .image import Image, build as build_step, commit, image, rmi
from .store import Store, check_name

__all__ = ["Instruction", "parse", "build_file"]

KNOWN = ("FROM", "RUN", "COPY", "ENV", "WORKDIR", "CMD")
MAX_DOCKERFILE = 1 << 20


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def __repr__(self) -> str:
        return f"{self.line}: {self.keyword} {self.args}"


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, checked: known keywords only, FROM first."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise Refused(f"line {start}: {keyword} is not in the lab's Dockerfile subset ({', '.join(KNOWN)})")
        if not args.strip():
            raise Refused(f"line {start}: {keyword} needs arguments")
        out.append(Instruction(start, keyword, args.strip()))
    if pending:
        raise Refused("the Dockerfile ends in the middle of a continued line")
    if not out or out[0].keyword != "FROM":
        raise Refused("a Dockerfile starts with FROM (an image of the store, or scratch)")
    if any(i.keyword == "FROM" for i in out[1:]):
        raise Refused(f"line {[i for i in out[1:] if i.keyword == 'FROM'][0].line}: one FROM only (no multi-stage "
                      "builds in the lab's subset)")
    return out


def _argv(args: str, line: int) -> list[str]:
    """The exec form (a JSON list) as it is; the shell form as ["/bin/sh", "-c", text]."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except ValueError:
            raise Refused(f"line {line}: {args!r} is not a JSON list of strings") from None
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise Refused(f"line {line}: the exec form is a non-empty JSON list of strings")
        return value
    return ["/bin/sh", "-c", args]


def _env(args: str, line: int) -> list[str]:
    if "=" not in args.split()[0]:
        key, _, value = args.partition(" ")          # the old form: ENV KEY value
        pairs = [(key, value.strip())]
    else:
        pairs = [tuple(word.split("=", 1)) for word in shlex.split(args)]
    for key, _ in pairs:
        if not key or not (key[0].isalpha() or key[0] == "_") or not all(c.isalnum() or c == "_" for c in key):
            raise Refused(f"line {line}: {key!r} is not an environment variable name")
    return [f"{k}={v}" for k, v in pairs]


def _copy_layer(store: Store, context_fd: int, sources: list[str], dest: str, workdir: str, line: int) -> str:
    """A folder in the store's tmp/ holding ``sources`` of the context laid out at ``dest``."""
    # A destination ending in "/" (or ".", the working directory) is a folder to copy into, as
    # is any destination of several sources; else a file's new name.
    into_folder = dest.endswith("/") or os.path.basename(dest) in (".", "..") or len(sources) > 1
    dest = os.path.normpath(dest if dest.startswith("/") else os.path.join(workdir, dest))
    tmp = store.new_temp()
    root = os.path.join(tmp, "layer")
    target = os.path.join(root, dest.lstrip("/"))
    for src in sources:
        rel = os.path.normpath(src).lstrip("/")
        if rel.startswith(".."):
            raise Refused(f"line {line}: COPY {src}: outside the build context")
        try:
            fd = syscalls.openat2(context_fd, rel or ".", os.O_RDONLY | os.O_NOFOLLOW,
                                  syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            raise Refused(f"line {line}: COPY {src}: not found below the build context, or through a symlink "
                          f"({getattr(exc, 'errno_name', exc)})") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                where = target if not into_folder else os.path.join(target, os.path.basename(rel) if rel else "")
                shutil.copytree(f"/proc/self/fd/{fd}", where, symlinks=True, dirs_exist_ok=True)
            elif stat.S_ISREG(st.st_mode):
                where = os.path.join(target, os.path.basename(rel)) if (into_folder or os.path.isdir(target)) \
                    else target
                os.makedirs(os.path.dirname(where), exist_ok=True)
                with open(f"/proc/self/fd/{fd}", "rb") as fh, open(where, "wb") as out:
                    shutil.copyfileobj(fh, out)
                os.chmod(where, stat.S_IMODE(st.st_mode))
            else:
                raise Refused(f"line {line}: COPY {src}: only files and folders are copied")
        finally:
            os.close(fd)
    return tmp


def build_file(store: Store, dockerfile: str, tag: str, context: str | None = None, *, owner: str | None = None,
               epoch: int | None = None) -> Image:
    """``docker build -f DOCKERFILE -t TAG CONTEXT``: the image ``tag`` from the Dockerfile at
    ``dockerfile``, with COPY sources read from the folder ``context`` (default: the
    Dockerfile's folder)."""
    check_name(tag)
    with open(dockerfile, "rb") as fh:
        data = fh.read(MAX_DOCKERFILE + 1)
    if len(data) > MAX_DOCKERFILE:
        raise Refused(f"{dockerfile} is over {MAX_DOCKERFILE} bytes: not a Dockerfile the lab reads")
    steps = parse(data.decode("utf-8", errors="strict"))
    context = os.path.abspath(context or os.path.dirname(os.path.abspath(dockerfile)))
    context_fd = os.open(context, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    base_name = steps[0].args.split()[0]
    parent: Image | None = None if base_name == "scratch" else image(store, base_name)
    prefix = f"tmp-build-{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    workdir = "/"
    try:
        for n, step in enumerate(steps[1:], 1):
            name = tag if n == len(steps) - 1 else f"{prefix}-{n}"
            shown = f"{step.keyword} {step.args}"
            if step.keyword == "RUN":
                if parent is None:
                    raise Refused(f"line {step.line}: RUN needs a base with a shell (FROM scratch has none)")
                parent = build_step(store, parent.name, name, run=_argv(step.args, step.line), created_by=shown,
                                    owner=owner, epoch=epoch)
            elif step.keyword == "COPY":
                words = shlex.split(step.args)
                if len(words) < 2:
                    raise Refused(f"line {step.line}: COPY SOURCE... DESTINATION")
                tmp = _copy_layer(store, context_fd, words[:-1], words[-1], workdir, step.line)
                try:
                    with store.writer() as w:
                        blob = layers.write_layer(os.path.join(tmp, "layer"), w, epoch=epoch, within=store.within)
                    parent = commit(store, name, parent, blob, shown, epoch=epoch)
                finally:
                    store.remove_temp(tmp)
            else:
                if step.keyword == "ENV":
                    settings = {"Env": _env(step.args, step.line)}
                elif step.keyword == "WORKDIR":
                    workdir = os.path.normpath(os.path.join(workdir, step.args))
                    settings = {"WorkingDir": workdir}
                else:
                    settings = {"Cmd": _argv(step.args, step.line)}
                parent = commit(store, name, parent, None, shown, epoch=epoch, settings=settings)
            if name != tag:
                made.append(name)
        if len(steps) == 1:
            if parent is None:
                raise Refused("FROM scratch alone makes an image of nothing")
            parent = commit(store, tag, parent, None, f"FROM {base_name}", epoch=epoch)
        return parent
    finally:
        os.close(context_fd)
        for name in made:
            try:
                rmi(store, name)
            except LabError:
                pass

