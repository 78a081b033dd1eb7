"""Mini SD: a Stable Diffusion small enough to train on a laptop CPU (chapters 08-09).

The same diffusers classes, file layout and latent-diffusion recipe as SD 1.5 — an
``AutoencoderKL`` (8x down, 4 latent channels, a ``scaling_factor``), a
``UNet2DConditionModel`` with cross-attention to a ``CLIPTextModel``, a ``CLIPTokenizer``,
SD's scaled-linear noise schedule and a PNDM sampler, saved as a folder that
``diffusers.StableDiffusionPipeline.from_pretrained(folder)`` loads offline — at toy size:
64 px images (8 x 8 x 4 latents), the 8-colour Fill50k prompts, about 5 M parameters.

What differs from SD 1.5: the size (SD's UNet has 860 M parameters), the data (Fill50k-style
circles, not LAION), and the text encoder, which is a *random, frozen* 2-layer CLIP text model
over a word-level tokenizer made here (SD's is CLIP's pretrained one, also frozen).

Regenerate (each command resumable; the first and last print the scores)::

    python -m cnetlib.sd.mini all --out data/mini_sd      # VAE, latents, UNet, save, score (about 1 h)
    python -m cnetlib.sd.mini controlnet --run outline      # ControlNet on outlines -> data/mini_sd_controlnet
    python -m cnetlib.sd.mini controlnet --run colour_hint  # on colour hints -> data/mini_sd_colour_controlnet
    python -m cnetlib.sd.mini controlnet --run outline_bf16 # the outline run in bf16 (curves only)
    python -m cnetlib.sd.mini score                         # diffusers' pipelines -> data/mini_sd/scores.json

Stages of ``all``: the autoencoder, the UNet on cached latents, the diffusers folder; a
ControlNet run is ``python -m cnetlib.train_sd`` (printed) with :data:`CONTROLNET_SETTINGS`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import atomic_save, atomic_write_text
from ..colours import TOY_PALETTE
from ..data import make_sample, source_to_tensor, target_to_tensor

#: The mini VAE: SD's AutoencoderKL layout (4 levels, so 8x down; 4 latent channels), narrow.
MINI_VAE_CONFIG: dict = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 16, "sample_size": 64,
}
#: The mini UNet: SD's block types (cross-attention down blocks, a plain last block, a
#: cross-attention middle block) on 8 x 8 latents, 3 levels.
MINI_UNET_CONFIG: dict = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [64, 96, 96], "layers_per_block": 1, "cross_attention_dim": 64,
    "attention_head_dim": 8, "norm_num_groups": 32,
}
#: The mini text encoder: CLIP's text model, 2 layers, 64 wide (the UNet's cross_attention_dim).
MINI_TEXT_CONFIG: dict = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "hidden_act": "quick_gelu"}
#: Tokens per prompt (SD: 77); the longest 8-colour prompt takes 11 with its start and end tokens.
MINI_MAX_LENGTH = 16
#: Data seeds: training pairs come from MINI_TRAIN_SEED, held-out evaluations from MINI_EVAL_SEED.
MINI_TRAIN_SEED, MINI_EVAL_SEED = 11, 12


@dataclass
class MiniConfig:
    """Every setting of a mini SD build (saved beside its checkpoints)."""

    size: int = 64
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 5e-4
    kl_weight: float = 1e-4
    n_latents: int = 30_000
    unet_steps: int = 7000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup: int = 200
    drop_prompt: float = 0.1
    vae_autocast: bool = True      # bf16 autocast on the CPU: 1.5x faster for the VAE here (AMX)
    unet_autocast: bool = False    # ... but slower for the small UNet's small matrices (measured)
    seed: int = 0


# ----------------------------------------------------------------------------------
# The parts, made here
# ----------------------------------------------------------------------------------
def word_tokenizer(words: Sequence[str], max_length: int = MINI_MAX_LENGTH):
    """A ``CLIPTokenizer`` built locally whose merges spell each of ``words`` (plus "circle",
    "with", "background") as one token; other text falls back to single characters."""
    from .parts import byte_vocab, local_clip_tokenizer

    vocab, merges = byte_vocab(), []
    # longest words first: a shorter word's merge (red's "r e") then never splits a longer one (green)
    for word in sorted(dict.fromkeys(list(words) + ["circle", "with", "background"]), key=len, reverse=True):
        cur = word[0]
        for k, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if k == len(word) - 1 else "")
            merge = f"{cur} {nxt}"
            if merge not in merges:
                merges.append(merge)
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    return local_clip_tokenizer(vocab, merges, max_length)


def palette_words(palette: Sequence[str] = TOY_PALETTE) -> list[str]:
    return list(dict.fromkeys(w for name in palette for w in name.split()))


def build_parts(seed: int = 0):
    """Untrained mini SD components: (vae, text_encoder, tokenizer, unet, scheduler) from the configs."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(palette_words())
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MINI_MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MINI_TEXT_CONFIG))
    # SD 1.5's scheduler file: PNDM over the scaled-linear schedule, 1,000 training steps
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    scheduler.register_to_config(clip_sample=False)   # as SD 1.5's file: a DDIM made from it must not clip latents
    return (AutoencoderKL(**MINI_VAE_CONFIG), text_encoder.eval().requires_grad_(False), tokenizer,
            UNet2DConditionModel(**MINI_UNET_CONFIG), scheduler)


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------
def pairs(start: int, n: int, size: int = 64, seed: int = MINI_TRAIN_SEED):
    """Fill50k-style pairs ``start .. start+n-1``: targets in [-1, 1], outlines in [0, 1], prompts, masks."""
    items = [make_sample(i, size=size, seed=seed, palette=TOY_PALETTE) for i in range(start, start + n)]
    return (target_to_tensor(np.stack([s.target for s in items])), source_to_tensor(np.stack([s.source for s in items])),
            [s.prompt for s in items], np.stack([s.mask for s in items]))


# ----------------------------------------------------------------------------------
# Training, resumable: a state file per stage, written atomically every `every` steps
# ----------------------------------------------------------------------------------
def _lr(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 0: a function of the step alone (a resumed run gets the same rates)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _run(name: str, model, loss_fn, steps: int, lr: float, warmup: int, work: Path, autocast: bool,
         every: int = 250, log_every: int = 25) -> dict:
    """Train ``model`` with AdamW on ``loss_fn(step, generator)``, resuming from ``work/<name>.pt``."""
    from tqdm.auto import tqdm

    state_file = work / f"{name}.pt"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)
    curve: dict[str, list] = {"step": [], "loss": [], "seconds": []}
    step, elapsed = 0, 0.0
    if state_file.exists():
        st = torch.load(state_file, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        g.set_state(st["generator"])
        step, curve, elapsed = st["step"], st["curve"], st["seconds"]
    model.train()
    window: list[float] = []
    bar = tqdm(total=steps, initial=step, desc=name)
    t0 = time.perf_counter() - elapsed
    while step < steps:
        for group in opt.param_groups:
            group["lr"] = _lr(step, lr, warmup, steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(step, g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % log_every == 0 or step == steps:
            curve["step"].append(step)
            curve["loss"].append(round(float(np.mean(window)), 6))
            curve["seconds"].append(round(time.perf_counter() - t0, 1))
            bar.set_postfix(loss=f"{curve['loss'][-1]:.4f}")
            window = []
        if step % every == 0 or step == steps:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
                         "step": step, "curve": curve, "seconds": time.perf_counter() - t0}, state_file)
    bar.close()
    model.eval()
    return curve


def train_vae(vae, cfg: MiniConfig, work: Path) -> dict:
    """SD's autoencoder objective without its GAN and perceptual terms: L1 + MSE reconstruction
    plus a small KL to N(0, I), on fresh pairs every step."""
    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        x = pairs(step * cfg.vae_batch, cfg.vae_batch, cfg.size)[0]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / post.mean[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.kl_weight * kl

    return _run("vae", vae, loss_fn, cfg.vae_steps, cfg.vae_lr, 100, work, cfg.vae_autocast)


@torch.no_grad()
def encode_latents(vae, cfg: MiniConfig, work: Path, batch: int = 250) -> dict:
    """The mean and std of q(z|x) for ``cfg.n_latents`` training pairs, and SD's ``scaling_factor``
    (1 / std of the latents, so the UNet sees unit variance), cached in ``work/latents.pt``."""
    from tqdm.auto import tqdm

    f = work / "latents.pt"
    if f.exists():
        return torch.load(f, weights_only=False)
    means, stds, prompts = [], [], []
    for start in tqdm(range(0, cfg.n_latents, batch), desc="latents"):
        x, _, p, _ = pairs(start, min(batch, cfg.n_latents - start), cfg.size)
        post = vae.encode(x).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        prompts += p
    mean, std = torch.cat(means), torch.cat(stds)
    out = {"mean": mean, "std": std, "prompts": prompts, "scaling_factor": float(1 / mean.std())}
    atomic_save(out, f)
    return out


def train_unet(unet, text_encoder, tokenizer, scheduler, latents: dict, cfg: MiniConfig, work: Path) -> dict:
    """SD's objective ‖ε − ε_θ(z_t, t, c_t)‖² on cached latents, with ``drop_prompt`` empty prompts (for CFG)."""
    with torch.no_grad():
        prompts = sorted(set(latents["prompts"])) + [""]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        table = text_encoder(ids)[0]                                  # frozen: one embedding per prompt
    index = torch.tensor([prompts.index(p) for p in latents["prompts"]])
    empty, s = len(prompts) - 1, latents["scaling_factor"]
    n = len(index)

    def loss_fn(step: int, g: torch.Generator) -> torch.Tensor:
        i = torch.randint(0, n, (cfg.unet_batch,), generator=g)
        z0 = (latents["mean"][i] + latents["std"][i] * torch.randn(latents["mean"][i].shape, generator=g)) * s
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=g)
        keep = torch.rand(cfg.unet_batch, generator=g) >= cfg.drop_prompt
        c = table[torch.where(keep, index[i], torch.full_like(i, empty))]
        pred = unet(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=c).sample
        return F.mse_loss(pred.float(), noise)

    return _run("unet", unet, loss_fn, cfg.unet_steps, cfg.unet_lr, cfg.warmup, work, cfg.unet_autocast)


def save_folder(parts, scaling_factor: float, out: Path) -> Path:
    """Write the diffusers folder: ``StableDiffusionPipeline(...).save_pretrained`` (safetensors),
    no safety checker (the mini model draws circles)."""
    from diffusers import StableDiffusionPipeline

    vae, text_encoder, tokenizer, unet, scheduler = parts
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@torch.no_grad()
def vae_error(vae, n: int = 256, size: int = 64) -> dict:
    """Reconstruction of held-out images through the mode of q(z|x): mean |error| in 0-255 levels, PSNR."""
    x = pairs(0, n, size, seed=MINI_EVAL_SEED)[0]
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    err = (rec - x) * 127.5
    return {"mean_abs_levels": round(float(err.abs().mean()), 3),
            "psnr_db": round(float(10 * torch.log10(255.0 ** 2 / (err ** 2).mean())), 2), "n": n}


def build(out: str | Path = "data/mini_sd", work: str | Path = "runs/mini_sd", cfg: MiniConfig | None = None,
          stages: Sequence[str] = ("vae", "unet", "save")) -> dict:
    """Train (or resume) the stages and write the folder; returns the curves and the VAE's error."""
    cfg = cfg or MiniConfig()
    work, out = Path(work), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "config.json", json.dumps(asdict(cfg), indent=1))
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg.seed)
    vae, text_encoder, tokenizer, unet, scheduler = parts
    report: dict = {"config": asdict(cfg)}
    report["vae_curve"] = train_vae(vae, cfg, work)
    vae.requires_grad_(False)
    report["vae_error"] = vae_error(vae)
    print("VAE reconstruction:", report["vae_error"])
    if "unet" in stages or "save" in stages:
        latents = encode_latents(vae, cfg, work)
        report["scaling_factor"] = latents["scaling_factor"]
        report["unet_curve"] = train_unet(unet, text_encoder, tokenizer, scheduler, latents, cfg, work)
    if "save" in stages:
        save_folder(parts, report["scaling_factor"], out)
        atomic_write_text(out / "training.json", json.dumps(report))
    return report


#: The ControlNet runs on mini SD (chapters 08-09): ``python -m cnetlib.train_sd`` with these flags, the
#: command that trains on SD 1.5 with another ``--model``. ``python -m cnetlib.sd.mini controlnet`` runs them.
CONTROLNET_RUNS: dict[str, dict] = {
    "outline": {"condition": "outline", "mixed_precision": "no"},
    "colour_hint": {"condition": "colour_hint", "mixed_precision": "no", "steps": 1200},
    "outline_bf16": {"condition": "outline", "mixed_precision": "bf16", "steps": 1000},   # past the fp32 run's jump
}
CONTROLNET_SETTINGS: dict = {"preset": "pretrained", "palette": "toy", "resolution": 64, "batch_size": 32,
                             "lr": 1e-3, "lr_warmup_steps": 50, "drop_prompt": 0.5, "steps": 2000,
                             "validate_every": 50, "validation_n": 32, "validation_steps": 20, "validation_guidance": 3.0,
                             "checkpoint_every": 250, "seed": 0}
#: Where each run's ControlNet is shipped (diffusers' layout; the run's log and curves in ``training/``).
SHIPPED = {"outline": "mini_sd_controlnet", "colour_hint": "mini_sd_colour_controlnet", "outline_bf16": None}


def controlnet_config(name: str, model: str | Path, runs: str | Path = "runs", **overrides):
    """The :class:`~cnetlib.train_sd.SDTrainConfig` of run ``name`` (:data:`CONTROLNET_RUNS`) on ``model``."""
    from ..train_sd import SDTrainConfig

    if name not in CONTROLNET_RUNS:
        raise ValueError(f"run: expected one of {sorted(CONTROLNET_RUNS)}, got {name!r}")
    return SDTrainConfig(model=str(model), output_dir=str(Path(runs) / f"mini_sd_{name}"),
                         **{**CONTROLNET_SETTINGS, **CONTROLNET_RUNS[name], **overrides})


def ship_run(run: str | Path, dest: str | Path | None, training: str | Path | None = None,
             keep_validations: Sequence[int] = ()) -> dict:
    """Copy a finished ``train_sd`` run: its ControlNet (diffusers' files) to ``dest``, and its
    settings, validation log, per-step losses and the validation grids of ``keep_validations``
    steps to ``training`` (default ``dest/training``). Returns the record written."""
    import shutil

    run = Path(run)
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not (run / "controlnet" / "config.json").is_file() or not ckpts:
        raise FileNotFoundError(f"{run}: not a finished train_sd run (expected controlnet/ and checkpoint-N/)")
    state = json.loads((ckpts[-1] / "train_state.json").read_text())
    training = Path(training) if training is not None else Path(dest) / "training"
    if dest is not None:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for f in (run / "controlnet").iterdir():
            shutil.copy2(f, Path(dest) / f.name)
    training.mkdir(parents=True, exist_ok=True)
    record = {"config": json.loads((run / "config.json").read_text()), "steps": state["step"],
              "losses": [round(v, 5) for v in state["losses"]], "log": state["log"],
              "seconds": state.get("seconds")}
    atomic_write_text(training / "run.json", json.dumps(record))
    for step in keep_validations:
        shutil.copy2(run / f"validation-{step:06d}.png", training / f"validation-{step:06d}.png")
    return record


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.sd.mini", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("all", "vae", "unet", "score", "controlnet"))
    p.add_argument("--run", default="outline", choices=sorted(CONTROLNET_RUNS), help="with stage controlnet")
    p.add_argument("--out", default="data/mini_sd")
    p.add_argument("--work", default="runs/mini_sd", help="checkpoints of the stages (resumable)")
    for k, v in asdict(MiniConfig()).items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v) if not isinstance(v, bool) else int, default=v)
    a = p.parse_args(argv)
    cfg = MiniConfig(**{k: (bool(getattr(a, k)) if isinstance(v, bool) else getattr(a, k))
                        for k, v in asdict(MiniConfig()).items()})
    if a.stage == "controlnet":
        train_controlnet(a.run, a.out)
        return
    if a.stage != "score":
        stages = {"all": ("vae", "unet", "save"), "vae": ("vae",), "unet": ("vae", "unet")}[a.stage]
        build(a.out, a.work, cfg, stages)
    from .mini_check import score_folder

    cn = Path(a.out).parent / SHIPPED["outline"]
    report = score_folder(a.out, cn if (cn / "config.json").is_file() else None)
    atomic_write_text(Path(a.out) / "scores.json", json.dumps(report))
    print(json.dumps({k: {n: v for n, v in r.items() if n != "iou_per_sample"} for k, r in report.items()}, indent=1))


def train_controlnet(name: str, model: str | Path = "data/mini_sd", runs: str | Path = "runs") -> dict:
    """Train (or resume) ControlNet run ``name`` on mini SD with the book's SD script and ship it beside
    the model folder (:data:`SHIPPED`; the bf16 run ships its curves only, to ``<outline>/training_bf16``)."""
    from ..train_sd import to_argv, train

    cfg = controlnet_config(name, model, runs)
    out = Path(cfg.output_dir)
    cfg.resume = any((c / "train_state.json").is_file() for c in out.glob("checkpoint-*"))
    print("python -m cnetlib.train_sd " + " ".join(to_argv(cfg)))
    train(cfg)
    every = cfg.validate_every
    keep = sorted({every, *(round(cfg.steps * q / every) * every for q in (0.25, 0.5)), cfg.steps})
    root = Path(model).parent
    dest = root / SHIPPED[name] if SHIPPED[name] else None
    training = dest / "training" if dest else root / SHIPPED["outline"] / f"training_{name.split('_')[-1]}"
    return ship_run(out, dest, training, keep_validations=keep)


if __name__ == "__main__":
    main()
