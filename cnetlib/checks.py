"""Input checks that fail early with a message naming what was expected and what was given."""
from __future__ import annotations

from typing import Sequence

import torch


def check_images(
    x: torch.Tensor,
    *,
    name: str,
    channels: int | None = None,
    size: int | Sequence[int] | None = None,
    value_range: tuple[float, float] | None = None,
    tol: float = 1e-3,
) -> None:
    """Check that ``x`` is a batch of images ``(B, C, H, W)``.

    ``size`` is ``H == W == size`` or an ``(H, W)`` pair; ``value_range`` is
    inclusive with a small tolerance. Raises :class:`ValueError` naming ``name``,
    the expected and the given shape or range.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected shape (B, C, H, W), got {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name}: expected {channels} channels (B, {channels}, H, W), got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != hw:
            raise ValueError(f"{name}: expected spatial size {hw[0]}x{hw[1]}, got {x.shape[-2]}x{x.shape[-1]}")
    if value_range is not None and x.numel() > 0:
        lo, hi = value_range
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - tol or xmax > hi + tol:
            raise ValueError(f"{name}: expected values in [{lo}, {hi}], got values in [{xmin:.3g}, {xmax:.3g}]")
