"""Run a guest one VM exit at a time, and look at its registers after each.

:class:`Stepper` does the work (``step()``, ``reset()``, ``close()``) and can be driven from
code and tests; its ``widget`` (ipywidgets, imported only when shown) adds three buttons and shows
the exit, the registers (those that changed in bold), the listing with an arrow at ``rip``, and
what the guest has printed so far::

    from labhelper.teach.stepper import Stepper
    s = Stepper(guests.SERIAL_HELLO)
    s            # in a notebook: the panel
    ...
    s.close()    # the VM is closed (also by the teardown cell)

Between two exits the guest runs at full speed: one step can be many instructions (the `loop`
below `out` runs inside the guest without us seeing it).
"""
from __future__ import annotations

import html
from dataclasses import dataclass

from ..errors import LabError
from ..kvm import exits as ex
from ..kvm.guests import Program, assemble
from ..kvm.machine import Machine
from ..kvm.structs import REGISTER_NAMES
from ..kvm.vcpu import Registers
from .widgets import Playground

__all__ = ["Step", "Stepper"]


@dataclass(frozen=True)
class Step:
    number: int
    exit: object
    regs: Registers
    changed: tuple[str, ...]      # registers whose value differs from the step before

    def __repr__(self) -> str:
        changed = ", ".join(self.changed) or "none"
        return f"Step {self.number}: {self.exit!r} at rip={self.regs.rip:#x}; changed: {changed}"


class Stepper(Playground):
    """A Machine run exit by exit. ``step()`` returns a :class:`Step`; after hlt (or a fatal
    exit) the guest is done and ``step()`` raises until ``reset()``."""

    def __init__(self, program: Program | str, mode: str = "real", step_timeout: float = 2.0, **machine_args):
        self.program = assemble(program, mode=mode) if isinstance(program, str) else program
        self.step_timeout = step_timeout
        self.machine_args = machine_args
        self.machine: Machine | None = None
        self.history: list[Step] = []

    # --- the work, without widgets --------------------------------------------------------------

    def reset(self) -> Registers:
        """Close the current VM (if any) and start the program again from its first instruction."""
        self.close()
        self.machine = Machine(self.program, **self.machine_args)
        self.history = []
        self._start = self.machine.regs()
        if self._widget is not None:
            self._refresh()
        return self._start

    @property
    def done(self) -> bool:
        return bool(self.history) and (type(self.history[-1].exit) is ex.Hlt or ex.is_error(self.history[-1].exit))

    @property
    def output(self) -> bytes:
        return bytes(self.machine.output) if self.machine else b""

    def step(self) -> Step:
        """Run the guest to its next exit. The first step starts the VM; after :meth:`close`
        (or an interrupt, which closes it) a step is refused until :meth:`reset`."""
        if self.machine is None:
            self.reset()
        elif self.machine.closed:
            raise LabError("this stepper's VM is closed: call reset() to start the guest again",
                           hint="close() (and the teardown cell, and an interrupt) closes the VM; "
                                "a step never opens a new one behind your back")
        if self.done:
            raise LabError("the guest has stopped (hlt or a fatal exit): reset() to run it again")
        before = self.history[-1].regs if self.history else self._start
        try:
            # A guest that makes no exit for step_timeout seconds comes back as Interrupted().
            exit_ = self.machine.step(timeout=self.step_timeout)
        except KeyboardInterrupt:
            self.close()
            raise
        regs = self.machine.regs()
        changed = tuple(n for n in REGISTER_NAMES if getattr(regs, n) != getattr(before, n))
        step = Step(len(self.history) + 1, exit_, regs, changed)
        self.history.append(step)
        if self._widget is not None:
            self._refresh()                 # stepping from code shows in the panel too
        return step

    def close(self) -> None:
        """Close the VM (idempotent). step() then refuses until reset()."""
        if self.machine is not None:
            self.machine.close()

    def __enter__(self) -> "Stepper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "not started" if self.machine is None else ("closed" if self.machine.closed else
                                                             f"{len(self.history)} exits")
        return f"Stepper({self.program!r}, {state})"

    # --- what the panel shows (plain HTML, testable) ----------------------------------------------

    def registers_html(self) -> str:
        step = self.history[-1] if self.history else None
        regs = step.regs if step else (self._start if self.machine else Registers())
        changed = set(step.changed) if step else set()
        cells = []
        for name in REGISTER_NAMES:
            value = f"{getattr(regs, name):#x}"
            text = f"<b>{name}={value}</b>" if name in changed else f"{name}={value}"
            cells.append(f"<td style='padding:0 8px;font-family:monospace'>{text}</td>")
        rows = ["<tr>" + "".join(cells[i:i + 6]) + "</tr>" for i in range(0, len(cells), 6)]
        return "<table>" + "".join(rows) + "</table>"

    def panel_html(self) -> str:
        step = self.history[-1] if self.history else None
        rip = step.regs.rip if step else self.program.origin
        if step:
            head = f"<b>exit {step.number}</b>: <code>{html.escape(repr(step.exit))}</code> — {html.escape(step.exit.describe())}"
        else:
            head = "<b>ready</b>: press <i>step</i> to run the guest until its first exit"
        out = html.escape(self.output.decode(errors="replace")) or "(nothing yet)"
        return (f"<p>{head}</p>{self.registers_html()}"
                f"<pre style='line-height:1.2'>{html.escape(self.program.listing(mark=rip))}</pre>"
                f"<p>guest output so far: <code>{out}</code></p>")

    # --- the widget --------------------------------------------------------------------------------

    def _build(self):
        import ipywidgets as w  # lazy: only when the panel is shown

        self._step_button = w.Button(description="step", tooltip="run until the next VM exit", icon="step-forward")
        self._run_button = w.Button(description="run to hlt", tooltip="step until the guest halts")
        self._reset_button = w.Button(description="reset", tooltip="a fresh VM, from the first instruction")
        self._view = w.HTML()
        self._step_button.on_click(lambda _: self._act(self.step))
        self._run_button.on_click(lambda _: self._act(self._run_to_end))
        self._reset_button.on_click(lambda _: self._act(self.reset))
        self._refresh()
        return w.VBox([w.HBox([self._step_button, self._run_button, self._reset_button]), self._view])

    def _run_to_end(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if self.done:
                return
            self.step()

    def _act(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - show the error in the panel
            self._view.value = f"<p style='color:#cf222e'>{html.escape(f'{type(exc).__name__}: {exc}')}</p>"
            return
        self._refresh()

    def _refresh(self) -> None:
        self._view.value = self.panel_html()
        self._step_button.disabled = self._run_button.disabled = self.done
