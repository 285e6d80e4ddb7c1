"""Which chapters exist, read from a notebooks folder (fake folders here), and everything a
learner sees of a chapter that does not exist yet: "coming" (issue 18)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from labhelper.errors import Refused
from labhelper.teach import chapters, diagrams, widgets
from labhelper.teach.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[2]


def fake_folder(tmp_path: Path, numbers) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for c in CHAPTERS:
        if c.number in numbers:
            (folder / c.notebook).write_text("{}")
    return folder


def test_a_chapter_exists_when_its_notebook_does(tmp_path):
    folder = fake_folder(tmp_path, {"00", "01", "02"})
    (folder / "07-draft-notes.txt").write_text("")  # not a notebook
    assert [c.number for c in chapters.available(folder)] == ["00", "01", "02"]
    assert chapters.exists("02", folder) and not chapters.exists("03", folder)
    (folder / "03-another-name.ipynb").write_text("{}")  # NN-*.ipynb: any slug
    assert chapters.exists("03", folder)
    with pytest.raises(Refused):
        chapters.exists("42", folder)


def test_the_notebooks_folder(tmp_path, monkeypatch):
    folder = fake_folder(tmp_path, {"00"})
    monkeypatch.setenv("LABHELPER_NOTEBOOKS", str(folder))
    assert chapters.notebooks_folder() == folder
    assert [c.number for c in chapters.available()] == ["00"]
    monkeypatch.delenv("LABHELPER_NOTEBOOKS")
    # In a checkout: the repository's notebooks/, whatever the current folder.
    monkeypatch.chdir(tmp_path)
    assert chapters.notebooks_folder() == ROOT / "notebooks"
    on_disk = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")}
    assert {c.number for c in chapters.available()} == on_disk


def test_no_folder_at_all_hides_no_chapter(monkeypatch):
    monkeypatch.setattr(chapters, "notebooks_folder", lambda: None)
    assert chapters.available() == CHAPTERS


def test_mention_and_next(tmp_path):
    folder = fake_folder(tmp_path, {"00", "01", "02", "03", "04", "05", "06"})
    assert chapters.mention("05", folder) == "chapter 05"
    assert chapters.mention("07", folder) == "chapter 07 (coming)"
    assert chapters.up_next("02", folder) == "Next: 03 · Namespaces."
    assert chapters.up_next("06", folder) == "Next: 07 · A container by hand, coming: this chapter is not written yet."
    assert chapters.up_next("08", folder) == "This was the last chapter."


def test_the_course_map_says_coming(tmp_path):
    import re
    folder = fake_folder(tmp_path, {"00", "01", "02"})
    source = diagrams.course_map(done={"00"}, folder=folder).source
    for c in CHAPTERS:
        node = re.search(rf'^\s*"{c.number}" \[label=[\s\S]*?\];$', source, re.M).group(0)
        assert ("coming" in node) == (c.number not in {"00", "01", "02"}), node
        assert ("dashed" in node) == ("coming" in node), node
    assert 'fillcolor="#d4f4dd"' in re.search(r'^\s*"00" \[[\s\S]*?\];$', source, re.M).group(0)  # done
    everything = fake_folder(tmp_path / "all", {c.number for c in CHAPTERS}) if not (tmp_path / "all").mkdir() else None
    assert "coming" not in diagrams.course_map(folder=everything).source


def test_the_chapter_slider_says_coming(tmp_path):
    folder = fake_folder(tmp_path, {"00", "01", "02", "03", "04", "05", "06"})
    seven, three = chapters.chapter("07"), chapters.chapter("03")
    line = widgets.chapter_line(seven, missing=set(), folder=folder)
    assert "Coming: this chapter is not written yet." in line and "runs in full" not in line
    assert "On this machine it runs in full." in widgets.chapter_line(three, missing=set(), folder=folder)
    line = widgets.chapter_line(three, missing={"userns"}, folder=folder)
    assert "explains and skips its live cells (missing: userns)" in line


def test_exercise_feedback_says_coming(tmp_path, monkeypatch):
    from labhelper.exercises import ch00
    monkeypatch.setenv("LABHELPER_NOTEBOOKS", str(fake_folder(tmp_path, {"00", "01"})))
    facts = type("F", (), {"cgroup": type("C", (), {"mode": "v2"})(), "kvm": type("K", (), {"flavour": "kvm_amd"})()})()
    monkeypatch.setattr(ch00.host, "facts", lambda: facts)
    assert "chapter 05 (coming) shows" in str(ch00.q1.check("v2"))
    assert "chapter 02 (coming) runs" in str(ch00.q2.check("kvm_amd"))


# ----------------------------------------------------------------------------- trust


def test_course_notebooks_are_the_chapters_only(tmp_path):
    originals = fake_folder(tmp_path, {"00", "01", "02"})
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in originals.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "lab-smoke.ipynb").write_text("{}")                       # not the course's
    (copy / "01-kernel-and-system-calls.ipynb").write_text('{"x": 1}')  # changed outside JupyterLab
    os.symlink(copy / "00-start-here.ipynb", copy / "03-namespaces.ipynb")  # a link: never
    names = [p.name for p in chapters.course_notebooks(copy, originals)]
    assert names == ["00-start-here.ipynb", "02-hypervisors.ipynb"]
    # Without originals (make lab serves the course's own folder): the chapters by their names.
    assert [p.name for p in chapters.course_notebooks(originals)] == [
        "00-start-here.ipynb", "01-kernel-and-system-calls.ipynb", "02-hypervisors.ipynb"]


def test_trust_runs_jupyter_trust_on_exactly_those(tmp_path):
    folder = fake_folder(tmp_path, {"00", "02"})
    (folder / "mine.ipynb").write_text("{}")
    log = tmp_path / "log"
    jupyter = tmp_path / "jupyter"
    jupyter.write_text(f'#!/bin/sh\necho "$@" "HOME=$HOME" >> {log}\n')
    jupyter.chmod(jupyter.stat().st_mode | stat.S_IXUSR)
    signed = chapters.trust(folder, jupyter=jupyter, env={"HOME": "/srv/lab", "PATH": os.environ["PATH"]})
    assert [p.name for p in signed] == ["00-start-here.ipynb", "02-hypervisors.ipynb"]
    assert log.read_text().split() == ["trust", *map(str, signed), "HOME=/srv/lab"]


def test_trust_signs_for_the_server_that_serves_them(tmp_path):
    """The real `jupyter trust`: afterwards the notary of that data folder trusts the copy."""
    import shutil
    import sys
    jupyter = Path(sys.executable).with_name("jupyter")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbformat.sign")
    if not jupyter.exists() or shutil.which("dot") is None:
        pytest.skip("needs the venv's jupyter")
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy2(ROOT / "notebooks" / "00-start-here.ipynb", folder)
    env = dict(os.environ, JUPYTER_DATA_DIR=str(tmp_path / "data"))
    chapters.trust(folder, originals=ROOT / "notebooks", jupyter=jupyter, env=env)
    from nbformat.sign import NotebookNotary
    notary = NotebookNotary(data_dir=str(tmp_path / "data"))
    nb = nbformat.read(str(folder / "00-start-here.ipynb"), as_version=4)
    assert notary.check_signature(nb)
    assert json.loads((folder / "00-start-here.ipynb").read_text())  # the file itself is unchanged JSON
