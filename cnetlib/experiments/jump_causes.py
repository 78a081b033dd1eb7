"""Chapter 05's causal tests of the jump: restart, intervene, gradient signal-to-noise, and a
pre-registered early warning on new seeds.

    python -m cnetlib.experiments.jump_causes restart     # 3 runs × 8 draws (their own + 7 new) from step 250
    python -m cnetlib.experiments.jump_causes intervene   # Θz1 / connectors changed at step 250
    python -m cnetlib.experiments.jump_causes seeds       # the pre-registered seeds 5-9
    python -m cnetlib.experiments.jump_causes all         # all three, in the book's order

Every run is chapter 04's recipe. A **continuation** starts from the full training state
(ControlNet, AdamW moments, random generator) of chapter 05's run ``seed{S}`` at step 250 —
before every one of their switches — and trains on:

* ``restart``: with the run's own generator (``fork`` 0) and with it re-seeded (``fork`` k =
  1..7): new batches, prompt drops, timesteps and noise from step 250 on; everything else the
  same. (Fork 0 is this machine's continuation of the run: the shipped curves were measured on
  another machine, whose last-bit rounding made their trajectories drift from these after 60-85
  steps, as ``reproduction.json`` records: the largest |Δ loss| over steps 250-300);
* ``intervene``: with the run's own generator, but Θz1 or the connectors changed at step 250
  (:data:`INTERVENTIONS`).

A continuation measures the high-noise condition gain (:class:`cnetlib.mechanism.MechanismProbe`,
chapter 05's probe) every 25 steps and stops once it has been ≥ 10⁻³ at three evaluations in a
row, or at step 1,200: its **switch** is the first step of that last stretch above 10⁻³ (the
online reading of chapter 05's switch). It also records the gradients' signal-to-noise ratio
(:class:`cnetlib.mechanism.GradientSNR`). Results go to ``data/mechanism/causes/`` as one JSON
per continuation, written after every 25 steps: an interrupted command resumes.

``seeds`` trains the recipe on seeds 5-9 with chapter 05's snapshots (every 25 steps; sampled
IoU of 16 outlines × 2 draws every 50) plus the gradient SNR, for the early-warning rule
:data:`PREREGISTERED`, fixed before these seeds were trained.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base import load_or_train_base
from ..checkpoint import atomic_save, atomic_write_text
from ..data import Fill50k
from ..mechanism import GradientSNR, MechanismProbe, on_steps, parameter_groups
from ..train import train_controlnet
from .mechanism import LOCAL, SHIPPED_MECHANISM, _recipe_controlnet, load_curves, measure
from .sudden_convergence import RECIPE

CAUSES = SHIPPED_MECHANISM / "causes"
WORK = LOCAL / "causes"
#: The runs restarted and intervened on (chapter 05's measured seeds) and the step they start from.
RUN_SEEDS = (0, 1, 2)
START = 250
#: Re-seeded generators per run: fork k uses torch seed FORK_BASE + 100·S + k (k = 1..FORKS).
FORKS = 7
FORK_BASE = 10_000
#: Interventions at step START: name -> (part of cnetlib.mechanism.parameter_groups, action).
#: "scale:k" multiplies the part's weights and biases by k; "post_norm" replaces the weights by a
#: random direction (torch seed 7 + S) with the per-weight RMS the run's Θz1 has at step 1,200.
INTERVENTIONS = {"z1_x100": ("theta_z1", "scale:100"), "connectors_x10": ("connectors", "scale:10"),
                 "z1_post_norm_random": ("theta_z1", "post_norm")}
#: How a continuation is read: the gain's level, evaluations in a row, evaluation spacing, last step.
SWITCH_LEVEL, SWITCH_CONSECUTIVE, CHECK_EVERY, MAX_STEP = 1e-3, 3, 25, 1200

#: The early-warning rule, fixed (and committed) before seeds 5-9 were trained; calibrated on the
#: shipped seeds 0-4 only. Read online: a warning fires at the first evaluation at which the
#: signal has been ≥ level at ``consecutive`` evaluations in a row (every 25 steps). The predicted
#: jump is the warning + ``lead`` (the median lead of this online rule on seeds 0-4: 125, 150,
#: 150, 150, 50). The target is chapter 05's sampled jump: chapter 04's detector on the mean IoU
#: of 16 outlines × 2 draws every 50 steps. Scoring per seed: "hit" if the warning comes before
#: the jump by at most ``max_lead`` steps, "early" if by more, "miss" if at or after the jump
#: or never. Registered expectations: the gain hits on ≥ 4 of 5 seeds and predicts the jump
#: better than the constant guess (the mean jump of seeds 0-4, 660) on ≥ 4 of 5; the residual
#: ratio (the review's candidate) fires within 50 steps of the jump either side, i.e. it
#: confirms the jump rather than announcing it.
PREREGISTERED = {
    "seeds": (5, 6, 7, 8, 9),
    "rules": {"gain": {"signal": "gain:high noise", "level": 1e-5, "consecutive": 3, "lead": 150},
              "residual_ratio": {"signal": "residual ratio of the two deepest connections (mean)", "level": 0.5,
                                 "consecutive": 2, "lead": 0}},
    "max_lead": 400,
    "constant_guess": 660,
    "measure": {"every": 25, "follow_every": 50, "alpha_every": 0, "probe": {"n": 16, "draws": 2, "loss_draws": 4}},
}


def _data() -> Fill50k:
    return Fill50k(RECIPE.n_train, seed=0, condition=RECIPE.condition)


def _train(base, net, data, seed: int, work: Path, stop_at: int, on_step=None):
    """Chapter 04's recipe (as chapter 05 trains it) up to ``stop_at``, resuming ``work/state.pt``."""
    return train_controlnet(base, net, data, steps=RECIPE.steps, batch_size=RECIPE.batch_size, lr=RECIPE.lr,
                            lr_schedule=RECIPE.lr_schedule, drop_prompt=RECIPE.drop_prompt, seed=seed,
                            eval_every=RECIPE.eval_every, sample_every=RECIPE.sample_every, out_dir=work,
                            progress=False, on_step=on_step, stop_at=stop_at)


def start_state(seed: int, progress: bool = True) -> Path:
    """The full training state of run ``seed{seed}`` at step :data:`START` (trained once, kept under runs/)."""
    work = WORK / f"seed{seed}_start{START}"
    done = work / "start.pt"
    if done.is_file():
        return done
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed)
    run = _train(base, net, _data(), seed, work, START)
    if run.interrupted or len(run.losses) < START:
        raise KeyboardInterrupt(f"interrupted after step {len(run.losses)}; run the same command again to resume")
    shutil.copyfile(work / "state.pt", done)
    return done


def _intervene(net, seed: int, name: str) -> dict:
    """Apply :data:`INTERVENTIONS`\\ [name] to ``net`` in place; returns what was done."""
    part, action = INTERVENTIONS[name]
    params = parameter_groups(net)[part]
    before = float(torch.cat([p.detach().reshape(-1) for p in params]).norm())
    with torch.no_grad():
        if action.startswith("scale:"):
            for p in params:
                p.mul_(float(action.split(":")[1]))
        elif action == "post_norm":
            rms = load_curves(seed)["snapshots"][-1]["condition_path"]["encoder_zero_rms"]
            g = torch.Generator().manual_seed(7 + seed)
            w = params[0]
            direction = torch.randn(w.shape, generator=g)
            w.copy_(direction / direction.pow(2).mean().sqrt() * rms)
        else:
            raise ValueError(f"action: expected scale:K or post_norm, got {action!r}")
    after = float(torch.cat([p.detach().reshape(-1) for p in params]).norm())
    return {"part": part, "action": action, "norm_before": before, "norm_after": after}


def continuation(seed: int, fork: int = 0, intervention: str | None = None, progress: bool = True) -> dict:
    """Continue run ``seed{seed}`` from step :data:`START` with generator ``fork`` (0: its own)
    and an optional ``intervention``; returns (and writes) the continuation's record."""
    if intervention is not None and intervention not in INTERVENTIONS:
        raise ValueError(f"intervention: expected one of {sorted(INTERVENTIONS)}, got {intervention!r}")
    name = f"seed{seed}_" + (intervention if intervention else f"fork{fork}")
    out_path = CAUSES / f"{name}.json"
    record = json.loads(out_path.read_text()) if out_path.is_file() else None
    if record is not None and record.get("done"):
        return record
    work = WORK / name
    base = load_or_train_base(progress=progress)
    net = _recipe_controlnet(base, seed)
    probe = MechanismProbe()

    def record_point(step: int) -> None:   # the high-noise gain and the two deepest residual ratios at ``step``
        record["steps"].append(step)
        record["gain"].append(probe.condition_gain(base, net, bands=["high noise"])["high noise"]["gain"])
        record["ratio_deep"].append(float(np.mean(probe.residual_ratio(base, net)[-2:])))

    if record is None or not (work / "state.pt").is_file():
        state = torch.load(start_state(seed, progress), weights_only=False)
        if fork:
            state["generator"] = torch.Generator().manual_seed(FORK_BASE + 100 * seed + fork).get_state()
        record = {"seed": seed, "fork": fork, "intervention": None, "start": START, "steps": [], "gain": [],
                  "ratio_deep": [], "snr": [], "losses": [], "done": False, "torch": torch.__version__}
        if intervention:
            net.load_state_dict(state["controlnet"])
            record["intervention"] = {"name": intervention, **_intervene(net, seed, intervention)}
            state["controlnet"] = {k: v.clone() for k, v in net.state_dict().items()}
        work.mkdir(parents=True, exist_ok=True)
        atomic_save(state, work / "state.pt")
        net.load_state_dict(state["controlnet"])
        record_point(START)
    data = _data()
    step = record["steps"][-1]
    bar = tqdm(total=MAX_STEP - START, initial=step - START, desc=name, disable=not progress)
    while step < MAX_STEP:
        snr = GradientSNR(CHECK_EVERY)
        stop = min(step + CHECK_EVERY, MAX_STEP)
        run = _train(base, net, data, seed, work, stop, on_step=on_steps(snr))
        if run.interrupted:
            raise KeyboardInterrupt(f"interrupted at step {len(run.losses)}; run the same command again to resume")
        net.eval()
        record["losses"] = [round(float(v), 6) for v in run.losses[START:]]
        step = len(run.losses)
        record_point(step)
        record["snr"] += snr.records
        bar.update(step - bar.n - START)
        g = np.array(record["gain"])
        if len(g) >= SWITCH_CONSECUTIVE and (g[-SWITCH_CONSECUTIVE:] >= SWITCH_LEVEL).all():
            break
        atomic_write_text(out_path, json.dumps(record))
    bar.close()
    record["switch"] = switch_of(record)
    record["done"] = True
    CAUSES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(record))
    return record


def switch_of(record: dict) -> int | None:
    """The continuation's switch: the first step of its final stretch with the gain ≥ 10⁻³, if
    that stretch lasts :data:`SWITCH_CONSECUTIVE` evaluations (None: no switch by step 1,200)."""
    g = np.asarray(record["gain"])
    if len(g) < SWITCH_CONSECUTIVE or not (g[-SWITCH_CONSECUTIVE:] >= SWITCH_LEVEL).all():
        return None
    below = np.nonzero(g < SWITCH_LEVEL)[0]
    return int(record["steps"][below[-1] + 1 if len(below) else 0])


def reproduction_check(seed: int, steps: int = 50) -> float:
    """Largest |Δ| between the losses of fork 0 (the run's own generator) continued for
    ``steps`` steps from :data:`START` and the shipped run's per-step losses: 0 when the
    continuation is the run itself (same PyTorch build)."""
    base = load_or_train_base(progress=False)
    net = _recipe_controlnet(base, seed)
    work = WORK / f"seed{seed}_reproduce"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(start_state(seed, False), work / "state.pt")
    run = _train(base, net, _data(), seed, work, START + steps)
    shipped = load_curves(seed)["loss_per_step"][START: START + steps]
    return float(np.max(np.abs(np.round(run.losses[START:], 6) - np.asarray(shipped))))


def restart(progress: bool = True, forks: Sequence[int] | None = None) -> list[dict]:
    """Every restart continuation, forks 0..FORKS (fork-major: a partial result stays balanced across runs)."""
    out = []
    CAUSES.mkdir(parents=True, exist_ok=True)
    path = CAUSES / "reproduction.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps({f"seed{s}": reproduction_check(s) for s in RUN_SEEDS}))
    for k in range(FORKS + 1) if forks is None else forks:
        for s in RUN_SEEDS:
            out.append(continuation(s, fork=k, progress=progress))
            print(json.dumps({"seed": s, "fork": k, "switch": out[-1]["switch"]}))
    return out


def intervene(progress: bool = True) -> list[dict]:
    out = []
    for name in INTERVENTIONS:
        for s in RUN_SEEDS:
            out.append(continuation(s, intervention=name, progress=progress))
            print(json.dumps({"seed": s, "intervention": name, "switch": out[-1]["switch"]}))
    return out


def seed_path(seed: int) -> Path:
    return CAUSES / "seeds" / f"seed{seed}" / "curves.json"


def train_seed(seed: int, progress: bool = True) -> dict:
    """One pre-registered seed: chapter 05's measurement (:data:`PREREGISTERED` ``measure``) with the gradient SNR.
    The condition gain is measured in the high-noise band only (the rules read no other; its numbers are the
    same either way, :meth:`~cnetlib.mechanism.MechanismProbe.condition_gain`), which cuts the measuring time."""
    m = PREREGISTERED["measure"]
    return measure(seed, out=seed_path(seed).parent, progress=progress, snr=True,
                   **{**m, "probe": {**m["probe"], "bands": ("high noise",)}})


def seeds(progress: bool = True, which: Sequence[int] | None = None) -> list[dict]:
    out = []
    for s in which or PREREGISTERED["seeds"]:
        out.append(train_seed(s, progress))
        print(json.dumps({"seed": s, "snapshots": len(out[-1]["snapshots"])}))
    return out


def load_continuations() -> dict[str, dict]:
    """Every shipped continuation record, by name (``seed0_fork3``, ``seed1_z1_x100``, ...)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(CAUSES.glob("seed*_*.json"))}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.jump_causes", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("restart", "intervene", "seeds", "all"))
    p.add_argument("--forks", type=int, nargs="+", default=None, help=f"restart only these forks (default: 0..{FORKS})")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    progress = not a.no_progress
    try:
        if a.what == "all":   # balanced if interrupted: half the restarts, three seeds, the interventions, the rest
            restart(progress, forks=range(0, 4))
            seeds(progress, which=PREREGISTERED["seeds"][:3])
            intervene(progress)
            restart(progress, forks=range(4, FORKS + 1))
            seeds(progress)
        elif a.what == "restart":
            restart(progress, forks=a.forks)
        else:
            {"intervene": intervene, "seeds": seeds}[a.what](progress)
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.jump_causes"):
        main()
