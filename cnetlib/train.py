"""Training a denoiser on Fill50k pairs: the loop chapter 01 runs for the toy base.

The loop is plain PyTorch: sample a batch, drop some prompts (so the same network
also learns the unconditional model that classifier-free guidance needs), take the
diffusion loss, clip gradients, step AdamW, update an exponential moving average (EMA)
of the weights. Ctrl-C stops it cleanly and returns what was learnt so far.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import Fill50k, target_to_tensor
from .diffusion import diffusion_loss, make_schedule


@dataclass
class TrainResult:
    """What a training run returns: the EMA model, the loss of every step and timing."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False


def drop_prompts(prompts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each prompt by ``""`` with probability ``p`` (the paper drops 50 % for ControlNet)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability: expected a value in [0, 1], got {p}")
    keep = torch.rand(len(prompts), generator=generator) >= p
    return [q if k else "" for q, k in zip(prompts, keep.tolist())]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``θ_ema ← decay · θ_ema + (1 − decay) · θ``."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)


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
) -> TrainResult:
    """Train a :class:`~cnetlib.unet.ToyUNet` (text-conditioned) on ``data``'s targets.

    The learning rate warms up linearly over ``warmup`` steps, then decays on a
    cosine to 10 %. Returns the EMA copy of the weights in ``TrainResult.model``.
    """
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps}")
    cfg = model.config
    schedule = make_schedule(cfg.schedule)
    g = torch.Generator().manual_seed(seed)
    targets = data.tensors()["target"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        u = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(u * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = copy.deepcopy(model).requires_grad_(False)
    result = TrainResult(ema)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    try:
        for step in bar:
            idx = torch.randint(0, len(data), (batch_size,), generator=g)
            x0 = target_to_tensor(targets[idx])
            prompts = drop_prompts([data.prompts[i] for i in idx.tolist()], drop_prompt, g)
            context = model.encode_prompts(prompts)
            loss = diffusion_loss(lambda x, t: model(x, t, context), x0, schedule, cfg.prediction, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
            result.losses.append(loss.item())
            if step % 25 == 0:
                bar.set_postfix(loss=f"{sum(result.losses[-25:]) / len(result.losses[-25:]):.4f}")
    except KeyboardInterrupt:
        result.interrupted = True
        print(f"interrupted at step {len(result.losses)}: returning the model trained so far")
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    model.eval()
    ema.eval()
    return result
