"""The ledger: an on-disk record of every kernel object labhelper creates.

Kernel objects outlive the process that made them: a mount, a cgroup, a network namespace stay
after a notebook kernel is killed (a Jupyter restart is SIGKILL). So each creating step writes a
record *before* it makes the object (write-ahead: a kill at any instruction leaves at worst a
record whose object does not exist, which cleanup forgets), and the record is removed after the
object is gone. ``labhelper cleanup`` reads the ledger to know what is ours, who made it, and
whether its maker still runs.

The safety guard lives here, at the one place every persistent change passes: nothing
persistent is made without a record, and no record is written, and nothing removed, on a
machine not declared disposable (:meth:`Ledger.guard`). A concept module that makes an object
does it inside :meth:`Ledger.creating`, and removes one inside :meth:`Ledger.removing`; it never
has to remember the guard itself.

Layout: one JSON file per object under /run/labhelper/ledger (a tmpfs: it is empty after a
reboot, exactly like the kernel objects it describes). Each file is written to a temporary name
and renamed into place, so a reader sees a whole record or none, even after SIGKILL mid-write.

The test-only fault hook lives here too: ``fault_point(step)`` after each setup step lets the
tests kill the creator at exactly that point (R1 in docs/reliability.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import host, marks
from .errors import FaultInjected, LedgerError
from .procfs import start_time
from .process import is_same_process, lifetime_pid

__all__ = ["Record", "Ledger", "ledger", "guard", "default_owner", "fault_point", "LEDGER_DIR"]

LEDGER_DIR = Path(os.environ.get("LABHELPER_LEDGER", "/run/labhelper/ledger"))
_KIND_NAMES = tuple(k.name for k in marks.KINDS)   # what a record may be (marks.KINDS)


def guard(action: str) -> None:
    """The safety guard: raise NotDisposableError unless this machine is declared disposable
    (host.guard says how to declare it). The ledger's own writes call it; so do the few
    primitives that change kernel state without a record of their own (e.g. mounts.remove_tree).
    """
    host.guard(action)


def default_owner() -> str:
    """Who owns what this process creates: LABHELPER_OWNER (each notebook sets it) or "lab"."""
    return os.environ.get("LABHELPER_OWNER", "lab")


@dataclass(frozen=True)
class Record:
    """One kernel object of ours. (``pid``, ``pid_start``) name its creator, even after pid reuse."""
    kind: str
    name: str
    owner: str
    pid: int
    pid_start: int | None
    created: float
    data: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.key_of(self.kind, self.name)

    @staticmethod
    def key_of(kind: str, name: str) -> str:
        """The record's file name. Hashed, so '/', '..' or very long names are harmless."""
        digest = hashlib.sha256(f"{kind}\0{name}".encode()).hexdigest()[:20]
        return f"{kind}.{digest}.json"

    def creator_alive(self, proc: str = "/proc") -> bool:
        """Is the process that created this still running? Not just "is the pid in use":
        the start time must match too, or the pid now belongs to someone else (R7)."""
        return is_same_process(self.pid, self.pid_start, proc)

    def __repr__(self) -> str:
        return f"Record({self.kind} {self.name!r} owner={self.owner!r} pid={self.pid})"


class Ledger:
    """The records under ``root``. Every method is safe to call when the folder does not exist."""

    def __init__(self, root: Path | str = LEDGER_DIR):
        self.root = Path(root)
        self.problems: list[str] = []  # unreadable files found by the last records() call

    guard = staticmethod(guard)

    def add(self, kind: str, name: str, owner: str | None = None, data: dict | None = None,
            pid: int | None = None) -> Record:
        """Record that ``kind``/``name`` is about to exist (or exists). Refused, with nothing
        written, on a machine not declared disposable. Prefer :meth:`creating`."""
        if kind not in _KIND_NAMES:
            raise LedgerError(f"unknown kind {kind!r}; known kinds: {', '.join(_KIND_NAMES)}")
        self.guard(f"create {kind} {name!r}")
        pid = lifetime_pid() if pid is None else pid
        record = Record(kind, name, owner or default_owner(), pid, start_time(pid), time.time(), dict(data or {}))
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.root / f".{record.key}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(asdict(record), fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / record.key)  # atomic: whole record or none
        except OSError as exc:
            raise LedgerError(f"cannot write the ledger at {self.root}: {exc}",
                              hint="labhelper needs root to write /run/labhelper") from exc
        return record

    def remove(self, kind: str, name: str) -> None:
        """Forget ``kind``/``name`` (idempotent). Call it right after the object is gone."""
        self.guard(f"remove {kind} {name!r}")
        self._unlink(Record.key_of(kind, name))

    def forget_file(self, filename: str) -> None:
        """Remove one file of the ledger by its name: a record whose object is gone, or a
        temporary file a killed writer left (idempotent)."""
        if "/" in filename or filename in ("", ".", ".."):
            raise LedgerError(f"{filename!r} is not a file name of the ledger")
        self.guard(f"forget the ledger file {filename!r}")
        self._unlink(filename)

    def _unlink(self, filename: str) -> None:
        try:
            os.unlink(self.root / filename)
        except FileNotFoundError:
            pass

    @contextlib.contextmanager
    def creating(self, kind: str, name: str, owner: str | None = None, data: dict | None = None):
        """``with ledger.creating("mount", path): <make it>``: the guard, then the record, then
        the block that makes the object. If the block fails, the record is forgotten again (the
        block undoes its own steps first: a failed create leaves nothing)."""
        record = self.add(kind, name, owner, data)
        try:
            yield record
        except BaseException:
            self._unlink(record.key)
            raise

    @contextlib.contextmanager
    def removing(self, kind: str, name: str):
        """``with ledger.removing("mount", path): <remove it>``: the guard first (nothing is
        touched on a machine not declared disposable), then the block; once it succeeded, the
        record is forgotten. A block that fails leaves the record, so the next cleanup tries again."""
        self.guard(f"remove {kind} {name!r}")
        yield
        self._unlink(Record.key_of(kind, name))

    def records(self) -> list[Record]:
        """Every readable record, oldest first. A corrupt file is never deleted or fatal: it is
        listed in ``self.problems`` so the learner can look at it."""
        self.problems = []
        found = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        except PermissionError:
            # The ledger folder is root's (mode 0700). Without it the census still sees every
            # object in the kernel, only not who made it.
            self.problems.append(f"the ledger at {self.root} is readable by root only: objects are listed "
                                 "without their owners; run `sudo labhelper census` (or `sudo labhelper "
                                 "cleanup`) to use it")
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger at {self.root}: {exc}") from exc
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                with open(entry.path) as fh:
                    raw = json.load(fh)
                record = _record_from(raw)
                if record.key != entry.name:
                    raise ValueError("file name does not match its record")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.problems.append(f"{entry.path}: unreadable ledger record ({exc}); left in place: "
                                     f"inspect it, then `sudo rm {entry.path}`")
                continue
            found.append(record)
        return sorted(found, key=lambda r: r.created)

    def stale_temp_files(self, age: float = 60.0) -> list[str]:
        """Names of temporary files (``.KEY.PID.tmp``) older than ``age`` seconds.

        add() writes a temporary file, then renames it into place; a writer killed in between
        leaves the temporary file behind. A write takes milliseconds, so one older than a
        minute is garbage, while a fresh one may be a write in flight and must stay.
        """
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        now = time.time()
        stale = []
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if now - st.st_mtime > age:
                stale.append(entry.name)
        return sorted(stale)

    def find(self, kind: str, name: str) -> Record | None:
        return next((r for r in self.records() if r.kind == kind and r.name == name), None)


def _record_from(raw) -> Record:
    """A Record from parsed JSON, checking every field's type: a record that parses but says
    ``"pid": "12"`` or ``"data": []`` must not reach the census (it would crash it there)."""
    if not isinstance(raw, dict):
        raise TypeError(f"a record is a JSON object, not {type(raw).__name__}")
    fields = {k: raw[k] for k in ("kind", "name", "owner", "pid", "pid_start", "created")}
    data = raw.get("data", {})

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)  # JSON true is a Python int too
    if fields["kind"] not in _KIND_NAMES:
        raise ValueError(f"unknown kind {fields['kind']!r}")
    if not isinstance(fields["name"], str) or not isinstance(fields["owner"], str):
        raise TypeError("name and owner must be strings")
    if not is_int(fields["pid"]) or not (fields["pid_start"] is None or is_int(fields["pid_start"])):
        raise TypeError("pid must be an integer, pid_start an integer or null")
    if not (is_int(fields["created"]) or isinstance(fields["created"], float)):
        raise TypeError("created must be a number")
    if not isinstance(data, dict):
        raise TypeError("data must be a JSON object")
    if fields["kind"] == "process" and not (fields["name"].isascii() and fields["name"].isdigit()):
        raise ValueError(f"a process record is named by its pid, not {fields['name']!r}")
    return Record(**fields, data=data)


def ledger() -> Ledger:
    """The ledger at its standard place (LABHELPER_LEDGER overrides it, for tests)."""
    return Ledger(os.environ.get("LABHELPER_LEDGER", LEDGER_DIR))


def fault_point(step: str) -> None:
    """Test-only: if LABHELPER_FAULT is ``<step>:<action>``, fire it now.

    Actions: ``sigkill`` and ``sigint`` signal the whole process group, as a Jupyter restart or
    interrupt does; ``raise`` raises FaultInjected. Every setup step calls this right after it
    has created its object and written its record, so tests can stop a creator at each point.
    """
    spec = os.environ.get("LABHELPER_FAULT")
    if not spec:
        return
    want, _, action = spec.partition(":")
    if want != step:
        return
    if action == "sigkill":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    elif action == "sigint":
        os.killpg(os.getpgrp(), signal.SIGINT)
        time.sleep(1)  # let the KeyboardInterrupt arrive here, as it would mid-step
    elif action == "raise":
        raise FaultInjected(step)
    else:
        raise ValueError(f"LABHELPER_FAULT={spec!r}: the action must be sigkill, sigint or raise")
