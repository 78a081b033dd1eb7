"""Plots the chapters share: image grids, schedules, loss curves.

Each function returns a matplotlib figure and draws nothing else, so a chapter can
call it once (what CI checks) and an ipywidgets slider can call it again.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import tensor_to_uint8
from .diffusion import Schedule


def _as_hwc(images: torch.Tensor | np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        return tensor_to_uint8(images, value_range)
    return np.asarray(images)


def seed_colour(seed: int) -> str:
    """The colour of training seed ``seed`` in every figure of chapters 04-05 and their appendices
    (matplotlib's ten-colour cycle: seed 0 blue, 1 orange, 2 green, 3 red, 4 purple, ...)."""
    return f"C{int(seed) % 10}"


def outline_overlay(images: np.ndarray, conditions: np.ndarray, colour: tuple[int, int, int] = (255, 0, 255),
                    alpha: float = 0.7) -> np.ndarray:
    """``uint8 (B, H, W, 3)`` samples with their condition's outline (the bright pixels of
    ``conditions``, same shape) drawn over them in ``colour``: whether a disk fills its
    outline is then visible at a glance (chapter 04's sample strips)."""
    images, conditions = np.asarray(images), np.asarray(conditions)
    if images.shape != conditions.shape or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images, conditions: expected two uint8 arrays of one shape (B, H, W, 3), "
                         f"got {images.shape} and {conditions.shape}")
    line = conditions.mean(-1) > 127
    out = images.astype(float)
    out[line] = (1 - alpha) * out[line] + alpha * np.asarray(colour, float)
    return out.round().astype(np.uint8)


def image_grid(images: torch.Tensor | np.ndarray, titles: Sequence[str] | None = None, *, ncols: int = 8,
               scale: float = 1.3, value_range: tuple[float, float] = (-1.0, 1.0), suptitle: str | None = None,
               title_size: float = 6.5, row_labels: Sequence[str] | None = None):
    """A grid of images: float ``(B, 3, H, W)`` in ``value_range`` or ``uint8 (B, H, W, 3)``.

    ``titles`` go above each image; ``row_labels`` (one per row) to the left of each row,
    saying what the row shows."""
    imgs = _as_hwc(images, value_range)
    n = len(imgs)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"row_labels: expected {nrows} labels (one per row), got {len(row_labels)}")
    extra = 1.2 if row_labels is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols + extra, scale * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(imgs[k], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=title_size)
    for r, label in enumerate(row_labels or []):
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center",
                        fontsize=title_size + 1)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def field_table(obj, indent: str = "  ") -> str:
    """A dataclass (a recipe, a config) as one ``name  value`` line per field, for printing
    instead of its one-line repr."""
    from dataclasses import fields

    width = max(len(f.name) for f in fields(obj))
    return "\n".join(f"{indent}{f.name:<{width}}  {getattr(obj, f.name)}" for f in fields(obj))


def wrap_prompt(prompt: str, width: int = 18) -> str:
    """Break a prompt over lines for a small title."""
    words, lines, line = prompt.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def plot_schedules(schedules: Sequence[Schedule]):
    """ᾱ_t (how much image is left) and log SNR for each schedule, side by side."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for s in schedules:
        ab = s.alphas_cumprod.numpy()
        a1.plot(ab, label=f"{s.name}: ᾱ_T = {ab[-1]:.2g}")
        a2.plot(np.log(s.snr.numpy()), label=s.name)
    a1.set(xlabel="t", ylabel="ᾱ_t", title="signal kept, ᾱ_t")
    a2.set(xlabel="t", ylabel="ln SNR = ln(ᾱ_t / (1 − ᾱ_t))", title="log signal-to-noise ratio")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_losses(losses: Sequence[float], smooth: int = 50, title: str = "training loss"):
    """Raw per-step loss (faint) and its running mean over ``smooth`` steps."""
    fig, ax = plt.subplots(figsize=(6, 3))
    y = np.asarray(losses, dtype=float)
    ax.plot(y, alpha=0.25, lw=0.8, label="per step")
    if len(y) >= smooth:
        ax.plot(np.arange(smooth - 1, len(y)), np.convolve(y, np.ones(smooth) / smooth, "valid"),
                label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def noised_grid(x0: torch.Tensor, t: int, schedule: Schedule, seed: int = 0):
    """The images ``x0`` after the forward process to step ``t`` (top row), and below them the
    mean colour of each x_t divided by √ᾱ_t: the colour a model could read off x_t. Where the
    schedule leaves signal at t (SD's linear schedule even at t = T − 1) it is the image's own
    background colour; where it leaves none it is grey or random. Chapter 01's slider."""
    from .diffusion import q_sample  # local: keeps this module's imports light

    g = torch.Generator().manual_seed(seed)
    tt = torch.full((len(x0),), int(t), dtype=torch.long)
    xt = q_sample(x0, tt, torch.randn(x0.shape, generator=g), schedule)
    ab = schedule.alphas_cumprod[int(t)].item()
    mean = (xt.mean(dim=(2, 3), keepdim=True) / max(ab, 1e-12) ** 0.5).expand_as(xt)
    return image_grid(torch.cat([xt.clamp(-1, 1), mean.clamp(-1, 1)]), ncols=len(x0), scale=1.3,
                      row_labels=["x_t", "mean colour\nof x_t / √ᾱ_t"],
                      suptitle=f"{schedule.name} schedule, t = {int(t)}: √ᾱ_t = {ab ** 0.5:.3f}, "
                               f"√(1−ᾱ_t) = {(1 - ab) ** 0.5:.3f}")
