"""Measurements of a ControlNet's insides: where gradients flow, how connectors grow, what
a non-zero connector does to the frozen model at step 0 (chapters 02-03).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .controlnet import ControlNet
from .controlled import ControlledUNet
from .diffusion import diffusion_loss, make_schedule
from .unet import ToyUNet

#: Parameter groups of a ControlNet, in the paper's symbols.
GROUPS = ("Z (zero convs, Θz2)", "Z in E (Θz1)", "E (condition encoder)", "Θc (trainable copy)")


def parameter_group(name: str, net: ControlNet) -> str:
    """Which of :data:`GROUPS` a ControlNet parameter belongs to."""
    if name.startswith("zero_convs."):
        return GROUPS[0]
    if name.startswith("condition_encoder."):
        last = len(net.condition_encoder.layers) - 1
        return GROUPS[1] if name.startswith(f"condition_encoder.layers.{last}.") else GROUPS[2]
    return GROUPS[3]


def gradient_front(base: ToyUNet, net: ControlNet, x0: torch.Tensor, condition: torch.Tensor,
                   prompts: Sequence[str], *, steps: int = 3, lr: float = 1e-3, weight_decay: float = 0.0,
                   seed: int = 0) -> list[dict]:
    """Train ``net`` for ``steps`` AdamW steps on one batch and report, per step and group,
    the gradient norm and whether the parameters moved.

    Returns rows ``{"step", "group", "grad_norm", "moved"}``. With zero convolutions the
    gradient front advances one zero layer per step: at step 0 only Z has a gradient, at
    step 1 also Θc and the zero conv inside E, at step 2 the rest of E.
    """
    model = ControlledUNet(base, net).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = make_schedule(base.config.schedule)
    context = base.encode_prompts(list(prompts))
    rows = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed)  # same t and ε every step: only the weights change
        loss = diffusion_loss(lambda x, t: model(x, t, context, condition), x0, schedule, base.config.prediction,
                              generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        opt.step()
        for group in GROUPS:
            names = [n for n, _ in net.named_parameters() if parameter_group(n, net) == group]
            params = dict(net.named_parameters())
            grad = sum(float(params[n].grad.norm()) ** 2 for n in names if params[n].grad is not None) ** 0.5
            moved = any(not torch.equal(params[n].detach(), before[n]) for n in names)
            rows.append({"step": step, "group": group, "grad_norm": grad, "moved": moved})
    return rows


def connector_rms(net: ControlNet) -> list[float]:
    """Per-weight RMS ‖W‖ / √(number of weights) of every connector Z, the middle block's last.

    The total norm ‖W‖ grows with √(number of weights), so connectors of different widths
    would differ by their size alone; the RMS compares them weight for weight (chapter 02).
    """
    return [float(z.weight.detach().norm()) / z.weight.numel() ** 0.5 for z in net.zero_convs]


COPY_PARTS = ("time_embed", "text_embed", "input_blocks", "middle_block")


def copy_drift(net: ControlNet, base: ToyUNet) -> float:
    """‖Θc − Θ‖ / ‖Θ‖: how far the trainable copy has moved from the base weights it was
    copied from (0 at initialisation), over every copied part (chapter 02)."""
    num = den = 0.0
    for part in COPY_PARTS:
        mine, theirs = getattr(net, part, None), getattr(base, part, None)
        if mine is None or theirs is None:
            continue
        for (name, a), (name_b, b) in zip(mine.named_parameters(), theirs.named_parameters()):
            if name != name_b or a.shape != b.shape:
                raise ValueError(f"{part}: the copy's {name} {tuple(a.shape)} is not the base's {name_b} "
                                 f"{tuple(b.shape)}; copy_drift needs a full trainable copy, not ControlNet-lite")
            num += float((a.detach() - b.detach()).pow(2).sum())
            den += float(b.detach().pow(2).sum())
    if den == 0.0:
        raise ValueError("copy_drift: expected a full trainable copy (time_embed, input_blocks, middle_block), got none")
    return (num / den) ** 0.5


@torch.no_grad()
def output_change(base: ToyUNet, net: ControlNet, x: torch.Tensor, t: torch.Tensor, prompts: Sequence[str],
                  condition: torch.Tensor) -> dict[str, float]:
    """How far the controlled model's prediction is from the frozen base's, for one batch:
    ``max_abs`` = max |Δ| and ``rel_l2`` = ‖Δ‖ / ‖base‖."""
    context = base.encode_prompts(list(prompts))
    ref = base(x, t, context)
    out = ControlledUNet(base, net)(x, t, context, condition)
    diff = out - ref
    return {"max_abs": float(diff.abs().max()), "rel_l2": float(diff.norm() / ref.norm())}


def gaussian_damage(base: ToyUNet, stds: Sequence[float], x: torch.Tensor, t: torch.Tensor, prompts: Sequence[str],
                    condition: torch.Tensor, **options) -> list[dict]:
    """:func:`output_change` at step 0 for Gaussian connectors of each std (std 0 = zero convs)."""
    rows = []
    for std in stds:
        kw = {"connector": "zero"} if std == 0 else {"connector": "gaussian", "connector_std": std}
        torch.manual_seed(0)
        net = ControlNet.from_unet(base, **options, **kw)
        rows.append({"std": std, **output_change(base, net, x, t, prompts, condition)})
    return rows


def sample_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two image batches in [-1, 1], in 0-255 pixel units."""
    return float((a - b).abs().mean() * 127.5)


def count_by_group(net: ControlNet) -> dict[str, int]:
    """Parameters per group of :data:`GROUPS`."""
    out = {g: 0 for g in GROUPS}
    for n, p in net.named_parameters():
        out[parameter_group(n, net)] += p.numel()
    return out


def first_nonzero_step(rows: list[dict]) -> dict[str, int | None]:
    """For each group: the first step of :func:`gradient_front` with a non-zero gradient."""
    out: dict[str, int | None] = {}
    for g in GROUPS:
        steps = [r["step"] for r in rows if r["group"] == g and r["grad_norm"] > 0]
        out[g] = min(steps) if steps else None
    return out


def connector_damage_view(base: ToyUNet, std: float | None, prompts: Sequence[str], condition: torch.Tensor, *,
                          steps: int = 20, seed: int = 0, guidance: float = 3.0):
    """Samples of the base, of the base + a fresh zero-conv ControlNet, and of the base + a
    fresh ControlNet with Gaussian connectors of ``std`` (None: 1/√fan_in), same seeds,
    under the control images ``condition`` (shown as the first row).

    Returns ``(figure, numbers)``; the numbers are the mean pixel difference (0-255) of
    each to the base's samples and the circle-colour accuracy of each. Chapter 02's slider
    calls it again for every std.
    """
    from .controlnet import toy_controlnet
    from .data import TOY_PALETTE
    from .guidance import Control, sample
    from .metrics import prompt_following
    from .viz import image_grid, wrap_prompt

    prompts = list(prompts)
    rows = {"base": sample(base, prompts, steps=steps, seed=seed, guidance=guidance)}
    for name, variant in (("zero convs", "zero"), ("gaussian", "gaussian")):
        net = toy_controlnet(base, variant, connector_std=std)
        rows[name] = sample(base, prompts, Control(net, condition), steps=steps, seed=seed, guidance=guidance)
    acc = {k: prompt_following(v, prompts, TOY_PALETTE).circle_accuracy for k, v in rows.items()}
    numbers = {"std": std, "zero_conv_difference": sample_difference(rows["zero convs"], rows["base"]),
               "gaussian_difference": sample_difference(rows["gaussian"], rows["base"]),
               "base_circle_accuracy": acc["base"], "zero_conv_circle_accuracy": acc["zero convs"],
               "gaussian_circle_accuracy": acc["gaussian"]}
    label = "1/√fan_in (standard init)" if std is None else ("0 (a zero conv)" if std == 0 else f"{std:g}")
    titles = [wrap_prompt(p, 16) for p in prompts] + [""] * (3 * len(prompts))
    fig = image_grid(torch.cat([condition * 2 - 1] + list(rows.values())), titles, ncols=len(prompts), scale=1.25,
                     row_labels=["control image c", "frozen model\nalone", "+ new ControlNet,\nzero convs",
                                 f"+ new ControlNet,\nGaussian, std {label}"],
                     suptitle=f"connectors with std {label}: mean pixel change from the frozen model's samples "
                              f"{numbers['gaussian_difference']:.0f} of 255 (zero convs: "
                              f"{numbers['zero_conv_difference']:.0f})")
    return fig, numbers
