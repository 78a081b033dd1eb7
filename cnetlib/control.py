"""How control enters a UNet: one core for the toy (chapters 04–07) and for SD (chapter 08).

A ControlNet k returns one residual r_{k,i} per connection i (the skip connections, then
the middle block). Before the base adds them, three things decide their size:

* the mode (chapter 06) gives each connection a weight w_i and says which branch of
  classifier-free guidance, ε_c (with the prompt) or ε_uc (without), receives control;
* each ControlNet has its own scale s_k (diffusers' ``controlnet_conditioning_scale``)
  times a global ``conditioning_scale``;
* several ControlNets are summed per connection (chapter 07; the paper adds them
  without weights, all s_k = 1).

    residual_i = Σ_k s_k · w_i · r_{k,i}

:func:`branch_weights` is the mode table and :func:`weigh_and_sum` the sum.
``cnetlib.guidance`` (the toy sampler) and ``cnetlib.sd`` (SD's) both call them, so the
modes chapter 06 measures are the ones chapter 08 runs; a test sends one mode table
through both samplers and checks they weigh the connections alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .checks import check_control_window, check_number
from .unet import Connection

MODES = ("both", "cond_only", "resolution_weighted", "guess")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


def resolution_weights(resolutions: Sequence[int], max_weight: float = 1.0) -> list[float]:
    """w_i = 64 / h_i of the paper, normalised so the coarsest connection gets ``max_weight``.

    ``max_weight · h_min / h_i``: for SD (h = 64 … 8) with ``max_weight = 8`` this is
    exactly the paper's 64 / h_i; ``max_weight = 1`` keeps every w_i ≤ 1.
    """
    if not resolutions:
        raise ValueError("resolutions: expected one h_i per connection, got none")
    h_min = min(resolutions)
    return [max_weight * h_min / h for h in resolutions]


def guess_weights(n: int) -> list[float]:
    """Guess mode's w_i, from 0.1 (the first, finest connection) to 1 (the middle block),
    evenly spaced in log: diffusers' ``logspace(-1, 0, n)``.

    The reference code writes 0.825^(n−1−i) for SD's n = 13, which is the same curve
    there (0.825¹² = 0.099). For other n the two differ, and we keep diffusers' form: it
    keeps SD's range, 0.1 to 1, whatever the number of connections (for the toy's 7:
    0.10 … 1, where 0.825^(n−1−i) would start at 0.32; chapter 06 shows both).
    """
    return torch.logspace(-1, 0, n, dtype=torch.float64).tolist()


def reference_guess_weights(n: int) -> list[float]:
    """The reference code's 0.825^(n−1−i) (``cldm.py``, written for n = 13), for comparison."""
    return [0.825 ** (n - 1 - i) for i in range(n)]


def connection_weights(mode: str, connections: Sequence[Connection] | Sequence[int],
                       max_weight: float = 1.0) -> list[float]:
    """Per-connection w_i for a mode (the middle block last); ``connections`` or their h_i."""
    check_mode(mode)
    hs = [c.resolution if isinstance(c, Connection) else int(c) for c in connections]
    if mode == "resolution_weighted":
        return resolution_weights(hs, max_weight)
    if mode == "guess":
        return guess_weights(len(hs))
    return [1.0] * len(hs)


def branch_weights(mode: str, connections: Sequence[Connection] | Sequence[int],
                   max_weight: float = 1.0) -> tuple[list[float] | None, list[float]]:
    """The mode table: ``(w_uc, w_c)``, the weights of the residuals added in ε_uc and in ε_c.

    ``"both"`` controls both branches with w_i = 1; every other mode controls ε_c only
    (``w_uc`` is None: ε_uc gets no residual at all), with the w_i of
    :func:`connection_weights`.
    """
    w = connection_weights(mode, connections, max_weight)
    return (w if mode == "both" else None), w


@dataclass(frozen=True)
class ControlOptions:
    """How control is applied while sampling, one type for the toy's ``sample`` and SD's
    ``generate`` (they take these as keyword arguments and build one): the ``mode``, a global
    ``conditioning_scale`` s, the window ``[control_start, control_end)`` of sampling steps
    (fractions) with control, and resolution weighting's ``max_weight``. Checked once, here."""

    mode: str = "both"
    conditioning_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        check_mode(self.mode)
        check_number(self.conditioning_scale, name="conditioning_scale")
        check_number(self.max_weight, name="max_weight", low=0.0, low_open=True)
        check_control_window(self.control_start, self.control_end)

    def weights(self, connections: Sequence[Connection] | Sequence[int]) -> tuple[list[float] | None, list[float]]:
        """``(w_uc, w_c)`` for these connections (:func:`branch_weights`)."""
        return branch_weights(self.mode, connections, self.max_weight)

    def active(self, k: int, n_steps: int) -> bool:
        """Is control on at sampling step ``k`` of ``n_steps``?"""
        return control_active(k, n_steps, self.control_start, self.control_end)


def control_active(k: int, n_steps: int, start: float = 0.0, end: float = 1.0) -> bool:
    """Is control on at sampling step ``k`` of ``n_steps``? (diffusers' control_guidance_start/end)."""
    return not (k / n_steps < start or (k + 1) / n_steps > end)


def weigh_and_sum(
    residuals: Iterable[tuple[Sequence[torch.Tensor], torch.Tensor]],
    scales: Sequence[float],
    weights: Sequence[float] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Σ_k s_k · w_i · r_{k,i}: each ControlNet's ``(down, mid)`` residuals scaled by its
    s_k and per connection by w_i (``weights``, the middle block last; None: all 1), then
    summed over ControlNets."""
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    n = None
    for (d, m), s in zip(residuals, scales, strict=True):
        n = len(d) + 1
        w = [1.0] * n if weights is None else weights
        if len(w) != n:
            raise ValueError(f"connection_scales: expected {n} values (one per connection, middle last), got {len(w)}")
        d = [r * (s * wi) for r, wi in zip(d, w[:-1])]          # its scale s_k and chapter 06's w_i
        m = m * (s * w[-1])
        if down is not None and len(d) != len(down):
            raise ValueError(f"controlnets: expected every ControlNet to have {len(down) + 1} connections, got {n}")
        down = d if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    if down is None:
        raise ValueError("controlnets: expected at least one ControlNet, got none")
    return down, mid  # type: ignore[return-value]


def with_zero_branch(down: Sequence[torch.Tensor], mid: torch.Tensor, controlled_first: bool
                     ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Residuals for a 2B batch of (ε_c, ε_uc) inputs when only one branch is controlled:
    ``down``/``mid`` for that half, exact zeros for the other. The toy batches ε_c first,
    diffusers' SD pipeline ε_uc first (``controlled_first`` says which)."""
    def pad(r: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(r)
        return torch.cat([r, z] if controlled_first else [z, r])
    return [pad(r) for r in down], pad(mid)
