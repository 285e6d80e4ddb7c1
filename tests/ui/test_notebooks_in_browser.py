"""Every chapter, opened and run in a real browser the way a learner runs it.

For each notebook: open it in JupyterLab, wait for its kernel, Run All Cells from the menu,
wait until the kernel is idle and no cell is still queued, then check what the learner sees:
no error output (except in cells tagged `raises-exception`, whose error is the lesson), every
widget rendered, every graphviz diagram drawn. A slider is moved and the kernel is asked for
its value, so the widget round trip (browser -> comm -> kernel) is proven, not assumed.

Before anything runs, a chapter opened fresh must show its committed diagrams as pictures
(the course's notebooks are trusted, as a learner's setup trusts them), not their text
fallback `<diagram: ...>`. Fresh and after the run, no output may be wider than its cell (a
learner at 1366x768 would scroll sideways), and every markdown table's rows must have the
header's number of columns.

A small notebook made here (`lab-smoke.ipynb`: a slider, a diagram, an expected error and a
planted one) runs first: it proves that these checks work, and that they can fail.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_tables import notebook_table_problems

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
RUN_TIMEOUT = 150.0  # seconds for one notebook's Run All; chapters are small by design
# Every wait below is multiplied by this: 1 here; the lab VM stage (tests/labvm) raises it, its
# JupyterLab and kernels running under QEMU's software CPU, many times slower.
SLOWDOWN = 1.0
SETTLE = 0.5  # idle must hold this long: a widget callback may start right after a cell ends
COURSE = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
PROBE_MARK = "LH-SLIDER-VALUES"
# Asks the kernel for the value of every live slider. One line: typed into the editor as is.
PROBE = (
    "import gc, json, ipywidgets as _w; print('" + PROBE_MARK + "', json.dumps(sorted(repr(o.value) "
    "for o in gc.get_objects() if isinstance(o, (_w.IntSlider, _w.FloatSlider)) and o.comm)))"
)
# The error output of a cell, as JupyterLab renders it: the traceback becomes stderr text.
# Its last line names the exception: "ZeroDivisionError: ...", "KeyboardInterrupt".
ERROR_LINE = re.compile(r"^\s*(?:\w+\.)*\w+(?:Error|Exception|Interrupt)(?::|$)", re.M)


@dataclass(frozen=True)
class Problem:
    cell: int  # index in the notebook, 0-based
    source: str  # first line of the cell
    text: str  # what the learner sees

    def __str__(self) -> str:
        return f"cell {self.cell} ({self.source!r}): {self.text[:400]}"


# ----------------------------------------------------------------------------- driving the lab


def open_notebook(page, lab, name: str):
    # File > Open from Path..., as a learner would; the page fixture closed every other tab.
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Open from Path")).click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input").fill(name)
    dialog.locator("button", has_text="Open").click()
    page.locator(".lm-TabBar-tab.jp-mod-current", has_text=name).wait_for(timeout=60_000 * SLOWDOWN)
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    panel.wait_for(state="visible", timeout=60_000 * SLOWDOWN)
    wait_kernel_ready(lab, name)
    return panel


def wait_kernel_ready(lab, name: str, timeout: float = 60.0) -> None:
    """The notebook's kernel is started, connected to this page, and idle.

    The page's own indicator says "idle" before the kernel is connected, and a Run All sent
    then is lost: ask the server, which knows both.
    """
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    kernel = None
    while time.monotonic() < deadline:
        for session in lab.api("GET", "/api/sessions") or []:
            if session.get("path", "").endswith(name):
                kernel = session["kernel"]
                if kernel["execution_state"] == "idle" and kernel.get("connections", 0) >= 1:
                    return
        time.sleep(0.2)
    pytest.fail(f"the kernel of {name} was not ready within {timeout:.0f} s (last seen: {kernel})")


def wait_idle(page, lab, name: str, timeout: float = RUN_TIMEOUT) -> None:
    """Every queued cell has run and the kernel is idle, and that held for SETTLE seconds."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        queued = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt", has_text="[*]").count()
        indicator = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator").first
        status = indicator.get_attribute("data-status") if indicator.count() else "idle"
        server_idle = any(
            s["kernel"]["execution_state"] == "idle"
            for s in lab.api("GET", "/api/sessions") or []
            if s.get("path", "").endswith(name)
        )
        if queued == 0 and status == "idle" and server_idle:
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= SETTLE:
                return
        else:
            calm_since = None
        time.sleep(0.25)
    pytest.fail(f"{name}: still running after {timeout:.0f} s "
                f"({page.locator('.jp-InputPrompt', has_text='[*]').count()} cells queued)")


def run_all(page, lab, name: str) -> None:
    # The committed outputs and prompts ([1]:, [2]:) would look like a finished run: clear
    # them first, so every output and prompt on the page comes from this run.
    page.get_by_role("menuitem", name="Edit", exact=True).click()
    page.get_by_role("menuitem", name="Clear Outputs of All Cells", exact=True).click()
    # The menu, as a learner does it: Run > Run All Cells.
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # Run All marks every code cell queued at once: wait to see it start, then to see it end.
    code_prompts = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt")
    if code_prompts.count():
        page.wait_for_function(
            """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
                     .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""",
            timeout=30_000 * SLOWDOWN,
        )
    wait_idle(page, lab, name)


def save(page, lab, name: str) -> dict:
    """Save the notebook and read it back from the server: the outputs exactly as the page has them."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_function(
        "() => !document.querySelector('.jp-mod-current.jp-mod-dirty, .lm-TabBar-tab.jp-mod-dirty')",
        timeout=20_000 * SLOWDOWN,
    )
    return lab.notebook(name)


def cell_source(cell: dict) -> str:
    text = "".join(cell.get("source", ""))
    return text.splitlines()[0] if text.strip() else ""


def expected_errors(cell: dict) -> bool:
    return "raises-exception" in cell.get("metadata", {}).get("tags", [])


# ----------------------------------------------------------------------------- what is seen


def error_problems(page, notebook: dict) -> list[Problem]:
    """Errors the learner would see, from the page and from the saved outputs.

    In the page, JupyterLab renders a cell's error as stderr text (data-mime-type
    application/vnd.jupyter.stderr) holding the traceback; an explicit error mime type is
    checked too in case a renderer keeps it. The saved notebook says it without guessing:
    an output of type "error".
    """
    dom = page.evaluate(
        """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')].map(cell =>
               [...cell.querySelectorAll(
                   '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"],' +
                   '.jp-RenderedText[data-mime-type*=error]')]
               .map(o => [o.getAttribute('data-mime-type'), o.innerText]))"""
    )
    cells = notebook["cells"]
    assert len(dom) == len(cells), (
        f"the page shows {len(dom)} cells, the notebook has {len(cells)}: "
        "is every cell rendered (windowingMode none)?"
    )
    problems = []
    for index, (cell, outputs) in enumerate(zip(cells, dom)):
        if expected_errors(cell):
            continue
        for mime, text in outputs:
            if "error" in mime or "Traceback" in text or ERROR_LINE.search(text):
                problems.append(Problem(index, cell_source(cell), text))
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(Problem(index, cell_source(cell),
                                        f"{output.get('ename')}: {output.get('evalue')}"))
    return problems


def widget_problems(page, notebook: dict) -> list[str]:
    """Every widget output of the run is drawn as a widget, not as its text fallback."""
    wanted = sum(
        1 for cell in notebook["cells"] for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    )
    drawn = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output:has(.jupyter-widgets)").count()
    problems = []
    if drawn < wanted:
        problems.append(f"{wanted} widget outputs, only {drawn} drawn (is jupyterlab_widgets installed?)")
    broken = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output",
                          has_text=re.compile("Error displaying widget|Loading widget")).count()
    if broken:
        problems.append(f"{broken} widgets show 'Error displaying widget' or 'Loading widget'")
    return problems


def graphviz_outputs(notebook: dict) -> int:
    """Outputs holding a graphviz SVG: as image/svg+xml (graphviz's own objects), or as an HTML
    <img> of one (labhelper's Diagram)."""
    def graphviz(data: dict) -> bool:
        svg = "".join(data.get("image/svg+xml", ""))
        html = "".join(data.get("text/html", ""))
        return "graphviz" in svg or ("data:image/svg+xml" in html and "graphviz" in html)

    return sum(1 for cell in notebook["cells"] for output in cell.get("outputs", [])
               if graphviz(output.get("data", {})))


def width_problems(page) -> list[str]:
    """Outputs wider than their cell: the learner would scroll sideways, and parts are cut off.

    For every output of the open notebook: its content overflows it (scrollWidth > clientWidth),
    or a picture in it (img, svg) reaches past the right edge of its cell.
    """
    found = page.evaluate(
        """() => {
             const out = [];
             const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
             cells.forEach((cell, index) => {
               const edge = cell.getBoundingClientRect().right;
               cell.querySelectorAll('.jp-OutputArea-output').forEach(o => {
                 if (o.scrollWidth > o.clientWidth + 1)
                   out.push(`cell ${index}: an output ${o.scrollWidth} px wide in ${o.clientWidth} px`);
                 o.querySelectorAll('img, svg').forEach(p => {
                   if (p.closest('svg') !== p && p.tagName.toLowerCase() === 'svg') return;  // nested svg
                   const r = p.getBoundingClientRect();
                   if (r.width > 0 && r.right > edge + 1)
                     out.push(`cell ${index}: a ${p.tagName.toLowerCase()} ${Math.round(r.width)} px wide ` +
                              `reaches ${Math.round(r.right - edge)} px past its cell`);
                 });
               });
             });
             return out;
           }"""
    )
    return found


def text_fallbacks(page) -> list[str]:
    """Outputs that show a diagram's text fallback (`<diagram: ...>`) instead of the picture."""
    return page.evaluate(
        """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
                 .map(o => o.innerText).filter(t => /<diagram: /.test(t))"""
    )


def rendered_table_problems(page) -> list[str]:
    """Rendered markdown tables with a row whose number of cells differs from the header's."""
    return page.evaluate(
        """() => {
             const out = [];
             document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedMarkdown table')
               .forEach(t => {
                 const rows = [...t.querySelectorAll('tr')];
                 if (!rows.length) return;
                 const width = rows[0].children.length;
                 rows.forEach((r, i) => {
                   if (r.children.length !== width)
                     out.push(`table "${rows[0].innerText.slice(0, 60)}": row ${i} has ${r.children.length} cells, the header ${width}`);
                 });
               });
             return out;
           }"""
    )


def trusted(lab, name: str) -> bool:
    """Whether the server trusts the notebook: it marks every code cell of the model it sends
    the page (metadata.trusted), and the page then shows the committed outputs as they are."""
    cells = lab.api("GET", f"/api/contents/{urllib.parse.quote(name)}?content=1")["content"]["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return bool(code) and all(c.get("metadata", {}).get("trusted") for c in code)


def check_fresh(page, lab, name: str, committed: dict, shots: Path) -> None:
    """A chapter just opened, nothing run: it is trusted (the course's own notebooks are, as in
    a learner's setup), its committed diagrams are drawn, nothing overflows."""
    assert trusted(lab, name), f"{name} is not trusted: its committed outputs will not all show (chapters.trust)"
    expected = graphviz_outputs(committed)
    if expected:
        # Images decode asynchronously: give them a moment.
        deadline = time.monotonic() + 10 * SLOWDOWN
        while drawn_diagrams(page) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
    page.screenshot(path=str(shots / "opened.png"))
    drawn = drawn_diagrams(page)
    fallbacks = text_fallbacks(page)
    assert drawn >= expected and not fallbacks, (
        f"{name} opened fresh: {expected} diagrams committed, {drawn} drawn; shown as text instead: "
        f"{fallbacks[:3]} (is the notebook trusted? see chapters.trust)")
    assert width_problems(page) == [], f"{name} opened fresh: outputs wider than their cells"


def drawn_diagrams(page) -> int:
    """Graphviz SVGs that the browser decoded into a real picture (naturalWidth > 0)."""
    images = page.evaluate(
        """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedSVG img, ' +
                                               '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedSVG svg, ' +
                                               '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedHTML img')]
               .map(e => e.tagName === 'IMG' ? [e.getAttribute('src'), e.naturalWidth]
                                             : [e.outerHTML, e.getBoundingClientRect().width])"""
    )
    count = 0
    for source, width in images:
        if source is None:
            continue  # an <img> whose source the sanitizer removed: not drawn
        if source.startswith("data:image/svg+xml;base64,"):
            source = base64.b64decode(source.split(",", 1)[1]).decode("utf-8", "replace")
        else:
            source = urllib.parse.unquote(source)
        if "graphviz" in source and width > 0:
            count += 1
    return count


def run_probe(page, lab, name: str) -> list[str]:
    """Add a cell at the end, run the probe in it, return the slider values the kernel has."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").last.click(position={"x": 2, "y": 2})
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # insert a cell below (command mode)
    page.keyboard.press("Enter")  # edit it
    page.keyboard.insert_text(PROBE)  # inserted as is: no auto-closing brackets
    page.keyboard.press("Shift+Enter")
    probe_cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell", has_text=PROBE_MARK).last
    probe_cell.locator(".jp-OutputArea-output", has_text=PROBE_MARK).wait_for(timeout=30_000 * SLOWDOWN)
    wait_idle(page, lab, name, timeout=30)
    text = probe_cell.locator(".jp-OutputArea-output").last.inner_text()
    match = re.search(re.escape(PROBE_MARK) + r" (\[.*\])", text)
    assert match, f"the probe printed {text!r}"
    return json.loads(match.group(1))


def move_first_slider(page) -> tuple[str, str]:
    """Press ArrowRight on the first slider's handle; return its value before and after."""
    handle = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider [role=slider]").first
    handle.scroll_into_view_if_needed()
    before = handle.get_attribute("aria-valuenow")
    maximum = handle.get_attribute("aria-valuemax")
    handle.focus()
    key = "ArrowLeft" if before == maximum else "ArrowRight"
    handle.press(key)
    page.wait_for_function(
        "([h, v]) => h.getAttribute('aria-valuenow') !== v",
        arg=[handle.element_handle(), before],
        timeout=10_000 * SLOWDOWN,
    )
    return before, handle.get_attribute("aria-valuenow")


def same_number(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return a == b


def check_slider_round_trip(page, lab, name: str, shots: Path) -> None:
    before_kernel = run_probe(page, lab, name)
    before, after = move_first_slider(page)
    wait_idle(page, lab, name)  # a slider may drive an interact() callback in the kernel
    page.screenshot(path=str(shots / "slider-moved.png"))
    after_kernel = run_probe(page, lab, name)
    assert any(same_number(v, before) for v in before_kernel), (
        f"the slider showed {before} but the kernel's sliders were {before_kernel}")
    assert any(same_number(v, after) for v in after_kernel), (
        f"the slider was moved from {before} to {after}, but the kernel's sliders are "
        f"{after_kernel}: the value did not reach the kernel")
    assert before_kernel != after_kernel, "the kernel saw no slider change"


def check_button_round_trip(page, lab, name: str, shots: Path) -> None:
    """Chapter 03's playground: tick `net`, click "start a child", and see the kernel's answer
    (the child's view, made in a real new network namespace) come back into the page."""
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    button = page.locator(f"{panel} .widget-button", has_text="start a child").first
    button.scroll_into_view_if_needed()
    page.locator(f"{panel} .widget-checkbox", has_text="net").first.locator("input").check()
    button.click()
    wait_idle(page, lab, name, timeout=60)
    view = page.locator(f"{panel} .widget-html", has_text="new namespaces:").first
    view.wait_for(timeout=30_000 * SLOWDOWN)
    page.screenshot(path=str(shots / "button-clicked.png"))
    text = view.inner_text()
    assert "new namespaces: uts, pid, net" in text, text
    row = [line for line in text.splitlines() if line.startswith("network interfaces (net)")]
    assert row and row[0].split("\t")[-1].strip() == "lo", text


def exercise(page, lab, name: str, shots: Path, on_open=None) -> tuple[dict, list[Problem]]:
    """Open, run all, screenshot, save; return the run notebook and the errors seen.
    ``on_open(page)`` checks the notebook as opened, before anything runs."""
    open_notebook(page, lab, name)
    if on_open is not None:
        on_open(page)
    else:
        page.screenshot(path=str(shots / "opened.png"))
    run_all(page, lab, name)
    page.screenshot(path=str(shots / "ran.png"), full_page=True)
    notebook = save(page, lab, name)
    problems = error_problems(page, notebook)
    if problems:
        first = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(problems[0].cell)
        first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "error.png"))
    return notebook, problems


def shut_kernel(lab, name: str) -> None:
    for session in lab.api("GET", "/api/sessions") or []:
        if session.get("path", "").endswith(name):
            lab.api("DELETE", f"/api/sessions/{session['id']}")


# ----------------------------------------------------------------------------- the tests


def make_smoke_notebook(path: Path) -> None:
    import nbformat

    v4 = nbformat.v4
    notebook = v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        v4.new_markdown_cell("# The lab's own smoke test"),
        v4.new_code_cell("import ipywidgets as w\nslider = w.IntSlider(value=3, min=0, max=10, description='n')\nslider"),
        v4.new_code_cell("import graphviz\ngraph = graphviz.Digraph()\ngraph.edge('process', 'kernel')\ngraph"),
        v4.new_code_cell("import sys\nprint('a warning is not an error', file=sys.stderr)"),
        v4.new_code_cell("1 / 0  # the lesson of this cell", metadata={"tags": ["raises-exception"]}),
        v4.new_code_cell("raise RuntimeError('planted: the UI test must see this')"),
    ]
    nbformat.write(notebook, str(path))


def test_the_checks_see_widgets_diagrams_and_errors(lab, page, screenshots: Path):
    name = "lab-smoke.ipynb"
    make_smoke_notebook(lab.root / name)
    fresh = {}

    def opened(page):
        # The smoke notebook is not the course's: it is not trusted, and so shows no diagram yet.
        fresh["drawn"] = drawn_diagrams(page)
        fresh["trusted"] = trusted(lab, name)
        page.screenshot(path=str(screenshots / "opened.png"))

    try:
        notebook, problems = exercise(page, lab, name, screenshots, on_open=opened)
        # Only the course's own notebooks are trusted: not this one, as not a learner's own.
        assert fresh == {"drawn": 0, "trusted": False}, fresh
        # Exactly the planted error, seen on the page and in the outputs; not the tagged
        # error (the lesson), not the warning on stderr.
        assert {p.cell for p in problems} == {5}, [str(p) for p in problems]
        assert len(problems) == 2 and all("planted" in p.text for p in problems), problems
        assert widget_problems(page, notebook) == []
        assert graphviz_outputs(notebook) == 1
        assert drawn_diagrams(page) == 1
        assert width_problems(page) == []
        # The width check can fail: a picture twice as wide as the page.
        page.evaluate("""() => { const i = document.querySelector(
                           '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedSVG img');
                         i.style.maxWidth = 'none'; i.style.width = (2 * window.innerWidth) + 'px'; }""")
        assert width_problems(page), "a picture wider than its cell was not seen"
        page.evaluate("""() => { const i = document.querySelector(
                           '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedSVG img');
                         i.style.width = ''; i.style.maxWidth = ''; }""")
        check_slider_round_trip(page, lab, name, screenshots)
    finally:
        shut_kernel(lab, name)
        (lab.root / name).unlink(missing_ok=True)


def check_chapter(page, lab, name: str, shots: Path) -> dict:
    """Open a chapter fresh, Run All, and check what the learner sees (the module's docstring);
    return the notebook as run and saved. Also used by the lab VM stage (tests/labvm)."""
    committed = json.loads((NOTEBOOKS / name).read_text())
    assert notebook_table_problems(committed) == [], f"{name}: markdown tables with broken rows"
    notebook, problems = exercise(page, lab, name, shots,
                                  on_open=lambda p: check_fresh(p, lab, name, committed, shots))
    assert not problems, f"{name}: errors shown to the learner:\n" + "\n".join(map(str, problems))
    assert widget_problems(page, notebook) == [], name
    assert width_problems(page) == [], f"{name}: outputs wider than their cells after the run"
    assert rendered_table_problems(page) == [], name
    expected = graphviz_outputs(committed)
    drawn = drawn_diagrams(page)
    assert drawn >= expected, (
        f"{name}: {expected} graphviz diagrams in the committed notebook, {drawn} drawn now")
    if page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider [role=slider]").count():
        check_slider_round_trip(page, lab, name, shots)
    if "NamespaceExplorer()" in (NOTEBOOKS / name).read_text():
        check_button_round_trip(page, lab, name, shots)
    return notebook


@pytest.mark.parametrize(
    "name", COURSE or [pytest.param("none", marks=pytest.mark.skip(reason="no notebooks/*.ipynb yet"))]
)
def test_chapter_runs_clean_in_the_browser(name: str, lab, page, screenshots: Path):
    try:
        check_chapter(page, lab, name, screenshots)
    finally:
        shut_kernel(lab, name)


@pytest.mark.skipif(not COURSE, reason="no notebooks/*.ipynb yet")
def test_the_course_has_a_slider_playground():
    """ARCHITECTURE.md, chapters: a widget playground where a learner would rather move a slider than edit code."""
    with_slider = [
        name for name in COURSE
        if "IntSlider" in (NOTEBOOKS / name).read_text() or "FloatSlider" in (NOTEBOOKS / name).read_text()
        or "interact" in (NOTEBOOKS / name).read_text()
    ]
    assert with_slider, "no chapter has an ipywidgets slider (notebook 00 should have one)"
