"""What makes the toy base draw crisp disks? The levers of chapter 01, measured.

    python -m cnetlib.experiments.base_levers                 # the short runs (about 12 min each)
    python -m cnetlib.experiments.base_levers --snapshots runs/base   # the shipped run along its length

Each short run trains a base for the same wall-clock budget on 2 CPU cores (about
12 minutes: 900 steps of the narrow UNet, 450 of the wide one, batch 128) and changes
one thing at a time: the prompt-drop rate (a real unconditional mode), the Min-SNR-γ
loss weighting, the width. Each is scored with :func:`cnetlib.base.score_base` on its
EMA weights and on its raw weights. ``--snapshots DIR`` scores the EMA snapshots that
``python -m cnetlib.base --snapshot-every 500`` kept along the shipped base's run (the
length lever) and its final raw weights (the EMA lever). Results go to
``data/base_levers.json`` (one row per model scored: name, weights and step), which chapter 01 reads.
``--checkpoint PATH --name NAME`` scores a finished checkpoint under that row name (the
first shipped base; the short runs, whose shipped rows were trained by an exploration
script with :func:`~cnetlib.train.train_denoiser`'s loop and these recipes).
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from ..base import BASE_RECIPE, BaseRecipe, score_base, train_base
from ..checkpoint import atomic_write_text
from ..runtime import DATA_DIR
from ..unet import ToyUNet, count_parameters

RESULTS = DATA_DIR / "base_levers.json"
#: The narrow UNet of the first shipped base, and the recipe that trained it (prompt drop 15 %).
NARROW = (8, 16, 32)
#: name -> recipe; every recipe costs about 12 minutes on 2 CPU cores.
LEVERS: dict[str, BaseRecipe] = {
    "narrow, drop 15 %": replace(BASE_RECIPE, channels=NARROW, steps=900, stop_at=None, drop_prompt=0.15),
    "narrow, drop 30 %": replace(BASE_RECIPE, channels=NARROW, steps=900, stop_at=None, drop_prompt=0.3),
    "narrow, drop 30 %, Min-SNR-5": replace(BASE_RECIPE, channels=NARROW, steps=900, stop_at=None, drop_prompt=0.3,
                                            weighting="min_snr"),
    "wide, drop 30 %": replace(BASE_RECIPE, steps=450, stop_at=None, drop_prompt=0.3),
}


def _row(name: str, model: ToyUNet, recipe: BaseRecipe, weights: str, steps: int, seconds: float | None,
         n: int) -> dict:
    scores = score_base(model, n)
    return {"name": name, "weights": weights, "steps": steps, "seconds": seconds,
            "channels": list(recipe.channels), "parameters": count_parameters(model),
            "drop_prompt": recipe.drop_prompt, "weighting": recipe.weighting, "batch_size": recipe.batch_size,
            **scores}


def load_results(path: str | Path = RESULTS) -> list[dict]:
    """The rows of ``data/base_levers.json`` (chapter 01's table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no lever results; regenerate them with "
                                "`python -m cnetlib.experiments.base_levers` (and `--snapshots runs/base`)")
    return json.loads(path.read_text())


def _save(rows: list[dict], path: Path) -> None:
    new = {(x["name"], x["weights"], x["steps"]) for x in rows}   # a row replaces only its own model
    old = [r for r in (json.loads(path.read_text()) if path.is_file() else [])
           if (r["name"], r["weights"], r["steps"]) not in new]
    atomic_write_text(path, json.dumps(old + rows, indent=1))


def run_levers(names: Sequence[str], n: int = 112, out: Path = RESULTS) -> list[dict]:
    rows = []
    for name in names:
        recipe = LEVERS[name]
        result = train_base(recipe)
        if result.interrupted:
            raise KeyboardInterrupt(f"{name}: interrupted; nothing written")
        for weights, model in (("ema", result.model), ("raw", result.raw)):
            rows.append(_row(name, model.eval(), recipe, weights, recipe.steps, round(result.seconds), n))
            print(json.dumps(rows[-1]))
        _save(rows[-2:], out)
    return rows


def score_snapshots(run_dir: Path, n: int = 112, out: Path = RESULTS, recipe: BaseRecipe = BASE_RECIPE,
                    every: int = 500) -> list[dict]:
    """Score the ``snapshots/ema_STEP.pt`` of a base run whose STEP is a multiple of ``every``,
    and the raw weights in its ``state.pt``."""
    rows = []
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=False)
    seconds_per_step = state["seconds"] / max(1, len(state["losses"]))
    snaps = sorted((p for p in run_dir.glob("snapshots/ema_*.pt") if int(re.findall(r"\d+", p.stem)[-1]) % every == 0),
                   key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    model = ToyUNet(recipe.config()).eval()
    for path in snaps:
        step = int(re.findall(r"\d+", path.stem)[-1])
        model.load_state_dict(torch.load(path, map_location="cpu"))
        rows.append(_row("shipped recipe", model, recipe, "ema", step, round(step * seconds_per_step), n))
        print(json.dumps(rows[-1]))
    model.load_state_dict(state["model"])
    step = len(state["losses"])
    rows.append(_row("shipped recipe", model, recipe, "raw", step, round(state["seconds"]), n))
    print(json.dumps(rows[-1]))
    _save(rows, out)
    return rows


def score_checkpoint(path: Path, name: str, n: int = 112, out: Path = RESULTS) -> dict:
    """Score a finished base checkpoint (the first shipped base, say) with its recorded recipe."""
    from ..base import load_base

    model = load_base(path)
    meta = model.checkpoint_meta
    recipe = BaseRecipe(**{**meta["recipe"], "channels": tuple(model.config.channels),
                           "palette": tuple(meta["recipe"]["palette"])})
    row = _row(name, model, recipe, "ema", meta["steps"], meta.get("seconds"), n)
    print(json.dumps(row))
    _save([row], out)
    return row


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.base_levers", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"levers to run (default: all of {list(LEVERS)})")
    p.add_argument("--snapshots", type=Path, default=None, help="score the snapshots of this base run folder instead")
    p.add_argument("--checkpoint", type=Path, default=None, help="score this base checkpoint instead (with --name)")
    p.add_argument("--name", default=None, help="row name for --checkpoint")
    p.add_argument("--every", type=int, default=500, help="with --snapshots: score every N steps (default: %(default)s)")
    p.add_argument("--n", type=int, default=112, help="samples per score (default: %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    try:
        if a.checkpoint is not None:
            score_checkpoint(a.checkpoint, a.name or a.checkpoint.stem, a.n, a.out)
        elif a.snapshots is not None:
            score_snapshots(a.snapshots, a.n, a.out, every=a.every)
        else:
            unknown = [x for x in a.names if x not in LEVERS]
            if unknown:
                raise SystemExit(f"lever: expected names from {list(LEVERS)}, got {unknown}")
            run_levers(a.names or list(LEVERS), a.n, a.out)
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.base_levers"):
        main()
