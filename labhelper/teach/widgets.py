"""Playgrounds for the notebooks: pick something from a list, see what the kernel did.

ipywidgets and matplotlib are imported inside the functions that use them, so that
``import labhelper.teach.widgets`` stays cheap and works where they are not installed.
(Chapter 02's guest stepper is :mod:`labhelper.teach.stepper`.)

* chapter 00: :func:`chapter_explorer`: a slider over the chapters, and what this machine
  lets each of them do;
* chapter 03: :class:`NamespaceExplorer`: a checkbox per namespace type, and what a child in
  the chosen new namespaces sees, next to the host;
* chapter 05: :class:`MemoryPlayground`: sliders for a memory limit and an allocation, a run
  button, and the usage plotted against the limit;
* chapter 01: :class:`SyscallExplorer`: pick a command, see its system calls as a table and a
  bar chart, filtered by category::

    from labhelper.teach.widgets import SyscallExplorer
    SyscallExplorer()
"""
from __future__ import annotations

import html
import os
import shutil
import sys
import tempfile

from .. import procfs
from .. import trace as _trace
from . import plots
from .chapters import CHAPTERS, exists

__all__ = ["Playground", "SyscallExplorer", "shown_table", "chapter_line", "explorer_commands", "chapter_explorer", "NamespaceExplorer", "look",
           "Seen", "MemoryPlayground", "Outcome", "grow", "Progress"]


class Playground:
    """What every playground shares: its work is done by plain methods (tests and scripts call
    them), and its widget is built the first time a notebook displays it (ipywidgets is
    imported only then). A subclass defines ``_build()``, which returns the widget."""

    _widget = None

    @property
    def widget(self):
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _build(self):
        raise NotImplementedError

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def explorer_commands() -> dict[str, list[str]]:
    """The commands the chapter 01 explorer offers (those installed here)."""
    commands = {
        "ls /": ["ls", "/"],
        "cat /etc/hostname": ["cat", "/etc/hostname"],
        "mkdir demo": ["mkdir", "demo"],
        "echo hello (/bin/echo)": ["/bin/echo", "hello"],
        "date": ["date"],
        "uname -a": ["uname", "-a"],
        "sleep 0.1": ["sleep", "0.1"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c \"import json\"": [sys.executable, "-c", "import json"],
        "sh -c 'ls | wc -l'": ["sh", "-c", "ls / | wc -l"],
    }
    if shutil.which("ruby"):
        commands["ruby File.open (the seed)"] = ["ruby", "-e", 'File.open("/etc/hostname") { |f| f.read }']
    return {k: v for k, v in commands.items() if shutil.which(v[0])}


class SyscallExplorer(Playground):
    """A dropdown of commands and a category filter; shows the chosen command's system calls
    (a strace -c style table and a bar chart). Each command runs in a fresh temporary folder
    (so ``mkdir demo`` works every time), removed afterwards.

    ``choose(name, category)`` does what the widgets do, for tests and scripts; the last
    :class:`~labhelper.trace.Trace` is in ``.trace``.
    """

    def __init__(self, commands: dict[str, list[str]] | None = None, top: int = 12,
                 timeout: float = 20.0):
        self.commands = commands or explorer_commands()
        if not self.commands:
            raise ValueError("no command to explore")
        self.top = top
        self.timeout = timeout
        self.trace: _trace.Trace | None = None
        self.category: str | None = None
        self._out = None

    # -- the work, without widgets -----------------------------------------------------------
    def choose(self, name: str, category: str | None = None) -> _trace.Summary:
        if name not in self.commands:
            raise KeyError(f"unknown command {name!r}; choose from: {', '.join(self.commands)}")
        with tempfile.TemporaryDirectory(prefix="lh-explore-") as tmp:
            self.trace = _trace.trace(self.commands[name], cwd=tmp, timeout=self.timeout)
        self.category = category
        return self.trace.summary(category)

    # -- the widgets -------------------------------------------------------------------------
    def _build(self):
        import ipywidgets as w  # lazy

        self._dropdown = w.Dropdown(options=list(self.commands), description="command",
                                    layout=w.Layout(width="360px"))
        self._categories = w.ToggleButtons(options=["all", *_trace.CATEGORY_NAMES], value="all",
                                           description="category",
                                           style={"button_width": "72px"})
        self._out = w.Output()
        self._dropdown.observe(self._refresh, names="value")
        self._categories.observe(self._refresh, names="value")
        self._refresh()
        return w.VBox([self._dropdown, self._categories, self._out])

    def _refresh(self, *_):
        from IPython.display import HTML, display

        cat = None if self._categories.value == "all" else self._categories.value
        with self._out:
            self._out.clear_output(wait=True)
            try:
                summary = self.choose(self._dropdown.value, cat)
            except Exception as exc:  # noqa: BLE001 - show the error in the playground
                print(f"{type(exc).__name__}: {exc}")
                return
            t = self.trace
            display(HTML(f"<p><code>{_html(repr(t))}</code><br>the command line: "
                         f"<code>{_html(' '.join(t.strace_argv[:1] + ('-f', '-yy', '...', '--')) + ' ' + ' '.join(t.command))}</code></p>"))
            if not len(summary):
                print(f"no {cat} system calls")
                return
            display(HTML(shown_table(summary, self.top)))
            display(plots.syscalls(summary, top=self.top, title=f"{self._dropdown.value}: "
                                                     f"{summary.calls} {cat or ''} system calls".replace("  ", " ")))

    def __repr__(self) -> str:
        return f"SyscallExplorer({len(self.commands)} commands)"


def shown_table(summary: _trace.Summary, top: int) -> str:
    """The explorer's table as HTML: the ``top`` rows with the most calls, and a last row that
    says it totals those rows only ("total of the 12 shown"), not every call the command made
    (the chart's title has that number)."""
    shown = summary.top(top)
    table = shown._repr_html_()
    label = (f"total of the {len(shown)} shown" if len(shown) < len(summary)
             else f"total of all {len(shown)}")
    table = table.replace("<tr><th>total</th>", f"<tr><th>{label}</th>", 1)
    note = (f"<p>The {len(shown)} system calls made most often, of {len(summary)} different ones; "
            f"{summary.calls} calls in all.</p>" if len(shown) < len(summary) else "")
    return note + table


def _html(text: str) -> str:
    return html.escape(text)


def chapter_line(c, missing: set[str], folder=None) -> str:
    """What the chapter explorer says of chapter ``c`` (HTML): what it teaches and whether this
    machine runs it (``missing``: the doctor's failed checks); or, while its notebook does not
    exist (``chapters.exists``), that it is coming."""
    head = (f"<b>{c.number} {html.escape(c.slug)}</b> ({html.escape(c.part)}): "
            f"{html.escape(c.what)}.<br>")
    if not exists(c.number, folder):
        return head + "Coming: this chapter is not written yet."
    lacking = [n for n in c.needs if n in missing]
    state = ("runs in full" if not lacking else
             "explains and skips its live cells (missing: " + ", ".join(lacking) + ")")
    return head + f"On this machine it {html.escape(state)}."


def chapter_explorer(report=None, folder=None):
    """A slider over the chapters: what each teaches, and whether this machine can run it
    (a chapter not written yet says it is coming).

    ``report`` is a :func:`labhelper.teach.lab.doctor` report (made here if not given);
    ``folder`` the notebooks folder (default: the course's, ``chapters.notebooks_folder``).
    """
    import ipywidgets as widgets  # heavy: only when the widget is shown

    from .lab import doctor
    report = report or doctor()
    missing = {r.name for r in report.rows if not r.ok}
    slider = widgets.IntSlider(value=0, min=0, max=len(CHAPTERS) - 1, description="chapter",
                               continuous_update=False)
    label = widgets.HTML()

    def show(change=None):
        label.value = chapter_line(CHAPTERS[slider.value], missing, folder)

    slider.observe(show, names="value")
    show()
    return widgets.VBox([slider, label])


# ---------------------------------------------------------------------------------------------
# Chapter 03: what a process in new namespaces sees

def look() -> dict[str, object]:
    """What the calling process sees of the machine, one line per namespace type."""
    import socket
    import time
    mounts = procfs.read_text("/proc/self/mountinfo", limit=None).count("\n")
    cgroup = procfs.read_text("/proc/self/cgroup").splitlines()
    return {
        "hostname (uts)": socket.gethostname(),
        "mounts it sees (mnt)": mounts,
        "System V queues (ipc)": max(procfs.read_text("/proc/sysvipc/msg").count("\n") - 1, 0),
        "its own pid (pid)": os.getpid(),
        "processes in /proc (pid)": sum(1 for p in os.listdir("/proc") if p.isdigit()),
        "network interfaces (net)": ", ".join(name for _, name in socket.if_nameindex()),
        "its uid (user)": os.getuid(),
        "its cgroup (cgroup)": cgroup[-1].split(":", 2)[-1] if cgroup else "?",
        "seconds since boot (time)": int(time.clock_gettime(time.CLOCK_BOOTTIME)),
    }


class Seen(tuple):
    """(what, on the host, inside) rows: :meth:`NamespaceExplorer.choose`'s answer."""

    def __repr__(self) -> str:
        w = max(len(r[0]) for r in self)
        lines = [f"{'':{w}}  {'host':>16}  {'inside':>16}"]
        lines += [f"{a:{w}}  {str(b):>16}  {str(c):>16}{'  <-' if b != c else ''}" for a, b, c in self]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        bold = " style='font-weight:bold'"
        rows = "".join(f"<tr><td style='text-align:left'>{html.escape(a)}</td><td>{html.escape(str(b))}</td>"
                       f"<td{bold if b != c else ''}>{html.escape(str(c))}</td></tr>"
                       for a, b, c in self)
        return f"<table><tr><th></th><th>host</th><th>inside</th></tr>{rows}</table>"


class NamespaceExplorer(Playground):
    """A checkbox per namespace type: start a child in the chosen new namespaces and see, next to
    the host, what it sees (what differs in bold). ``choose(names)`` does it without widgets."""

    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.last: Seen | None = None

    def choose(self, names) -> Seen:
        from .. import namespaces, process
        host = process.run_in_child(look, timeout=self.timeout)
        names = namespaces.names_of(names) if names else ()
        if names:
            inside = namespaces.run(names, look, timeout=self.timeout,
                                    hostname="inside" if "uts" in names else None,
                                    offset=86400 if "time" in names else 0)
        else:
            inside = process.run_in_child(look, timeout=self.timeout)
        self.last = Seen((k, host[k], inside[k]) for k in host)
        return self.last

    def _build(self):
        import ipywidgets as w
        from ..namespaces import NAMESPACES

        self._boxes = {ns.name: w.Checkbox(value=ns.name in ("uts", "pid"), description=ns.name, indent=False,
                                           layout=w.Layout(width="90px")) for ns in NAMESPACES}
        self._button = w.Button(description="start a child", tooltip="run a child in the chosen new namespaces")
        self._view = w.HTML()
        self._button.on_click(lambda _: self._refresh())
        self._refresh()
        return w.VBox([w.HBox(list(self._boxes.values())), self._button, self._view])

    def _refresh(self) -> None:
        chosen = [n for n, box in self._boxes.items() if box.value]
        try:
            seen = self.choose(chosen)
        except Exception as exc:  # noqa: BLE001 - show the kernel's answer in the playground
            self._view.value = f"<p style='color:#cf222e'>{html.escape(f'{type(exc).__name__}: {exc}')}</p>"
            return
        self._view.value = (f"<p>new namespaces: <code>{html.escape(', '.join(chosen) or 'none')}</code></p>"
                            + seen._repr_html_())

    def __repr__(self) -> str:
        return "NamespaceExplorer(8 namespace types)"


# --- chapter 05: a memory limit, and what happens at it ---------------------------------------------------

def grow(total_mib: int, step_mib: int = 4, pause: float = 0.01) -> int:
    """Allocate ``total_mib`` MiB, ``step_mib`` at a time, touching every page (so each is
    charged), with a pause between steps so that the growth can be watched. Returns the MiB held."""
    import time
    held = []
    for _ in range(0, total_mib, step_mib):
        block = bytearray(step_mib * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        held.append(block)
        time.sleep(pause)
    return len(held) * step_mib


class Outcome(tuple):
    """What one run of the memory playground gave: (limit, asked, survived, oom kills, samples)."""
    __slots__ = ()

    def __new__(cls, limit: int, asked: int, survived: bool, oom_kills: int, samples: list):
        return super().__new__(cls, (limit, asked, survived, oom_kills, samples))

    limit = property(lambda self: self[0])
    asked = property(lambda self: self[1])
    survived = property(lambda self: self[2])
    oom_kills = property(lambda self: self[3])
    samples = property(lambda self: self[4])

    def __repr__(self) -> str:
        verdict = "finished" if self.survived else f"was OOM-killed ({self.oom_kills} kill(s) in the group)"
        peak = max((m for _, m, _ in self.samples), default=0) // (1024 * 1024)
        return (f"limit {self.limit // (1024 * 1024)} MiB, asked for {self.asked} MiB: the process {verdict}; "
                f"the most charged: {peak} MiB")


class MemoryPlayground(Playground):
    """A slider for a group's memory limit, another for how much a process asks for, and a button:
    the process grows in the group while the group is sampled, and the plot shows usage against
    the limit. ``run(limit_mib, ask_mib)`` does it without widgets."""

    def __init__(self, name: str = "memory-playground"):
        self.name = name
        self.last: Outcome | None = None

    def run(self, limit_mib: int, ask_mib: int) -> Outcome:
        from .. import cgroups
        with cgroups.group(f"{self.name}-{os.getpid()}") as g:
            g.limit(memory=f"{limit_mib}M", swap=0)
            child = g.spawn(grow, ask_mib)
            samples = g.watch(child)
            stats = g.stats()
        survived = not stats.oom_kills
        self.last = Outcome(limit_mib * 1024 * 1024, ask_mib, survived, stats.oom_kills or 0, samples)
        return self.last

    def figure(self):
        if self.last is None:
            return None
        return plots.memory(self.last.samples, self.last.limit)

    def _build(self):
        import ipywidgets as w
        self._limit = w.IntSlider(value=64, min=16, max=256, step=16, description="limit MiB")
        self._ask = w.IntSlider(value=96, min=16, max=256, step=16, description="asks MiB")
        self._button = w.Button(description="run", tooltip="grow a process in a group with this limit")
        self._out = w.Output()
        self._text = w.HTML()
        self._button.on_click(lambda _: self._refresh())
        return w.VBox([w.HBox([self._limit, self._ask, self._button]), self._text, self._out])

    def _refresh(self) -> None:
        from IPython.display import display
        try:
            outcome = self.run(self._limit.value, self._ask.value)
        except Exception as exc:  # noqa: BLE001 - show the kernel's answer in the playground
            self._text.value = f"<p style='color:#cf222e'>{html.escape(f'{type(exc).__name__}: {exc}')}</p>"
            return
        self._text.value = f"<p>{html.escape(repr(outcome))}</p>"
        self._out.clear_output(wait=True)
        with self._out:
            display(self.figure())

    def __repr__(self) -> str:
        return "MemoryPlayground(limit and allocation sliders, a run button)"


class Progress:
    """A progress callback, ``progress(done, total, what)``, for a long step (chapter 07's base
    image, an import): a bar under the cell in a notebook with a front end; nothing elsewhere
    (nbval, scripts), where :attr:`steps` still records each call and ``repr`` says how it ended."""

    def __init__(self, description: str):
        self.description = description
        self.steps: list[tuple[int, int, str]] = []
        self._bar = None

    def __call__(self, done: int, total: int, what: str) -> None:
        self.steps.append((done, total, what))
        if self._bar is None:
            try:
                import ipywidgets
                from IPython import get_ipython
                from IPython.display import display
            except ImportError:
                return
            if get_ipython() is None:
                return
            self._bar = ipywidgets.IntProgress(min=0, max=max(total, 1), description=self.description,
                                               layout={"width": "60%"})
            display(self._bar)
        self._bar.max = max(total, 1)
        self._bar.value = done
        self._bar.description = f"{self.description}: {what}"[:40]

    def __repr__(self) -> str:
        if not self.steps:
            return f"{self.description}: nothing to do (already there)"
        done, total, what = self.steps[-1]
        return f"{self.description}: {done}/{total} ({what})"
