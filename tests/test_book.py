"""The book's layout: every chapter is a jupytext pair in sync, and smoke mode works."""
from pathlib import Path

import jupytext
import pytest

from cnetlib import runtime

CHAPTERS = sorted((Path(__file__).parent.parent / "chapters").glob("[0-9][0-9]_*.py"))


def cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/NN_slug.py found"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_chapter_pair_is_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{py.name} has no paired notebook {ipynb.name}: run `make sync`"
    a, b = cells(jupytext.read(py)), cells(jupytext.read(ipynb))
    assert a == b, f"{py.name} and {ipynb.name} differ: run `make sync` (then `make book` for outputs)"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_chapter_starts_with_colab_cell_and_reads_smoke_mode(py):
    code = [c.source for c in jupytext.read(py).cells if c.cell_type == "code"]
    assert "google.colab" in code[0], "the first code cell must be the Colab install cell"
    assert any("smoke_mode()" in c for c in code[:3]), "the chapter must read smoke mode from cnetlib"


def test_smoke_mode_and_pick(monkeypatch, tmp_path):
    monkeypatch.setenv("CNETLIB_SMOKE", "1")
    assert runtime.smoke_mode() and runtime.pick(100, 3) == 3
    monkeypatch.setenv("CNETLIB_SMOKE", "0")
    assert not runtime.smoke_mode() and runtime.pick(100, 3) == 100
    monkeypatch.delenv("CNETLIB_SMOKE")
    assert not runtime.smoke_mode()


def test_save_figure_writes_nothing_in_smoke_mode(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(runtime, "FIGURES_DIR", tmp_path)
    fig = plt.figure()
    monkeypatch.setenv("CNETLIB_SMOKE", "1")
    assert runtime.save_figure(fig, "x") is None and not (tmp_path / "x.png").exists()
    monkeypatch.setenv("CNETLIB_SMOKE", "0")
    assert runtime.save_figure(fig, "x") == tmp_path / "x.png" and (tmp_path / "x.png").stat().st_size > 0
    plt.close(fig)
