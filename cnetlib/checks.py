"""Input checks that fail early with a message naming what was expected and what was given."""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Sequence

import torch


def check_number(value, *, name: str, low: float | None = None, high: float | None = None,
                 integer: bool = False, low_open: bool = False) -> float | int:
    """A finite number (an int if ``integer``) in ``[low, high]`` (``(low, high]`` if
    ``low_open``); returns it. Raises naming ``name``, what was expected and what was given."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        raise TypeError(f"{name}: expected {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name}: expected {kind} {'>' if low_open else '>='} {low:g}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected {kind} <= {high:g}, got {value}")
    return value


def check_control_window(start, end) -> None:
    """``0 <= control_start < control_end <= 1``: the fraction of sampling steps with control
    (diffusers' control_guidance_start/end). An empty window is refused, as diffusers does."""
    check_number(start, name="control_start", low=0.0, high=1.0)
    check_number(end, name="control_end", low=0.0, high=1.0)
    if start >= end:
        raise ValueError(f"control_start, control_end: expected start < end (the window of steps with control), "
                         f"got {start} >= {end}: no step would be controlled")


def check_prompts(prompts, *, name: str = "prompts") -> list[str]:
    """A list of strings (one per image): a single string is refused, not split into characters."""
    if isinstance(prompts, str):
        raise TypeError(f"{name}: expected a list of strings (one per image), got the string {prompts!r}; "
                        f"write [{prompts!r}] for one image")
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name}: expected strings, got {bad[0]} among them")
    return prompts


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
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() > 0 and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite value(s)")
    if value_range is not None and x.numel() > 0:
        lo, hi = value_range
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - tol or xmax > hi + tol:
            raise ValueError(f"{name}: expected values in [{lo}, {hi}], got values in [{xmin:.3g}, {xmax:.3g}]")


@contextmanager
def cli_errors(prog: str):
    """Around a command line's ``main()``: a bad value (ValueError, TypeError, OSError, all
    raised with the argument's name) ends the program with its message and exit status 2,
    not a traceback. ``CNETLIB_TRACEBACK=1`` shows the traceback (for bug reports)."""
    from .runtime import env_flag

    try:
        yield
    except (ValueError, TypeError, OSError) as e:
        if env_flag("CNETLIB_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
