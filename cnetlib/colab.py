"""Setting a chapter up on Colab: the one place every chapter's first cell calls (README, "Open in Colab").

A clean Colab runtime has torch, numpy, matplotlib and ipywidgets, but not cnetlib nor the
Stable Diffusion stack. The first cell of each chapter clones the book, puts it on
``sys.path`` (this module only needs the standard library) and calls
:func:`ensure_installed`, which checks what is *importable*, not which folders exist, and
runs ``pip install -e BOOK[extras]`` only when something is missing. Run twice, the second
call does nothing; after a failed install (the network dropped), the next run tries again.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from .runtime import unimportable   # standard library only, like this module

#: Where the chapters clone the book from; set ``CNETLIB_REPO`` to use a fork or a mirror.
BOOK_URL = "https://github.com/controlnet-book/controlnet-book"
REPO_ENV = "CNETLIB_REPO"

#: The modules each part of cnetlib needs (import names). "" is the core; "sd" is the extra of
#: chapters 08-09. ipywidgets is needed by every chapter but any version works (Colab ships 7.x,
#: which must not be upgraded under a running kernel), so it is checked, never installed.
NEEDS: dict[str, tuple[str, ...]] = {
    "": ("torch", "numpy", "PIL", "tqdm", "matplotlib", "ipywidgets"),
    "sd": ("torchvision", "diffusers", "transformers", "accelerate", "controlnet_aux"),
}


def missing_modules(extras: Sequence[str] = ()) -> list[str]:
    """The modules the core and ``extras`` need that this Python cannot import."""
    unknown = [e for e in extras if e not in NEEDS or e == ""]
    if unknown:
        raise ValueError(f"extras: expected names from {sorted(k for k in NEEDS if k)}, got {unknown}")
    return unimportable(m for part in ("", *extras) for m in NEEDS[part])


def ensure_installed(book: str | Path, extras: Sequence[str] = (), *,
                     run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """``pip install -e BOOK[extras]`` when a module the chapter needs is missing; returns what was missing.

    ``book`` is the cloned repository. ipywidgets is never installed here (see :data:`NEEDS`):
    if it is missing, the error says to install it. Raises ``RuntimeError`` naming what is
    missing and what to do when pip fails, so a rerun of the cell retries instead of going on.
    """
    book = Path(book)
    if not (book / "pyproject.toml").is_file():
        raise FileNotFoundError(f"book: expected a clone of the book (with pyproject.toml) at {book}; delete the "
                                f"folder and rerun the cell to clone it again (set {REPO_ENV} for another URL)")
    missing = missing_modules(extras)
    if "ipywidgets" in missing:
        raise ModuleNotFoundError("ipywidgets is not installed: pip install ipywidgets, then restart the kernel")
    if not missing:
        return []
    target = f"{book}[{','.join(extras)}]" if extras else str(book)
    print(f"installing the book's dependencies (missing: {', '.join(missing)}) …", flush=True)
    r = run([sys.executable, "-m", "pip", "install", "-q", "-e", target], capture_output=True, text=True)
    still = missing_modules(extras) if r.returncode == 0 else missing
    if r.returncode != 0 or still:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(f"pip install -e {target} failed (exit {r.returncode}); still missing: "
                           f"{', '.join(still)}. pip said: {' | '.join(tail) or 'nothing'}. "
                           "Check the runtime's internet connection and rerun this cell.")
    return missing
