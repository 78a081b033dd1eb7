"""Chapter 04's runs: the shipped logs, re-running them, and the plots that compare them.

Every run of chapter 04 is one call of :func:`cnetlib.experiments.sudden_convergence.run_experiment`
and lives in a folder with ``log.jsonl``, ``summary.json``, ``samples.npz`` (and
``controlnet.pt`` for the seeds). The book ships them under ``data/sudden_convergence/``;
regenerate one with the command in :data:`RUNS` (``python -m cnetlib.experiments.runs NAME``
runs it).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime import DATA_DIR, ROOT

SHIPPED = DATA_DIR / "sudden_convergence"
#: Where full mode writes its own runs (ignored by git).
LOCAL = ROOT / "runs" / "sudden_convergence"

#: The training seeds of every arm of chapter 04's comparisons.
TRAINING_SEEDS = (0, 1, 2)
#: Chapter 04's arms: name -> keyword arguments of run_experiment (the CLI flags in the comment),
#: each trained with every seed of TRAINING_SEEDS.
ARMS: dict[str, dict] = {
    "seed": {},                                            # the paper's recipe (zero convs, 50 % dropped)
    "gaussian": {"variant": "gaussian"},                  # --variant gaussian
    "lite": {"variant": "lite"},                          # --variant lite
    "drop0": {"drop_prompt": 0.0},                         # --drop-prompt 0
    "n1000": {"n_train": 1000},                            # --n-train 1000
}
#: name -> keyword arguments of run_experiment: ``seed0`` … ``gaussian2`` …, and chapter 07's colour hint.
RUNS: dict[str, dict] = {f"{arm}{s}": {"seed": s, **kw} for arm, kw in ARMS.items() for s in TRAINING_SEEDS}
RUNS["colour"] = {"seed": 0, "condition": "colour_hint"}   # --condition colour_hint (chapter 07)
SEEDS = tuple(f"seed{s}" for s in TRAINING_SEEDS)
#: Runs whose trained ControlNet ships (chapters 06-07 sample with them); the others ship their logs only.
SHIPPED_WEIGHTS = SEEDS + ("colour",)


def arm_runs(arm: str) -> tuple[str, ...]:
    """The run names of one arm of :data:`ARMS`, one per training seed."""
    if arm not in ARMS:
        raise KeyError(f"arm: expected one of {sorted(ARMS)}, got {arm!r}")
    return tuple(f"{arm}{s}" for s in TRAINING_SEEDS)


@dataclass
class Run:
    """A finished run read back from its folder."""

    name: str
    folder: Path
    log: list[dict]
    summary: dict
    samples: dict = field(default_factory=dict)  #: step -> {"images": uint8 (k,H,W,3), "images_no_prompt": ...}

    def curve(self, key: str = "iou") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one logged quantity, at the evaluations that have it."""
        rows = [r for r in self.log if key in r]
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    def per_sample(self, key: str = "proxy_iou_per_sample") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, (evaluations, samples) array)`` of a per-sample quantity."""
        rows = [r for r in self.log if key in r]
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    def seconds_at(self, step: int | None) -> float | None:
        """Wall-clock seconds of training (evaluations included) when ``step`` was reached."""
        if step is None:
            return None
        rows = [r for r in self.log if r["step"] >= step and "seconds" in r]
        return rows[0]["seconds"] if rows else None

    def sample_steps(self) -> list[int]:
        return sorted(self.samples)


def load_run(folder: str | Path, name: str | None = None) -> Run:
    """Read a run folder (``log.jsonl``, ``summary.json``, ``samples.npz``); errors name what is missing."""
    folder = Path(folder)
    missing = [f for f in ("log.jsonl", "summary.json") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a finished run, missing {', '.join(missing)}")
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((folder / "summary.json").read_text())
    samples: dict = {}
    if (folder / "samples.npz").is_file():
        with np.load(folder / "samples.npz") as z:
            for key in z.files:
                kind, step = key.rsplit("_", 1)
                samples.setdefault(int(step), {})[kind] = z[key]
    return Run(name or folder.name, folder, log, summary, samples)


def run_or_load(name: str, *, train: bool, progress: bool = True, device: str = "cpu") -> Run:
    """The run ``name`` of :data:`RUNS`: trained into ``runs/sudden_convergence/NAME`` when
    ``train`` (resuming an interrupted one, reusing a finished one), else the shipped copy."""
    if name not in RUNS:
        raise KeyError(f"run: expected one of {sorted(RUNS)}, got {name!r}")
    if not train:
        return load_run(SHIPPED / name, name)
    out = LOCAL / name
    if not (out / "summary.json").is_file():
        from .sudden_convergence import run_experiment

        run_experiment(out=out, progress=progress, device=device, **RUNS[name])
    return load_run(out, name)


def load_controlnet(name: str = "seed0", *, train: bool = False, progress: bool = True):
    """The trained ControlNet of run ``name`` (``controlnet.pt`` of its folder), frozen, in eval mode.

    Chapters 06 and 07 use ``seed0`` (the outline ControlNet) and ``colour`` (the colour
    hint). With ``train`` the run is trained (or reused) under ``runs/`` first.
    """
    from ..checkpoint import load_checkpoint
    from ..controlnet import ControlNet, ControlNetConfig

    folder = (LOCAL if train else SHIPPED) / name
    if train:
        run_or_load(name, train=True, progress=progress)
    path = folder / "controlnet.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained ControlNet; regenerate it with "
                                f"`python -m cnetlib.experiments.runs {name}`")
    return load_checkpoint(path, ControlNet, ControlNetConfig).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------
def plot_fidelity_and_loss(runs: list[Run], title: str = "condition fidelity and loss"):
    """Sampled IoU (and the proxy, faint) above, the training loss below, for each run."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    from ..viz import seed_colour

    for k, run in enumerate(runs):
        color = seed_colour(run.summary.get("seed", k))   # one colour per training seed across chapters 04-05
        s, v = run.curve("proxy_iou")
        a1.plot(s, v, color=color, alpha=0.35, lw=1)
        s, v = run.curve("iou")
        a1.plot(s, v, "o-", color=color, ms=3, label=f"{run.name}: sampled IoU (faint: 4-step proxy)")
        jump = run.summary.get("jump", {}).get("jump_step")
        if jump is not None:
            a1.axvline(jump, color=color, ls=":", lw=1)
        s, v = run.curve("loss")
        a2.plot(s[1:], v[1:], color=color, lw=1)
    a1.plot([], [], "k:", lw=1, label="jump (dotted, per run)")
    a1.set(ylabel="IoU with the condition's disk", ylim=(0.3, 0.95), title=title)
    a1.legend(fontsize=7, loc="lower right")
    a2.set(xlabel="training step", ylabel="loss (mean of 25 steps)\nsame colours")
    fig.tight_layout()
    return fig


def plot_curves(runs: list[Run], key: str = "iou", labels: list[str] | None = None, title: str = ""):
    """One logged quantity against the step for several runs, one line each."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, run in enumerate(runs):
        s, v = run.curve(key)
        ax.plot(s, v, "o-", ms=2.5, label=labels[k] if labels else run.name)
    ax.set(xlabel="training step", ylabel=key.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_arms(arms: dict[str, list[Run]], key: str = "iou", title: str = "", ylabel: str | None = None, ax=None):
    """One logged quantity against the step for each arm: the mean over its training seeds,
    with the band between the lowest and the highest seed (on ``ax`` when given; chapter 04)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6)) if ax is None else (ax.figure, ax)
    for k, (arm, runs) in enumerate(arms.items()):
        curves = [r.curve(key) for r in runs]
        n = min(len(c[0]) for c in curves)
        steps = curves[0][0][:n]
        values = np.stack([c[1][:n] for c in curves])
        ax.plot(steps, values.mean(0), "o-", ms=2.5, color=f"C{k}", label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(steps, values.min(0), values.max(0), color=f"C{k}", alpha=0.15, lw=0)
    ax.set(xlabel="training step", ylabel=ylabel or key.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sample_strip(run: Run, steps: list[int], conditions: np.ndarray, key: str = "images",
                 labels: Sequence[str] | None = None, overlay: bool = True):
    """The paper's Figure 4 at toy scale: the condition row, then the samples at each step,
    each row named by ``labels`` (default: its step) and, with ``overlay``, with the
    outline drawn over every sample in magenta (:func:`cnetlib.viz.outline_overlay`)."""
    from .. import viz

    steps = [min(run.sample_steps(), key=lambda s: abs(s - want)) for want in steps]
    k = run.samples[steps[0]][key].shape[0]
    samples = [run.samples[s][key] for s in steps]
    if overlay:
        samples = [viz.outline_overlay(x, conditions[:k]) for x in samples]
    labels = [f"step {s}" for s in steps] if labels is None else [f"{lab}\n(step {s})" for lab, s in zip(labels, steps)]
    if len(labels) != len(steps):
        raise ValueError(f"labels: expected one per step ({len(steps)}), got {len(labels)}")
    return viz.image_grid(np.concatenate([conditions[:k]] + samples), ncols=k, scale=1.05,
                          row_labels=["outline c", *labels])


def summary_table(runs: list[Run]) -> list[dict]:
    """One row per run: jump step, seconds to it, sharpness, IoU before/after, colours, per-sample figures."""
    rows = []
    for run in runs:
        s = run.summary
        j, ps = s.get("jump", {}), s.get("per_sample_proxy", {})
        rows.append({"run": run.name, "jump_step": j.get("jump_step"), "seconds_to_jump": run.seconds_at(j.get("jump_step")),
                     "step_10": j.get("step_10"), "step_90": j.get("step_90"), "sharpness": j.get("sharpness"),
                     "abrupt": j.get("abrupt"), "iou_before": s.get("iou_before"), "iou_after": s.get("iou_after"),
                     "iou_no_prompt_after": s.get("iou_no_prompt_after"),
                     "circle_accuracy": s.get("circle_accuracy_after"),
                     "background_accuracy": s.get("background_accuracy_after"),
                     "samples_switched": ps.get("switched"), "sample_switch_iqr": (ps.get("q25"), ps.get("q75")),
                     "sample_sharpness": ps.get("median_sharpness"), "samples_abrupt": ps.get("abrupt_share"),
                     "seconds": s.get("seconds")})
    return rows


def per_sample_after(run: Run, key: str) -> np.ndarray:
    """A per-sample figure of the final evaluation of ``run``: ``"iou"``, ``"iou_no_prompt"``,
    ``"within_1px"`` or ``"within_1px_no_prompt"`` (bool as 0/1; no circle counts as not placed)."""
    s = run.summary
    if key in ("iou", "iou_no_prompt"):
        return np.asarray(s["per_sample_iou_after" if key == "iou" else "per_sample_iou_no_prompt_after"], float)
    if key in ("within_1px", "within_1px_no_prompt"):
        pl = s["placement"]["with_prompt" if key == "within_1px" else "no_prompt"]
        c = np.array([np.inf if v is None else v for v in pl["center_error_per_sample"]], float)
        r = np.array([np.inf if v is None else v for v in pl["radius_error_per_sample"]], float)
        return ((c <= 1.0) & (np.abs(r) <= 1.0)).astype(float)
    raise KeyError(f"key: expected iou, iou_no_prompt, within_1px or within_1px_no_prompt, got {key!r}")


def per_sample_at(run: Run, step: int, key: str = "iou") -> np.ndarray:
    """A per-sample figure of the probe at one logged evaluation of ``run`` (chapter 04, section 7):
    ``key`` is ``"iou"``, ``"iou_no_prompt"`` or ``"proxy_iou"``; ``step`` must be a step the run logged it at."""
    steps, values = run.per_sample(f"{key}_per_sample")
    if not len(steps):
        raise KeyError(f"key: expected a per-sample quantity of the log (iou, iou_no_prompt, proxy_iou), got {key!r}")
    hit = np.flatnonzero(steps == step)
    if not len(hit):
        raise ValueError(f"step: expected one of the steps {run.name} logged {key} at "
                         f"({steps[0]}, {steps[1] if len(steps) > 1 else ''}… {steps[-1]}), got {step}")
    return values[hit[0]]


def arm_interval(runs: list[Run], key: str = "iou"):
    """Mean of a final per-sample figure over the runs of one arm (one per training seed), with its
    95 % bootstrap interval, resampled hierarchically: training seeds, then samples (:mod:`cnetlib.stats`)."""
    from ..stats import bootstrap_ci

    groups = [per_sample_after(r, key) for r in runs]
    return bootstrap_ci(groups if len(groups) > 1 else groups[0])


def arm_table(arms: dict[str, list[Run]], keys: Sequence[str] = ("iou", "iou_no_prompt", "within_1px")) -> list[dict]:
    """One row per arm: each key's mean with its interval, and the jump step and sharpness of each seed."""
    rows = []
    for arm, runs in arms.items():
        row = {"arm": arm, "seeds": len(runs)}
        for key in keys:
            row[key] = arm_interval(runs, key)
        row["iou_before"] = float(np.mean([r.summary["iou_before"] for r in runs]))
        row["jump_steps"] = tuple(r.summary.get("jump", {}).get("jump_step") for r in runs)
        row["sharpness"] = tuple(r.summary.get("jump", {}).get("sharpness") for r in runs)
        rows.append(row)
    return rows


def print_table(rows: list[dict], keys: list[str]) -> None:
    """Print rows as an aligned text table (numbers to 2-3 significant digits, intervals as ``m [lo, hi]``)."""
    from ..stats import Interval

    def fmt(v):
        if isinstance(v, Interval):
            return str(v)
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, tuple):  # a range (2 values) or one value per seed
            return ("–" if len(v) == 2 else "/").join(fmt(x) for x in v)
        return "—" if v is None else str(v)

    cells = [[fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))


def main(argv: list[str] | None = None) -> None:
    """``python -m cnetlib.experiments.runs NAME [NAME ...] [--device cuda]``: (re)generate shipped
    runs into data/ (all of them, one after the other, when no name is given; an arm name such as
    ``gaussian`` stands for its three seeds)."""
    import argparse

    from .sudden_convergence import run_experiment

    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.runs", description=main.__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"runs ({', '.join(RUNS)}) or arms ({', '.join(ARMS)}); default: all")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv if argv is not None else sys.argv[1:])
    names: list[str] = []
    for name in a.names or list(RUNS):
        if name in ARMS:
            names += arm_runs(name)
        elif name in RUNS:
            names.append(name)
        else:
            raise SystemExit(f"run: expected one of {sorted(RUNS)} or an arm of {sorted(ARMS)}, got {name!r}")
    for name in names:
        # Regenerating: the shipped summary goes (run_experiment refuses a finished run's folder);
        # an interrupted regeneration left state.pt there, and this run resumes from it.
        (SHIPPED / name / "summary.json").unlink(missing_ok=True)
        try:
            _, summary = run_experiment(out=SHIPPED / name, progress=True, device=a.device, **RUNS[name])
        except KeyboardInterrupt as e:
            raise SystemExit(str(e) or "interrupted") from None
        (SHIPPED / name / "state.pt").unlink(missing_ok=True)  # training state: for resuming, not for shipping
        if name not in SHIPPED_WEIGHTS:  # the book ships the logs of this run, not its weights
            (SHIPPED / name / "controlnet.pt").unlink(missing_ok=True)
        print(name, json.dumps({k: summary[k] for k in ("seconds", "iou_before", "iou_after") if k in summary}))


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.runs"):
        main()
