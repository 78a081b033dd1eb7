"""Train a toy ControlNet on Fill50k from the shipped base and measure its sudden convergence.

    python -m cnetlib.experiments.sudden_convergence --seed 0 --steps 2000 --out runs/sc_seed0

Writes ``log.jsonl`` (one line per evaluation), ``state.pt`` (resumable), ``samples.npz``
(sample grids at every sampled evaluation), ``controlnet.pt`` (the trained ControlNet)
and ``fidelity.png``, and prints a final JSON line with the detected jump step, the
sharpness figures and the fidelity before/after (chapter 04 explains each).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..base import load_or_train_base
from ..checks import check_number
from ..checkpoint import atomic_save_npz, atomic_write_text, check_writable, save_checkpoint
from ..controlnet import TOY_HINT_CHANNELS, VARIANTS, toy_controlnet
from ..controlled import parameter_counts
from ..convergence import detect_jump, per_sample_jumps, summarize_per_sample
from ..data import CONDITIONS, Fill50k
from ..fidelity import FidelityProbe
from ..train import ControlNetRun, train_controlnet



@dataclass(frozen=True)
class Recipe:
    """The book's ControlNet training recipe at toy scale (chapter 04 explains the choices)."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    drop_prompt: float = 0.5
    n_train: int = 50_000
    condition_encoder: str = "reference"
    hint_channels: tuple[int, ...] = TOY_HINT_CHANNELS
    eval_every: int = 25
    sample_every: int = 100
    probe_n: int = 32
    probe_steps: int = 20
    condition: str = "outline"
    final_probe_n: int = 64
    no_prompt_mode: str = "cond_only"
    no_prompt_guidance: float = 3.0


RECIPE = Recipe()


def final_evaluation(base, controlnet, recipe: Recipe = RECIPE, device: str = "cpu") -> dict:
    """The trained ControlNet measured once more on ``recipe.final_probe_n`` held-out outlines
    (the training curve uses ``probe_n``): IoU and placement with the prompt (mode both, β 3),
    with the empty prompt at β = 1 (the plain controlled model), and with the empty prompt in
    ``recipe.no_prompt_mode`` at β = ``recipe.no_prompt_guidance`` (chapter 06's best mode)."""
    from ..controlled import ControlledUNet
    from ..fidelity import _finite_or_none, condition_iou
    from ..guidance import Control, sample
    from ..metrics import placement

    probe = FidelityProbe(n=recipe.final_probe_n, steps=recipe.probe_steps, condition=recipe.condition)
    model = ControlledUNet(base, controlnet).to(device).eval()
    out = {k: v for k, v in probe.evaluate(model, sampled=True).items() if not k.startswith("images")}
    guided = sample(base, [""] * probe.n, [Control(controlnet, probe.conditions)], mode=recipe.no_prompt_mode,
                    guidance=recipe.no_prompt_guidance, steps=probe.steps)
    iou_g, pl_g = condition_iou(guided, probe.masks), placement(guided, probe.masks)
    out.update({"n": probe.n, "no_prompt_mode": recipe.no_prompt_mode, "no_prompt_guidance": recipe.no_prompt_guidance,
                "iou_no_prompt_guided": float(iou_g.mean()),
                "iou_no_prompt_guided_per_sample": iou_g.round(4).tolist(),
                "within_1px_no_prompt_guided": float(pl_g.within.mean()),
                "center_error_no_prompt_guided_per_sample": _finite_or_none(pl_g.center_error),
                "radius_error_no_prompt_guided_per_sample": _finite_or_none(pl_g.radius_error)})
    return out


def summarize(run: ControlNetRun, window: float = 0.1, final: dict | None = None) -> dict:
    """The detector's figures on the sampled IoU (with prompt), the no-prompt IoU and the proxy.

    With ``final`` (:func:`final_evaluation`) the "after" figures, per-sample lists and
    placement come from it; the curve's own last point stays in ``iou_after_curve``."""
    sampled = [r for r in run.log if "iou" in r]
    out: dict = {"steps": len(run.losses), "seconds": round(run.seconds, 1)}
    if len(sampled) >= 3:
        st = [r["step"] for r in sampled]
        jump = detect_jump(st, [r["iou"] for r in sampled], window=window)
        out["jump"] = jump.to_dict()
        out["jump_no_prompt"] = detect_jump(st, [r["iou_no_prompt"] for r in sampled], window=window).to_dict()
        jumps = per_sample_jumps(st, np.array([r["iou_per_sample"] for r in sampled]), window=window)
        out["per_sample"] = {**summarize_per_sample(jumps), "switch_steps": [j.jump_step for j in jumps]}
        out["iou_before"], out["iou_after"] = sampled[0]["iou"], sampled[-1]["iou"]
        out["iou_no_prompt_before"] = sampled[0]["iou_no_prompt"]
        out["iou_no_prompt_after"] = sampled[-1]["iou_no_prompt"]
        out["per_sample_iou_after"] = sampled[-1]["iou_per_sample"]
        out["per_sample_iou_no_prompt_after"] = sampled[-1].get("iou_no_prompt_per_sample")
        if "center_error_per_sample" in sampled[-1]:
            out["placement"] = {"with_prompt": placement_summary(sampled[-1]["center_error_per_sample"],
                                                                 sampled[-1]["radius_error_per_sample"]),
                                "no_prompt": placement_summary(sampled[-1]["center_error_no_prompt_per_sample"],
                                                               sampled[-1]["radius_error_no_prompt_per_sample"])}
        for k in ("circle_accuracy", "background_accuracy", "circle_accuracy_no_prompt",
                  "background_accuracy_no_prompt"):
            out[f"{k}_after"] = sampled[-1].get(k)
            out[f"{k}_before"] = sampled[0].get(k)
        out["iou_after_curve"] = sampled[-1]["iou"]
    if final is not None:
        out.update({"final_probe_n": final["n"], "iou_after": final["iou"], "iou_no_prompt_after": final["iou_no_prompt"],
                    "per_sample_iou_after": final["iou_per_sample"],
                    "per_sample_iou_no_prompt_after": final["iou_no_prompt_per_sample"],
                    "iou_no_prompt_guided_after": final["iou_no_prompt_guided"],
                    "per_sample_iou_no_prompt_guided_after": final["iou_no_prompt_guided_per_sample"],
                    "no_prompt_guided": {"mode": final["no_prompt_mode"], "guidance": final["no_prompt_guidance"]},
                    "placement": {
                        "with_prompt": placement_summary(final["center_error_per_sample"],
                                                         final["radius_error_per_sample"]),
                        "no_prompt": placement_summary(final["center_error_no_prompt_per_sample"],
                                                       final["radius_error_no_prompt_per_sample"]),
                        "no_prompt_guided": placement_summary(final["center_error_no_prompt_guided_per_sample"],
                                                              final["radius_error_no_prompt_guided_per_sample"])}})
        for k in ("circle_accuracy", "background_accuracy", "circle_accuracy_no_prompt",
                  "background_accuracy_no_prompt"):
            out[f"{k}_after"] = final.get(k)
    proxy = [r for r in run.log if "proxy_iou" in r]
    if len(proxy) >= 3:
        st = [r["step"] for r in proxy]
        out["jump_proxy"] = detect_jump(st, [r["proxy_iou"] for r in proxy], window=window).to_dict()
        jumps = per_sample_jumps(st, np.array([r["proxy_iou_per_sample"] for r in proxy]), window=window)
        out["per_sample_proxy"] = {**summarize_per_sample(jumps), "switch_steps": [j.jump_step for j in jumps]}
    return out


def placement_summary(center: Sequence[float | None], radius: Sequence[float | None], tolerance: float = 1.0) -> dict:
    """Median centre and |radius| errors (px) and the share within ``tolerance`` px, from logged
    per-sample errors (``None``: no circle drawn, counted as not placed)."""
    c = np.array([np.nan if v is None else v for v in center], float)
    r = np.array([np.nan if v is None else v for v in radius], float)
    ok = np.isfinite(c)
    within = ok & (np.nan_to_num(c, nan=np.inf) <= tolerance) & (np.abs(np.nan_to_num(r, nan=np.inf)) <= tolerance)
    return {"center_error_median": float(np.median(c[ok])) if ok.any() else None,
            "radius_error_median": float(np.median(np.abs(r[ok]))) if ok.any() else None,
            "within_1px": float(within.mean()), "no_circle": float((~ok).mean()),
            "center_error_per_sample": list(center), "radius_error_per_sample": list(radius)}


def plot_run(run: ControlNetRun, title: str = ""):
    """Fidelity (sampled, no prompt, proxy) and the training loss against the step, one above the other."""
    import matplotlib.pyplot as plt

    sampled = [r for r in run.log if "iou" in r]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    a1.plot([r["step"] for r in run.log], [r["proxy_iou"] for r in run.log], color="0.6", lw=1, label="proxy IoU (4 DDIM steps)")
    if sampled:
        a1.plot([r["step"] for r in sampled], [r["iou"] for r in sampled], "o-", ms=3, label="sampled IoU, with prompt")
        a1.plot([r["step"] for r in sampled], [r["iou_no_prompt"] for r in sampled], "s--", ms=3, label="sampled IoU, no prompt")
    a1.set(ylabel="IoU with the condition's disk", ylim=(0, 1), title=title)
    a1.legend(fontsize=8)
    y = np.asarray(run.losses)
    k = 50
    if len(y) > k:
        a2.plot(np.arange(k - 1, len(y)), np.convolve(y, np.ones(k) / k, "valid"))
    a2.set(xlabel="training step", ylabel=f"loss (mean of {k})")
    fig.tight_layout()
    return fig


def run_experiment(seed: int = 0, steps: int | None = None, variant: str = "zero", drop_prompt: float | None = None,
                   lr: float | None = None, n_train: int | None = None, batch_size: int | None = None,
                   out: str | Path | None = None, device: str = "cpu", progress: bool = True,
                   recipe: Recipe = RECIPE, connector_std: float | None = None,
                   condition: str | None = None) -> tuple[ControlNetRun, dict]:
    """Train one ControlNet from the shipped base and return the run and its summary."""
    if condition is not None:
        recipe = replace(recipe, condition=condition)
    if out is not None:  # before training, not after: a run is not thrown away for a bad path
        if (Path(out) / "summary.json").is_file():
            raise FileExistsError(f"out: {out} holds a finished run (summary.json): read it with "
                                  f"cnetlib.experiments.runs.load_run, or choose another --out")
        for name in ("summary.json", "controlnet.pt", "samples.npz", "state.pt", "log.jsonl"):
            check_writable(Path(out) / name, f"out ({name})")
    for name, value, low in (("steps", steps, 1), ("n_train", n_train, 1), ("batch_size", batch_size, 1)):
        if value is not None:  # checked here, before the base loads: the CLI answers at once
            check_number(value, name=name, low=low, integer=True)
    if lr is not None:
        check_number(lr, name="lr", low=0.0, low_open=True)
    if drop_prompt is not None:
        check_number(drop_prompt, name="drop_prompt", low=0.0, high=1.0)
    base = load_or_train_base(progress=progress)
    net = toy_controlnet(base, variant, connector_std=connector_std, seed=seed,
                         condition_encoder=recipe.condition_encoder, hint_channels=recipe.hint_channels)
    steps = recipe.steps if steps is None else steps   # "is None", not "or": 0 is an error, not the default
    lr = recipe.lr if lr is None else lr
    drop_prompt = recipe.drop_prompt if drop_prompt is None else drop_prompt
    batch_size = recipe.batch_size if batch_size is None else batch_size
    data = Fill50k(recipe.n_train if n_train is None else n_train, seed=0, condition=recipe.condition)
    probe = FidelityProbe(n=recipe.probe_n, steps=recipe.probe_steps, condition=recipe.condition)
    run = train_controlnet(base, net, data, steps=steps, batch_size=batch_size,
                           lr=lr, lr_schedule=recipe.lr_schedule, drop_prompt=drop_prompt, seed=seed, probe=probe,
                           eval_every=recipe.eval_every, sample_every=recipe.sample_every,
                           out_dir=out, progress=progress, device=device)
    if run.interrupted:  # summary.json marks a finished run: never write it for half of one
        raise KeyboardInterrupt(f"interrupted after step {len(run.losses)}"
                                + (f"; run the same command again to resume from {out}/state.pt" if out else ""))
    final = final_evaluation(base, net, recipe, device) if recipe.final_probe_n else None
    summary = {"seed": seed, "variant": variant, "condition": recipe.condition, "lr": lr,
               "lr_schedule": recipe.lr_schedule, "batch_size": batch_size,
               "n_train": len(data), "drop_prompt": drop_prompt, "steps_asked": steps,
               "parameters": parameter_counts(net), **summarize(run, final=final)}
    if out is not None:
        out = Path(out)
        save_checkpoint(net, out / "controlnet.pt", meta={"summary": summary})
        atomic_save_npz(out / "samples.npz", **{f"{k}_{step}": v for step, d in run.samples.items()
                                                for k, v in d.items()})
        fig = plot_run(run, f"{variant} ControlNet, seed {seed}, lr {summary['lr']:g}")
        fig.savefig(out / "fidelity.png", dpi=110)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))  # last: it marks a finished run
    return run, summary


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.experiments.sudden_convergence", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=RECIPE.steps)
    p.add_argument("--variant", choices=VARIANTS, default="zero")
    p.add_argument("--drop-prompt", type=float, default=RECIPE.drop_prompt)
    p.add_argument("--lr", type=float, default=RECIPE.lr)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=RECIPE.lr_schedule)
    p.add_argument("--n-train", type=int, default=RECIPE.n_train)
    p.add_argument("--batch-size", type=int, default=RECIPE.batch_size)
    p.add_argument("--connector-std", type=float, default=None, help="Gaussian connectors' std (default 1/sqrt(fan_in))")
    p.add_argument("--condition", choices=CONDITIONS, default=RECIPE.condition, help="what the ControlNet reads")
    p.add_argument("--condition-encoder", choices=("paper", "reference"), default=RECIPE.condition_encoder)
    p.add_argument("--hint-channels", type=int, nargs="+", default=list(RECIPE.hint_channels))
    p.add_argument("--eval-every", type=int, default=RECIPE.eval_every, help="proxy IoU every N steps")
    p.add_argument("--sample-every", type=int, default=RECIPE.sample_every, help="sampled IoU every N steps")
    p.add_argument("--out", type=Path, default=None, help="folder for log, state, samples and figure")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    recipe = replace(RECIPE, condition=a.condition, condition_encoder=a.condition_encoder, lr_schedule=a.lr_schedule, hint_channels=tuple(a.hint_channels),
                     eval_every=a.eval_every, sample_every=a.sample_every)
    try:
        _, summary = run_experiment(a.seed, a.steps, a.variant, a.drop_prompt, a.lr, a.n_train, a.batch_size, a.out,
                                    a.device, not a.no_progress, recipe=recipe, connector_std=a.connector_std)
    except KeyboardInterrupt as e:
        raise SystemExit(str(e) or "interrupted") from None
    print(json.dumps(slim_summary(summary)))


def slim_summary(summary: dict) -> dict:
    """``summary`` without its long lists (per-sample values, switch steps): what the CLI prints."""
    def slim(v):
        if isinstance(v, dict):
            return {k: slim(x) for k, x in v.items() if not (isinstance(x, list) and len(x) > 8)}
        return v
    return {k: slim(v) for k, v in summary.items() if not (isinstance(v, list) and len(v) > 8)}


if __name__ == "__main__":
    from ..checks import cli_errors

    with cli_errors("python -m cnetlib.experiments.sudden_convergence"):
        main()
