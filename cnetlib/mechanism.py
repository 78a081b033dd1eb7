"""Why is convergence sudden? A ControlNet measured along its training (chapter 05).

Chapter 04 shows *that* the sampled fidelity jumps. Here every snapshot of a training run
is measured twice over:

* **the network**, without sampling: how much lower the denoising loss is with the true
  condition c than with another image's (:meth:`MechanismProbe.condition_gain`, per band
  of noise levels), the connectors' per-weight RMS (:func:`cnetlib.probes.connector_rms`)
  and the size of the residuals r_i = Z(F(x + Z(c_f); Θc)) next to the frozen features
  h_i they are added to (:meth:`MechanismProbe.residual_ratio`);
* **the sampler**: each held-out outline sampled with many noise draws, so that every
  outline gets a probability of being followed (:meth:`MechanismProbe.following`), and the
  same with the control scaled by α (the sampler's ``conditioning_scale``).

If the network changes smoothly while the sampled fidelity jumps, the jump is made by
the sampler: a control signal that grows steadily crosses the level at which the 20
DDIM steps commit to the condition's layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_save
from .checks import check_number
from .controlled import ControlledUNet
from .controlnet import ControlNet
from .data import Fill50k, source_to_tensor, target_to_tensor
from .diffusion import make_schedule, prediction_target, q_sample
from .fidelity import condition_iou
from .guidance import Control, sample
from .unet import ToyUNet

#: Bands of the diffusion steps t (of T = 1000): where the noise is high, middle, low.
BANDS: dict[str, tuple[int, int]] = {"high noise": (667, 1000), "mid noise": (333, 667), "low noise": (0, 333)}


class Snapshots:
    """An ``on_step`` callback for :func:`cnetlib.train.train_controlnet`: keeps a copy of the
    ControlNet's weights every ``every`` steps (on the CPU, in memory), in ``states[step]``.

    With a ``folder``, each copy is also written there (``step000050.pt``, ...) and the ones
    already there are read back on creation, so a run interrupted and resumed in a new
    process still has every snapshot of its first part."""

    def __init__(self, every: int, folder: str | Path | None = None) -> None:
        self.every = check_number(every, name="every", low=1, integer=True)
        self.folder = None if folder is None else Path(folder)
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        if self.folder is not None and self.folder.is_dir():
            for path in sorted(self.folder.glob("step*.pt")):
                self.states[int(path.stem.removeprefix("step"))] = torch.load(path, weights_only=True)

    def keep(self, step: int, controlnet: ControlNet) -> None:
        self.states[step] = {k: v.detach().cpu().clone() for k, v in controlnet.state_dict().items()}
        if self.folder is not None:
            atomic_save(self.states[step], self.folder / f"step{step:06d}.pt")

    def __call__(self, step: int, controlnet: ControlNet) -> None:
        if step % self.every == 0:
            self.keep(step, controlnet)


def parameter_groups(controlnet: ControlNet) -> dict[str, list[torch.nn.Parameter]]:
    """The ControlNet's trainable parameters in the three parts chapter 05 follows: ``theta_z1``
    (the condition encoder's last conv Z(·; Θz1), the first door of the outline), ``connectors``
    (the zero convs Z(·; Θz2) into the frozen model) and ``copy`` (everything else: Θc and E's
    first layers)."""
    z1 = list(controlnet.condition_encoder.layers[-1].parameters())
    connectors = list(controlnet.zero_convs.parameters())
    taken = {id(p) for p in z1 + connectors}
    rest = [p for p in controlnet.parameters() if p.requires_grad and id(p) not in taken]
    return {"theta_z1": z1, "connectors": connectors, "copy": rest}


class GradientSNR:
    """An ``on_step`` callback for :func:`cnetlib.train.train_controlnet`: the signal-to-noise
    ratio of the gradients the optimiser sees (after clipping), per part of
    :func:`parameter_groups`, over consecutive windows of ``window`` steps (chapter 05).

    Over a window of W gradients g_k with mean ḡ, ``snr`` = ‖ḡ‖ / √(mean_k ‖g_k − ḡ‖² / (W − 1)):
    about 1 when the steps' gradients are pure noise around zero (the mean of W of them
    is √(W − 1) smaller than their spread), much more when they agree on a direction. Adam
    moves every weight by about lr per step whatever the gradient's size, so it is this
    agreement, not the gradient's size, that decides whether the steps add up. ``coord``
    is the same per weight (|ḡ_j| / (s_j / √(W − 1)), median over the part's weights) and
    ``rms`` the gradient's per-weight RMS. Rows go to ``records``: ``{"step": last step
    of the window, part: {"snr", "coord", "rms"}}``."""

    def __init__(self, window: int = 25) -> None:
        self.window = check_number(window, name="window", low=2, integer=True)
        self.records: list[dict] = []
        self._sum: dict[str, torch.Tensor] = {}
        self._sq: dict[str, torch.Tensor] = {}
        self._count = 0

    def __call__(self, step: int, controlnet: ControlNet) -> None:
        for name, params in parameter_groups(controlnet).items():
            g = torch.cat([p.grad.detach().reshape(-1) for p in params if p.grad is not None]).double()
            if name not in self._sum:
                self._sum[name], self._sq[name] = torch.zeros_like(g), torch.zeros_like(g)
            self._sum[name] += g
            self._sq[name] += g * g
        self._count += 1
        if self._count < self.window:
            return
        w, row = self.window, {"step": int(step)}
        for name in self._sum:
            mean = self._sum[name] / w
            var = (self._sq[name] / w - mean * mean).clamp_min(0.0)       # per weight, over the window
            spread = float(var.sum()) / (w - 1)
            row[name] = {"snr": float(mean.norm()) / max(spread, 1e-300) ** 0.5,
                         "coord": float((mean.abs() / (var / (w - 1)).sqrt().clamp_min(1e-300)).median()),
                         "rms": float((self._sq[name] / w).mean().sqrt())}
        self.records.append(row)
        self._sum, self._sq, self._count = {}, {}, 0


def on_steps(*callbacks):
    """One ``on_step`` callback that calls each of ``callbacks`` (None entries skipped) in turn."""
    callbacks = [c for c in callbacks if c is not None]

    def call(step: int, controlnet: ControlNet) -> None:
        for c in callbacks:
            c(step, controlnet)

    return call


def shuffled(condition: torch.Tensor) -> torch.Tensor:
    """Each image gets the next image's condition (a roll by one: nobody keeps its own)."""
    if condition.shape[0] < 2:
        raise ValueError(f"condition: expected a batch of at least 2 to shuffle, got {condition.shape[0]}")
    return condition.roll(1, dims=0)


@dataclass
class MechanismProbe:
    """Fixed held-out outlines (``Fill50k(seed=seed)``; training uses seed 0), noise draws and
    timesteps: every snapshot is measured on exactly the same inputs.

    ``n`` outlines × ``draws`` noise draws for :meth:`following`; ``loss_n`` pairs ×
    ``loss_draws`` (t, ε) draws per band of :data:`BANDS` for :meth:`condition_gain`.
    """

    n: int = 8
    draws: int = 16
    steps: int = 20
    guidance: float = 3.0
    threshold: float = 0.8
    loss_n: int = 64
    loss_draws: int = 4
    seed: int = 1
    condition: str = "outline"
    size: int = 32
    bands: tuple[str, ...] | None = None   #: condition_gain's bands when it is not told (None: all of BANDS)
    data: Fill50k = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("n", "draws", "steps", "loss_n", "loss_draws"):
            check_number(getattr(self, name), name=name, low=1, integer=True)
        check_number(self.threshold, name="threshold", low=0.0, high=1.0)
        if self.loss_n < 2:
            raise ValueError(f"loss_n: expected at least 2 pairs (the shuffled condition needs another image), "
                             f"got {self.loss_n}")
        self.data = Fill50k(max(self.n, self.loss_n), size=self.size, seed=self.seed, condition=self.condition)
        self.conditions = source_to_tensor(self.data.sources)
        self.targets = target_to_tensor(self.data.targets)
        self.masks = np.asarray(self.data.masks, bool)
        self.prompts = list(self.data.prompts)

    @torch.no_grad()
    def following(self, base: ToyUNet, controlnet: ControlNet, scale: float = 1.0, draws: int | None = None,
                  seed: int = 0) -> np.ndarray:
        """IoU (n, draws) of each outline's samples, one per noise draw, with the prompt, mode
        "both" at β = ``guidance`` and the control scaled by ``scale`` (α); the same draws
        for every snapshot and every α. ``(iou >= threshold).mean(1)``: each outline's
        probability of being followed."""
        draws = self.draws if draws is None else check_number(draws, name="draws", low=1, integer=True)
        cond = self.conditions[: self.n].repeat_interleave(draws, 0)
        prompts = [p for p in self.prompts[: self.n] for _ in range(draws)]
        images = sample(base, prompts, Control(controlnet, cond), mode="both", guidance=self.guidance,
                        conditioning_scale=scale, steps=self.steps, seed=seed)
        return condition_iou(images, self.masks[: self.n].repeat(draws, 0)).reshape(self.n, draws)

    def _noised(self, base: ToyUNet, band: tuple[int, int], draw: int):
        schedule = make_schedule(base.config.schedule)
        g = torch.Generator().manual_seed(1000 * draw + band[0])
        x0 = self.targets[: self.loss_n]
        t = torch.randint(band[0], band[1], (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return q_sample(x0, t, noise, schedule), t, prediction_target(x0, noise, t, schedule, base.config.prediction)

    @torch.no_grad()
    def condition_gain(self, base: ToyUNet, controlnet: ControlNet,
                       bands: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Per band of :data:`BANDS` (or only ``bands``: each band's numbers are the same
        either way): the denoising loss of the frozen base alone, of the controlled model with
        the true condition and with a shuffled one (:func:`shuffled`), and ``gain`` =
        shuffled − true: how much the *right* outline lowers the loss. 0 at step 0 (zero
        connectors); it can only grow if the network reads the condition."""
        bands = self.bands if bands is None else bands
        unknown = sorted(set(bands or ()) - set(BANDS))
        if unknown:
            raise ValueError(f"bands: expected names of {list(BANDS)}, got {unknown}")
        model = ControlledUNet(base, controlnet).eval()
        context = base.encode_prompts(self.prompts[: self.loss_n])
        cond = self.conditions[: self.loss_n]
        out = {}
        for name, band in BANDS.items():
            if bands is not None and name not in bands:
                continue
            sums = np.zeros(3)
            for d in range(self.loss_draws):
                x_t, t, target = self._noised(base, band, d)
                sums += [float(F.mse_loss(base(x_t, t, context), target)),
                         float(F.mse_loss(model(x_t, t, context, cond), target)),
                         float(F.mse_loss(model(x_t, t, context, shuffled(cond)), target))]
            base_loss, true, wrong = sums / self.loss_draws
            out[name] = {"base": base_loss, "true": true, "shuffled": wrong, "gain": wrong - true}
        return out

    def _band_inputs(self, base: ToyUNet, band: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_t, t and the prompts' context c_t of the probe's pairs noised in ``band`` (first draw)."""
        if band not in BANDS:
            raise ValueError(f"band: expected one of {list(BANDS)}, got {band!r}")
        x_t, t, _ = self._noised(base, BANDS[band], 0)
        return x_t, t, base.encode_prompts(self.prompts[: self.loss_n])

    @torch.no_grad()
    def residual_ratio(self, base: ToyUNet, controlnet: ControlNet, band: str = "mid noise") -> list[float]:
        """‖r_i‖ / ‖h_i‖ per connection i (the middle block's last): the residual the
        ControlNet adds next to the frozen feature h_i it is added to, on the probe's pairs
        noised in ``band``. 0 at step 0."""
        x_t, t, context = self._band_inputs(base, band)
        feats = _outputs_of([*base.input_blocks, base.middle_block], lambda: base(x_t, t, context))
        down, mid = controlnet(x_t, t, context, self.conditions[: self.loss_n])
        return [float(r.norm() / h.norm()) for r, h in zip([*down, mid], feats)]


def _outputs_of(modules, run) -> list[torch.Tensor]:
    """The outputs of ``modules`` (in the order they run) while ``run()`` is called, by forward hooks."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: seen.append(o)) for m in modules]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def condition_path(controlnet: ControlNet, probe: "MechanismProbe", base: ToyUNet, band: str = "mid noise") -> dict[str, float]:
    """The first door the condition must pass: ``c_f = E(c)`` (E's last layer is the zero conv
    Z(·; Θz1)), added to the copy's first features h_0. Returns the per-weight RMS of Θz1 (the encoder's zero conv),
    ``size`` = ‖c_f‖ / ‖h_0‖ and ``signal`` = ‖c_f − mean(c_f)‖ / ‖h_0‖: the part of c_f
    that differs from outline to outline (the mean over the probe's outlines is what a
    bias or any constant adds, which says nothing about where the circle goes), on the
    probe's pairs noised in ``band``. All are 0 at step 0."""
    z = controlnet.condition_encoder.layers[-1]
    x_t, t, context = probe._band_inputs(base, band)
    c_f, h_0 = _outputs_of([controlnet.condition_encoder, controlnet.input_blocks[0]],   # E runs first
                          lambda: controlnet(x_t, t, context, probe.conditions[: probe.loss_n]))
    return {"encoder_zero_rms": float(z.weight.norm()) / z.weight.numel() ** 0.5,
            "size": float(c_f.norm() / h_0.norm()), "signal": float((c_f - c_f.mean(0, keepdim=True)).norm() / h_0.norm())}


#: What :func:`curve` reads from a run's ``curves.json`` (see :mod:`cnetlib.experiments.mechanism`).
METRICS = ("iou", "following", "rms", "ratio", *(f"path:{k}" for k in ("encoder_zero_rms", "size", "signal")),
           *(f"gain:{b}" for b in BANDS))


def curve(curves: dict, metric: str, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one measurement along a run: ``"iou"`` (mean sampled IoU at
    control scale ``alpha``), ``"following"`` (mean over outlines of the share of draws
    with IoU ≥ the probe's threshold), ``"rms"`` (connectors' mean per-weight RMS),
    ``"ratio"`` (mean ‖r_i‖/‖h_i‖), ``"path:KEY"`` (:func:`condition_path`) or ``"gain:BAND"`` (:meth:`MechanismProbe.condition_gain`)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    rows = curves["snapshots"]
    if metric in ("iou", "following"):
        key = "iou_alpha1" if alpha == 1.0 else "iou_alpha"
        rows = [r for r in rows if key in r and (alpha == 1.0 or str(alpha) in r[key])]
        if not rows:
            raise ValueError(f"alpha: no sampled IoU at control scale {alpha} in these curves "
                             f"(measured: 1.0 and {curves.get('alphas')})")
        ious = [np.asarray(r[key] if alpha == 1.0 else r[key][str(alpha)]) for r in rows]
        values = [m.mean() if metric == "iou" else (m >= curves["probe"]["threshold"]).mean() for m in ious]
    elif metric == "rms":
        values = [np.mean(r["connector_rms"]) for r in rows]
    elif metric == "ratio":
        values = [np.mean(r["residual_ratio"]) for r in rows]
    elif metric.startswith("path:"):
        rows = [r for r in rows if "condition_path" in r]
        values = [r["condition_path"][metric.split(":", 1)[1]] for r in rows]
    else:
        band = metric.split(":", 1)[1]
        if rows and band not in rows[0]["gain"]:
            raise ValueError(f"metric: {metric!r} was not measured in these curves (bands: {list(rows[0]['gain'])})")
        values = [r["gain"][band]["gain"] for r in rows]
    return np.array([r["step"] for r in rows]), np.asarray(values, float)


def timing(steps: Sequence[int], y: Sequence[float], window: float = 0.1):
    """Chapter 04's jump detector (:func:`cnetlib.convergence.detect_jump`) on ``y`` rescaled
    so that its start is 0 and its end (mean of the last 10 %) is 1: one definition of
    "when" and "how abruptly" for curves of any unit (IoU, loss gain, norms)."""
    from .convergence import detect_jump

    y = np.asarray(y, float)
    tail = y[-max(1, len(y) // 10):].mean()
    if tail == y[0]:
        raise ValueError("y: the curve ends where it starts; there is no rise to time")
    return detect_jump(steps, (y - y[0]) / (tail - y[0]), window=window)


def log_growth(steps: Sequence[int], y: Sequence[float], low: float, high: float) -> tuple[float, int, int]:
    """How fast ``y`` climbs on a log scale: from the last step it is below ``low`` (before it
    first reaches ``high``) to the first step it reaches ``high``, in steps per factor of 10:
    ``(steps per ×10, from, to)``. A quantity that grows exponentially climbs every decade
    in the same number of steps, however flat it looks on a linear axis before."""
    steps, y = np.asarray(steps), np.asarray(y, float)
    if not 0 < low < high:
        raise ValueError(f"low, high: expected 0 < low < high, got {low:g}, {high:g}")
    reach = np.nonzero(y >= high)[0]
    if len(reach) == 0:
        raise ValueError(f"y: never reaches {high:g} (max {y.max():.3g})")
    hi = int(reach[0])
    below = np.nonzero(y[:hi] < low)[0]
    if len(below) == 0:
        raise ValueError(f"y: is not below {low:g} before it reaches {high:g}")
    lo = int(below[-1])
    return float((steps[hi] - steps[lo]) / np.log10(high / low)), int(steps[lo]), int(steps[hi])


#: Chapter 05's levels: the high-noise gain "warns" once it stays ≥ 1e-5 and has "switched" once
#: it stays ≥ 1e-3; the samples have "jumped" once the mean IoU (3-point running median) stays
#: ≥ 0.6, about halfway from the 0.35 of an uncontrolled sample to the ~0.9 of a finished run.
LEVELS = {"warning": 1e-5, "switch": 1e-3, "iou": 0.6}


def landmarks(curves: dict, levels: dict[str, float] | None = None) -> dict:
    """Where one run's curves cross :data:`LEVELS` (chapter 05, section 8): ``warning`` and
    ``switch`` (first steps from which the high-noise condition gain stays above its levels),
    ``opening`` (first step at which that gain reaches the switch level, whether or not it
    stays: a run can open the condition path and lose it again), ``jump`` (first step from
    which the sampled mean IoU stays above its level; None if never), ``climb`` (steps per
    ×10 of the gain from 1e-6 to 1e-2, :func:`log_growth`; None if it does not make that
    climb), ``bands`` (per band, the first step from which its gain stays
    ≥ 1e-4), and ``iou_end`` (the mean IoU of the last three sampled snapshots)."""
    from .convergence import first_step_staying_above, running_median

    levels = {**LEVELS, **(levels or {})}
    st, g = curve(curves, "gain:high noise")
    si, iou = curve(curves, "iou")
    try:
        climb = log_growth(st, g, low=1e-6, high=1e-2)[0]
    except ValueError:
        climb = None
    return {"warning": first_step_staying_above(st, g, levels["warning"]),
            "switch": first_step_staying_above(st, g, levels["switch"]),
            "opening": int(st[np.argmax(g >= levels["switch"])]) if (g >= levels["switch"]).any() else None,
            "jump": first_step_staying_above(si, running_median(iou), levels["iou"]),
            "climb": climb,
            "bands": {b: first_step_staying_above(*curve(curves, f"gain:{b}"), 1e-4) for b in BANDS
                      if b in curves["snapshots"][0]["gain"]},   # the bands these curves measured
            "iou_end": float(iou[-3:].mean()), "last_step": int(st[-1])}


def rank_test(a: Sequence[float | None], b: Sequence[float | None], max_splits: int = 1_000_000) -> dict[str, float]:
    """Exact two-sample rank test (Mann–Whitney) for the handful of runs chapter 05 compares:
    do the values ``a`` (a recipe variant's jump steps, one per seed) land earlier or later
    than ``b`` (the recipe's)? ``None`` (a run that never got there) counts as later than
    every number. Every split of the pooled values into groups of len(a) and len(b) is
    enumerated, so the p values are exact, ties counting half.

    Returns ``u`` (the pairs (a_i, b_j) with a_i earlier, ties half, out of len(a)·len(b)),
    ``p_earlier`` / ``p_later`` (one-sided: the share of splits with a ``u`` at least / at
    most as large) and ``p`` (two-sided: twice the smaller, at most 1). Three runs against
    five can reach p = 2/56 ≈ 0.036 only when all three lie beyond all five. (It is
    :func:`trend_test` with the two groups ``a``, ``b``.)"""
    if len(a) < 1 or len(b) < 1:
        raise ValueError(f"a, b: expected at least one value each, got {len(a)} and {len(b)}")
    out = trend_test([a, b], max_splits=max_splits)
    return {"u": out["j"], "p_earlier": out["p_rising"], "p_later": out["p_falling"], "p": out["p"]}


def trend_test(groups: Sequence[Sequence[float | None]], max_splits: int = 2_000_000) -> dict[str, float]:
    """Exact trend test (Jonckheere–Terpstra) for chapter 05's learning-rate sweep: do the
    values (e.g. switch steps, one run per seed) rise or fall from one group to the next, with the
    ``groups`` in a fixed order (the learning rates, smallest first)? ``None`` counts as
    later than every number, as in :func:`rank_test`.

    The statistic is ``j``, the pairs (a, b) with a in an earlier group than b and a < b,
    ties half, out of ``pairs`` = Σ_{g<h} n_g·n_h. Every assignment of the pooled values to
    groups of the given sizes is enumerated (4 groups of 3: 369,600), so the p values are
    exact: ``p_rising`` / ``p_falling`` (one-sided: the share of assignments with a ``j`` at
    least / at most as large) and ``p`` (two-sided: twice the smaller, at most 1). With two
    groups it is :func:`rank_test`, whose ``p_earlier`` is ``p_rising``)."""
    from itertools import combinations
    from math import factorial, prod

    sizes = [len(g) for g in groups]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"groups: expected at least two groups of at least one value, got sizes {sizes}")
    n_splits = factorial(sum(sizes)) // prod(factorial(k) for k in sizes)
    if n_splits > max_splits:
        raise ValueError(f"groups: {n_splits} assignments to enumerate, more than max_splits={max_splits}")
    pooled = np.array([float("inf") if v is None else float(v) for g in groups for v in g])
    n = len(pooled)
    # c[i, j]: what the pair scores when value i sits in an earlier group than value j
    c = (pooled[:, None] < pooled[None, :]) + 0.5 * (pooled[:, None] == pooled[None, :])

    labels = np.full((1, n), len(sizes) - 1, dtype=np.int8)   # every assignment; the last group takes the rest
    free = np.arange(n)[None, :]                                # per assignment: the indices not yet placed
    for g, k in enumerate(sizes[:-1]):
        chosen = np.array(list(combinations(range(free.shape[1]), k)), dtype=np.intp)
        rest = np.array([[i for i in range(free.shape[1]) if i not in row] for row in chosen], dtype=np.intp)
        rows = np.repeat(np.arange(len(labels)), len(chosen))
        labels, picked = labels[rows], free[:, chosen].reshape(len(rows), k)
        labels[np.arange(len(rows))[:, None], picked] = g
        free = free[:, rest].reshape(len(rows), -1)
    null = np.zeros(n_splits)
    for i in range(n):
        for k in range(n):
            if i != k and c[i, k]:
                null += c[i, k] * (labels[:, i] < labels[:, k])
    observed = np.repeat(np.arange(len(sizes)), sizes)
    j = float(sum(c[i, k] for i in range(n) for k in range(n) if observed[i] < observed[k]))
    p_rising = float(np.mean(null >= j - 1e-9))
    p_falling = float(np.mean(null <= j + 1e-9))
    pairs = sum(sizes[g] * sizes[h] for g in range(len(sizes)) for h in range(g + 1, len(sizes)))
    return {"j": j, "pairs": float(pairs), "p_rising": p_rising, "p_falling": p_falling,
            "p": min(1.0, 2 * min(p_rising, p_falling))}


def spread_test(groups: Sequence[Sequence[float]], other: Sequence[float], permutations: int = 20_000,
                seed: int = 0) -> dict[str, float]:
    """Is the spread within ``groups`` (e.g. the switch steps of the restarts of each run, one
    group per run) the same as the spread of ``other`` (the switch steps of independent training
    seeds)? A Brown–Forsythe test: every value's absolute deviation from its own group's median,
    then a permutation test (``permutations`` random relabellings, seeded) of the difference of
    the two sets' mean absolute deviations. Returns ``mad_groups`` and ``mad_other`` (the mean
    absolute deviations), their ``ratio`` and ``p`` (two-sided). Chapter 05 reads a ratio near 1
    with a large p as "the restarts spread as widely as the seeds": the timing is decided after
    the snapshot."""
    groups = [np.asarray(g, float) for g in groups]
    other = np.asarray(other, float)
    if not groups or min(len(g) for g in groups) < 2 or len(other) < 2:
        raise ValueError(f"groups, other: expected groups of at least 2 values and at least 2 others, got sizes "
                         f"{[len(g) for g in groups]} and {len(other)}")
    dev_a = np.concatenate([np.abs(g - np.median(g)) for g in groups])
    dev_b = np.abs(other - np.median(other))
    observed = dev_a.mean() - dev_b.mean()
    pooled = np.concatenate([dev_a, dev_b])
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        rng.shuffle(pooled)
        hits += abs(pooled[: len(dev_a)].mean() - pooled[len(dev_a):].mean()) >= abs(observed) - 1e-12
    return {"mad_groups": float(dev_a.mean()), "mad_other": float(dev_b.mean()),
            "ratio": float(dev_a.mean() / dev_b.mean()) if dev_b.mean() > 0 else float("inf"),
            "p": float((hits + 1) / (permutations + 1))}


def sign_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Exact paired sign test: in how many pairs is ``a`` larger than ``b`` (ties dropped), and
    how surprising is that count if either were equally likely? Returns ``larger``, ``n`` (pairs
    without a tie) and ``p`` (two-sided, exact binomial). Chapter 05 asks with it whether the
    gradients' SNR rises before the switch, run by run."""
    from math import comb

    if len(a) != len(b):
        raise ValueError(f"a, b: expected paired values of one length, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if x != y]
    n, larger = len(diffs), int(sum(d > 0 for d in diffs))
    if n == 0:
        return {"larger": 0, "n": 0, "p": 1.0}
    tail = sum(comb(n, k) for k in range(min(larger, n - larger) + 1)) / 2 ** n
    return {"larger": larger, "n": n, "p": min(1.0, 2 * tail)}
