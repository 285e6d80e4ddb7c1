"""The course's charts, drawn with matplotlib from the data the concept modules return.

matplotlib is imported inside each function: ``import labhelper.teach.plots`` stays cheap.
Each function returns a Figure (Jupyter displays it) and leaves nothing open in pyplot.

* :func:`syscalls`: a ``strace -c`` summary as bars, coloured by category (chapter 01)
* :func:`costs`: what calls cost, as distributions on a log scale (chapters 01 and 02)
* :func:`memory`: a group's memory over time against its limit, and the OOM kill (chapter 05)
* :func:`cpu_shares`: CPU used at several quotas, against the quota (chapter 05)
* :func:`side_by_side`: containers (blue) and VMs (orange) on one log scale (chapter 08)
"""
from __future__ import annotations

from ..syscost import Costs
from ..trace import CATEGORY_NAMES, Summary

__all__ = ["CATEGORY_COLORS", "syscalls", "costs", "memory", "cpu_shares", "side_by_side"]

#: one colour per system call category, for every chart and widget
CATEGORY_COLORS = {"file": "#4c72b0", "process": "#dd8452", "memory": "#55a868",
                   "network": "#c44e52", "signal": "#8172b3", "other": "#937860"}


def syscalls(summary: Summary, top: int = 15, title: str | None = None):
    """A bar chart: calls per system call (the ``top`` most called), coloured by category,
    and calls per category."""
    import matplotlib.pyplot as plt  # lazy: importing labhelper must stay fast
    from matplotlib.patches import Patch

    rows = summary.sorted("calls").rows[:top][::-1]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 0.28 * max(len(rows), 6) + 1.4),
                                 gridspec_kw={"width_ratios": [3, 1.3]})
    ax.barh([r.syscall for r in rows], [r.calls for r in rows],
            color=[CATEGORY_COLORS[r.category] for r in rows])
    errs = [r.errors for r in rows]
    if any(errs):
        ax.barh([r.syscall for r in rows], errs, color="none", edgecolor="black", hatch="//",
                label="failed")
    ax.set_xlabel("calls")
    ax.set_title(title or f"{summary.calls} system calls, {len(summary)} different "
                          f"(top {min(top, len(summary))})", fontsize=10)
    cats = summary.by_category()
    bx.bar(list(cats), list(cats.values()), color=[CATEGORY_COLORS[c] for c in cats])
    bx.set_title("calls per category", fontsize=10)
    bx.tick_params(axis="x", rotation=45)
    handles = [Patch(color=CATEGORY_COLORS[c], label=c) for c in CATEGORY_NAMES if c in cats]
    if any(errs):
        handles.append(Patch(facecolor="none", edgecolor="black", hatch="//", label="failed"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def costs(measured: Costs, title: str | None = None):
    """A box plot of each cost's distribution on a log scale; kernel calls in orange."""
    import matplotlib.pyplot as plt  # lazy: importing labhelper must stay fast

    items = list(measured)[::-1]  # first call at the top
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(items) + 1.2))
    data = [c.samples_ns for c in items]
    style = dict(whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6)
    try:  # matplotlib >= 3.10 says orientation=; older ones only know vert=
        box = ax.boxplot(data, orientation="horizontal", **style)
    except TypeError:
        box = ax.boxplot(data, vert=False, **style)
    for patch, c in zip(box["boxes"], items):
        patch.set_facecolor("#fdae6b" if c.kernel else "#9ecae1")
    for median in box["medians"]:
        median.set_color("black")
    ax.set_yticks(range(1, len(items) + 1), [c.label for c in items])
    ax.set_xscale("log")
    ax.set_xlabel("nanoseconds per call (log scale); box: p25-p75, whiskers: p5-p95")
    ax.set_title(title or "User mode (blue) vs a trip into the kernel (orange)")
    for i, c in enumerate(items, start=1):
        ax.annotate(f"{c.median:.0f} ns", (c.median, i), xytext=(0, 11), textcoords="offset points",
                    ha="center", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def memory(samples, limit: int | None, title: str | None = None):
    """Memory charged to a group over time (``Group.watch``'s samples), the limit as a dashed
    line, and a red mark where the OOM killer struck."""
    import matplotlib.pyplot as plt  # lazy: importing labhelper must stay fast

    mib = 1024 * 1024
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ts = [t for t, _, _ in samples]
    ax.plot(ts, [m / mib for _, m, _ in samples], color="#4c72b0", label="memory charged to the group")
    if limit:
        ax.axhline(limit / mib, color="#c44e52", linestyle="--", label=f"limit {limit // mib} MiB")
    kills = [t for (t, _, k), (_, _, k0) in zip(samples[1:], samples) if k > k0]
    for t in kills:
        ax.axvline(t, color="#c44e52", alpha=0.6)
        ax.annotate("OOM kill", (t, (limit or 1) / mib), xytext=(4, -14), textcoords="offset points",
                    color="#c44e52", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "The kernel charges every page to the group, and stops it at the limit", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def cpu_shares(measured: dict[float, float], title: str | None = None):
    """CPU used by a busy loop at several quotas: bars for what was measured, a line for the quota."""
    import matplotlib.pyplot as plt  # lazy: importing labhelper must stay fast

    quotas = sorted(measured)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(q) for q in quotas], [measured[q] for q in quotas], color="#55a868", label="measured")
    ax.plot([str(q) for q in quotas], quotas, color="black", marker="_", markersize=30, linestyle="none",
            label="quota")
    ax.set_xlabel("quota (CPUs)")
    ax.set_ylabel("CPU used (CPUs)")
    ax.set_ylim(0, max(1.05, max(measured.values()) * 1.1))
    ax.set_title(title or "A busy loop gets its quota, not more", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def side_by_side(rows, unit: str, title: str, scale: float = 1.0):
    """Horizontal bars on a log scale: ``rows`` are (label, value, "container" or "vm"), drawn
    top to bottom, each value divided by ``scale`` and written beside its bar in ``unit``."""
    import matplotlib.pyplot as plt  # lazy: importing labhelper must stay fast
    from matplotlib.patches import Patch

    colours = {"container": "#4c72b0", "vm": "#dd8452"}
    rows = list(rows)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.3))
    values = [v / scale for _, v, _ in rows]
    ax.barh([label for label, _, _ in rows], values, color=[colours[side] for _, _, side in rows])
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 3, max(values) * 8)
    for i, v in enumerate(values):
        shown = f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"
        ax.annotate(f"{shown} {unit}", (v, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel(f"{unit} (log scale: each step is ten times more)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in colours.items()], loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig
