"""Every measured-looking number in a chapter's prose comes from one of its cells.

A number in a markdown cell (a decimal such as 0.92, a percentage such as 45 %, a
ratio such as 5.1×) must match, at the precision the prose writes it, a number that a
committed output of the same notebook prints or that its code states (an ``assert``
bound, a constant). Numbers that legitimately come from elsewhere (the paper's
figures, a library's constants, a history the chapter labels as such) are listed in
``prose_numbers_allowed.txt`` with the reason, one per line.

Known limit: a prose number that matches some printed number by coincidence passes;
what this test catches is a number that nothing in the notebook printed or stated,
which is how "a third" above a cell printing 45 % gets written.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
ALLOWED = ROOT / "tests" / "prose_numbers_allowed.txt"

# a percentage, a ratio, or a decimal; not inside words, versions, section numbers (§3.4) or dates
PROSE_NUMBER = re.compile(r"(?<![\w.§/\-])(\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?×|\d+\.\d+)(?![\w.]*\d)")
ANY_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def allowed() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in ALLOWED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, number, reason = (part.strip() for part in line.split("|", 2))
            assert reason, f"{ALLOWED.name}: {line!r} gives no reason"
            out.setdefault(name, set()).add(number)
    return out


def notebook_text(path: Path) -> tuple[list[str], set[float]]:
    """The markdown cells, and every number the code and the committed outputs hold."""
    nb = json.loads(path.read_text())
    markdown, evidence = [], []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            markdown.append(source)
            continue
        evidence.append(source)
        for out in cell.get("outputs", []):
            evidence.append("".join(out.get("text", "")))
            evidence.append("".join(out.get("data", {}).get("text/plain", "")))
    numbers = {float(m.group().replace(",", "")) for m in ANY_NUMBER.finditer("\n".join(evidence))}
    return markdown, numbers


def prose_numbers(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)       # code blocks quote code, not results
    text = re.sub(r"`[^`]*`|\$[^$]*\$", "", text)                # code spans and LaTeX
    return [m.group(1) for m in PROSE_NUMBER.finditer(text)]


def supported(token: str, numbers: set[float]) -> bool:
    digits = token.rstrip("%× ").strip()
    value = float(digits)
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    candidates = [(value, decimals)]
    if token.endswith("%"):
        candidates.append((value / 100, decimals + 2))          # 45 % printed as 0.45 (or 0.4512)
    return any(round(n, d) == round(v, d) for v, d in candidates for n in numbers)


def test_the_checker_reads_prose_as_intended():
    md = "IoU 0.92 [0.91, 0.93], 45 % of samples, 5.1× faster, §3.4, chapter 04, torch 2.15.0, `0.77`, $0.5$"
    assert prose_numbers(md) == ["0.92", "0.91", "0.93", "45 %", "5.1×"]
    assert supported("45 %", {0.4512}) and supported("0.92", {0.9213}) and not supported("0.92", {0.95})
    assert supported("0.04", {0.04}) and not supported("a third" and "33 %", {0.45})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_comes_from_a_cell(path):
    markdown, numbers = notebook_text(path)
    numbers |= {abs(n) for n in numbers}                        # the prose writes −0.04 with a Unicode minus
    ok = allowed().get(path.stem, set())
    missing = [tok for md in markdown for tok in prose_numbers(md) if tok not in ok and not supported(tok, numbers)]
    assert not missing, (f"{path.name}: the prose states {missing}, which no cell printed or stated at that "
                         f"precision; interpolate or assert them, fix the prose, or (for the paper's figures "
                         f"and other outside constants) list them in {ALLOWED.name} with the reason")
