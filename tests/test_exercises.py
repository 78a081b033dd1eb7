"""The exercises' checkers (cnetlib.exercises): each one passes on its worked solution
(solutions/NN_*.py), says "not attempted" for the stub, fails on a plausible wrong answer,
and never raises into a notebook cell; every chapter has its exercises."""
import importlib.util
import math
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch

from cnetlib.exercises import EXERCISES, check, compare, Mismatch

from book_files import CHAPTERS, ROOT


def solutions() -> dict:
    out = {}
    for path in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")):
        spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.update(module.SOLUTIONS)
    return out


def stub(*args):
    raise NotImplementedError("your code here")


# Plausible wrong answers: the mistake a learner is likely to make, one per exercise.
WRONG = {
    "01.1": lambda eps, x_t, ab: (x_t - (1 - ab).sqrt() * eps,                          # forgot to divide by √ᾱ
                                  ab.sqrt() * eps - (1 - ab).sqrt() * (x_t - (1 - ab).sqrt() * eps)),
    "01.2": lambda ab: torch.log10(ab / (1 - ab)),                                     # log10, not the natural log
    "01.3": float(__import__("cnetlib.diffusion", fromlist=["x"]).linear_schedule().alphas_cumprod[500]),  # ᾱ, not √ᾱ
    "02.1": lambda dy, x: (torch.einsum("bohw,bihw->oi", dy, x) / (x.shape[0] * x.shape[2] * x.shape[3]),
                           dy.sum(dim=(0, 2, 3)), torch.zeros_like(x)),                # a mean, not a sum
    "02.2": 3e-3,                                                                      # section 3's lr, not this one
    "02.3": 1,                                                                         # one zero layer, not two
    "03.1": lambda F, Fc, Z1, Z2, x, c: F(x) + Z2(Fc(x)) + Z1(c),                      # condition added at the end
    "03.2": lambda layers: 1 + sum(k - 1 for k, _ in layers),                          # strides ignored
    "03.3": 9,                                                                         # the middle block forgotten
    "04.1": lambda a, b: np.logical_and(a, b).sum() / max(1, a.sum()),                 # intersection over |a|
    "04.2": lambda steps, y, level: next((s for s, v in zip(steps, y) if v >= level), None),  # first step above
    "04.3": lambda out, x0, noise, ab: ((out - noise) ** 2).mean(),                    # the ε target, not v
    "05.1": lambda step, steps, lr, schedule: lr * step,                               # cosine treated as constant
    "05.2": lambda a, b: float(sum(x is not None and (y is None or x < y) for x in a for y in b)),  # ties ignored
    "05.3": 1 / math.comb(8, 3) * 2,                                                   # the two-sided p
    "06.1": lambda hs, mw: [64 / h for h in hs],                                       # the literal formula
    "06.2": lambda n: [0.825 ** (n - 1 - i) for i in range(n)],                        # the reference code's form
    "06.3": 4 * 0.1,                                                                   # (β − 1) × something
    "07.1": lambda res, scales: [sum(s * r[i] for r, s in zip(res, scales)) / len(res) for i in range(len(res[0]))],
    "07.2": lambda t, cells: np.repeat(np.repeat(np.asarray(t)[..., ::t.shape[-2] // cells, ::t.shape[-2] // cells, :],
                                                 t.shape[-2] // cells, axis=-3), t.shape[-2] // cells, axis=-2),
    "08.1": lambda latent, levels, layers: [latent // 2 ** lv for lv in range(levels) for _ in range(layers)]
                                           + [latent // 2 ** (levels - 1)],           # one connection per ResNet
    "08.2": 64.0,                                                                      # the ×8 side, channels ignored
    "09.1": lambda nf, nt, b: b * (nf + nt),                                           # no gradients, no AdamW state
    "09.2": lambda bs, rank, world: (bs, slice(rank * bs, (rank + 1) * bs)),           # the global batch forgotten
}


def test_every_exercise_has_a_solution_and_a_wrong_answer():
    assert set(solutions()) == set(EXERCISES) == set(WRONG)


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_the_checker_passes_the_solution_and_fails_the_stub_and_a_wrong_answer(key, capsys):
    ex = EXERCISES[key]
    assert check(key, None).status == "not attempted"
    if ex.kind == "function":
        assert check(key, stub).status == "not attempted"
    wrong = check(key, WRONG[key])
    assert wrong.status == "fail", f"{key}: the wrong answer passed"
    assert "Hint:" in wrong.message and ex.hint in wrong.message
    right = check(key, solutions()[key])
    assert right.status == "pass", right.message
    printed = capsys.readouterr().out
    assert "not attempted" in printed and "✗" in printed and "✓" in printed   # each verdict is printed


def test_the_checker_never_raises_and_says_what_went_wrong():
    def crashes(eps, x_t, ab):
        return 1 / 0

    v = check("01.1", crashes)
    assert v.status == "fail" and "ZeroDivisionError" in v.message and "input 1" in v.message
    v = check("01.1", lambda v, x_t, ab: None)
    assert v.status == "fail" and "returned None" in v.message
    v = check("01.1", lambda v, x_t, ab: x_t)          # one tensor where a pair is expected
    assert v.status == "fail" and "tuple of 2 items" in v.message
    v = check("01.1", lambda v, x_t, ab: (x_t[..., :2], x_t))
    assert v.status == "fail" and "expected shape" in v.message
    assert check("01.3", "half").status == "fail"
    assert check("01.3", lambda: 0.5).status == "fail"
    assert check("99.9", 1.0).status == "fail"


def test_the_readers_function_cannot_change_the_references_inputs():
    def mutates(eps, x_t, ab):
        x_t.zero_()
        eps.zero_()
        return solutions()["01.1"](eps, x_t, ab)

    assert check("01.1", mutates).status == "fail"   # it computed on zeros; the reference on the real inputs


def test_compare_reports_where_and_by_how_much():
    with pytest.raises(Mismatch, match=r"index \(1,\): expected 2, got 2.5"):
        compare(np.array([1.0, 2.5]), np.array([1.0, 2.0]), 1e-6, 1e-6)
    with pytest.raises(Mismatch, match="item 1"):
        compare((1.0, 2.0), (1.0, 3.0), 1e-6, 1e-6)
    compare(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]), 1e-6, 1e-6)
    compare(None, None, 0, 0)
    with pytest.raises(Mismatch):
        compare(slice(0, 2), slice(0, 3), 0, 0)


def exercise_cells(py: Path) -> tuple[list[str], list[str]]:
    cells = jupytext.read(py).cells
    headings = [c.source for c in cells if c.cell_type == "markdown" and re.search(r"^### Exercise", c.source, re.M)]
    checks = re.findall(r'check\("(\d\d\.\d+)"', "\n".join(c.source for c in cells if c.cell_type == "code"))
    return headings, checks


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_ends_with_exercises_at_least_two_checked(py):
    headings, checks = exercise_cells(py)
    exercises = sum(len(re.findall(r"^### Exercise", h, re.M)) for h in headings)
    assert exercises >= 3, f"{py.name}: {exercises} exercises, expected at least 3"
    chapter = py.stem[:2]
    assert len(set(checks)) >= 2, f"{py.name}: {len(set(checks))} checked exercises, expected at least 2"
    assert all(k.startswith(chapter + ".") for k in checks), f"{py.name} checks another chapter's exercise: {checks}"
    assert set(checks) == {ex.key for ex in EXERCISES.values() if ex.chapter == chapter}, \
        f"{py.name}: the chapter's checks {sorted(set(checks))} and cnetlib.exercises disagree"
