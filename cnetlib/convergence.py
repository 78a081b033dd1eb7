"""A sudden-convergence detector: when did a ControlNet start to follow its condition,
and how abruptly? (chapter 04)

The paper (Figure 4) shows samples that ignore the condition until, at some step
(6133 in its example), they suddenly follow it. We turn that into numbers. Given a
fidelity curve f(s) measured at steps s (the mean IoU of samples with their
condition's disk):

* ``start`` = f at the first evaluation, ``end`` = the mean of the last 10 % of the
  evaluations, ``gain`` = end − start. No convergence if gain < ``min_gain``.
* The curve is smoothed by a running median of 3 evaluations (one noisy evaluation
  neither makes nor breaks a jump).
* **step at q of the gain** (q = 10 %, 50 %, 90 %): the first step after which the
  smoothed curve *stays* at or above start + q · gain.
* **jump step**: the first step after which the smoothed curve stays above
  ``threshold`` (default: start + 50 % of the gain, i.e. the step at 50 %).
* **sharpness**: the largest share of the gain made within any window of
  ``window`` (default 10 %) of the run's length; and the 10 %→90 % width.
* **abrupt** when sharpness ≥ 0.5: half of everything learnt about the condition is
  learnt in a tenth of the run. A steady, linear rise scores about 0.1.

Per sample: the same detector on each sample's own IoU curve (its own start, end and
gain) gives each sample a switching step and a sharpness. The paper's Figure 4 is one
sample; the mean curve averages many. If every sample jumps abruptly but at its own
step, the mean rises gradually: the spread of the switching steps tells which it is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .checks import check_number


def running_median(y: Sequence[float], k: int = 3) -> np.ndarray:
    """Median over a centred window of ``k`` points (shrunk at the ends)."""
    y = np.asarray(y, dtype=float)
    h = k // 2
    return np.array([np.median(y[max(0, i - h): i + h + 1]) for i in range(len(y))])


def first_step_staying_above(steps: Sequence[int], y: Sequence[float], level: float) -> int | None:
    """The first step from which ``y`` is ≥ ``level`` at every later evaluation (None if never)."""
    steps, y = np.asarray(steps), np.asarray(y, dtype=float)
    below = np.nonzero(y < level)[0]
    if len(below) == 0:
        return int(steps[0])
    k = below[-1] + 1
    return int(steps[k]) if k < len(steps) else None


def first_step_above_for(steps: Sequence[int], y: Sequence[float], level: float, consecutive: int) -> int | None:
    """The online reading of a level: the first step at which ``y`` has been ≥ ``level`` at
    ``consecutive`` evaluations in a row (this one and the ones before it). Unlike
    :func:`first_step_staying_above` it uses only what a reader has seen by then, so it can
    fire during training, and fire falsely (chapter 05's pre-registered warning)."""
    check_number(consecutive, name="consecutive", low=1, integer=True)
    run = 0
    for step, value in zip(steps, np.asarray(y, dtype=float)):
        run = run + 1 if value >= level else 0
        if run >= consecutive:
            return int(step)
    return None


def window_trend(steps: Sequence[int], y: Sequence[float], per: int = 100) -> dict[str, float]:
    """A straight line fitted to ``y`` over one window of steps (chapter 04 compares the loss in
    equal windows before, across and after the jump): ``mean``, ``slope`` per ``per`` steps with
    its standard error ``slope_se``, and ``noise``, the scatter of the points around the line
    (their residual standard deviation). Two windows' slopes differ beyond their noise when
    |Δ slope| exceeds about 2·√(se₁² + se₂²)."""
    x, y = np.asarray(steps, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or len(x) != len(y):
        raise ValueError(f"steps, y: expected the same number of points, at least 3, got {len(x)} and {len(y)}")
    a = np.vstack([x, np.ones_like(x)]).T
    (slope, icept), *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ np.array([slope, icept])
    noise = float(np.sqrt((resid ** 2).sum() / (len(y) - 2)))
    se = noise / float(np.sqrt(((x - x.mean()) ** 2).sum()))
    return {"mean": float(y.mean()), "slope": float(slope) * per, "slope_se": se * per, "noise": noise, "n": len(y)}


@dataclass
class Jump:
    """What :func:`detect_jump` found (steps are training steps; None where not reached)."""

    converged: bool
    abrupt: bool
    jump_step: int | None
    start: float
    end: float
    gain: float
    step_10: int | None
    step_50: int | None
    step_90: int | None
    width_10_90: int | None
    sharpness: float
    window: float
    run_length: int

    def to_dict(self) -> dict:
        return asdict(self)


def detect_jump(steps: Sequence[int], fidelity: Sequence[float], *, threshold: float | None = None,
                window: float = 0.1, min_gain: float = 0.1, abrupt_share: float = 0.5) -> Jump:
    """Detect the jump in a fidelity curve (see the module docstring for every definition)."""
    steps = np.asarray(steps, dtype=int)
    f = np.asarray(fidelity, dtype=float)
    if steps.shape != f.shape or len(steps) < 3:
        raise ValueError(f"steps and fidelity: expected two sequences of one length >= 3, "
                         f"got lengths {len(steps)} and {len(f)}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps: expected strictly increasing steps")
    s = running_median(f)
    start = float(f[0])
    tail = max(1, len(f) // 10)
    end = float(f[-tail:].mean())
    gain = end - start
    length = int(steps[-1] - steps[0])
    if gain < min_gain:
        return Jump(False, False, None, start, end, gain, None, None, None, None, 0.0, window, length)
    at = {q: first_step_staying_above(steps, s, start + q * gain) for q in (0.1, 0.5, 0.9)}
    jump = at[0.5] if threshold is None else first_step_staying_above(steps, s, threshold)
    span = window * length
    best = 0.0
    for i in range(len(steps)):
        for j in range(i + 1, len(steps)):
            if steps[j] - steps[i] > span + 1e-9:
                break
            best = max(best, (s[j] - s[i]) / gain)
    width = at[0.9] - at[0.1] if at[0.9] is not None and at[0.1] is not None else None
    return Jump(True, bool(best >= abrupt_share), jump, start, end, gain, at[0.1], at[0.5], at[0.9], width,
                float(best), window, length)


def per_sample_jumps(steps: Sequence[int], per_sample: np.ndarray | Sequence[Sequence[float]],
                     **options) -> list[Jump]:
    """:func:`detect_jump` on each sample's own IoU curve (a column of ``per_sample``,
    shape (evaluations, samples)): its own start, end, gain, switching step and sharpness."""
    m = np.asarray(per_sample, dtype=float)
    if m.ndim != 2 or m.shape[0] != len(steps):
        raise ValueError(f"per_sample: expected shape ({len(steps)}, n_samples), got {m.shape}")
    return [detect_jump(steps, m[:, k], **options) for k in range(m.shape[1])]


def per_sample_switches(steps: Sequence[int], per_sample: np.ndarray | Sequence[Sequence[float]],
                        **options) -> list[int | None]:
    """Each sample's switching step (its own jump step), or None if it gained less than ``min_gain``."""
    return [j.jump_step for j in per_sample_jumps(steps, per_sample, **options)]


def summarize_per_sample(jumps: Sequence[Jump]) -> dict:
    """How many samples switched, when (quartiles of their jump steps) and how abruptly
    (median sharpness, share of abrupt switches among those that switched)."""
    on = [j for j in jumps if j.converged and j.jump_step is not None]
    if not on:
        return {"switched": 0.0, "q25": None, "median": None, "q75": None, "median_sharpness": None,
                "abrupt_share": None}
    q25, med, q75 = np.percentile([j.jump_step for j in on], [25, 50, 75])
    return {"switched": len(on) / len(jumps), "q25": float(q25), "median": float(med), "q75": float(q75),
            "median_sharpness": float(np.median([j.sharpness for j in on])),
            "abrupt_share": float(np.mean([j.abrupt for j in on]))}
