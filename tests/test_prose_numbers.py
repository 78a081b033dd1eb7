"""Every measured-looking number in a chapter's prose comes from one of its cells.

A number in a markdown cell (a decimal such as 0.92, a percentage such as 45 %, a
ratio such as 5.1×) must match, at the precision the prose writes it, a number that a
committed output of the same notebook prints or that its code states (an ``assert``
bound, a constant). Numbers that legitimately come from elsewhere (the paper's
figures, a library's constants, a history the chapter labels as such) are listed in
``prose_numbers_allowed.txt`` with the reason, one per line.

Two kinds of numbers are read in words too:

* **durations** ("about 12 minutes", "almost four hours", "9 to 14 minutes", "under a
  minute"): each must agree, within what its qualifier allows, with a duration a
  committed output prints; the chapter's "Time on a 2-core CPU" line must agree with
  the notebook's own recorded execution time (first cell started to last cell done);
* **fractions in words** ("two fifths", "nine samples in ten", "a quarter"): each must
  be within 0.05 of a number the notebook prints or states.

Known limit: a prose number that matches some printed number by coincidence passes;
what this test catches is a number that nothing in the notebook printed or stated,
which is how "a third" above a cell printing 45 % gets written.
"""
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from book_files import NOTEBOOKS as SOURCES, ROOT

NOTEBOOKS = [py.with_suffix(".ipynb") for py in SOURCES]   # chapters and appendices, with their outputs
ALLOWED = ROOT / "tests" / "prose_numbers_allowed.txt"

# a percentage, a ratio, or a decimal; not inside words, versions, section numbers (§3.4) or dates
PROSE_NUMBER = re.compile(r"(?<![\w.§/\-])(\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?×|\d+\.\d+)(?![\w.]*\d)")
ANY_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")

WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
         "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40,
         "fifty": 50, "sixty": 60}
_COUNT = r"\d+(?:\.\d+)?|" + "|".join(sorted(WORDS, key=len, reverse=True))
UNITS = {"second": 1, "seconds": 1, "s": 1, "minute": 60, "minutes": 60, "min": 60, "hour": 3600, "hours": 3600, "h": 3600}
QUALIFIERS = ("about", "around", "roughly", "over", "more than", "almost", "nearly", "under", "less than", "within",
              "up to")
DURATION = re.compile(
    r"(?<![\w.])(?:(?P<q>" + "|".join(QUALIFIERS) + r")\s+)?(?:(?P<few>a few)|(?P<a>" + _COUNT + r"))"
    r"(?:\s*(?:–|-|to)\s*(?P<b>" + _COUNT + r"))?\s+(?P<u>seconds?|minutes?|min|hours?|s|h)(?![\w/])", re.I)
QUARTER_HOUR = re.compile(r"(?:(?P<q>" + "|".join(QUALIFIERS) + r")\s+)?a quarter of an hour", re.I)
FRACTION_WORDS = {"a half": 1 / 2, "a third": 1 / 3, "two thirds": 2 / 3, "a quarter": 1 / 4, "three quarters": 3 / 4,
                  "a fifth": 1 / 5, "two fifths": 2 / 5, "three fifths": 3 / 5, "four fifths": 4 / 5, "a tenth": 1 / 10}
FRACTION = re.compile(r"(?<![\w-])(" + "|".join(FRACTION_WORDS) + r")(?![\w-])", re.I)
IN_OF = re.compile(r"(?<![\w-])(one|two|three|four|five|six|seven|eight|nine)\s+(?:[a-z]+\s+){0,3}?(?:in|out of)\s+"
                   r"(two|three|four|five|six|seven|eight|nine|ten)(?![\w-])", re.I)


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
    markdown, evidence = notebook_parts(path)
    numbers = {float(m.group().replace(",", "")) for m in ANY_NUMBER.finditer("\n".join(evidence))}
    return markdown, numbers


def notebook_parts(path: Path) -> tuple[list[str], list[str]]:
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
    return markdown, evidence


def strip_code(markdown: str) -> str:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)       # code blocks quote code, not results
    text = re.sub(r"`[^`]*`|\$[^$]*\$|\]\([^)]*\)", "", text)      # code spans, LaTeX and link targets
    return re.sub(r"\b(?:[Ee]xercise|SD)\s+\d+\.\d+", "", text)     # exercise keys (01.4) and model names (SD 1.5)


def flat(text: str) -> str:
    """``text`` on one line (a wrapped comment's "#" dropped): phrases read across line breaks."""
    return text.replace("\n#", " ").replace("\n", " ")


def prose_numbers(markdown: str) -> list[str]:
    return [m.group(1) for m in PROSE_NUMBER.finditer(strip_code(markdown))]


def supported(token: str, numbers: set[float]) -> bool:
    digits = token.rstrip("%× ").strip()
    value = float(digits)
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    candidates = [(value, decimals)]
    if token.endswith("%"):
        candidates.append((value / 100, decimals + 2))          # 45 % printed as 0.45 (or 0.4512)
    return any(round(n, d) == round(v, d) for v, d in candidates for n in numbers)


# ----------------------------------------------------------------------------------
# Durations and fractions written in words
# ----------------------------------------------------------------------------------
def _count(word: str) -> float:
    return float(word) if word[0].isdigit() else float(WORDS[word.lower()])


def durations(text: str) -> list[dict]:
    """Each duration in ``text``: its words, qualifier and value in seconds (a range: low and high)."""
    text = flat(text)
    out = []
    quarters = [m.span() for m in QUARTER_HOUR.finditer(text)]
    for m in DURATION.finditer(text):
        if (m.group("a") or "").lower() in ("a", "an") and m.group("u").lower().startswith("s"):
            continue                                            # "a second ControlNet" is not a duration
        if any(a <= m.start() < b for a, b in quarters):
            continue                                            # the "an hour" of "a quarter of an hour"
        unit = UNITS[m.group("u").lower()]
        low, high = (2.0, 9.0) if m.group("few") else (_count(m.group("a")), _count(m.group("b") or m.group("a")))
        out.append({"text": m.group(0), "q": (m.group("q") or "").lower(), "low": low * unit, "high": high * unit,
                    "start": m.start()})
    for m in QUARTER_HOUR.finditer(text):
        out.append({"text": m.group(0), "q": (m.group("q") or "").lower(), "low": 900.0, "high": 900.0, "start": m.start()})
    return out


def duration_agrees(d: dict, evidence: list[float]) -> bool:
    """Does some evidence (seconds) bear out the prose duration ``d``, as its qualifier reads?"""
    low, high, q = d["low"], d["high"], d["q"]
    for e in evidence:
        if low != high and (0.8 * low <= e <= 1.25 * high):
            return True
        if q in ("", "about", "around", "roughly") and 0.6 * low <= e <= 1.6 * high:
            return True
        if q in ("over", "more than") and low <= e <= 4 * low:
            return True
        if q in ("almost", "nearly") and 0.75 * high <= e <= 1.02 * high:
            return True
        if q in ("under", "less than", "within", "up to") and 0 < e <= 1.02 * high:
            return True
    if low != high:   # a range both of whose ends are printed
        return any(abs(e - low) <= 0.05 * low for e in evidence) and any(abs(e - high) <= 0.05 * high for e in evidence)
    return False


def execution_seconds(path: Path) -> float | None:
    """The notebook's recorded execution time: first cell started to last cell done (nbclient's timestamps)."""
    stamps = []
    for cell in json.loads(path.read_text())["cells"]:
        ex = cell.get("metadata", {}).get("execution", {})
        stamps += [datetime.fromisoformat(v.replace("Z", "+00:00")) for k, v in ex.items()
                   if k in ("iopub.execute_input", "shell.execute_reply")]
    return (max(stamps) - min(stamps)).total_seconds() if len(stamps) >= 2 else None


def fractions(text: str) -> list[tuple[str, float]]:
    text = flat(strip_code(text))
    out = [(m.group(0), FRACTION_WORDS[m.group(1).lower()]) for m in FRACTION.finditer(text)
           if not text[m.end():m.end() + 8].startswith(" of an h")]
    out += [(m.group(0), WORDS[m.group(1).lower()] / WORDS[m.group(2).lower()]) for m in IN_OF.finditer(text)]
    return out


def test_the_checker_reads_prose_as_intended():
    md = "IoU 0.92 [0.91, 0.93], 45 % of samples, 5.1× faster, §3.4, chapter 04, torch 2.15.0, `0.77`, $0.5$"
    assert prose_numbers(md) == ["0.92", "0.91", "0.93", "45 %", "5.1×"]
    assert prose_numbers("Exercise 01.4 on SD 1.5 and SD 2.1, then 0.5") == ["0.5"]
    assert supported("45 %", {0.4512}) and supported("0.92", {0.9213}) and not supported("0.92", {0.95})
    assert supported("0.04", {0.04}) and not supported("a third" and "33 %", {0.45})


def test_the_checker_reads_durations_and_fractions_in_words():
    found = durations("takes over two hours, then almost four hours; 9 to 14 minutes each, under a minute, "
                      "about 5.5 h and a few minutes; 314 s in all; 2 seeds, h_i = 8, a second ControlNet, "
                      "within a quarter of an hour")
    assert [(d["q"], d["low"], d["high"]) for d in found] == [
        ("over", 7200, 7200), ("almost", 14400, 14400), ("", 540, 840), ("under", 60, 60), ("about", 19800, 19800),
        ("", 120, 540), ("", 314, 314), ("within", 900, 900)]
    over_two, almost_four, nine_to_14, under_one = found[:4]
    assert duration_agrees(almost_four, [230 * 60]) and not duration_agrees(almost_four, [2 * 3600])
    assert duration_agrees(over_two, [230 * 60]) and not duration_agrees(over_two, [100 * 60])
    assert duration_agrees(nine_to_14, [9 * 60, 14 * 60]) and not duration_agrees(nine_to_14, [30 * 60])
    assert duration_agrees(under_one, [41]) and not duration_agrees(under_one, [75])
    assert [v for _, v in fractions("about two fifths of the model, nine samples out of ten, a quarter of an hour, "
                                    "three disks in four")] == [0.4, 0.9, 0.75]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_comes_from_a_cell(path):
    markdown, numbers = notebook_text(path)
    numbers |= {abs(n) for n in numbers}                        # the prose writes −0.04 with a Unicode minus
    ok = allowed().get(path.stem, set())
    missing = [tok for md in markdown for tok in prose_numbers(md) if tok not in ok and not supported(tok, numbers)]
    assert not missing, (f"{path.name}: the prose states {missing}, which no cell printed or stated at that "
                         f"precision; interpolate or assert them, fix the prose, or (for the paper's figures "
                         f"and other outside constants) list them in {ALLOWED.name} with the reason")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_duration_in_the_prose_is_borne_out_by_a_cell(path):
    markdown, evidence = notebook_parts(path)
    printed = [v for text in evidence for d in durations(text) for v in {d["low"], d["high"]}]
    total = execution_seconds(path)
    ok = allowed().get(path.stem, set())
    wrong = []
    for md in markdown:
        text = flat(strip_code(md))
        found = durations(text)
        marker = text.find("Time on a 2-core CPU")
        first_after = min((d["start"] for d in found if marker >= 0 and d["start"] > marker), default=None)
        for d in found:
            if d["text"] in ok:
                continue
            header = d["start"] == first_after                 # the chapter's own running time
            if not duration_agrees(d, [total] if header and total else printed + ([total] if total else [])):
                wrong.append(d["text"] + (f" (the notebook ran {total / 60:.1f} min)" if header and total else ""))
    assert not wrong, (f"{path.name}: the prose states the durations {wrong}, which no output bears out; print the "
                       f"time where it is measured, fix the prose, or list it in {ALLOWED.name} with the reason")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_fraction_in_words_comes_from_a_cell(path):
    markdown, numbers = notebook_text(path)
    numbers |= {abs(n) for n in numbers} | {abs(n) / 100 for n in numbers}
    ok = allowed().get(path.stem, set())
    wrong = [words for md in markdown for words, value in fractions(md)
             if words not in ok and not any(abs(n - value) <= 0.05 for n in numbers)]
    assert not wrong, (f"{path.name}: the prose says {wrong}, which no number the notebook prints or states is "
                       f"within 0.05 of; print it, fix the prose, or list it in {ALLOWED.name} with the reason")
