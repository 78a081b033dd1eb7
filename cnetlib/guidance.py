"""Inference-time control: classifier-free guidance with ControlNet, in every named mode.

Chapter 04 samples with mode ``"both"``; chapter 06 compares all of them; chapter 07
passes several ControlNets. With ε_c = the model with the prompt c_t and ε_uc = with
the empty prompt, classifier-free guidance is (paper, section 4)

    ε = ε_uc + β (ε_c − ε_uc).

Where does the control go?

* ``"both"``: ControlNet's residuals are added in ε_uc and in ε_c (diffusers' default);
* ``"cond_only"``: only in ε_c, so the guidance term β(ε_c − ε_uc) carries the control too;
* ``"resolution_weighted"``: only in ε_c, and connection i is multiplied by
  w_i ∝ 64 / h_i (the paper's "CFG resolution weighting"; h_i is the side of that
  block's feature map), so deep, coarse blocks weigh more. No public reference code
  implements it; the literal ×8 on the middle block is reported to break generation, so
  here the weights are normalised to ``max_weight · h_min / h_i``: the coarsest
  connection gets ``max_weight``, the finest ``max_weight · h_min / h_max`` (chapter 06);
* ``"guess"``: only in ε_c with w_i = ``logspace(-1, 0, n)`` (diffusers' form: the first,
  finest block gets 0.1, the middle block 1); the reference code writes 0.825^(n−1−i) for
  SD's 13 connections, the same curve there, not for the toy's 7 (chapter 06 shows both).

Every mode takes a global ``conditioning_scale`` and a window ``[control_start,
control_end)`` of the sampling steps (as fractions) outside which no control is added.
The mode table and the sum of several ControlNets live in :mod:`cnetlib.control`, which
``cnetlib.sd`` calls too: SD's 13 connections (chapter 08) are weighed by the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .checks import check_images, check_number, check_prompts
from .control import (  # noqa: F401  (the mode table and the sum: one core for the toy and SD)
    MODES, ControlOptions, branch_weights, check_mode, connection_weights, control_active, guess_weights,
    reference_guess_weights, resolution_weights, with_zero_branch,
)
from .controlnet import ControlNet
from .controlled import control_residuals
from .diffusion import ddim_sample, ddim_timesteps, ddpm_sample, make_schedule
from .unet import Connection, ToyUNet

@dataclass
class Control:
    """One condition: a ControlNet, its control image c (B, C, H, W) in [0, 1], and its scale."""

    controlnet: ControlNet
    condition: torch.Tensor
    scale: float = 1.0


def _as_controls(controls) -> list[Control]:
    if isinstance(controls, Control):
        return [controls]
    out = []
    for c in controls:
        if isinstance(c, Control):
            out.append(c)
        elif isinstance(c, (tuple, list)) and len(c) in (2, 3):
            out.append(Control(*c))
        else:
            raise TypeError(f"controls: expected Control or (controlnet, condition[, scale]) tuples, got {type(c).__name__}")
    return out


def check_controls(base: ToyUNet, controls: Sequence[Control], batch: int) -> None:
    """Same base, same condition batch and size for every control."""
    sizes = set()
    for k, c in enumerate(controls):
        if not isinstance(c.controlnet, ControlNet):
            raise TypeError(f"controls[{k}].controlnet: expected a ControlNet, got {type(c.controlnet).__name__}")
        if not isinstance(c.condition, torch.Tensor):
            raise TypeError(f"controls[{k}].condition: expected a torch.Tensor (B, C, H, W) in [0, 1], "
                            f"got {type(c.condition).__name__}")
        c.controlnet.check_base(base)
        if c.condition.ndim != 4 or c.condition.shape[0] != batch:
            raise ValueError(f"controls[{k}].condition: expected shape ({batch}, C, H, W), got {tuple(c.condition.shape)}")
        c.controlnet.check_condition(c.condition, name=f"controls[{k}].condition")
        sizes.add(tuple(c.condition.shape[-2:]))
    if len(sizes) > 1:
        raise ValueError(f"controls: expected conditions of one size, got sizes {sorted(sizes)}")


def guided_model_fn(
    base: ToyUNet,
    controls: Sequence[Control],
    c_cond: torch.Tensor,
    c_uncond: torch.Tensor,
    timesteps: Sequence[int],
    *,
    mode: str = "both",
    guidance: float = 3.0,
    conditioning_scale: float = 1.0,
    control_start: float = 0.0,
    control_end: float = 1.0,
    max_weight: float = 1.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model_fn(x_t, t)`` for a sampler: the guided prediction ε (or v) under ``mode``.

    ``timesteps`` are the sampler's steps (to know which fraction of the run step t is).
    """
    opts = ControlOptions(mode, conditioning_scale, control_start, control_end, max_weight)   # checked there
    check_number(guidance, name="guidance")
    for k, c in enumerate(controls):
        check_number(c.scale, name=f"controls[{k}].scale")
    nets = [c.controlnet for c in controls]
    conds = [c.condition for c in controls]
    scales = [c.scale * conditioning_scale for c in controls]
    w_uc, w_c = branch_weights(mode, base.connections, max_weight)
    index = {int(t): k for k, t in enumerate(timesteps)}

    # Two savings that leave the numbers as they are (up to float rounding): c_f = E(c)
    # depends on the condition alone, so it is computed once here, not at every step;
    # and ε_c and ε_uc run as one batch of 2B in channels-last memory. A 20-step DDIM
    # run of 32 toy samples on 2 CPU cores then takes 0.69× the time of the two passes in
    # mode "both", 0.76× at β = 1 (benchmarks/sampling.py measures it side by side).
    c_fs = [net.condition_encoder(c) for net, c in zip(nets, conds)]
    context = torch.cat([c_cond, c_uncond])
    conds_2, c_fs_2 = [torch.cat([c, c]) for c in conds], [torch.cat([f, f]) for f in c_fs]

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        on = bool(controls) and opts.active(index[int(t[0])], len(timesteps))
        if guidance == 1.0:  # β = 1: ε = ε_c, no unconditional branch at all
            x = x.contiguous(memory_format=torch.channels_last)
            kw = dict(zip(("down_residuals", "mid_residual"),
                          control_residuals(nets, x, t, c_cond, conds, scales, w_c, c_fs))) if on else {}
            return base(x, t, c_cond, **kw)
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])
        x2 = x2.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPUs
        kw = {}
        if on and w_uc is not None:  # mode "both": residuals r_i in ε_c and in ε_uc
            down, mid = control_residuals(nets, x2, t2, context, conds_2, scales, w_c, c_fs_2)
            kw = {"down_residuals": down, "mid_residual": mid}
        elif on:  # residuals w_i·r_i in ε_c only: the ε_uc half gets exact zeros
            down, mid = with_zero_branch(*control_residuals(nets, x2[: len(x)], t, c_cond, conds, scales, w_c, c_fs),
                                         controlled_first=True)
            kw = {"down_residuals": down, "mid_residual": mid}
        out_c, out_uc = base(x2, t2, context, **kw).chunk(2)
        return out_uc + guidance * (out_c - out_uc)  # ε = ε_uc + β (ε_c − ε_uc)

    return fn


@torch.no_grad()
def sample(
    base: ToyUNet,
    prompts: Sequence[str],
    controls: Control | Sequence[Control] | Sequence[tuple] = (),
    *,
    mode: str = "both",
    guidance: float = 3.0,
    conditioning_scale: float = 1.0,
    control_start: float = 0.0,
    control_end: float = 1.0,
    max_weight: float = 1.0,
    steps: int = 25,
    sampler: str = "ddim",
    seed: int = 0,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Generate one image per prompt under any number of controls; ``(B, 3, H, W)`` in [-1, 1].

    ``controls`` is a :class:`Control`, a list of them, or ``(controlnet, condition[,
    scale])`` tuples: their residuals are summed per connection (chapter 07). With no
    controls this is plain text-to-image sampling of the base.
    """
    prompts = check_prompts(prompts)
    check_number(steps, name="steps", low=1, integer=True)
    check_number(seed, name="seed", integer=True)
    controls = _as_controls(controls)
    check_controls(base, controls, len(prompts))
    device = next(base.parameters()).device
    controls = [Control(c.controlnet, c.condition.to(device), c.scale) for c in controls]
    cfg = base.config
    schedule = make_schedule(cfg.schedule)
    shape = (len(prompts), cfg.in_channels, cfg.image_size, cfg.image_size)
    if controls:
        scale = controls[0].controlnet.config.condition_size // cfg.image_size
        shape = shape[:2] + (controls[0].condition.shape[-2] // scale, controls[0].condition.shape[-1] // scale)
    if x_T is not None:  # the starting noise: one image per prompt, of the size the conditions make
        check_images(x_T, name="x_T", channels=shape[1], size=shape[2:])
        if x_T.shape[0] != shape[0]:
            raise ValueError(f"x_T: expected batch {shape[0]} (one per prompt), got {x_T.shape[0]}")
    c_cond = base.encode_prompts(list(prompts))
    c_uncond = base.encode_prompts([""] * len(prompts))
    if sampler == "ddim":
        ts = ddim_timesteps(schedule.T, steps)
    elif sampler == "ddpm":
        ts = list(range(schedule.T - 1, -1, -1))
    else:
        raise ValueError(f"sampler: expected 'ddim' or 'ddpm', got {sampler!r}")
    fn = guided_model_fn(base, controls, c_cond, c_uncond, ts, mode=mode, guidance=guidance,
                         conditioning_scale=conditioning_scale, control_start=control_start,
                         control_end=control_end, max_weight=max_weight)
    g = torch.Generator().manual_seed(seed)
    if sampler == "ddim":
        out = ddim_sample(fn, shape, schedule, cfg.prediction, steps=steps, generator=g, x_T=x_T,
                          progress=progress, device=device)
    else:
        out = ddpm_sample(fn, shape, schedule, cfg.prediction, generator=g, x_T=x_T, progress=progress, device=device)
    return out.cpu()


def plot_connection_weights(connections: Sequence[Connection] | Sequence[int], max_weights: Sequence[float] = (1.0,),
                            title: str = "per-connection weight w_i"):
    """w_i of every mode per connection (the middle block last), one line each (chapter 06)."""
    import matplotlib.pyplot as plt

    hs = [c.resolution if isinstance(c, Connection) else int(c) for c in connections]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.62 * len(hs) + 2.5), 3.4))
    x = range(len(hs))
    ax.plot(x, connection_weights("both", hs), "o-", label="both / cond_only: 1")
    ax.plot(x, connection_weights("guess", hs), "s-", label="guess: logspace(-1, 0, n) (diffusers; used here)")
    ax.plot(x, reference_guess_weights(len(hs)), "x:", color="k", ms=7, label="guess: 0.825^(n−1−i) (reference code)")
    for mw in max_weights:
        ax.plot(x, connection_weights("resolution_weighted", hs, mw), "^--", label=f"resolution weighted, max {mw:g}")
    ax.set_xticks(list(x), [f"{i}\n{h}" if i < len(hs) - 1 else f"mid\n{h}" for i, h in enumerate(hs)], fontsize=7)
    ax.set(xlabel="connection i and its feature-map side h_i (the middle block last)", ylabel="w_i", title=title,
           yscale="log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
