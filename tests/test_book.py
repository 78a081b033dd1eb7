"""The book's layout: every chapter is a jupytext pair in sync, built as a course (a Colab badge,
a diagram, predict prompts, takeaways, a length read in one sitting), and smoke mode works."""
import re
from pathlib import Path

import jupytext
import pytest

from book_files import APPENDICES, CHAPTERS, NOTEBOOKS
from cnetlib import runtime


def cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/NN_slug.py found"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_pair_is_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{py.name} has no paired notebook {ipynb.name}: run `make sync`"
    a, b = cells(jupytext.read(py)), cells(jupytext.read(ipynb))
    assert a == b, f"{py.name} and {ipynb.name} differ: run `make sync` (then `make book` for outputs)"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_starts_with_colab_cell_and_reads_smoke_mode(py):
    code = [c.source for c in jupytext.read(py).cells if c.cell_type == "code"]
    assert "google.colab" in code[0], "the first code cell must be the Colab install cell"
    assert any("smoke_mode()" in c for c in code[:3]), "the chapter must read smoke mode from cnetlib"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_sliders_redraw_on_release_not_on_every_pixel_of_a_drag(py):
    """Every figure behind a slider takes seconds to draw: continuous updates would queue one per pixel."""
    import ast

    for node in ast.walk(ast.parse("\n".join(c.source for c in jupytext.read(py).cells if c.cell_type == "code"
                                              and not c.source.lstrip().startswith(("%", "!"))))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "").endswith("Slider"):
            keywords = {k.arg: k.value for k in node.keywords}
            assert "continuous_update" in keywords and keywords["continuous_update"].value is False, \
                f"{py.name} line {node.lineno}: widgets.{node.func.attr} needs continuous_update=False"


def test_the_browser_check_finds_the_widget_chapters_and_names_a_missing_chromium(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("browser_check", CHAPTERS[0].parent.parent / "tools" / "browser_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    found = [nb.stem for nb in check.widget_chapters()]
    assert found == [py.stem for py in CHAPTERS if "interactive_output" in py.read_text()] and len(found) >= 5
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit, match="no Chromium found.*apt install chromium.*CHROMIUM="):
        check.find_chromium()


def test_the_colab_cell_is_one_cell_in_every_chapter():
    """The bootstrap cell cannot import cnetlib before it has cloned it, so each chapter carries it;
    it must stay word for word the same (only the extras differ), so a fix lands in all of them."""
    import re

    first = {py.name: re.sub(r'extras=\([^)]*\)', "extras=…", next(c.source for c in jupytext.read(py).cells
                                                                      if c.cell_type == "code"))
             for py in NOTEBOOKS}
    assert len(set(first.values())) == 1, f"the Colab cells differ: {sorted(first)}"


MACHINE_TRACES = ("/work/", "/home/", "/root/", "/tmp/", "/Users/", "C:\\", "site-packages", "dist-packages")


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_machine_paths_or_warnings(py):
    import json

    nb = json.loads(py.with_suffix(".ipynb").read_text())
    found = []
    for k, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            found += [f"cell {k}: {t!r}" for t in MACHINE_TRACES if t in text]
            if out.get("name") == "stderr" and "Warning" in text:
                found.append(f"cell {k}: a warning on stderr: {text.strip().splitlines()[0][:120]!r}")
    assert not found, f"{py.with_suffix('.ipynb').name}: committed outputs show " + "; ".join(found)


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


def test_execute_notebooks_keeps_widget_output_and_never_overwrites_on_error(tmp_path):
    import importlib.util

    import nbformat
    from nbclient.exceptions import CellExecutionError

    spec = importlib.util.spec_from_file_location("execute_notebooks", Path(__file__).parent.parent / "tools" / "execute_notebooks.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    slider = ("import ipywidgets as w\nfrom IPython.display import display\ns = w.IntSlider(value=3)\n"
              "display(w.VBox([s, w.interactive_output(lambda v: print('drawn', v), {'v': s})]))")
    good = tmp_path / "good.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)"),
                                                   nbformat.v4.new_code_cell(slider)]), good)
    assert tool.main([str(good)]) == 0
    cells = nbformat.read(good, as_version=4).cells
    assert cells[0].outputs[0]["text"].strip() == "2"
    assert any("drawn 3" in o.get("text", "") for o in cells[1].outputs)   # the slider's first view is in the cell

    bad = tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('boom')")]), bad)
    before = bad.read_text()
    with pytest.raises(CellExecutionError, match="boom"):
        tool.main([str(bad)])
    assert bad.read_text() == before                  # a failed run leaves the notebook as it was
    assert tool.main([str(tmp_path / "missing.ipynb")]) == 2


# ----------------------------------------------------------------------------------
# A course, not a lab report (issue: "A course a learner can follow")
# ----------------------------------------------------------------------------------
COLAB = "https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/{}.ipynb"


def markdown(py) -> list[str]:
    return [c.source for c in jupytext.read(py).cells if c.cell_type == "markdown"]


def prose_words(py) -> int:
    """Words of the markdown cells, counted as runs of word characters (x_t, 10⁻³ and code
    quoted in the prose count too)."""
    return len(re.findall(r"\w+", "\n".join(markdown(py))))


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_opens_with_its_own_colab_badge(py):
    first = jupytext.read(py).cells[0]
    assert first.cell_type == "markdown" and COLAB.format(py.stem) in first.source and "colab-badge.svg" in first.source


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_draws_a_diagram_in_its_first_half(py):
    cells = jupytext.read(py).cells
    drawn = [k for k, c in enumerate(cells) if c.cell_type == "code" and "from cnetlib.diagrams import" in c.source]
    assert drawn, f"{py.name}: no diagram (cnetlib.diagrams)"
    assert drawn[0] < len(cells) / 2, f"{py.name}: the first diagram comes at cell {drawn[0]} of {len(cells)}"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_asks_to_predict_and_ends_with_takeaways(py):
    md = markdown(py)
    predicts = sum(m.count("**Predict before you run.**") for m in md)
    assert predicts >= 2, f"{py.name}: {predicts} predict-before-you-run prompts, expected at least 2"
    boxes = [m for m in md if "> **Key takeaways**" in m]
    assert len(boxes) == 1, f"{py.name}: expected one Key takeaways box"
    box = boxes[0][boxes[0].index("> **Key takeaways**"):].split("\n\n")[0]
    bullets = [line for line in box.splitlines() if line.startswith("> * ")]
    assert 3 <= len(bullets) <= 5, f"{py.name}: {len(bullets)} takeaways, expected 3 to 5"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_is_read_in_one_sitting(py):
    assert prose_words(py) <= 3000, f"{py.name}: {prose_words(py)} words of prose, expected at most 3,000 " \
                                    "(move history and long statistics to an appendix)"


def test_every_appendix_is_linked_from_its_chapter():
    for app in APPENDICES:
        chapter = next(py for py in CHAPTERS if py.stem[:2] == app.stem[1:3])
        assert f"({app.stem}.ipynb)" in chapter.read_text(), f"{chapter.name} does not link {app.name}"
