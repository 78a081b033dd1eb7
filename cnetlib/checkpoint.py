"""Checkpoints: a state dict together with the config that built the model.

Chapter 01 ships the toy base this way (``data/base_unet.pt``); later chapters use
the same format for ControlNets. Writes are atomic (a temporary file, then
``os.replace``), so an interrupted save never leaves half a checkpoint behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

FORMAT = "cnetlib-checkpoint/1"


class ConfigMismatchError(ValueError):
    """A checkpoint was written for a model with another config."""


def _atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these files are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_writable(path: str | Path, name: str) -> Path:
    """Fail before a long job, not after it: ``path`` must be a file path (not a folder)
    whose folder exists or can be made."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name}: expected a file path, got the folder {path}; name a file inside it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"{name}: cannot write {path}: {parent} is not a writable folder")
    return path


def atomic_save_npz(path: str | Path, **arrays) -> Path:
    """``np.savez_compressed`` atomically (through a file handle, so no ".npz" is appended to the temporary name)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return _atomic_write(path, write)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (logs, prompt files): readers never see half of it."""
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(model: nn.Module, path: str | Path, *, meta: dict | None = None) -> Path:
    """Save ``model.state_dict()``, ``model.config.to_dict()`` and free-form ``meta``."""
    check_writable(path, "path")
    return atomic_save(
        {"format": FORMAT, "kind": type(model).__name__, "config": model.config.to_dict(),
         "state_dict": model.state_dict(), "meta": meta or {}},
        path,
    )


def error_line(e: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 120 characters; some errors have no message)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:120] if lines else ''}".rstrip(": ")


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's dict (on the CPU) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (an interrupted copy or download?): regenerate or re-download it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, garbage, or another program's file: say which file, not only why
        raise ValueError(f"{path}: not a readable checkpoint ({error_line(e)}); "
                         f"it may be truncated or not a cnetlib checkpoint: regenerate it") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a {FORMAT} checkpoint, got {type(ckpt).__name__} "
                         f"with format {ckpt.get('format') if isinstance(ckpt, dict) else None!r}")
    return ckpt


def config_diff(expected: dict, given: dict) -> list[str]:
    """Human-readable differences between two config dicts (``key: expected X, given Y``)."""
    out = []
    for k in sorted(set(expected) | set(given)):
        e, g = expected.get(k, "<missing>"), given.get(k, "<missing>")
        if e != g:
            es, gs = repr(e), repr(g)
            out.append(f"{k}: expected {es[:60]}{'...' if len(es) > 60 else ''}, given {gs[:60]}{'...' if len(gs) > 60 else ''}")
    return out


def load_checkpoint(path: str | Path, model_cls: type, config_cls: type, *, expected_config: Any = None) -> nn.Module:
    """Rebuild ``model_cls(config_cls(**saved_config))`` and load its weights.

    With ``expected_config``, a checkpoint written for another config raises
    :class:`ConfigMismatchError` listing every differing field.
    """
    ckpt = read_checkpoint(path)
    if ckpt["kind"] not in {model_cls.__name__, *(c.__name__ for c in model_cls.__subclasses__())}:
        raise ConfigMismatchError(f"{path}: expected a {model_cls.__name__} checkpoint, got a {ckpt['kind']}")
    if expected_config is not None:
        diff = config_diff(expected_config.to_dict(), ckpt["config"])
        if diff:
            raise ConfigMismatchError(f"{path}: checkpoint config does not match the model: " + "; ".join(diff))
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{path}: holds NaN or infinite weights in {bad[:3]}{' ...' if len(bad) > 3 else ''}: "
                         f"a diverged run? regenerate it")
    model = model_cls(config_cls(**ckpt["config"]))
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigMismatchError(f"{path}: weights do not fit {model_cls.__name__}: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.checkpoint_meta = ckpt["meta"]
    return model
