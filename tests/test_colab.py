"""Every chapter's first cell on a simulated Colab: clone once, install only what is not importable,
harmless when run twice, retried after a failed install (cnetlib.colab)."""
import os
import subprocess
import sys
import types
from pathlib import Path

import jupytext
import pytest

from cnetlib import colab

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def first_cell(py: Path) -> str:
    return next(c.source for c in jupytext.read(py).cells if c.cell_type == "code")


def test_missing_modules_checks_importability(monkeypatch):
    assert colab.missing_modules(("sd",)) == []                      # this environment has everything
    monkeypatch.setitem(sys.modules, "diffusers", None)               # as if it were not installed
    assert colab.missing_modules(("sd",)) == ["diffusers"] and colab.missing_modules() == []
    with pytest.raises(ValueError, match=r"expected names from \['sd'\], got \['book'\]"):
        colab.missing_modules(("book",))


def test_ensure_installed_runs_pip_only_for_what_is_missing_and_retries_after_a_failure(monkeypatch):
    calls = []

    def pip_ok(cmd, **kw):
        calls.append(cmd)
        monkeypatch.delitem(sys.modules, "diffusers")                 # the install made it importable
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def pip_down(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nNetwork is unreachable")

    assert colab.ensure_installed(ROOT, ("sd",), run=pip_ok) == [] and calls == []   # nothing missing: no pip
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(RuntimeError, match="still missing: diffusers.*Network is unreachable.*rerun this cell"):
        colab.ensure_installed(ROOT, ("sd",), run=pip_down)
    assert colab.ensure_installed(ROOT, ("sd",), run=pip_ok) == ["diffusers"]        # the rerun retries
    assert calls[-1][-2:] == ["-e", f"{ROOT}[sd]"] and len(calls) == 2
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install ipywidgets"):
        colab.ensure_installed(ROOT, run=pip_ok)
    with pytest.raises(FileNotFoundError, match="delete the folder and rerun the cell"):
        colab.ensure_installed(ROOT / "chapters", run=pip_ok)


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_first_cell_on_a_simulated_colab_clones_once_and_runs_twice(py, tmp_path, monkeypatch):
    ran = []

    def fake_run(cmd, *a, **kw):
        ran.append(cmd)
        if cmd[:2] == ["git", "clone"]:                                # the clone: a link to this checkout
            os.symlink(ROOT, cmd[-1])
        elif cmd[:2] == ["rm", "-rf"]:
            assert not Path(cmd[-1]).exists() or Path(cmd[-1]).is_dir()
            subprocess.call(["rm", "-rf", cmd[-1]])
        else:
            raise AssertionError(f"unexpected command on a runtime that has every module: {cmd}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "controlnet-book").mkdir()                             # a clone that failed halfway
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = first_cell(py)
    assert "ensure_installed(book" in source and ('extras=("sd",)' in source) == (py.name[:2] in ("07", "08"))
    for _ in range(2):
        exec(compile(source, str(py), "exec"), {"__name__": "__main__"})
    assert [c[:2] for c in ran] == [["rm", "-rf"], ["git", "clone"]]   # cloned once, pip never needed
    assert sys.path.count(str(tmp_path / "controlnet-book")) == 1 and sys.path[0] == str(tmp_path / "controlnet-book")


def test_every_chapter_has_the_same_colab_cell_but_its_extras():
    cells = {first_cell(py).replace('extras=("sd",)', "extras=()") for py in CHAPTERS}
    assert len(cells) == 1, "the chapters' Colab cells differ: keep them one cell (cnetlib.colab does the work)"
