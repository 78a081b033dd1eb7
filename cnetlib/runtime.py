"""Run-time switches shared by every chapter: smoke mode, paths, saving figures.

Chapter 01 introduces these. A chapter calls :func:`pick` wherever it chooses a
number of steps, samples or seeds, so that one environment variable,
``CNETLIB_SMOKE``, shrinks the whole book for CI while a normal run reproduces the
shipped figures.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Name of the environment variable that switches smoke mode on ("1", "true", "yes").
SMOKE_ENV = "CNETLIB_SMOKE"

#: The repository root (the folder that holds ``cnetlib/``, ``data/`` and ``figures/``).
ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"
FIGURES_DIR = ROOT / "figures"


def smoke_mode() -> bool:
    """True when ``CNETLIB_SMOKE`` asks for the short CI run of every chapter."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full: T, smoke: T) -> T:
    """Return ``smoke`` in smoke mode and ``full`` otherwise (steps, sample counts...)."""
    return smoke if smoke_mode() else full


def save_figure(fig, name: str, *, force: bool = False) -> Path | None:
    """Write ``fig`` to ``figures/<name>.png``, except in smoke mode.

    Smoke runs (CI) must not overwrite the figures of a full run, so they only
    draw; pass ``force=True`` to write anyway.
    """
    if smoke_mode() and not force:
        return None
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    path = FIGURES_DIR / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible (a Colab GPU runtime), else ``"cpu"``.

    Chapters that train pass it on, so a reader who asks for retraining gets the fastest
    device they have, and is told which one before anything long starts.
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
