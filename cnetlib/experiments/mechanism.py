"""Chapter 05's measurements: chapter 04's seed runs re-trained with snapshots, each measured.

    python -m cnetlib.experiments.mechanism --seed 0 --out data/mechanism/seed0
    python -m cnetlib.experiments.mechanism --book      # every run chapter 05 uses (about 7.5 h)
    python -m cnetlib.experiments.mechanism --variants  # only the recipe variants (about 5.5 h)

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
import shutil
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
from ..mechanism import BANDS, GradientSNR, MechanismProbe, Snapshots, condition_path, on_steps
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
#: Chapter 05's recipe variants (questions 4-6): name -> what differs from chapter 04's recipe
#: (train_controlnet's ``lr``, ``lr_schedule``, ``drop_prompt``, ``weighting``, ``timesteps``;
#: ``variant`` of the ControlNet; ``open_encoder``: the condition encoder's last conv Θz1 gets a
#: standard random initialisation instead of zeros; ``n_train`` pairs; ``until`` steps). A constant
#: learning rate has no schedule to finish, so those runs last ``until`` steps.
RECIPE_VARIANTS: dict[str, dict] = {
    "eps_loss": {"weighting": "epsilon"},            # Stable Diffusion's ε weighting on the toy's v model
    "x0_loss": {"weighting": "x0"},                  # x_0 supervision (arXiv 2604.05761)
    "cross_norm": {"variant": "cross_norm"},         # ControlNeXt's cross normalisation for zero convs
    "cross_norm_open": {"variant": "cross_norm", "open_encoder": True},   # ... and no zero conv anywhere
    "lr_6e-3": {"lr": 6e-3, "lr_schedule": "constant", "until": 800},       # question 4: the lr sweep
    "lr_1.2e-2": {"lr": 1.2e-2, "lr_schedule": "constant", "until": 800},
    "lr_3e-3": {"lr": 3e-3, "lr_schedule": "constant"},
    "cubic_t": {"timesteps": "cubic"},               # training steps biased to high noise (#628, T2I-Adapter)
    "gaussian": {"variant": "gaussian"},             # chapter 04's ablations, under chapter 05's lens
    "drop0": {"drop_prompt": 0.0},
    "n1000": {"n_train": 1000},
    "lr_1.5e-3": {"lr": 1.5e-3, "lr_schedule": "constant"},
}
#: The seed of every recipe variant (chapter 04's seed 1: its jump is the median of the recipe's five seeds),
#: and their lighter measurement: a snapshot every 50 steps, 16 outlines × 2 noise draws,
#: 2 (t, ε) draws per pair for the gain, no α sweep.
VARIANT_SEED = 1
#: Variants run on more seeds (seed -> names): the ones whose verdict (chapter 05, section 7) needs three.
VARIANT_EXTRA_SEEDS: dict[int, tuple[str, ...]] = {
    s: ("x0_loss", "eps_loss", "cubic_t", "cross_norm", "gaussian", "drop0", "n1000",
        "lr_1.5e-3", "lr_3e-3", "lr_6e-3", "lr_1.2e-2") for s in (2, 3)}
VARIANT_MEASURE = {"every": 50, "follow_every": 50, "alpha_every": 0, "probe": {"n": 16, "draws": 2, "loss_draws": 2}}
SHIPPED_VARIANTS = SHIPPED_MECHANISM / "variants"


def recipe(variant: str | None = None) -> dict:
    """Chapter 04's recipe with ``RECIPE_VARIANTS[variant]`` applied: the ControlNet ``variant``,
    ``n_train``, ``steps`` (of the schedule), ``until`` and train_controlnet's options."""
    if variant is not None and variant not in RECIPE_VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(RECIPE_VARIANTS)}, got {variant!r}")
    out = {"variant": "zero", "n_train": RECIPE.n_train, "lr": RECIPE.lr, "lr_schedule": RECIPE.lr_schedule,
           "drop_prompt": RECIPE.drop_prompt, "weighting": "none", "timesteps": "uniform", "until": RECIPE.steps}
    out.update(RECIPE_VARIANTS.get(variant, {}))
    out["steps"] = RECIPE.steps if out["lr_schedule"] == "cosine" else out["until"]
    return out


def _recipe_controlnet(base, seed: int, variant: str = "zero", open_encoder: bool = False):
    """A fresh ControlNet of chapter 04's recipe (``variant``'s connectors) on ``base``, drawn from
    ``seed``; ``open_encoder``: Θz1 starts from PyTorch's default random initialisation, not 0."""
    net = toy_controlnet(base, variant, seed=seed, condition_encoder=RECIPE.condition_encoder,
                         hint_channels=RECIPE.hint_channels)
    if open_encoder:
        net.condition_encoder.layers[-1].reset_parameters()   # drawn after toy_controlnet's seeding: reproducible
    return net


def train_snapshots(seed: int, until: int, every: int, work: Path, progress: bool = True,
                    variant: str | None = None, snr: bool = False) -> dict[int, dict]:
    """The ControlNet of chapter 04's ``seed{seed}`` run (or of its recipe ``variant``) every
    ``every`` steps up to ``until``, with its training losses (and, with ``snr``, the gradients'
    signal-to-noise ratio over every 25 steps: :class:`cnetlib.mechanism.GradientSNR`); cached
    in ``work/snapshots.pt``."""
    path = work / "snapshots.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    r = recipe(variant)
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed, r["variant"], r.get("open_encoder", False))
    snaps = Snapshots(every, work / "snapshots")   # on disk too: a resumed run keeps the first part's
    snaps.keep(0, net)
    gradient_snr = GradientSNR(25) if snr else None
    data = Fill50k(r["n_train"], seed=0, condition=RECIPE.condition)
    run = train_controlnet(base, net, data, steps=r["steps"], batch_size=RECIPE.batch_size, lr=r["lr"],
                           lr_schedule=r["lr_schedule"], drop_prompt=r["drop_prompt"], weighting=r["weighting"],
                           timesteps=r["timesteps"], seed=seed, eval_every=RECIPE.eval_every,
                           sample_every=RECIPE.sample_every, out_dir=work / "train", progress=progress,
                           on_step=on_steps(snaps, gradient_snr),
                           stop_at=until)
    if run.interrupted or len(run.losses) < until:
        raise KeyboardInterrupt(f"interrupted after step {len(run.losses)}; run the same command again to resume")
    out = {"states": dict(sorted(snaps.states.items())), "losses": torch.tensor(run.losses),
           "seconds": torch.tensor(run.seconds)}
    if gradient_snr is not None:
        out["snr"] = gradient_snr.records   # a resumed run has them from its resume on
        out["snr_from"] = run.resumed_from
    atomic_save(out, path)
    shutil.rmtree(work / "snapshots")   # all of them are in snapshots.pt now
    return out


def trajectory_check(losses: Sequence[float], shipped_log: list[dict], every: int) -> float | None:
    """Largest |Δ| between this run's mean loss per ``every`` steps and the shipped run's
    logged ones, over the steps both have: ~1e-7 when the trajectories are the same (None
    when they share no logged step)."""
    rows = [r for r in shipped_log if 0 < r["step"] <= len(losses) and r["step"] % every == 0]
    if not rows:
        return None
    return max(abs(float(np.mean(losses[r["step"] - every: r["step"]])) - r["loss"]) for r in rows)


def measure(seed: int = 0, until: int | None = None, every: int = 25, follow_every: int = 50, alpha_every: int = 100,
            alpha_draws: int = 8, out: Path | None = None, progress: bool = True, variant: str | None = None,
            probe: dict | None = None, snr: bool = False) -> dict:
    """Train (or load) the snapshots of ``seed{seed}`` (chapter 04's recipe, or its ``variant`` of
    :data:`RECIPE_VARIANTS`) and measure them; returns the curves. ``probe``: options of the
    :class:`~cnetlib.mechanism.MechanismProbe` (default: 8 outlines × 16 noise draws)."""
    r = recipe(variant)
    until = r["until"] if until is None else until
    prefix = f"{variant}_" if variant else ""
    work = LOCAL / f"{prefix}seed{seed}_until{until}_every{every}"   # the snapshots: one folder per setting
    out = Path(out) if out is not None else work
    work.mkdir(parents=True, exist_ok=True)
    snaps = train_snapshots(seed, until, every, work, progress, variant, snr)
    shipped = SHIPPED / f"seed{seed}"   # chapter 04's run of this seed, if the book ships it
    curves_path = out / "curves.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {
        "seed": seed, "until": until, "every": every, "follow_every": follow_every, "alpha_every": alpha_every,
        "alphas": list(ALPHAS), "alpha_draws": alpha_draws, "snapshots": []}
    curves["variant"], curves["recipe"] = variant, r
    curves["trajectory_max_abs_loss_difference"] = trajectory_check(
        snaps["losses"].tolist(), load_run(shipped).log, RECIPE.eval_every) if (
            variant is None and (shipped / "log.jsonl").is_file()) else None
    curves["torch"] = torch.__version__   # the trajectories depend on the build's float rounding (chapter 05)
    curves["loss_per_step"] = [round(float(v), 6) for v in snaps["losses"]]
    if "snr" in snaps:
        curves["snr"], curves["snr_from"] = snaps["snr"], int(snaps["snr_from"])
    if "seconds" in snaps:
        curves["train_seconds"] = round(float(snaps["seconds"]), 1)
    probe = MechanismProbe(**(probe or {}))
    curves["probe"] = {"n": probe.n, "draws": probe.draws, "steps": probe.steps, "guidance": probe.guidance,
                       "threshold": probe.threshold, "loss_n": probe.loss_n, "loss_draws": probe.loss_draws,
                       "bands": list(probe.bands or BANDS)}
    rows = {r["step"]: r for r in curves["snapshots"]}
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed, r["variant"], r.get("open_encoder", False)).eval()
    # Every measurement by name: a snapshot measured by an earlier version gets only what it lacks.
    measurements = {
        "gain": lambda: probe.condition_gain(base, net),
        "connector_rms": lambda: connector_rms(net),
        "residual_ratio": lambda: probe.residual_ratio(base, net),
        "condition_path": lambda: condition_path(net, probe, base=base),
    }
    for step in tqdm(sorted(snaps["states"]), desc=f"measure {prefix}seed {seed}", disable=not progress):
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


def variant_path(name: str, seed: int = VARIANT_SEED) -> Path:
    """Where the shipped curves of recipe variant ``name`` on ``seed`` live."""
    folder = SHIPPED_VARIANTS / name
    return folder / "curves.json" if seed == VARIANT_SEED else folder / f"seed{seed}" / "curves.json"


def load_variant(name: str, seed: int = VARIANT_SEED, *, train: bool = False, progress: bool = True) -> dict:
    """Chapter 05's curves for the recipe variant ``name`` on ``seed``: shipped, or (``train``) measured here."""
    recipe(name)   # a clear error for an unknown name
    if train:
        return measure(seed, variant=name, progress=progress, **VARIANT_MEASURE)
    path = variant_path(name, seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not shipped; regenerate it with python -m cnetlib.experiments.mechanism "
                                f"--variant {name} --seed {seed} --out {path.parent}")
    return json.loads(path.read_text())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.mechanism", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=None, help=f"default: 0, or {VARIANT_SEED} with --variant")
    p.add_argument("--until", type=int, default=None, help="train and measure the first N steps (default: the recipe's)")
    p.add_argument("--every", type=int, default=25, help="a snapshot every N steps")
    p.add_argument("--follow-every", type=int, default=50, help="16-draw following probability every N steps")
    p.add_argument("--alpha-every", type=int, default=100, help="IoU at every control scale α every N steps (0: never)")
    p.add_argument("--out", type=Path, default=None, help="folder for curves.json (default: the snapshots' folder under runs/mechanism/)")
    p.add_argument("--book", action="store_true",
                   help="every run of chapter 05 (BOOK_SEEDS), one after the other, into data/mechanism/seedS")
    p.add_argument("--variant", choices=sorted(RECIPE_VARIANTS), default=None,
                   help=f"a recipe variant of chapter 05, on seed {VARIANT_SEED} with the variants' lighter measurement")
    p.add_argument("--variants", action="store_true",
                   help="every recipe variant of chapter 05, one after the other, into data/mechanism/variants/NAME")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.book or a.variants:
            if a.book:
                for seed, options in BOOK_SEEDS.items():
                    curves = measure(seed, out=SHIPPED_MECHANISM / f"seed{seed}", progress=not a.no_progress, **options)
                    print(json.dumps({"seed": seed, "snapshots": len(curves["snapshots"])}))
            runs = [(VARIANT_SEED, n) for n in RECIPE_VARIANTS]
            runs += [(seed, n) for seed, names in VARIANT_EXTRA_SEEDS.items() for n in names]
            for seed, name in runs:
                curves = measure(seed, variant=name, out=variant_path(name, seed).parent, progress=not a.no_progress,
                                 **VARIANT_MEASURE)
                print(json.dumps({"variant": name, "seed": seed, "snapshots": len(curves["snapshots"])}))
            return
        if a.variant:
            curves = measure(VARIANT_SEED if a.seed is None else a.seed, variant=a.variant, out=a.out,
                             progress=not a.no_progress, **VARIANT_MEASURE)
        else:
            curves = measure(a.seed or 0, a.until, a.every, a.follow_every, a.alpha_every, out=a.out,
                             progress=not a.no_progress)
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None
    print(json.dumps({"seed": curves["seed"], "snapshots": len(curves["snapshots"]),
                      "trajectory_max_abs_loss_difference": curves["trajectory_max_abs_loss_difference"]}))


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.mechanism"):
        main()
