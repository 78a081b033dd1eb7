"""Chapter 05's measurements: chapter 04's seed runs re-trained with snapshots, each measured.

    python -m cnetlib.experiments.mechanism --seed 0 --out data/mechanism/seed0
    python -m cnetlib.experiments.mechanism --book      # every run chapter 05 uses (about 2 h)

Re-trains (the first ``--until`` steps of) chapter 04's run ``seed{SEED}`` (same recipe, same
seed; the first steps match chapter 04's shipped log, the later ones depend on the PyTorch
build's rounding, which ``trajectory_max_abs_loss_difference`` records: chapter 05, section 1),
keeps the ControlNet every ``--every`` steps, and measures each snapshot with
:class:`cnetlib.mechanism.MechanismProbe`: the condition gain per noise band, the connectors'
RMS and the residual ratios at every snapshot; each outline's probability of being followed
(16 noise draws) every ``--follow-every`` steps; the IoU at control scales α every
``--alpha-every`` steps. Writes ``curves.json`` after every snapshot (an interrupted run
continues where it stopped: the snapshots are kept under ``runs/mechanism/``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base import load_or_train_base
from ..checkpoint import atomic_save, atomic_write_text
from ..controlnet import toy_controlnet
from ..data import Fill50k
from ..mechanism import MechanismProbe, Snapshots, condition_path
from ..probes import connector_rms
from ..runtime import DATA_DIR, ROOT
from ..train import train_controlnet
from .runs import SHIPPED, load_run
from .sudden_convergence import RECIPE

SHIPPED_MECHANISM = DATA_DIR / "mechanism"
#: Where the snapshots (and a re-run's curves) go; ignored by git.
LOCAL = ROOT / "runs" / "mechanism"
#: The control scales α of question 1 (α = 1 is the run's own).
ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0)
#: The book's runs: seed -> measure() options. Seeds 0-2 (chapter 04's) get every measurement;
#: 3 and 4 are held out for chapter 05's early-warning test (no α sweep, a snapshot every 50 steps).
BOOK_SEEDS: dict[int, dict] = {0: {}, 1: {}, 2: {}, 3: {"every": 50, "alpha_every": 0}, 4: {"every": 50, "alpha_every": 0}}


def _recipe_controlnet(base, seed: int):
    """A fresh ControlNet of chapter 04's recipe (zero connectors) on ``base``, drawn from ``seed``."""
    return toy_controlnet(base, "zero", seed=seed, condition_encoder=RECIPE.condition_encoder,
                          hint_channels=RECIPE.hint_channels)


def train_snapshots(seed: int, until: int, every: int, work: Path, progress: bool = True) -> dict[int, dict]:
    """The ControlNet of chapter 04's ``seed{seed}`` run every ``every`` steps up to ``until``,
    with its training losses; cached in ``work/snapshots.pt``."""
    path = work / "snapshots.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed)
    snaps = Snapshots(every)
    snaps.keep(0, net)
    data = Fill50k(RECIPE.n_train, seed=0, condition=RECIPE.condition)
    run = train_controlnet(base, net, data, steps=RECIPE.steps, batch_size=RECIPE.batch_size, lr=RECIPE.lr,
                           lr_schedule=RECIPE.lr_schedule, drop_prompt=RECIPE.drop_prompt, seed=seed,
                           eval_every=RECIPE.eval_every, sample_every=RECIPE.sample_every, out_dir=work / "train",
                           progress=progress, on_step=snaps, stop_at=until)
    if run.interrupted or len(run.losses) < until:
        raise KeyboardInterrupt(f"interrupted after step {len(run.losses)}; run the same command again to resume")
    out = {"states": snaps.states, "losses": torch.tensor(run.losses), "seconds": torch.tensor(run.seconds)}
    atomic_save(out, path)
    return out


def trajectory_check(losses: Sequence[float], shipped_log: list[dict], every: int) -> float | None:
    """Largest |Δ| between this run's mean loss per ``every`` steps and the shipped run's
    logged ones, over the steps both have: ~1e-7 when the trajectories are the same (None
    when they share no logged step)."""
    rows = [r for r in shipped_log if 0 < r["step"] <= len(losses) and r["step"] % every == 0]
    if not rows:
        return None
    return max(abs(float(np.mean(losses[r["step"] - every: r["step"]])) - r["loss"]) for r in rows)


def measure(seed: int = 0, until: int = RECIPE.steps, every: int = 25, follow_every: int = 50, alpha_every: int = 100,
            alpha_draws: int = 8, out: Path | None = None, progress: bool = True) -> dict:
    """Train (or load) the snapshots of ``seed{seed}`` and measure them; returns the curves."""
    work = LOCAL / f"seed{seed}_until{until}_every{every}"   # the snapshots: one folder per setting
    out = Path(out) if out is not None else work
    work.mkdir(parents=True, exist_ok=True)
    snaps = train_snapshots(seed, until, every, work, progress)
    shipped = SHIPPED / f"seed{seed}"   # chapter 04's run of this seed, if the book ships it
    curves_path = out / "curves.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {
        "seed": seed, "until": until, "every": every, "follow_every": follow_every, "alpha_every": alpha_every,
        "alphas": list(ALPHAS), "alpha_draws": alpha_draws, "snapshots": []}
    curves["trajectory_max_abs_loss_difference"] = trajectory_check(
        snaps["losses"].tolist(), load_run(shipped).log, RECIPE.eval_every) if (shipped / "log.jsonl").is_file() else None
    curves["torch"] = torch.__version__   # the trajectories depend on the build's float rounding (chapter 05)
    curves["loss_per_step"] = [round(float(v), 6) for v in snaps["losses"]]
    if "seconds" in snaps:
        curves["train_seconds"] = round(float(snaps["seconds"]), 1)
    probe = MechanismProbe()
    curves["probe"] = {"n": probe.n, "draws": probe.draws, "steps": probe.steps, "guidance": probe.guidance,
                       "threshold": probe.threshold, "loss_n": probe.loss_n, "loss_draws": probe.loss_draws}
    rows = {r["step"]: r for r in curves["snapshots"]}
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed).eval()
    # Every measurement by name: a snapshot measured by an earlier version gets only what it lacks.
    measurements = {
        "gain": lambda: probe.condition_gain(base, net),
        "connector_rms": lambda: connector_rms(net),
        "residual_ratio": lambda: probe.residual_ratio(base, net),
        "condition_path": lambda: condition_path(net, probe, base=base),
    }
    for step in tqdm(sorted(snaps["states"]), desc=f"measure seed {seed}", disable=not progress):
        row = rows.setdefault(step, {"step": step})
        wanted = [k for k in measurements if k not in row]
        if step % follow_every == 0:
            wanted.append("iou_alpha1")
        if alpha_every and step % alpha_every == 0:
            wanted.append("iou_alpha")
        wanted = [k for k in wanted if k not in row]
        if not wanted:
            continue
        start = time.perf_counter()
        net.load_state_dict(snaps["states"][step])
        for key in wanted:
            if key == "iou_alpha1":
                row[key] = probe.following(base, net).round(4).tolist()
            elif key == "iou_alpha":
                row[key] = {str(a): probe.following(base, net, scale=a, draws=alpha_draws).round(4).tolist()
                            for a in ALPHAS if a != 1.0}
            else:
                row[key] = measurements[key]()
        row["seconds"] = round(row.get("seconds", 0.0) + time.perf_counter() - start, 1)
        curves["snapshots"] = [rows[k] for k in sorted(rows)]
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(curves_path, json.dumps(curves))
    return curves


def load_curves(seed: int, *, train: bool = False, progress: bool = True) -> dict:
    """Chapter 05's curves for ``seed``: the shipped ones, or (``train``) measured here."""
    if train:
        return measure(seed, progress=progress, **BOOK_SEEDS.get(seed, {}))
    path = SHIPPED_MECHANISM / f"seed{seed}" / "curves.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not shipped; regenerate it with "
                                f"python -m cnetlib.experiments.mechanism --seed {seed} --out {path.parent}")
    return json.loads(path.read_text())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.mechanism", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--until", type=int, default=RECIPE.steps, help="train and measure the first N steps")
    p.add_argument("--every", type=int, default=25, help="a snapshot every N steps")
    p.add_argument("--follow-every", type=int, default=50, help="16-draw following probability every N steps")
    p.add_argument("--alpha-every", type=int, default=100, help="IoU at every control scale α every N steps (0: never)")
    p.add_argument("--out", type=Path, default=None, help="folder for curves.json (default: the snapshots' folder under runs/mechanism/)")
    p.add_argument("--book", action="store_true",
                   help="every run of chapter 05 (BOOK_SEEDS), one after the other, into data/mechanism/seedS")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.book:
            for seed, options in BOOK_SEEDS.items():
                curves = measure(seed, out=SHIPPED_MECHANISM / f"seed{seed}", progress=not a.no_progress, **options)
                print(json.dumps({"seed": seed, "snapshots": len(curves["snapshots"])}))
            return
        curves = measure(a.seed, a.until, a.every, a.follow_every, a.alpha_every, out=a.out,
                         progress=not a.no_progress)
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None
    print(json.dumps({"seed": curves["seed"], "snapshots": len(curves["snapshots"]),
                      "trajectory_max_abs_loss_difference": curves["trajectory_max_abs_loss_difference"]}))


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.mechanism"):
        main()
