"""R28: every chapter runs top to bottom twice in a row on ONE kernel (a learner's "Run All" again),
without an unexpected error, and leaves nothing behind (the census fixture checks that)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]-*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_runs_twice_on_one_kernel(path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        for run in (1, 2):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                expected = "raises-exception" in cell.metadata.get("tags", [])
                try:
                    client.execute_cell(cell, index)     # a cell tagged raises-exception may raise
                except CellExecutionError as exc:
                    pytest.fail(f"run {run}, cell {index} of {path.name} failed:\n{str(exc)[-1500:]}")
                raised = any(out.get("output_type") == "error" for out in cell.outputs)
                if expected and not raised:
                    pytest.fail(f"run {run}, cell {index} of {path.name} is tagged raises-exception, "
                                "but it ran without an error: what it shows is gone")
