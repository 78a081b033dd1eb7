"""Exercises with checked answers: the end of every chapter.

A chapter's exercise cell holds a stub for the reader to fill in, then one call::

    def my_eps_to_x0_v(eps, x_t, alpha_bar):
        raise NotImplementedError("your code here")

    check("01.1", my_eps_to_x0_v)

:func:`check` runs the reader's function against the library's own implementation on
random inputs (or compares a number with the library's answer) and prints one of

* ``✓ passed`` and what was compared;
* ``✗ not yet`` with the first input where the answers differ, by how much, and a hint;
* ``· not attempted`` while the stub still raises ``NotImplementedError`` (or a number is
  still ``None``).

It never raises, whatever the reader's code does, so an unattempted exercise never fails a
notebook cell (CI runs every chapter under nbval). The library stays the one canonical
implementation: each exercise names the function it is checked against. Worked solutions
are in the book's ``solutions/`` folder; ``tests/test_exercises.py`` checks that every
checker passes on them and fails on the stub and on a plausible wrong answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

STATUSES = ("pass", "fail", "not attempted")


@dataclass(frozen=True)
class Exercise:
    """One checked exercise: what to write, what it is checked against, and a hint."""

    key: str                                   #: "NN.k": chapter NN, exercise k
    task: str                                  #: one line, as the chapter states it
    against: str                               #: the library function (or computation) that gives the answer
    hint: str                                  #: shown when an answer is wrong
    reference: Callable[..., Any]              #: the library's answer: a function, or a callable giving the number
    cases: Callable[[np.random.Generator], list[tuple]] | None = None   #: random argument tuples (functions only)
    rtol: float = 1e-5
    atol: float = 1e-6

    @property
    def kind(self) -> str:
        return "function" if self.cases is not None else "number"

    @property
    def chapter(self) -> str:
        return self.key.split(".")[0]


@dataclass
class Verdict:
    """What :func:`check` found: ``status`` is one of :data:`STATUSES`."""

    key: str
    status: str
    message: str
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------------
# Comparing answers
# ----------------------------------------------------------------------------------
class Mismatch(Exception):
    """An answer that differs from the reference; the message says where and by how much."""


def _as_array(x: Any) -> np.ndarray | None:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy() if x.dtype != torch.bool else x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (bool, np.bool_)):
        return np.asarray(x)
    if isinstance(x, (int, float, np.integer, np.floating)):
        return np.asarray(float(x))
    return None


def compare(yours: Any, expected: Any, rtol: float, atol: float, where: str = "the output") -> None:
    """Raise :class:`Mismatch` naming the first difference between ``yours`` and ``expected``
    (tensors, arrays, numbers, None, slices, and tuples or lists of them, compared with
    ``|yours − expected| ≤ atol + rtol·|expected|``)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(yours, (tuple, list)):
            raise Mismatch(f"{where}: expected a {type(expected).__name__} of {len(expected)} items, "
                           f"got {type(yours).__name__}")
        if len(yours) != len(expected):
            raise Mismatch(f"{where}: expected {len(expected)} items, got {len(yours)}")
        for k, (a, b) in enumerate(zip(yours, expected)):
            compare(a, b, rtol, atol, f"{where}, item {k}")
        return
    if expected is None or isinstance(expected, slice):
        if yours != expected:
            raise Mismatch(f"{where}: expected {expected!r}, got {yours!r}")
        return
    b = _as_array(expected)
    if b is None:
        if yours != expected:
            raise Mismatch(f"{where}: expected {expected!r}, got {yours!r}")
        return
    a = _as_array(yours)
    if a is None:
        raise Mismatch(f"{where}: expected a number or an array, got {type(yours).__name__} ({yours!r:.60})")
    if a.shape != b.shape:
        raise Mismatch(f"{where}: expected shape {tuple(b.shape)}, got {tuple(a.shape)}")
    if b.dtype == bool or a.dtype == bool:
        bad = np.argwhere(a.astype(bool) != b.astype(bool))
        if len(bad):
            raise Mismatch(f"{where}: {len(bad)} of {b.size} values differ, the first at index "
                           f"{tuple(int(j) for j in bad[0])}")
        return
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not np.all(np.isfinite(a)) and np.any(np.isfinite(a) != np.isfinite(b)):
        raise Mismatch(f"{where}: holds NaN or infinity where the expected answer does not")
    err = np.abs(a - b)
    tol = atol + rtol * np.abs(b)
    bad = np.argwhere(~(err <= tol) & np.isfinite(b))
    if len(bad):
        i = tuple(int(j) for j in bad[0])
        shown = f" at index {i}" if b.ndim else ""
        raise Mismatch(f"{where}{shown}: expected {b[i]:.6g}, got {a[i]:.6g} "
                       f"(largest difference {np.nanmax(err):.3g}, {len(bad)} of {b.size} values off)")


def _describe(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, (torch.Tensor, np.ndarray)):
            parts.append(f"{type(a).__name__} of shape {tuple(a.shape)}")
        elif isinstance(a, (list, tuple)) and len(a) > 6:
            parts.append(f"{type(a).__name__} of {len(a)} items")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def _copy(args: tuple) -> tuple:
    """Fresh copies of the arguments, so the reader's function cannot change the reference's."""
    import copy

    return tuple(a.clone() if isinstance(a, torch.Tensor) else copy.deepcopy(a) for a in args)


# ----------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------
def solution_file(key: str) -> str:
    from .runtime import ROOT

    chapter = key.split(".")[0]
    found = sorted((ROOT / "solutions").glob(f"{chapter}_*.py")) if (ROOT / "solutions").is_dir() else []
    return f"solutions/{found[0].name}" if found else f"solutions/{chapter}_*.py in the book's repository"


def check(key: str, answer: Any, *, seed: int = 0, verbose: bool = True) -> Verdict:
    """Check the reader's ``answer`` to exercise ``key`` and print the verdict (never raises).

    A function is run on the exercise's random inputs beside the library's reference;
    a number is compared with the reference's value. See the module docstring."""
    verdict = _check(key, answer, seed)
    if verbose:
        print(verdict.message)
    return verdict


def _check(key: str, answer: Any, seed: int) -> Verdict:
    if key not in EXERCISES:
        return Verdict(key, "fail", f"✗ {key}: no such exercise; expected one of {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[key]
    where = f"(worked solution: {solution_file(key)})"
    if answer is None or answer is Ellipsis:
        return Verdict(key, "not attempted", f"· {key} not attempted yet: {ex.task} Then rerun this cell.")
    if ex.kind == "number":
        if callable(answer):
            return Verdict(key, "fail", f"✗ {key}: expected a number, got the function {getattr(answer, '__name__', answer)}")
        try:
            expected = ex.reference()
            compare(answer, expected, ex.rtol, ex.atol, "your answer")
        except Mismatch as e:
            return Verdict(key, "fail", f"✗ {key} not yet: {e}.\n  Hint: {ex.hint}\n  {where}")
        return Verdict(key, "pass", f"✓ {key} passed: {float(np.asarray(_as_array(answer))):.6g} agrees with "
                                    f"{ex.against}.", {"expected": expected})
    if not callable(answer):
        return Verdict(key, "fail", f"✗ {key}: expected your function, got {type(answer).__name__}")
    rng = np.random.default_rng(seed)
    cases = ex.cases(rng)
    for k, args in enumerate(cases):
        expected = ex.reference(*_copy(args))
        try:
            yours = answer(*_copy(args))
        except NotImplementedError:
            return Verdict(key, "not attempted", f"· {key} not attempted yet: {ex.task} Then rerun this cell.")
        except Exception as e:   # the reader's bug: report it, never raise into the notebook
            return Verdict(key, "fail", f"✗ {key} not yet: your function raised {type(e).__name__}: {e}\n"
                                        f"  on input {k + 1} of {len(cases)}: {_describe(args)}\n"
                                        f"  Hint: {ex.hint}\n  {where}")
        if yours is None and expected is not None:
            return Verdict(key, "fail", f"✗ {key} not yet: your function returned None (a missing `return`?)\n"
                                        f"  Hint: {ex.hint}")
        try:
            compare(yours, expected, ex.rtol, ex.atol)
        except Mismatch as e:
            return Verdict(key, "fail", f"✗ {key} not yet: on input {k + 1} of {len(cases)} ({_describe(args)}), "
                                        f"{e}.\n  Hint: {ex.hint}\n  {where}", {"case": k})
    return Verdict(key, "pass", f"✓ {key} passed: your function agrees with {ex.against} on {len(cases)} random "
                                f"inputs.", {"cases": len(cases)})


def exercises_of(chapter: str) -> list[Exercise]:
    """The checked exercises of a chapter ("01" … "09"), in order."""
    return [ex for key, ex in EXERCISES.items() if ex.chapter == chapter]


# ----------------------------------------------------------------------------------
# The exercises, chapter by chapter (references are imported when used)
# ----------------------------------------------------------------------------------
def _tensor(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape)).float()


def _eps_cases(rng):
    from .diffusion import cosine_schedule

    ab = cosine_schedule().alphas_cumprod
    out = []
    for b in (1, 3, 4):
        t = torch.from_numpy(rng.integers(0, 980, b))     # not the last steps, where x̂_0 = (…)/√ᾱ_t explodes
        out.append((_tensor(rng, b, 3, 4, 4), _tensor(rng, b, 3, 4, 4), ab[t].float().view(-1, 1, 1, 1)))
    return out


def _eps_reference(eps, x_t, alpha_bar):
    from .diffusion import prediction_target, to_x0_eps

    sched = _FixedAlphas(alpha_bar.flatten().double())
    t = torch.arange(sched.T)
    x0, _ = to_x0_eps(eps, x_t, t, sched, "epsilon")
    return x0, prediction_target(x0, eps, t, sched, "v")


class _FixedAlphas:
    """A stand-in schedule whose ᾱ at step k is the k-th given value (for :func:`to_x0_eps`)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.T = len(alphas_cumprod)

    def coefficients(self, t, like):
        from .diffusion import Schedule

        return Schedule.coefficients(self, t, like)   # the library's own code, on these ᾱ

    @property
    def snr(self) -> torch.Tensor:
        from .diffusion import Schedule

        return Schedule.snr.fget(self)


def _log_snr_cases(rng):
    from .diffusion import cosine_schedule, linear_schedule

    out = []
    for sched in (linear_schedule(), cosine_schedule()):
        t = torch.from_numpy(np.sort(rng.integers(0, 999, 6)))
        out.append((sched.alphas_cumprod[t],))
    return out


def _log_snr_reference(alpha_bar):
    return _FixedAlphas(alpha_bar).snr.log()


def _sqrt_ab_500():
    from .diffusion import linear_schedule

    return float(linear_schedule().alphas_cumprod[500].sqrt())


def _zero_conv_cases(rng):
    return [(_tensor(rng, b, o, h, h), _tensor(rng, b, i, h, h)) for b, o, i, h in ((1, 2, 3, 3), (2, 4, 3, 5), (4, 3, 5, 2))]


def _zero_conv_reference(dL_dy, x):
    from .controlnet import zero_conv

    z = zero_conv(x.shape[1], dL_dy.shape[1]).double()
    x = x.double().requires_grad_(True)
    (z(x) * dL_dy.double()).sum().backward()     # a loss whose ∂L/∂y is dL_dy
    return z.weight.grad[:, :, 0, 0], z.bias.grad, x.grad


def _adam_first_rms():
    from .controlnet import zero_conv

    torch.manual_seed(0)
    z = zero_conv(16, 16)
    opt = torch.optim.AdamW(z.parameters(), lr=1e-3, weight_decay=1e-2)
    (z(torch.randn(8, 16, 4, 4)) - torch.randn(8, 16, 4, 4)).pow(2).mean().backward()
    opt.step()
    return float(z.weight.detach().pow(2).mean().sqrt())


def _small_base():
    """A random 8 px toy base, seeded: what the checkers that need a network run on (fast, no download)."""
    from .unet import ToyUNet, UNetConfig

    torch.manual_seed(0)
    return ToyUNet(UNetConfig(channels=(8, 16), attention_levels=(False, True), image_size=8, context_dim=16,
                              text_layers=1, time_dim=16)).eval()


def _first_step_of_E():
    from .controlnet import toy_controlnet
    from .probes import GROUPS, first_nonzero_step, gradient_front

    base = _small_base()
    g = torch.Generator().manual_seed(0)
    x0, cond = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.rand(4, 3, 8, 8, generator=g)
    rows = gradient_front(base, toy_controlnet(base), x0, cond, ["red circle with blue background"] * 4, steps=3)
    return float(first_nonzero_step(rows)[GROUPS[2]])


def _block_cases(rng):
    import torch.nn as nn

    from .controlnet import trainable_copy

    out = []
    for k, (ch, h) in enumerate(((3, 4), (5, 3))):
        torch.manual_seed(int(rng.integers(0, 2**31)))
        F = nn.Conv2d(ch, ch, 3, padding=1)
        Fc = trainable_copy(F)
        with torch.no_grad():   # a copy that has trained a little, and zero convs that have grown
            for p in Fc.parameters():
                p.add_(0.1 * torch.randn_like(p))
        Z1, Z2 = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)   # non-zero, so wrong wirings differ
        out.append((F, Fc, Z1, Z2, _tensor(rng, 2, ch, h, h), torch.from_numpy(rng.random((2, ch, h, h))).float()))
    return out


def _block_reference(F, Fc, Z1, Z2, x, c):
    from .controlnet import controlnet_block

    with torch.no_grad():
        return controlnet_block(F, Fc, Z1, Z2, x, c)


def _rf_cases(rng):
    fixed = [[(3, 1)] * 3, [(4, 2)] * 4 + [(1, 1)], [(3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 1), (3, 1)]]
    rand = [[(int(rng.choice([1, 3, 4, 5])), int(rng.choice([1, 2]))) for _ in range(rng.integers(2, 7))] for _ in range(3)]
    return [(layers,) for layers in fixed + rand]


def _rf_reference(layers):
    from .condition import receptive_field

    return receptive_field(layers)


def _connections_3x2():
    from .unet import ToyUNet, UNetConfig

    net = ToyUNet(UNetConfig(channels=(4, 4, 4), layers_per_block=2, attention_levels=(False,) * 3, image_size=16,
                             context_dim=8, text_layers=1, time_dim=8))
    return float(len(net.connections))


def _mask_cases(rng):
    cases = [(rng.random((8, 8)) < 0.4, rng.random((8, 8)) < 0.5) for _ in range(4)]
    empty = np.zeros((6, 6), bool)
    return cases + [(empty, empty.copy()), (empty, rng.random((6, 6)) < 0.3)]


def _iou_reference(a, b):
    from .metrics import iou

    return iou(a, b)


def _staying_cases(rng):
    steps = list(range(0, 1050, 50))
    out = []
    for _ in range(5):
        jump = int(rng.integers(3, 18))
        y = [float(0.2 + 0.7 * (k >= jump) + 0.05 * rng.standard_normal()) for k in range(len(steps))]
        y[jump - 2] = 0.7                         # an early excursion above the level, then below again
        out.append((steps, y, 0.55))
    out.append((steps, [0.1] * len(steps), 0.55))   # never: None
    return out


def _staying_reference(steps, y, level):
    from .convergence import first_step_staying_above

    return first_step_staying_above(steps, y, level)


def _loss_cases(rng):
    from .diffusion import cosine_schedule

    ab = cosine_schedule().alphas_cumprod
    out = []
    for b in (2, 5):
        t = torch.from_numpy(rng.integers(0, 1000, b))
        out.append((_tensor(rng, b, 3, 4, 4), _tensor(rng, b, 3, 4, 4), _tensor(rng, b, 3, 4, 4),
                    ab[t].float().view(-1, 1, 1, 1)))
    return out


def _loss_reference(model_out, x0, noise, alpha_bar):
    import torch.nn.functional as F

    from .diffusion import prediction_target

    sched = _FixedAlphas(alpha_bar.flatten().double())
    target = prediction_target(x0, noise, torch.arange(len(alpha_bar.flatten())), sched, "v")
    return F.mse_loss(model_out, target)


def _cumlr_cases(rng):
    return [(int(rng.integers(1, 1200)), 1200, float(rng.choice([1e-3, 3e-3])), sched)
            for sched in ("constant", "cosine", "cosine", "cosine")] + [(0, 800, 3e-3, "cosine"), (800, 800, 3e-3, "cosine")]


def _cumlr_reference(step, steps, lr, schedule):
    from .train import cumulative_lr

    return cumulative_lr(step, steps, lr, schedule)


def _u_cases(rng):
    out = [([300, 400, 500], [350, 450, 550, 650, 750]), ([500, None, 600], [500, 700, 800]),
           ([100, 100], [100, 200, None])]
    for _ in range(3):
        a = [int(x) for x in rng.choice(np.arange(100, 1000, 25), 3)]
        b = [int(x) for x in rng.choice(np.arange(100, 1000, 25), 5)]
        out.append((a, b))
    return out


def _u_reference(a, b):
    from .mechanism import rank_test

    return rank_test(a, b)["u"]


def _smallest_p():
    from .mechanism import rank_test

    return rank_test([1, 2, 3], [4, 5, 6, 7, 8])["p_earlier"]


def _rw_cases(rng):
    return [([32, 32, 16, 16, 8, 8, 8], 1.0), ([64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8], 8.0),
            ([32, 32, 16, 16, 8, 8, 8], float(rng.choice([0.5, 2.0, 4.0])))]


def _rw_reference(resolutions, max_weight):
    from .control import resolution_weights

    return resolution_weights(resolutions, max_weight)


def _gw_cases(rng):
    return [(n,) for n in (7, 13, int(rng.integers(2, 20)))]


def _gw_reference(n):
    from .control import guess_weights

    return guess_weights(n)


def _both_beta_change():
    from .controlnet import toy_controlnet
    from .guidance import Control, guided_model_fn

    base = _small_base()
    net = toy_controlnet(base).eval()
    with torch.no_grad():       # a ControlNet that has learnt something: non-zero residuals
        for z in net.zero_convs:
            z.weight.normal_(0, 0.1)
        g = torch.Generator().manual_seed(0)
        x, c = torch.randn(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
        t = torch.tensor([500, 500])
        empty = base.encode_prompts(["", ""])
        outs = [guided_model_fn(base, [Control(net, c)], empty, empty, [500], mode="both", guidance=beta)(x, t)
                for beta in (1.0, 5.0)]
    return float((outs[0] - outs[1]).abs().max())


def _sum_cases(rng):
    out = []
    for k, n in ((2, 3), (3, 4)):
        res = [[_tensor(rng, 1, 2, 4 // (1 + (i > 1)), 4 // (1 + (i > 1))) for i in range(n)] for _ in range(k)]
        out.append((res, [float(s) for s in rng.uniform(0.2, 1.8, k)]))
    return out


def _sum_reference(residuals, scales):
    from .control import weigh_and_sum

    down, mid = weigh_and_sum([(r[:-1], r[-1]) for r in residuals], scales)
    return list(down) + [mid]


def _hint_cases(rng):
    return [(rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8), 4), (rng.integers(0, 256, (12, 12, 3)).astype(np.uint8), 3),
            (rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8), 2)]


def _hint_reference(targets, cells):
    from .data import colour_hint

    return colour_hint(targets, cells)


def _sides_cases(rng):
    return [(64, 4, 2), (32, 3, 1), (96, 3, 2), (int(rng.choice([16, 32])), 2, int(rng.integers(1, 4)))]


def _sides_reference(latent, levels, layers):
    from .unet import ToyUNet, UNetConfig

    net = ToyUNet(UNetConfig(channels=(4,) * levels, layers_per_block=layers, attention_levels=(False,) * levels,
                             image_size=latent, context_dim=8, text_layers=1, time_dim=8))
    return [c.resolution for c in net.connections]


def _latent_ratio():
    from .sd.config import SD15_VAE_CONFIG

    factor = 2 ** (len(SD15_VAE_CONFIG["block_out_channels"]) - 1)
    return 512 * 512 * SD15_VAE_CONFIG["in_channels"] / ((512 // factor) ** 2 * SD15_VAE_CONFIG["latent_channels"])


def _state_cases(rng):
    return [(int(rng.integers(1e6, 1e9)), int(rng.integers(1e6, 1e9)), b) for b in (4, 2, 4)]


def _state_reference(n_frozen, n_trainable, bytes_per_value):
    from .costs import accounted_memory

    dtype = {4: torch.float32, 2: torch.bfloat16}[bytes_per_value]
    meta = lambda n: [torch.empty(n, dtype=dtype, device="meta")]  # noqa: E731
    return float(accounted_memory(meta(n_frozen), meta(n_trainable), 0))


def _shard_cases(rng):
    return [(4, 0, 1), (4, 1, 2), (2, 3, 4), (int(rng.integers(1, 9)), 0, 3)]


def _shard_reference(batch_size, rank, world):
    from .train_sd import shard

    return shard(batch_size, rank, world)


EXERCISES: dict[str, Exercise] = {ex.key: ex for ex in (
    # chapter 01 · diffusion basics
    Exercise("01.1", "Write my_eps_to_x0_v(eps, x_t, alpha_bar): the x̂_0 and the v that a prediction ε̂ implies.",
             "cnetlib.diffusion.to_x0_eps and prediction_target", "solve x_t = √ᾱ x_0 + √(1−ᾱ) ε for x_0 (divide "
             "by √ᾱ), then v = √ᾱ ε − √(1−ᾱ) x_0.", _eps_reference, _eps_cases, rtol=1e-4, atol=1e-4),
    Exercise("01.2", "Write my_log_snr(alpha_bar): the natural log of the signal-to-noise ratio ᾱ_t / (1 − ᾱ_t).",
             "cnetlib.diffusion.Schedule.snr (its log)", "SNR is signal power over noise power: ᾱ_t over 1 − ᾱ_t; "
             "then torch.log (natural log, not log10).", _log_snr_reference, _log_snr_cases, rtol=1e-5, atol=1e-5),
    Exercise("01.3", "Set answer to √ᾱ_500 of SD's linear schedule: the share of x_0 left in x_500.",
             "linear_schedule().alphas_cumprod[500].sqrt()", "the forward process multiplies x_0 by √ᾱ_t, not by ᾱ_t; "
             "compute it with cnetlib.diffusion.linear_schedule() or by hand from √β linear in [√0.00085, √0.012].",
             _sqrt_ab_500, atol=0.005),
    # chapter 02 · zero convolution
    Exercise("02.1", "Write my_zero_conv_grads(dL_dy, x): ∂L/∂W (out × in), ∂L/∂b and ∂L/∂x of a 1 × 1 conv whose "
             "weight and bias are 0.", "autograd through cnetlib.controlnet.zero_conv",
             "∂L/∂W = Σ over the batch and every pixel of ∂L/∂y · xᵀ (a sum, not a mean); ∂L/∂b sums ∂L/∂y the same "
             "way; ∂L/∂x = Wᵀ ∂L/∂y, and W is 0.", _zero_conv_reference, _zero_conv_cases, rtol=1e-4, atol=1e-5),
    Exercise("02.2", "Set answer to the RMS of a zero convolution's weights after one AdamW step at lr = 10⁻³.",
             "one AdamW step (lr 10⁻³) on a zero_conv(16, 16)",
             "Adam divides the gradient by its own running size: at the first step every weight with a non-zero "
             "gradient moves by about lr, whatever the gradient's magnitude.", _adam_first_rms, rtol=0.05),
    Exercise("02.3", "Set answer to the first optimiser step (0, 1, 2 …) at which the layers of E before its zero "
             "conv get a non-zero gradient.", "cnetlib.probes.gradient_front on a small random base",
             "count the zero layers between those layers and the loss: the connectors Z(·; Θz2) and E's own last "
             "layer Z(·; Θz1); each must move once before the gradient can pass it.", _first_step_of_E, atol=0.0),
    # chapter 03 · the trainable copy
    Exercise("03.1", "Write my_controlnet_block(F, F_copy, Z1, Z2, x, c): y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2).",
             "cnetlib.controlnet.controlnet_block", "the checker uses non-zero Z1, Z2 (as after training), so "
             "every wiring is visible: Z1 acts on c, its output is added to x before the copy, Z2 acts on the copy's "
             "output, and the frozen F sees x alone.", _block_reference, _block_cases, rtol=1e-4, atol=1e-5),
    Exercise("03.2", "Write my_receptive_field(layers): the side in input pixels that one output pixel of a stack of "
             "(kernel, stride) convolutions sees.", "cnetlib.condition.receptive_field",
             "start at 1; each layer adds (kernel − 1) × jump, where jump is the product of the strides of the layers "
             "before it.", _rf_reference, _rf_cases, atol=0.0),
    Exercise("03.3", "Set answer to the number of zero convolutions Z(·; Θz2) on a UNet with 3 levels of 2 ResNet "
             "blocks each.", "len(ToyUNet(3 levels × 2 ResNets).connections)",
             "count the skips: the input conv, 2 ResNets per level, a downsampler after every level but the last; "
             "then the middle block.", _connections_3x2, atol=0.0),
    # chapter 04 · sudden convergence
    Exercise("04.1", "Write my_iou(a, b) for two boolean masks: |a ∩ b| / |a ∪ b|, and 1.0 when both are empty.",
             "cnetlib.metrics.iou", "np.logical_and and np.logical_or, then .sum(); two empty masks agree perfectly.",
             _iou_reference, _mask_cases, atol=1e-5),
    Exercise("04.2", "Write my_first_step_staying_above(steps, y, level): the first step from which y stays ≥ level "
             "at every later evaluation (None if never).", "cnetlib.convergence.first_step_staying_above",
             "an early spike above the level does not count: find the last evaluation below the level; the answer "
             "is the step right after it.", _staying_reference, _staying_cases, atol=0.0),
    Exercise("04.3", "Write my_v_loss(model_out, x0, noise, alpha_bar): the mean squared error against the v target "
             "that the ControlNet is trained with.", "cnetlib.diffusion.prediction_target + F.mse_loss",
             "v = √ᾱ ε − √(1−ᾱ) x_0 (chapter 01); the loss is the mean over every element of (model_out − v)².",
             _loss_reference, _loss_cases, rtol=1e-4, atol=1e-5),
    # chapter 05 · why sudden
    Exercise("05.1", "Write my_cumulative_lr(step, steps, lr, schedule): Σ of the learning rates of the first `step` "
             "optimiser steps.", "cnetlib.train.cumulative_lr",
             "the rate at step k is lr (constant) or lr · (0.1 + 0.9 · ½ (1 + cos(π k / (steps − 1)))) (cosine); "
             "sum k = 0 … step − 1.", _cumlr_reference, _cumlr_cases, rtol=1e-6, atol=1e-5),
    Exercise("05.2", "Write my_u_statistic(a, b): the pairs (a_i, b_j) with a_i earlier than b_j, ties counting ½, "
             "None (never jumped) later than every number.", "cnetlib.mechanism.rank_test(a, b)['u']",
             "loop over every pair; a None is later than any number, and two Nones tie.", _u_reference, _u_cases,
             atol=0.0),
    Exercise("05.3", "Set answer to the smallest one-sided p value an exact rank test can give with 3 runs against 5.",
             "cnetlib.mechanism.rank_test([1, 2, 3], [4, 5, 6, 7, 8])['p_earlier']",
             "every split of the 8 values into groups of 3 and 5 is equally likely under 'no difference'; how many "
             "splits are there, and how many are as extreme as 'all three first'?", _smallest_p, rtol=1e-3),
    # chapter 06 · guidance modes
    Exercise("06.1", "Write my_resolution_weights(resolutions, max_weight): w_i = max_weight · h_min / h_i.",
             "cnetlib.control.resolution_weights", "the coarsest connection (smallest h_i) gets max_weight; with "
             "max_weight = 8 on SD's h_i you get the paper's literal 64 / h_i.", _rw_reference, _rw_cases, rtol=1e-9),
    Exercise("06.2", "Write my_guess_weights(n): n weights from 0.1 to 1, evenly spaced in log.",
             "cnetlib.control.guess_weights", "10 ** x for x evenly spaced from −1 to 0 (torch.logspace or "
             "np.logspace); the reference code's 0.825^(n−1−i) only matches at n = 13.", _gw_reference, _gw_cases,
             rtol=1e-6),
    Exercise("06.3", "Set answer to the largest change in the guided prediction between β = 1 and β = 5, in mode "
             "`both` with the empty prompt.", "guided_model_fn(mode='both') at β = 1 and 5 on a small base",
             "with the empty prompt and the control in both predictions, ε_c and ε_uc are the same computation.",
             _both_beta_change, atol=1e-4),
    # chapter 07 · multi-condition
    Exercise("07.1", "Write my_sum_residuals(residuals, scales): per connection i, Σ_k s_k · r_k,i over the ControlNets "
             "k (residuals[k] lists r_k,i, the middle block last).", "cnetlib.control.weigh_and_sum",
             "the paper adds the ControlNets' outputs (a sum, not a mean), each times its scale, connection by "
             "connection.", _sum_reference, _sum_cases, rtol=1e-5, atol=1e-5),
    Exercise("07.2", "Write my_colour_hint(targets, cells): each image's mean colour over a cells × cells grid of "
             "blocks, blown back up to full size, rounded to the nearest integer, as uint8.", "cnetlib.data.colour_hint",
             "reshape (…, H, W, 3) into (…, cells, H/cells, cells, W/cells, 3), average over the two block axes, "
             "np.repeat back up, then round to the nearest integer (np.round) before the cast to uint8.", _hint_reference, _hint_cases, atol=0.0),
    # chapter 08 · Stable Diffusion
    Exercise("08.1", "Write my_connection_sides(latent, levels, layers): h_i of every connection of an SD-layout UNet, "
             "the middle block last.", "ToyUNet(...).connections (the same rule as SD's table)",
             "the input conv and each level's ResNets keep the level's side; each downsampler (after every level but "
             "the last) halves it; the middle block sits at the coarsest side.", _sides_reference, _sides_cases,
             atol=0.0),
    Exercise("08.2", "Set answer to how many times fewer numbers SD 1.5's latent z_0 holds than its 512 × 512 RGB "
             "image.", "SD 1.5's VAE config (downsampling factor and latent channels)",
             "the VAE halves the side once per block after the first (×8 in all) and keeps 4 channels.",
             _latent_ratio, rtol=1e-9),
    # chapter 09 · training at scale
    Exercise("09.1", "Write my_state_bytes(n_frozen, n_trainable, bytes_per_value): the weight memory of a ControlNet "
             "training step with AdamW.", "cnetlib.costs.accounted_memory",
             "frozen weights once; trainable ones four times: θ, ∇θ and AdamW's two moments m and v.",
             _state_reference, _state_cases, rtol=1e-12),
    Exercise("09.2", "Write my_shard(batch_size, rank, world): the global batch of a step and the slice process `rank` "
             "trains on.", "cnetlib.train_sd.shard", "the global batch is batch_size × world; process r takes "
             "the r-th block of batch_size samples.", _shard_reference, _shard_cases, atol=0.0),
)}
