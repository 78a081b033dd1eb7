"""The README is a front door for learners, and its code runs (so its API example cannot rot)."""
import re
from pathlib import Path

from book_files import APPENDICES, CHAPTERS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COLAB = "https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/{}.ipynb"


def test_the_first_screen_says_what_you_learn_what_you_need_and_how_to_start():
    first = README[:README.index("## Chapters")]
    assert len(first.splitlines()) <= 40, f"{len(first.splitlines())} lines before the chapter table, expected ≤ 40"
    learn = re.findall(r"^\d\. \*\*", first, re.M)
    assert len(learn) == len(CHAPTERS), f"one line per chapter in 'You will learn': {len(learn)} for {len(CHAPTERS)}"
    for words in ("Prerequisites", "Python 3.10", "Hardware", "GPU", "git clone", "make lab", "make test"):
        assert words in first, f"the README's first screen does not say {words!r}"


def test_every_chapter_and_appendix_has_its_row_and_colab_badge():
    for py in CHAPTERS + APPENDICES:
        row = next((line for line in README.splitlines() if f"(chapters/{py.stem}.ipynb)" in line), None)
        assert row is not None, f"no README row links chapters/{py.stem}.ipynb"
        assert COLAB.format(py.stem) in row and "colab-badge.svg" in row, f"the row of {py.stem} has no Colab badge"


def test_every_python_block_of_the_readme_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (8, 3, 32, 32)   # the API example's result
