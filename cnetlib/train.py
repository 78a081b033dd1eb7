"""Training a denoiser on Fill50k pairs: the loop chapter 01 runs for the toy base.

The loop is plain PyTorch: sample a batch, drop some prompts (so the same network
also learns the unconditional model that classifier-free guidance needs), take the
diffusion loss, clip gradients, step AdamW, update an exponential moving average (EMA)
of the weights. Ctrl-C stops it cleanly and returns what was learnt so far.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, is_dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checks import check_number
from .data import Fill50k, source_to_tensor, target_to_tensor
from .diffusion import TIMESTEP_SAMPLINGS, WEIGHTINGS, diffusion_loss, make_schedule


@dataclass
class TrainResult:
    """What a training run returns: the EMA model, the loss of every step and timing.

    ``raw`` is the last optimiser weights (the EMA's source), for chapter 01's EMA comparison.
    """

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    raw: nn.Module | None = None
    resumed_from: int = 0


def drop_prompts(prompts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each prompt by ``""`` with probability ``p`` (the paper drops 50 % for ControlNet)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop_prompt: expected a probability in [0, 1], got {p}")
    keep = torch.rand(len(prompts), generator=generator) >= p
    return [q if k else "" for q, k in zip(prompts, keep.tolist())]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``θ_ema ← decay · θ_ema + (1 − decay) · θ``."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)


class RunState:
    """Where a resumable run keeps its state: ``out_dir/state.pt`` (written atomically) and
    ``out_dir/log.jsonl``, with the ``settings`` a resume must share. Without ``out_dir``
    nothing is kept (every method is then a no-op and :meth:`load` returns None)."""

    def __init__(self, out_dir, settings: dict) -> None:
        from pathlib import Path

        self.out = Path(out_dir) if out_dir is not None else None
        self.settings = settings
        self.path = self.out / "state.pt" if self.out is not None else None
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"out_dir: expected a folder for the run's state, got the file {self.out}")

    def load(self, remedy: str) -> dict | None:
        """The saved state if there is one (written with the same settings), else None."""
        if self.path is None or not self.path.is_file():
            return None
        return load_resumable_state(self.path, self.settings, remedy)

    def save(self, **state) -> None:
        if self.path is not None:
            from .checkpoint import atomic_save

            atomic_save({"settings": self.settings, **state}, self.path)

    def write_log(self, rows: list[dict]) -> None:
        if self.out is not None:
            from .checkpoint import atomic_write_text

            atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def controlnet_lr(step: int, steps: int, lr: float, schedule: str) -> float:
    """The ControlNet trainer's learning rate at ``step``: constant (the paper), or a cosine from
    ``lr`` down to 10 % at the last step. A function of the step alone, so a resumed run gets
    the same rates."""
    if schedule == "constant":
        return lr
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps - 1))))


def cumulative_lr(step: int, steps: int, lr: float, schedule: str) -> float:
    """Σ lr over the first ``step`` optimiser steps of :func:`controlnet_lr`: how far the
    learning rate has carried the run (chapter 05 asks whether the jump is a matter of steps
    or of Σ lr)."""
    return float(sum(controlnet_lr(k, steps, lr, schedule) for k in range(step)))


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u))


def data_fingerprint(data) -> str:
    """A hash of a dataset's images and prompts: a run is resumed only on the data it started
    on (another dataset of the same length would pass a length check)."""
    import hashlib

    h = hashlib.sha1()
    for name in ("sources", "targets"):
        h.update(np.ascontiguousarray(getattr(data, name)).tobytes())
    h.update("\n".join(data.prompts).encode())
    return h.hexdigest()[:16]


def load_resumable_state(state_path, settings: dict, remedy: str) -> dict:
    """The training state saved at ``state_path``, if it was written with these ``settings``;
    otherwise a ValueError naming each difference and ``remedy`` (nothing is changed)."""
    from .checkpoint import config_diff, error_line

    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: name it and say what to do
        raise ValueError(f"{state_path}: not a readable training state ({error_line(e)}); delete it to start "
                         f"afresh, or use another out_dir") from e
    saved = state.get("settings", {})
    if "data" not in saved:  # written before runs recorded their data's fingerprint
        settings = {k: v for k, v in settings.items() if k != "data"}
    diff = config_diff(saved, settings)
    if diff:
        raise ValueError(f"{state_path} was written by a run with other settings, so it cannot be resumed "
                         f"(nothing was changed; {remedy}): " + "; ".join(diff))
    return state


def train_denoiser(
    model: nn.Module,
    data: Fill50k,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 100,
    drop_prompt: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str = "cpu",
    out_dir=None,
    checkpoint_every: int = 250,
    snapshot_every: int | None = None,
    weighting: str = "none",
    stop_at: int | None = None,
) -> TrainResult:
    """Train a :class:`~cnetlib.unet.ToyUNet` (text-conditioned) on ``data``'s targets.

    The learning rate warms up linearly over ``warmup`` steps, then decays on a
    cosine to 10 % (:func:`warmup_cosine`); ``weighting`` re-weights the timesteps of the
    loss (:func:`~cnetlib.diffusion.loss_weights`; chapter 01's levers). Returns the EMA copy of the weights in
    ``TrainResult.model`` (and the raw weights in ``TrainResult.raw``), on the CPU.
    Random draws (batches, prompt drops, t, ε) come from a CPU generator, so ``device``
    changes the arithmetic's rounding but not which samples are drawn. Activations use
    the channels-last layout, which PyTorch's CPU convolutions run faster.

    With ``out_dir`` the run is resumable: every ``checkpoint_every`` steps, at the end
    and on Ctrl-C, model, EMA, optimiser, generator and losses go atomically to
    ``out_dir/state.pt``, and a later call with the same settings continues from it
    (one with other settings is refused, naming them). With ``snapshot_every`` the EMA
    weights are also kept every that many steps as ``out_dir/snapshots/ema_STEP.pt``
    (chapter 01 measures the base along its training with them). ``stop_at`` ends the
    run after that many steps of a schedule planned for ``steps`` (the learning rate is
    what the full schedule has there); a later call with a larger ``stop_at`` continues.
    """
    from pathlib import Path

    from .checkpoint import atomic_save

    check_number(steps, name="steps", low=1, integer=True)
    check_number(batch_size, name="batch_size", low=1, integer=True)
    check_number(lr, name="lr", low=0.0, low_open=True)
    check_number(warmup, name="warmup", low=0, integer=True)
    check_number(drop_prompt, name="drop_prompt", low=0.0, high=1.0)
    check_number(ema_decay, name="ema_decay", low=0.0, high=1.0)
    check_number(seed, name="seed", integer=True)
    check_number(checkpoint_every, name="checkpoint_every", low=1, integer=True)
    if snapshot_every is not None:
        check_number(snapshot_every, name="snapshot_every", low=1, integer=True)
    end = steps if stop_at is None else stop_at
    if not 1 <= end <= steps:
        raise ValueError(f"stop_at: expected a step in 1..steps={steps}, got {stop_at}")
    cfg = model.config
    schedule = make_schedule(cfg.schedule)
    g = torch.Generator().manual_seed(seed)
    targets = data.tensors()["target"]
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, steps, warmup))
    ema = copy.deepcopy(model).requires_grad_(False)
    result = TrainResult(ema, raw=model)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "drop_prompt": drop_prompt,
                "ema_decay": ema_decay, "seed": seed, "n_data": len(data), "data": data_fingerprint(data),
                "weighting": weighting, "config": cfg.to_dict()}
    out = Path(out_dir) if out_dir is not None else None
    run_state = RunState(out_dir, settings)
    state = run_state.load("use another out_dir or delete it")
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        result.losses, result.resumed_from = state["losses"], len(state["losses"])
        result.seconds = state["seconds"]

    # The generator as it was after the last completed step: a Ctrl-C inside a step (after
    # some draws) must not shift the draws of the resumed run.
    g_done = g.get_state()

    def save_state(elapsed: float) -> None:
        run_state.save(model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                       scheduler=sched.state_dict(), generator=g_done, losses=result.losses, seconds=elapsed)

    model.train()
    start = time.perf_counter() - result.seconds
    bar = tqdm(range(result.resumed_from, end), desc="train", disable=not progress,
               initial=result.resumed_from, total=end)
    try:
        for step in bar:
            idx = torch.randint(0, len(data), (batch_size,), generator=g)
            x0 = target_to_tensor(targets[idx]).to(device).contiguous(memory_format=torch.channels_last)
            prompts = drop_prompts([data.prompts[i] for i in idx.tolist()], drop_prompt, g)
            context = model.encode_prompts(prompts)
            loss = diffusion_loss(lambda x, t: model(x, t, context), x0, schedule, cfg.prediction, generator=g,
                                  weighting=weighting)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
            result.losses.append(loss.item())
            g_done = g.get_state()
            done = step + 1
            if step % 25 == 0:
                bar.set_postfix(loss=f"{sum(result.losses[-25:]) / len(result.losses[-25:]):.4f}")
            if out is not None and snapshot_every and done % snapshot_every == 0:
                atomic_save({k: v.cpu() for k, v in ema.state_dict().items()}, out / "snapshots" / f"ema_{done}.pt")
            if done % checkpoint_every == 0 and done < steps:
                save_state(time.perf_counter() - start)
    except KeyboardInterrupt:
        result.interrupted = True
        print(f"interrupted at step {len(result.losses)}: returning the model trained so far"
              + (f" (state saved to {run_state.path}; run again to resume)" if run_state.path else ""))
    finally:
        bar.close()
        result.seconds = time.perf_counter() - start
        save_state(result.seconds)
    for m in (model, ema):
        m.eval().cpu().to(memory_format=torch.contiguous_format)
    return result


# ----------------------------------------------------------------------------------
# Training a ControlNet on a frozen base (chapter 04)
# ----------------------------------------------------------------------------------
@dataclass
class ControlNetRun:
    """What :func:`train_controlnet` returns: the ControlNet, per-step losses, the evaluation log."""

    controlnet: nn.Module
    losses: list[float] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    samples: dict = field(default_factory=dict)  #: step -> {"images": uint8 (k, H, W, 3), ...}
    seconds: float = 0.0
    interrupted: bool = False
    resumed_from: int = 0


def train_controlnet(
    base: nn.Module,
    controlnet: nn.Module,
    data: Fill50k,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 1e-2,
    max_grad_norm: float | None = 1.0,
    lr_schedule: str = "constant",
    drop_prompt: float = 0.5,
    weighting: str = "none",
    timesteps: str = "uniform",
    seed: int = 0,
    probe=None,
    eval_every: int = 50,
    sample_every: int | None = None,
    out_dir=None,
    checkpoint_every: int = 200,
    resume: bool = True,
    progress: bool = True,
    device: torch.device | str = "cpu",
    on_step=None,
    stop_at: int | None = None,
) -> ControlNetRun:
    """Train ``controlnet`` on ``data`` (outline -> filled circle) with ``base`` frozen.

    The objective is the base's own diffusion loss, through the controlled model:
    ``‖target − f(x_t, t, c_t, c_f)‖²`` (the paper's ε-loss; our toy base predicts v).
    AdamW on the ControlNet's parameters only (the paper: lr 1e-5, batch 4 on SD), a
    learning rate that is constant (the paper) or, with ``lr_schedule="cosine"``, decays
    on a cosine to 10 % at the last step, gradients clipped to norm ``max_grad_norm``
    (diffusers' default), and ``drop_prompt`` of the prompts replaced by ``""`` (the
    paper: 50 %). ``weighting`` and ``timesteps`` re-weight or re-draw the diffusion steps
    (:func:`cnetlib.diffusion.loss_weights`, :func:`~cnetlib.diffusion.sample_timesteps`;
    chapter 05's recipe variants). Every ``eval_every`` steps ``probe`` (a
    :class:`~cnetlib.fidelity.FidelityProbe`) measures the proxy IoU, and every
    ``sample_every`` steps (default: the same) the sampled IoU and prompt colours.

    With ``out_dir``: the evaluation log is rewritten to ``out_dir/log.jsonl`` after
    each evaluation, and a checkpoint (ControlNet, optimiser, random-generator state,
    losses, log) is written atomically to ``out_dir/state.pt`` every
    ``checkpoint_every`` steps, at the end and on Ctrl-C. With ``resume=True`` an
    existing ``state.pt`` is picked up: on the CPU the resumed run ends with weights
    bitwise identical to an uninterrupted one. A ``state.pt`` written with other settings
    (steps, batch, learning rate, seed, data size, the ControlNet's config...) is refused
    with the differences named, before anything is written. ``on_step(step, controlnet)`` is called
    after every optimiser step (chapter 02 records the zero convs' norms with it).
    ``stop_at`` trains only the first ``stop_at`` of the ``steps`` (the learning-rate schedule
    stays the full run's, so the weights are those of the full run at that step) and saves
    the state: a later call with a larger ``stop_at``, or none, continues it (chapter 05
    keeps snapshots of the first 800 steps of chapter 04's 1,200-step runs).
    """
    from .controlled import ControlledUNet

    check_number(steps, name="steps", low=1, integer=True)
    check_number(batch_size, name="batch_size", low=1, integer=True)
    check_number(lr, name="lr", low=0.0, low_open=True)
    check_number(eval_every, name="eval_every", low=1, integer=True)
    check_number(checkpoint_every, name="checkpoint_every", low=1, integer=True)
    if stop_at is not None:
        check_number(stop_at, name="stop_at", low=1, high=steps, integer=True)
    if sample_every is not None:
        check_number(sample_every, name="sample_every", low=1, integer=True)
    check_number(weight_decay, name="weight_decay", low=0.0)
    if max_grad_norm is not None:  # None: no clipping; 0 would zero every gradient
        check_number(max_grad_norm, name="max_grad_norm", low=0.0, low_open=True)
    check_number(seed, name="seed", integer=True)
    if not all(hasattr(data, a) for a in ("sources", "targets", "prompts")):
        raise TypeError(f"data: expected a Fill50k or Fill50kFolder dataset, got {type(data).__name__}")
    if len(data) < 1:
        raise ValueError("data: expected at least one training pair, got an empty dataset")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {lr_schedule!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    if timesteps not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timesteps: expected one of {TIMESTEP_SAMPLINGS}, got {timesteps!r}")
    check_number(drop_prompt, name="drop_prompt", low=0.0, high=1.0)
    sample_every = sample_every or eval_every
    # What a resumed run must share with the run that wrote state.pt to continue it exactly.
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                "max_grad_norm": max_grad_norm, "lr_schedule": lr_schedule, "drop_prompt": drop_prompt,
                "seed": seed, "n_data": len(data), "data": data_fingerprint(data), "eval_every": eval_every,
                "sample_every": sample_every}
    if (weighting, timesteps) != ("none", "uniform"):   # only then: older state.pt files stay resumable
        settings.update({"weighting": weighting, "timesteps": timesteps})
    if is_dataclass(getattr(controlnet, "config", None)):
        settings.update({f"controlnet.{k}": v for k, v in asdict(controlnet.config).items()})

    model = ControlledUNet(base, controlnet).to(device)
    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = make_schedule(base.config.schedule)
    g = torch.Generator().manual_seed(seed)
    run = ControlNetRun(controlnet)
    run_state = RunState(out_dir, settings)
    if run_state.out is not None:
        run_state.out.mkdir(parents=True, exist_ok=True)
    state = run_state.load("use another out_dir or resume=False") if resume else None
    if state is not None:
        controlnet.load_state_dict(state["controlnet"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        run.losses, run.log, run.samples = state["losses"], state["log"], state["samples"]
        run.resumed_from = len(run.losses)
        if run.resumed_from > steps:
            raise ValueError(f"{run_state.path}: holds {run.resumed_from} steps, more than the {steps} asked for")
    targets, sources = data.tensors()["target"], data.tensors()["source"]

    # The generator as it was after the last completed step: a Ctrl-C inside a step (after
    # its random draws) must not shift the draws of the resumed run.
    g_done = g.get_state()

    def save_state() -> None:
        run_state.save(controlnet=controlnet.state_dict(), optimizer=opt.state_dict(), generator=g_done,
                       losses=run.losses, log=run.log, samples=run.samples)

    def evaluate(step: int) -> None:
        if probe is None:
            return
        row = {"step": step, "seconds": round(elapsed + time.perf_counter() - start, 1),
               "loss": sum(run.losses[-eval_every:]) / max(1, len(run.losses[-eval_every:])),
               **probe.evaluate(model, sampled=step % sample_every == 0 or step == steps)}
        images = {k: row.pop(k) for k in ("images", "images_no_prompt") if k in row}
        if images:
            run.samples[step] = images
        run.log.append(row)
        run_state.write_log(run.log)

    model.train()
    start = time.perf_counter()
    elapsed = run.log[-1].get("seconds", 0.0) if run.log else 0.0  # wall time of the run before a resume
    if run.resumed_from == 0:
        evaluate(0)
    last = steps if stop_at is None else max(stop_at, run.resumed_from)
    bar = tqdm(range(run.resumed_from, last), desc="train ControlNet", disable=not progress,
               initial=run.resumed_from, total=last)
    try:
        for step in bar:
            idx = torch.randint(0, len(data), (batch_size,), generator=g)
            x0 = target_to_tensor(targets[idx]).to(device)
            cond = source_to_tensor(sources[idx]).to(device)  # the control image c in [0, 1]
            prompts = drop_prompts([data.prompts[i] for i in idx.tolist()], drop_prompt, g)
            with torch.no_grad():
                context = base.encode_prompts(prompts)  # c_t from the frozen text encoder
            loss = diffusion_loss(lambda x, t: model(x, t, context, cond), x0, schedule,
                                  base.config.prediction, generator=g, weighting=weighting, timesteps=timesteps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = controlnet_lr(step, steps, lr, lr_schedule)
            if max_grad_norm is not None:  # as diffusers' train_controlnet.py: one bad batch cannot undo the run
                nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            run.losses.append(loss.item())
            g_done = g.get_state()
            done = step + 1
            if on_step is not None:
                on_step(done, controlnet)
            if done % eval_every == 0 or done == steps:
                evaluate(done)
                if run.log and "iou" in run.log[-1]:
                    bar.set_postfix(loss=f"{run.log[-1]['loss']:.4f}", iou=f"{run.log[-1]['iou']:.2f}")
            if done % checkpoint_every == 0:
                save_state()
    except KeyboardInterrupt:
        run.interrupted = True
        print(f"interrupted after step {len(run.losses)}: state saved"
              + (f" to {run_state.path}" if run_state.path else ""))
    finally:
        bar.close()
        save_state()
    run.seconds = elapsed + time.perf_counter() - start  # the whole run's wall time, across resumes
    model.eval()
    controlnet.cpu()
    return run
