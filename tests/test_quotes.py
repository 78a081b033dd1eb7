"""Code a chapter quotes is the library's code: no quote drifts from what runs.

A ```` ```python ```` block in a chapter's markdown must be lines of one ``cnetlib`` file,
in order (whitespace aside; a line ``...`` marks lines left out), so a change to the
library that is not carried into the chapter's quote fails here.
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
from book_files import NOTEBOOKS as CHAPTERS  # chapters and appendices
LIBRARY = {p: [" ".join(line.split()) for line in p.read_text().splitlines()] for p in (ROOT / "cnetlib").rglob("*.py")}


def quotes(chapter: Path) -> list[list[str]]:
    """The python blocks of a chapter's markdown (percent format: markdown lines start with "# ")."""
    blocks, current = [], None
    for line in chapter.read_text().splitlines():
        text = line[2:] if line.startswith("# ") else line[1:] if line == "#" else None
        if text is None:
            current = None
            continue
        if current is None and text.strip() == "```python":
            current = []
        elif current is not None and text.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(text)
    return blocks


def in_order(quote: list[str], lines: list[str]) -> bool:
    k = 0
    for q in (" ".join(q.split()) for q in quote):
        if q in ("", "...", "# ..."):
            continue
        while k < len(lines) and lines[k] != q:
            k += 1
        if k == len(lines):
            return False
        k += 1
    return True


def test_the_checker_finds_blocks_and_order():
    assert in_order(["a = 1", "...", "b  =  2"], ["x", "a = 1", "y", "b = 2"])
    assert not in_order(["b = 2", "a = 1"], ["a = 1", "b = 2"])
    assert quotes(ROOT / "chapters" / "02_zero_convolution.py")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_quoted_block_is_in_the_library(chapter):
    for block in quotes(chapter):
        homes = [p.relative_to(ROOT) for p, lines in LIBRARY.items() if in_order(block, lines)]
        assert homes, f"{chapter.name}: this quote is in no cnetlib file (update it from the library):\n" + \
            "\n".join(block)
