"""Training a ControlNet on Stable Diffusion, from one CPU to many GPUs (chapter 09).

    python -m cnetlib.train_sd --preset tiny --steps 20 --output-dir runs/sd_tiny
    accelerate launch -m cnetlib.train_sd --preset pretrained --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --resolution 512 --batch-size 4 --mixed-precision fp16 --gradient-checkpointing --output-dir runs/sd15

Built on 🤗 accelerate, so the same code runs on one device or on many processes and
nodes (``accelerate launch``). What it does, as the paper and the reference tutorial:

* data: Fill50k-style pairs drawn at any resolution (``--n-train``), or the authors'
  folder (``--data DIR``), read lazily;
* 50 % of the prompts replaced by ``""`` (``--drop-prompt``);
* the frozen VAE, text encoder and UNet in the mixed-precision dtype, the ControlNet's
  trainable weights in fp32 (autocast runs its forward in half precision); AdamW;
* gradient checkpointing and gradient accumulation;
* a checkpoint every ``--checkpoint-every`` steps (``accelerator.save_state`` plus the
  step and the data generator's state) that ``--resume`` continues exactly;
* validation samples and the condition-fidelity IoU every ``--validate-every`` steps,
  a JSON-lines log, tqdm progress; the final ControlNet in diffusers' format.

Many processes: ``--batch-size`` is per process. Each step draws one global batch of
``batch_size × num_processes`` (samples, latent noise, ε, t, prompt drops) from the seeded
generator, which every process holds in the same state, and process r trains on slice r;
DDP's gradient mean then equals one process at the global batch (a test checks 2 × 2
against 1 × 4), and ``--resume`` restores the generator, so a resumed multi-process run
equals an uninterrupted one. Validation and checkpoint files are written by the main
process; the others wait for it. A Ctrl-C from the launcher reaches every process, and
each saves its part of the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .checkpoint import atomic_write_text
from .checks import check_number
from .data import CONDITIONS, FULL_PALETTE, TOY_PALETTE, LazyPairs
from .runtime import require_extra
from .sd import SD15_ID, SDControlNet, SDParts, encode_prompts

require_extra("cnetlib.train_sd", ("accelerate",))  # a clear pip command, not a raw ModuleNotFoundError later
#: ``--palette``: the colours of generated pairs (mini SD knows the toy chapters' 8).
PALETTES = {"full": FULL_PALETTE, "toy": TOY_PALETTE}


@dataclass
class SDTrainConfig:
    """Every option of a run; saved as ``config.json`` in the output folder."""

    output_dir: str = "runs/train_sd"
    preset: str = "tiny"                  # "tiny" (offline, random weights) or "pretrained"
    model: str | None = None              # with preset "pretrained": a hub id or folder (default SD15_ID)
    controlnet: str | None = None         # start from a diffusers ControlNet folder instead of the UNet copy
    data: str | None = None               # the authors' Fill50K folder; default: generated pairs
    palette: str = "full"                 # generated pairs' colours: "full" (every CSS colour, as Fill50K) or "toy" (8; mini SD)
    condition: str = "outline"            # what the ControlNet reads: "outline" or "colour_hint" (chapter 07)
    n_train: int = 50_000
    resolution: int = 64
    steps: int = 20
    batch_size: int = 4
    lr: float = 1e-5
    lr_warmup_steps: int = 0              # linear warm-up to lr over these steps, then constant
    weight_decay: float = 1e-2
    drop_prompt: float = 0.5
    mixed_precision: str = "no"           # "no", "fp16" or "bf16"
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    checkpoint_every: int = 500
    validate_every: int = 500
    validation_n: int = 4
    validation_steps: int = 20
    validation_guidance: float = 7.5      # CFG scale of the validation samples (SD 1.5: 7.5; mini SD: 3)
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse a bad value here, before any model is loaded or any folder written."""
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "validate_every",
                     "validation_n", "validation_steps", "n_train"):
            check_number(getattr(self, name), name=name, low=1, integer=True)
        check_number(self.lr_warmup_steps, name="lr_warmup_steps", low=0, integer=True)
        check_number(self.lr, name="lr", low=0.0, low_open=True)
        check_number(self.weight_decay, name="weight_decay", low=0.0)
        check_number(self.drop_prompt, name="drop_prompt", low=0.0, high=1.0)
        check_number(self.max_grad_norm, name="max_grad_norm", low=0.0, low_open=True)
        check_number(self.validation_guidance, name="validation_guidance", low=0.0)
        check_number(self.resolution, name="resolution", low=8, integer=True)
        if self.resolution % 8:
            raise ValueError(f"resolution: expected a multiple of 8 (the VAE's factor), got {self.resolution}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision: expected 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.palette not in PALETTES:
            raise ValueError(f"palette: expected one of {sorted(PALETTES)}, got {self.palette!r}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, got {self.condition!r}")
        if self.preset not in ("tiny", "pretrained"):
            raise ValueError(f"preset: expected 'tiny' or 'pretrained', got {self.preset!r}")
        if self.preset == "tiny" and self.model is not None:  # never a silent tiny run on a named model
            raise ValueError(f"model: {self.model!r} names weights to train on, but preset 'tiny' trains SD-shaped "
                             "random weights; pass --preset pretrained to use the model, or drop --model for a tiny run")


def load_parts(cfg: SDTrainConfig) -> SDParts:
    """The frozen SD components of a run: the tiny random preset, or the weights ``cfg.model`` names.

    Naming a model with the tiny preset is refused by :class:`SDTrainConfig`; a model that
    does not load is an error that says why (:func:`cnetlib.sd.load_failure`).
    """
    if cfg.preset == "tiny":
        return SDParts.tiny(cfg.seed)
    return SDParts.from_pretrained(cfg.model or SD15_ID)


def make_dataset(cfg: SDTrainConfig) -> LazyPairs:
    if cfg.data:
        return LazyPairs.from_folder(cfg.data, size=cfg.resolution, limit=cfg.n_train, condition=cfg.condition)
    return LazyPairs(cfg.n_train, size=cfg.resolution, seed=cfg.seed, palette=PALETTES[cfg.palette],
                     condition=cfg.condition)


def shard(batch_size: int, rank: int = 0, world: int = 1) -> tuple[int, slice]:
    """The global batch of a step (``batch_size`` per process × ``world`` processes) and the
    slice of it that process ``rank`` trains on."""
    return batch_size * world, slice(rank * batch_size, (rank + 1) * batch_size)


def draw_batch(data: LazyPairs, batch_size: int, g: torch.Generator, rank: int = 0, world: int = 1) -> dict:
    """This process's share of a random global batch: the indices of all ``batch_size × world``
    samples come from ``g`` (the same draws on every process), and only rank ``rank``'s slice
    is loaded. So N processes draw together what one process at N times the batch draws."""
    total, mine = shard(batch_size, rank, world)
    idx = torch.randint(0, len(data), (total,), generator=g)[mine].tolist()
    items = [data[i] for i in idx]
    return {"source": torch.stack([it["source"] for it in items]), "target": torch.stack([it["target"] for it in items]),
            "prompt": [it["prompt"] for it in items]}


def controlnet_loss(parts: SDParts, controlnet: SDControlNet, batch: dict, g: torch.Generator,
                    drop_prompt: float, weight_dtype: torch.dtype, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The paper's objective ‖ε − ε_θ(z_t, t, c_t, c_f)‖² on one batch (or v for v-prediction models).

    ``batch`` is rank ``rank``'s share of a global batch (:func:`draw_batch`). Every random
    draw (the VAE's latent sample, ε, t, the dropped prompts) is made for the whole global
    batch from ``g`` and sliced, so the ``world`` processes together compute the loss one
    process would at the global batch; DDP's mean of their gradients is that loss's gradient.
    """
    device = parts.device
    total, mine = shard(batch["target"].shape[0], rank, world)
    with torch.no_grad():
        x0 = batch["target"].to(device, weight_dtype)
        latent = parts.vae.encode(x0).latent_dist                     # frozen VAE: mean and std of q(z|x)
        shape = (total, *latent.mean.shape[1:])
        z0 = latent.mean + latent.std * torch.randn(shape, generator=g)[mine].to(device, latent.mean.dtype)
        z0 = z0 * parts.vae.config.scaling_factor
        noise = torch.randn(shape, generator=g)[mine].to(device, z0.dtype)
        t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (total,), generator=g)[mine].to(device)
        z_t = parts.scheduler.add_noise(z0, noise, t)
        keep = (torch.rand(total, generator=g) >= drop_prompt)[mine].tolist()
        prompts = [p if k else "" for p, k in zip(batch["prompt"], keep)]
        c_t = encode_prompts(parts, prompts)                          # 50 % empty prompts
    cond = batch["source"].to(device, weight_dtype)
    down, mid = controlnet(z_t, t, c_t, cond)                         # trainable, fp32 weights
    pred = parts.unet(z_t, t, encoder_hidden_states=c_t,
                      down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                      mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
    if parts.scheduler.config.prediction_type == "v_prediction":
        target = parts.scheduler.get_velocity(z0, noise, t)
    else:
        target = noise
    return F.mse_loss(pred.float(), target.float())                   # ‖ε − ε_θ(z_t, t, c_t, c_f)‖²


def train_step(acc, parts: SDParts, controlnet, opt, batch: dict, g: torch.Generator, drop_prompt: float,
               weight_dtype: torch.dtype, max_grad_norm: float) -> torch.Tensor:
    """One optimisation step (or one micro-step under ``acc.accumulate``): the loss in the
    mixed-precision autocast, then :func:`apply_gradients`. :func:`train` runs it every step; ``benchmarks/sd_training.py`` times it
    against diffusers' example loop. Returns the loss."""
    with acc.autocast():
        loss = controlnet_loss(parts, controlnet, batch, g, drop_prompt, weight_dtype,
                               acc.process_index, acc.num_processes)
    apply_gradients(acc, controlnet, opt, loss, max_grad_norm)
    return loss


def apply_gradients(acc, controlnet, opt, loss: torch.Tensor, max_grad_norm: float) -> None:
    """What follows the loss, as diffusers' example does it too: backward (scaled for fp16),
    gradient clipping when the gradients are synchronised, AdamW, gradients set to None."""
    acc.backward(loss)
    if acc.sync_gradients:
        acc.clip_grad_norm_(controlnet.parameters(), max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)


def validate(parts: SDParts, controlnet: SDControlNet, cfg: SDTrainConfig, step: int, out: Path) -> dict:
    """Samples for fixed held-out conditions (with their prompts): a grid PNG and the IoU with their disks."""
    from .fidelity import condition_iou
    from .sd import generate
    from .viz import image_grid

    val = LazyPairs(cfg.validation_n, size=cfg.resolution, seed=cfg.seed + 1, palette=PALETTES[cfg.palette],
                    condition=cfg.condition)
    items = [val[i] for i in range(len(val))]
    conds = torch.stack([it["source"] for it in items])
    was = controlnet.training
    controlnet.eval()
    images = generate(parts, [it["prompt"] for it in items], [(controlnet, conds)], steps=cfg.validation_steps,
                      seed=cfg.seed, guidance=cfg.validation_guidance, height=cfg.resolution, width=cfg.resolution)
    controlnet.train(was)
    iou = condition_iou(images, torch.stack([it["mask"] for it in items]).numpy())
    fig = image_grid(torch.cat([conds * 2 - 1, images]), ncols=len(items), scale=2.0,
                     suptitle=f"step {step}: conditions, samples (IoU {iou.mean():.2f})")
    fig.savefig(out / f"validation-{step:06d}.png", dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return {"iou": float(iou.mean()), "iou_per_sample": iou.round(4).tolist()}


#: Config keys added after runs were saved, with what those runs did: such a run still resumes.
ADDED_KEYS = {"palette": "full", "condition": "outline", "validation_guidance": 7.5}
#: What a resumed run may change: its length, how often it saves and validates, the bar.
RESUMABLE_CHANGES = ("steps", "resume", "progress", "checkpoint_every", "validate_every")


def latest_checkpoint(out: Path) -> Path:
    """The newest complete ``checkpoint-N`` folder of a run (one with its ``train_state.json``)."""
    ckpts = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    complete = [p for p in ckpts if (p / "train_state.json").is_file()]
    if not complete:
        raise FileNotFoundError(f"--resume: no complete checkpoint-N folder in {out}"
                                + (f" ({len(ckpts)} incomplete: delete them)" if ckpts else ""))
    return max(complete, key=lambda p: int(p.name.split("-")[1]))


def num_processes() -> int:
    """How many processes this run has (``WORLD_SIZE``, set by torchrun and accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_run_folder(cfg: SDTrainConfig, out: Path) -> None:
    """Refuse, before anything loads: a fresh run in a folder that holds one (it would append
    to its log next to stale checkpoints), and a resume with other settings than the run's."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir: expected a folder for the run, got the file {out}")
    used = out.is_dir() and (any(out.glob("checkpoint-*")) or (out / "log.jsonl").exists())
    if used and not cfg.resume:
        raise FileExistsError(f"{out} holds a training run (checkpoint-* or log.jsonl): pass --resume to continue "
                              f"it, or choose another --output-dir")
    saved_path = out / "config.json"
    if cfg.resume and saved_path.is_file():
        from .checkpoint import config_diff

        keep = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}  # noqa: E731
        saved = json.loads(saved_path.read_text())
        saved.setdefault("num_processes", num_processes())   # runs saved before the key: not compared
        for key, value in ADDED_KEYS.items():                  # runs saved before a key used its old value
            saved.setdefault(key, value)
        diff = config_diff(keep(saved), keep({**asdict(cfg), "num_processes": num_processes()}))
        if diff:
            raise ValueError(f"--resume: {out} was trained with other settings, so it cannot be continued "
                             f"exactly: " + "; ".join(diff) + ". Use the run's settings or another --output-dir")


def train(cfg: SDTrainConfig, parts: SDParts | None = None) -> dict:
    """Run (or resume) a training; returns ``{"steps", "losses", "log", "seconds", "output_dir"}``
    (``seconds``: the run's wall time, counted on across resumes)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir)
    check_run_folder(cfg, out)
    # several CPU processes (torchrun, no GPU): accelerate talks gloo between them only when told cpu=True
    cpu_processes = num_processes() > 1 and not torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:   # an earlier run in this process (a notebook): its precision is not ours
        AcceleratorState._reset_state()  # (the process group, PartialState, is kept)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                      project_dir=str(out), cpu=cpu_processes)
    set_seed(cfg.seed)
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    parts = parts or load_parts(cfg)
    parts.to(acc.device, weight_dtype).freeze()                        # frozen: half precision is fine
    controlnet = (SDControlNet.from_pretrained(cfg.controlnet) if cfg.controlnet
                  else SDControlNet.from_unet(parts.unet)).float()      # trainable: fp32 master weights
    if cfg.gradient_checkpointing:  # diffusers' script checkpoints the ControlNet; the frozen UNet's
        controlnet.enable_gradient_checkpointing()  # decoder is in the backward pass too, so it is
        parts.unet.enable_gradient_checkpointing()  # checkpointed as well
    controlnet.train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    controlnet, opt = acc.prepare(controlnet, opt)
    data = make_dataset(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    state = {"step": 0, "losses": [], "log": [], "data": data.fingerprint()}
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        saved = json.loads((ckpt / "train_state.json").read_text())
        if saved.get("data", state["data"]) != state["data"]:
            raise ValueError(f"--resume: data: {ckpt} was trained on other data than {cfg.data or 'the generated pairs'} "
                             f"holds now (fingerprint {saved['data']} vs {state['data']}); resume on the run's data, "
                             f"or choose another --output-dir")
        acc.load_state(str(ckpt))
        g.set_state(torch.tensor(saved.pop("generator"), dtype=torch.uint8))
        state.update(saved)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # the process count too: it sets the global batch (batch_size × num_processes), so a resume keeps it
        atomic_write_text(out / "config.json", json.dumps({**asdict(cfg), "num_processes": acc.num_processes}, indent=1))
        # the log as of the checkpoint: rows a crash left after it are written again by this run
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in state["log"]))

    # The generator as it was after the last completed step: a Ctrl-C inside a step (after
    # its random draws) must not shift the draws of the resumed run.
    g_done = g.get_state()

    def checkpoint() -> None:
        # Written under a temporary name and renamed when complete (train_state.json last), so a
        # crash mid-save leaves no checkpoint-N that --resume would pick up half-written.
        folder, partial = out / f"checkpoint-{state['step']}", out / f".checkpoint-{state['step']}.partial"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        state["seconds"] = round(time.perf_counter() - start, 1)    # wall time so far, over every resume
        if acc.is_main_process:
            (partial / "train_state.json").write_text(json.dumps({**state, "generator": g_done.tolist()}))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
        acc.wait_for_everyone()

    start = time.perf_counter() - state.get("seconds", 0.0)   # a resumed run goes on counting
    bar = tqdm(total=cfg.steps, initial=state["step"], desc="train ControlNet (SD)",
               disable=not (cfg.progress and acc.is_local_main_process))
    def lr_at(step: int) -> float:  # a function of the step alone: a resumed run gets the same rates
        return cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps > 0 else cfg.lr

    try:
        while state["step"] < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(state["step"])
            micro = []
            for _ in range(cfg.gradient_accumulation_steps):
                with acc.accumulate(controlnet):
                    batch = draw_batch(data, cfg.batch_size, g, acc.process_index, acc.num_processes)
                    loss = train_step(acc, parts, controlnet, opt, batch, g, cfg.drop_prompt, weight_dtype,
                                      cfg.max_grad_norm)
                micro.append(acc.gather(loss.detach()[None]).mean().item())   # the global batch's loss
            state["step"] += 1
            state["losses"].append(sum(micro) / len(micro))
            g_done = g.get_state()
            bar.update(1)
            bar.set_postfix(loss=f"{state['losses'][-1]:.4f}")
            step = state["step"]
            if step % cfg.validate_every == 0 or step == cfg.steps:
                if acc.is_main_process:
                    row = {"step": step, "loss": state["losses"][-1],
                           **validate(parts, acc.unwrap_model(controlnet), cfg, step, out)}
                    state["log"].append(row)
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
                acc.wait_for_everyone()   # the other processes wait for the main one's validation
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:   # the last step too: a run can be extended
                checkpoint()
    except KeyboardInterrupt:
        print(f"interrupted at step {state['step']}: saving a checkpoint to resume from")
        checkpoint()
        raise
    finally:
        bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        acc.unwrap_model(controlnet).save_pretrained(out / "controlnet")
    return {**state, "seconds": time.perf_counter() - start, "output_dir": str(out),
            "controlnet": acc.unwrap_model(controlnet)}


def to_argv(cfg: SDTrainConfig) -> list[str]:
    """The command-line flags from which :func:`parse_config` builds ``cfg`` again."""
    argv: list[str] = []
    for f, v in asdict(cfg).items():
        flag = "--" + f.replace("_", "-")
        if isinstance(v, bool):
            argv += [flag] if v and f != "progress" else []
        elif v is not None:
            argv += [flag, str(v)]
    return argv + ([] if cfg.progress else ["--no-progress"])


def launch(cfg: SDTrainConfig, processes: int, *, cpu: bool = False, timeout: float | None = None) -> dict:
    """Run ``cfg`` in ``processes`` processes and return the summary it prints: ``accelerate
    launch --num_processes N -m cnetlib.train_sd …``, the command a reader types on a machine
    with N GPUs, or with ``cpu=True`` ``torchrun --standalone --nproc_per_node N -m
    cnetlib.train_sd …``: N CPU processes talking over gloo (chapter 09 and the tests;
    ``accelerate launch`` starts a single process on a machine without GPUs).
    ``cfg.batch_size`` is per process: the run trains at a global batch of ``batch_size × N``."""
    import subprocess

    if cpu:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "cnetlib.train_sd", *to_argv(cfg)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", cfg.mixed_precision, "--dynamo_backend", "no",
               "-m", "cnetlib.train_sd", *to_argv(cfg)]
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if cpu else {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"accelerate launch with {processes} processes failed (exit {p.returncode}):\n"
                           + p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def parse_config(argv: Sequence[str] | None = None) -> SDTrainConfig:
    """The command line's :class:`SDTrainConfig`: one flag per field (``--lr-warmup-steps``…)."""
    p = argparse.ArgumentParser(prog="python -m cnetlib.train_sd", description=__doc__.split("\n")[0])
    for f, v in asdict(SDTrainConfig()).items():
        flag = "--" + f.replace("_", "-")
        if isinstance(v, bool):
            p.add_argument(flag, action="store_true", default=v)
        else:
            p.add_argument(flag, type=type(v) if v is not None else str, default=v)
    p.add_argument("--no-progress", action="store_true")
    a = vars(p.parse_args(argv))
    a["progress"] = a["progress"] and not a.pop("no_progress")
    return SDTrainConfig(**a)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(argv)
    try:
        result = train(cfg)
    except KeyboardInterrupt:
        print(f"interrupted: the checkpoint is in {cfg.output_dir}; run the same command with --resume to continue",
              file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) != 0:   # one summary per run, from the main process
        return
    print(json.dumps({"steps": result["step"], "final_loss": result["losses"][-1] if result["losses"] else None,
                      "seconds": round(result["seconds"], 1), "output_dir": result["output_dir"],
                      "last_validation": {k: v for k, v in (result["log"][-1] if result["log"] else {}).items()
                                          if k != "iou_per_sample"}}))


if __name__ == "__main__":
    from .checks import cli_errors

    with cli_errors("python -m cnetlib.train_sd"):
        main()
