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

#: Name of the environment variable that moves what cnetlib writes (``runs/``, ``figures/``) elsewhere.
HOME_ENV = "CNETLIB_HOME"


def _is_source_tree(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "cnetlib").is_dir() and (folder / "data").is_dir()


_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
#: Is cnetlib running from a clone of the book (editable install, or the chapters' folder on sys.path)?
SOURCE_TREE = _is_source_tree(_PACKAGE_PARENT)
#: Where cnetlib writes ``runs/`` and ``figures/``: the clone's root; after a plain ``pip install``,
#: ``$CNETLIB_HOME`` or ``~/.cache/cnetlib`` (never site-packages).
ROOT = (Path(os.environ[HOME_ENV]).expanduser() if os.environ.get(HOME_ENV) else
        _PACKAGE_PARENT if SOURCE_TREE else
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cnetlib")
#: The shipped data (base checkpoint, chapter 04's runs): ``data/`` of the clone, or the copy a
#: pip install places in the package (``cnetlib/shipped/``); read, never written by the chapters.
DATA_DIR = _PACKAGE_PARENT / "data" if SOURCE_TREE else Path(__file__).resolve().parent / "shipped"
FIGURES_DIR = ROOT / "figures"


def unimportable(modules) -> list[str]:
    """The names in ``modules`` this Python cannot import (found without importing them)."""
    import importlib
    import importlib.util

    importlib.invalidate_caches()   # a pip install earlier in this process must be seen
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require_extra(feature: str, modules: tuple[str, ...], extra: str = "sd") -> None:
    """Fail with the pip command to run when ``feature`` needs modules of an extra that is not installed."""
    missing = unimportable(modules)
    if missing:
        raise ModuleNotFoundError(f"{feature} needs {', '.join(missing)}, which is not installed: "
                                  f"pip install \"cnetlib[{extra}]\" (or pip install -r requirements.txt in the book)")


def env_flag(name: str) -> bool:
    """Is the environment variable ``name`` switched on ("1", "true", "yes" or "on")?"""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def smoke_mode() -> bool:
    """True when ``CNETLIB_SMOKE`` asks for the short CI run of every chapter."""
    return env_flag(SMOKE_ENV)


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
