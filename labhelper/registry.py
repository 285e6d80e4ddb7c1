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

Layout: one JSON file per object under /run/labhelper/ledger (usually a tmpfs: it is empty
after a reboot, exactly like the kernel objects it describes). Each file is written with no name
and then linked into place, so a reader sees a whole record or none, even after SIGKILL
mid-write. One kind keeps its record on the object instead (:func:`put_on`): a cgroup below the
lab's parent is found by where it is, so its record rides on the cgroup folder as an extended
attribute and goes with it; the census reads it there (cgroups.find_cgroups).

The test-only fault hook lives here too: ``fault_point(step)`` after each setup step lets the
tests kill the creator at exactly that point (R1 in docs/reliability.md).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import host, marks, procfs, syscalls
from .errors import FaultInjected, LabError, LedgerError, Refused
from .procfs import start_time
from .process import is_same_process, lifetime_pid

__all__ = ["Record", "Ledger", "ledger", "guard", "default_owner", "fault_point", "LEDGER_DIR", "new_record",
           "put_on", "read_from", "ON_OBJECT", "as_mount_source", "from_mount_source"]

_DURABLE_KINDS = ("dir",)      # objects that survive a reboot: their records are fsync'ed
LEDGER_DIR = Path(os.environ.get("LABHELPER_LEDGER", "/run/labhelper/ledger"))
_KIND_NAMES = tuple(k.name for k in marks.KINDS)   # what a record may be (marks.KINDS)
# Where a record is kept on the object itself (a cgroup folder): an extended attribute in the
# trusted namespace, which only root (CAP_SYS_ADMIN) may read or write.
ON_OBJECT = "trusted.labhelper.record"


def guard(action: str) -> None:
    """The safety guard: raise NotDisposableError unless this machine is declared disposable
    (host.guard says how to declare it). The ledger's own writes call it; so do the few
    primitives that change kernel state without a record of their own (e.g. mounts.remove_tree).
    """
    host.guard(action)


_own_start: dict[int, int | None] = {}


def _start_time(pid: int) -> int | None:
    # A process's start time never changes, and this process's pid names it as long as it runs:
    # read /proc/self/stat once, not at every record (a notebook writes many).
    if pid != os.getpid():
        return start_time(pid)
    if pid not in _own_start:
        _own_start.clear()                      # a forked child has another pid: drop the parent's
        _own_start[pid] = start_time(pid)
    return _own_start[pid]


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


# A record is a few hundred bytes of JSON. Anything larger, or not a plain file, is not a record
# of ours: it is read no further (a FIFO would block the census, /dev/zero would fill the memory).
MAX_RECORD = 64 * 1024
MAX_DEPTH = 8          # a record nests two levels deep; deeper JSON is refused before parsing
QUARANTINE = "quarantine"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Ledger:
    """The records under ``root``. Every method is safe to call when the folder does not exist.

    The folder is opened without following a symlink anywhere below its lab folder, and every
    file in it by name relative to that open folder (openat): a symlink in place of the ledger,
    or of a record, is never followed. A mount over the folder (which would hide the records
    below it) is refused for writing and reported when reading.
    """

    def __init__(self, root: Path | str = LEDGER_DIR):
        self.root = Path(root)
        self.problems: list[str] = []            # what the last records() call could not use
        self.bad: list[tuple[str, str]] = []     # (file name, why) of files that are not records

    guard = staticmethod(guard)

    # --- the folder ----------------------------------------------------------------------------

    def _allowed(self) -> tuple[str, ...]:
        # The standard ledger lies below a lab folder; a test's ledger in a temporary folder is
        # walked from that temporary folder.
        root = str(self.root)
        return marks.LAB_DIRS if marks.lab_dir_of(root) else (os.path.dirname(root),)

    @contextlib.contextmanager
    def _folder(self, create: bool = False):
        """The ledger folder, open (an fd), checked not to be covered by another mount."""
        try:
            # One call where the kernel has openat2 and no symlink is on the way (the common
            # case); else the walk, which makes what is missing and names a symlink in the way.
            fd = syscalls.openat2(-100, str(self.root), marks.DIR_FLAGS,
                                  syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS)
        except OSError:
            fd = marks.open_lab_dir(str(self.root), self._allowed(), create=create, mode=0o700)
        try:
            parent = os.open("..", marks.DIR_FLAGS, dir_fd=fd)
            try:
                here, above = procfs.mount_id(fd), procfs.mount_id(parent)
            finally:
                os.close(parent)
            if here != above and marks.lab_dir_of(str(self.root)) and str(self.root) not in marks.LAB_DIRS:
                raise LedgerError(f"the ledger folder {self.root} is covered by another mount (id {here}): "
                                  "records below it are hidden, and labhelper did not mount it",
                                  hint=f"look at it with `findmnt {self.root}`; unmount it yourself if it "
                                       "is a leftover, then run `labhelper cleanup`")
            yield fd
        finally:
            os.close(fd)

    # --- writing -------------------------------------------------------------------------------

    def add(self, kind: str, name: str, owner: str | None = None, data: dict | None = None,
            pid: int | None = None) -> Record:
        """Record that ``kind``/``name`` is about to exist (or exists). Refused, with nothing
        written, on a machine not declared disposable, or for a name that is not one of ours.
        Prefer :meth:`creating`."""
        record = new_record(kind, name, owner, data, pid)
        text = _encode(record)
        try:
            with self._folder(create=True) as folder:
                self._write_new(folder, record.key, text, durable=kind in _DURABLE_KINDS)
        except _RecordExists:
            raise Refused(f"{kind} {name!r} is in use: the ledger has a record of it already",
                          hint="remove the existing one first (`labhelper cleanup` removes what "
                               "is left of an earlier run), or choose another name") from None
        except (OSError, LabError) as exc:
            if isinstance(exc, (Refused, LedgerError)):
                raise
            raise LedgerError(f"cannot write the ledger at {self.root}: {exc}",
                              hint="labhelper needs root to write /run/labhelper") from exc
        return record

    def _write_new(self, folder: int, key: str, text: bytes, durable: bool) -> None:
        """Write the file ``key`` in ``folder`` whole, or not at all, and only if it is new.

        The bytes go into a file with no name first (O_TMPFILE), which is then given its name
        with link(2): a reader sees the whole record or none, even after a SIGKILL mid-write, and
        a writer killed before the link leaves nothing behind. link(2) refuses an existing name,
        so a second create of an object in use leaves the first one's record intact. (Where the
        filesystem has no O_TMPFILE, a named temporary file does the same, in three steps.)"""
        try:
            fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=folder)
            tmp = None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            tmp = f".{key}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=folder)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            # A record must outlive its writer (a SIGKILL): the page cache does that. It must
            # outlive the machine only where the object does: kernel objects (mounts, links,
            # namespaces, cgroups, processes) die with the kernel, files on disk do not. So only
            # those records wait for the disk.
            if durable:
                os.fsync(fd)
            try:
                if tmp is None:
                    os.link(f"/proc/self/fd/{fd}", key, dst_dir_fd=folder, follow_symlinks=True)
                else:
                    os.link(tmp, key, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                raise _RecordExists(key) from None
        finally:
            os.close(fd)
            if tmp is not None:
                try:
                    os.unlink(tmp, dir_fd=folder)
                except FileNotFoundError:
                    pass

    def remove(self, kind: str, name: str) -> None:
        """Forget ``kind``/``name`` (idempotent). Call it right after the object is gone."""
        self.guard(f"remove {kind} {name!r}")
        self._unlink(Record.key_of(kind, name))

    def forget_file(self, filename: str) -> None:
        """Remove one file of the ledger by its name: a record whose object is gone, or a
        temporary file a killed writer left (idempotent). Only a plain file is removed."""
        self._check_filename(filename)
        self.guard(f"forget the ledger file {filename!r}")
        self._unlink(filename)

    def quarantine(self, filename: str) -> str:
        """Set aside a file of the ledger that is not a record (or a folder, a FIFO, a symlink...):
        moved, not deleted, into ``quarantine/`` for a person to look at. Returns where it went."""
        self._check_filename(filename)
        self.guard(f"set aside the ledger file {filename!r}")
        where = f"{QUARANTINE}/{filename}.{time.time_ns()}"
        try:
            with self._folder() as folder:
                try:
                    os.mkdir(QUARANTINE, 0o700, dir_fd=folder)
                except FileExistsError:
                    pass
                qfd = os.open(QUARANTINE, marks.DIR_FLAGS, dir_fd=folder)
                try:
                    # rename(2) moves the entry itself, whatever it is (a symlink is not followed).
                    os.rename(filename, os.path.basename(where), src_dir_fd=folder, dst_dir_fd=qfd)
                finally:
                    os.close(qfd)
        except FileNotFoundError:
            return ""          # gone already (another cleanup set it aside): nothing to do
        return str(self.root / where)

    @staticmethod
    def _check_filename(filename: str) -> None:
        if not isinstance(filename, str) or "/" in filename or filename in ("", ".", "..", QUARANTINE) \
                or "\0" in filename:
            raise LedgerError(f"{filename!r} is not a file name of the ledger")

    def _unlink(self, filename: str) -> None:
        try:
            with self._folder() as folder:
                st = os.stat(filename, dir_fd=folder, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise LedgerError(f"{self.root / filename} is not a plain file: set it aside instead "
                                      "(labhelper cleanup does)")
                os.unlink(filename, dir_fd=folder)
        except FileNotFoundError:
            pass                # already gone: idempotent, also when two cleanups race

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

    # --- reading -------------------------------------------------------------------------------

    def records(self) -> list[Record]:
        """Every valid record, oldest first. Nothing here is ever fatal, blocks, or reads more
        than MAX_RECORD bytes of a file: what cannot be used is listed in ``self.problems``, and
        files that are not records in ``self.bad`` (cleanup sets them aside)."""
        self.problems, self.bad = [], []
        found = []
        try:
            with self._folder() as folder:
                for name in sorted(os.listdir(folder)):
                    if name == QUARANTINE or (name.startswith(".") and name.endswith(".tmp")):
                        continue        # set-aside files; writes in flight (stale_temp_files)
                    try:
                        record = self._read(folder, name)
                    except _NotARecord as exc:
                        self._not_a_record(name, str(exc))
                        continue
                    found.append(record)
        except FileNotFoundError:
            return []
        except PermissionError:
            # The ledger folder is root's (mode 0700). Without it the census still sees every
            # object in the kernel, only not who made it.
            self.problems.append(f"the ledger at {self.root} is readable by root only: objects are listed "
                                 "without their owners; run `sudo labhelper census` (or `sudo labhelper "
                                 "cleanup`) to use it")
            return []
        except LabError as exc:         # a symlink in the way, a mount over the folder
            self.problems.append(f"the ledger cannot be read: {exc.message}")
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger at {self.root}: {exc}") from exc
        return sorted(found, key=lambda r: r.created)

    def _read(self, folder: int, name: str) -> Record:
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise _NotARecord(f"a {_file_type(st.st_mode)}, not a plain file")
            if st.st_size > MAX_RECORD:
                raise _NotARecord(f"{st.st_size} bytes; a record has a few hundred")
            if not name.endswith(".json"):
                raise _NotARecord("not named KIND.DIGEST.json")
            # O_NOFOLLOW and O_NONBLOCK: if a FIFO or a symlink was swapped in since the stat, the
            # open fails or returns at once instead of blocking, and fstat below says what it is.
            fd = os.open(name, _READ, dir_fd=folder)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise _NotARecord("not a plain file")
                data = os.read(fd, MAX_RECORD + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _NotARecord(f"cannot be read: {exc.strerror}") from None
        if len(data) > MAX_RECORD:
            raise _NotARecord(f"more than {MAX_RECORD} bytes")
        try:
            text = data.decode("utf-8")
            if _depth(text) > MAX_DEPTH:
                raise _NotARecord(f"JSON nested deeper than {MAX_DEPTH} levels")
            record = _record_from(json.loads(text))
        except _NotARecord:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise _NotARecord(f"unreadable: {type(exc).__name__}: {exc}") from None
        if record.key != name:
            raise _NotARecord("its file name does not match its record")
        return record

    def stale_temp_files(self, age: float = 60.0) -> list[str]:
        """Names of temporary files (``.KEY.PID.tmp``) older than ``age`` seconds.

        add() writes a temporary file, then renames it into place; a writer killed in between
        leaves the temporary file behind. A write takes milliseconds, so one older than a
        minute is garbage, while a fresh one may be a write in flight and must stay. Something
        with such a name that is not a plain file is not garbage of ours: records() does not
        list it, and it is set aside instead (``self.bad``).
        """
        try:
            with self._folder() as folder:
                names = os.listdir(folder)
                now = time.time()
                stale = []
                for name in names:
                    if not (name.startswith(".") and name.endswith(".tmp")):
                        continue
                    try:
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        if all(n != name for n, _ in self.bad):
                            self._not_a_record(name, f"a {_file_type(st.st_mode)} named like a temporary file")
                    elif now - st.st_mtime > age:
                        stale.append(name)
        except (OSError, LabError):
            return []
        return sorted(stale)

    def _not_a_record(self, name: str, why: str) -> None:
        self.bad.append((name, why))
        self.problems.append(f"{self.root / name}: not a ledger record ({why}); `labhelper cleanup` sets it "
                             f"aside in {self.root / QUARANTINE}")

    def find(self, kind: str, name: str) -> Record | None:
        """The record of ``kind``/``name``, or None: its one file, read by its key (a file that
        is not a valid record of it counts as none; records() reports such files)."""
        try:
            with self._folder() as folder:
                record = self._read(folder, Record.key_of(kind, name))
        except (OSError, LabError, _NotARecord):
            return None
        return record if record.kind == kind and record.name == name else None


def new_record(kind: str, name: str, owner: str | None = None, data: dict | None = None,
               pid: int | None = None) -> Record:
    """The record of ``kind``/``name``, made by this process (or ``pid``), after the guard: on a
    machine not declared disposable, or for a name that is not one of ours, Refused."""
    if kind not in _KIND_NAMES:
        raise LedgerError(f"unknown kind {kind!r}; known kinds: {', '.join(_KIND_NAMES)}")
    name = marks.kind(kind).valid(name)
    guard(f"create {kind} {name!r}")
    pid = lifetime_pid() if pid is None else pid
    return Record(kind, name, owner or default_owner(), pid, _start_time(pid), time.time(), dict(data or {}))


def _encode(record: Record) -> bytes:
    # The fields by hand: dataclasses.asdict deep-copies, and costs more than the mkdir it records.
    fields = {"kind": record.kind, "name": record.name, "owner": record.owner, "pid": record.pid,
              "pid_start": record.pid_start, "created": record.created, "data": record.data}
    return json.dumps(fields, sort_keys=True).encode()


def put_on(path: str, record: Record) -> bool:
    """Keep ``record`` on the folder ``path`` itself (the extended attribute ON_OBJECT), instead
    of a file in the ledger. For objects that are folders found by where they are (a cgroup
    below the lab's parent): the record goes when the folder goes, by the same rmdir(2), so
    removing it costs nothing more. False where the filesystem keeps no such attributes (then
    the caller writes to the ledger)."""
    try:
        os.setxattr(path, ON_OBJECT, _encode(record), os.XATTR_CREATE, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def read_from(path: str) -> Record | None:
    """The record kept on the folder ``path`` (:func:`put_on`), or None: none there, the folder
    is gone, or what is there is not a valid record of that very folder (it is then ignored, as
    the census ignores junk it did not make)."""
    try:
        data = os.getxattr(path, ON_OBJECT, follow_symlinks=False)
    except OSError:
        return None
    try:
        text = data.decode("utf-8")
        if len(data) > MAX_RECORD or _depth(text) > MAX_DEPTH:
            return None
        record = _record_from(json.loads(text))
    except (ValueError, KeyError, TypeError, RecursionError, _NotARecord):
        return None
    return record


# A mount has a place of its own for a short text: its source, which the kernel keeps with the
# mount and shows in /proc/PID/mountinfo and `findmnt` (a device for a disk; for overlayfs or
# tmpfs, any name: Docker's overlays say "overlay"). Written with the mount itself, by the very
# call that makes it, the record there can never be missing from the mount, nor outlive it, and
# it costs no write at all (a ledger file costs two writes to /run's filesystem). It holds what
# says whose the mount is, in at most 255 bytes (fsconfig's limit for a string):
#     labhelper:OWNER:PID:PID_START:CREATED     e.g. labhelper:lab:4242:987654:1796070543
_SOURCE = re.compile(r"labhelper:([A-Za-z0-9_][A-Za-z0-9._+,@=-]{0,63}):([0-9]{1,10}):([0-9]{1,20}|-):([0-9]{1,12})")


def as_mount_source(record: Record) -> str | None:
    """The source string for a mount that carries ``record`` itself, or None where the record
    does not fit in one (an owner name with ':' or over 64 characters: the caller keeps the
    record in the ledger instead)."""
    start = "-" if record.pid_start is None else str(record.pid_start)
    text = f"labhelper:{record.owner}:{record.pid}:{start}:{int(record.created)}"
    return text if _SOURCE.fullmatch(text) else None


def from_mount_source(mountpoint: str, source: str, data: dict | None = None) -> Record | None:
    """The record a mount on ``mountpoint`` carries as its source (:func:`as_mount_source`), or
    None: another source (a mount not made so, or not ours). ``data``: what the caller knows of
    it from the mount itself (an overlay's scratch folders)."""
    found = _SOURCE.fullmatch(source)
    if found is None:
        return None
    owner, pid, start, created = found.groups()
    return Record("mount", mountpoint, owner, int(pid), None if start == "-" else int(start), float(created),
                  dict(data or {}))


class _RecordExists(Exception):
    """A record of that name is in the ledger already (link(2) said EEXIST)."""


class _NotARecord(Exception):
    """A file of the ledger that is not a record (said why)."""


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _depth(text: str) -> int:
    """How deep ``text``'s JSON arrays and objects nest (strings skipped), without parsing it:
    json.loads recurses once per level, and a deep enough document ends in RecursionError."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


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
    marks.kind(fields["kind"]).valid(fields["name"])   # Refused (a ValueError) if it is not one of ours
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
