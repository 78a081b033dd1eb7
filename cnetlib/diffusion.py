"""Gaussian diffusion in pixel space: schedules, the forward process, the loss, samplers.

Chapter 01 explains every function here. Notation (DDPM / the ControlNet paper):
``ᾱ_t = ∏ (1 - β_s)``, the forward process ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε`` and a
network that predicts either ``ε`` (the paper's loss ``‖ε − ε_θ(z_t, t, c_t, c_f)‖²``)
or ``v = √ᾱ_t ε − √(1-ᾱ_t) x_0`` (v-prediction, as in SD 2.x). Samplers take any
``model_fn(x_t, t) -> prediction``, so guidance and ControlNet plug in without special
cases; :func:`classifier_free_guidance` builds such a function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("epsilon", "v")
SCHEDULES = ("linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule: ``betas[t]`` for ``t = 0 .. T-1`` (float64)."""

    name: str
    betas: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t: how much of the image survives at step t."""
        return torch.cumprod(1.0 - self.betas, 0)

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)."""
        ab = self.alphas_cumprod
        return ab / (1 - ab)

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(√ᾱ_t, √(1−ᾱ_t))`` gathered at integer steps ``t`` and shaped to broadcast on ``like``."""
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"t: expected integer timesteps, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"t: expected timesteps in [0, {self.T - 1}], got [{int(t.min())}, {int(t.max())}]")
        ab = self.alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)


def linear_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Stable Diffusion's schedule ("scaled linear"): √β linear from √0.00085 to √0.012.

    Its last ᾱ is 0.0047, so √ᾱ_T = 0.068 of the image survives at the "pure noise"
    end: enough to leak the mean colour of x_0 (chapter 01 measures it).
    """
    return Schedule("linear", torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: ᾱ(t) ∝ cos²((t/T + s)/(1 + s) · π/2).

    ᾱ_T is about 4e-9 (β clipped at ``max_beta``): no signal survives at t = T.
    """
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
    return Schedule("cosine", torch.tensor(betas, dtype=torch.float64))


def make_schedule(name: str, T: int = 1000) -> Schedule:
    """``"linear"`` (SD's) or ``"cosine"``."""
    if name == "linear":
        return linear_schedule(T)
    if name == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {name!r}")


# ----------------------------------------------------------------------------------
# Forward process and the training objective
# ----------------------------------------------------------------------------------
def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Forward process q(x_t | x_0): ``x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε``."""
    a, s = schedule.coefficients(t, x0)   # √ᾱ_t, √(1−ᾱ_t)
    return a * x0 + s * noise


def prediction_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: Schedule,
                      prediction: str) -> torch.Tensor:
    """What the network is trained to output: ``ε`` or ``v = √ᾱ_t ε − √(1−ᾱ_t) x_0``."""
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        a, s = schedule.coefficients(t, x0)
        return a * noise - s * x0
    raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")


def to_x0_eps(out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into the pair ``(x̂_0, ε̂)`` it implies at ``(x_t, t)``."""
    a, s = schedule.coefficients(t, x_t)
    if prediction == "epsilon":
        eps = out
        x0 = (x_t - s * eps) / a.clamp_min(1e-8)
    elif prediction == "v":
        x0 = a * x_t - s * out
        eps = s * x_t + a * out
    else:
        raise ValueError(f"prediction: expected one of {PREDICTIONS}, got {prediction!r}")
    return x0, eps


WEIGHTINGS = ("none", "min_snr", "x0", "epsilon")
#: How the training timesteps t are drawn: uniform (DDPM, the paper) or "cubic", t = ⌊(1 − u³)·T⌋,
#: which favours high noise (T2I-Adapter's cubic sampling; chapter 05 tries it).
TIMESTEP_SAMPLINGS = ("uniform", "cubic")


def loss_weights(t: torch.Tensor, schedule: Schedule, prediction: str, weighting: str = "none",
                 gamma: float = 5.0) -> torch.Tensor:
    """Per-sample loss weights: what each timestep's error counts for, written as a weight w(t)
    on the x_0 error ``‖x_0 − x̂_0‖²`` and divided by the one the plain loss of ``prediction``
    already puts there (ε: SNR, v: SNR + 1, since ‖ε − ε̂‖² = SNR‖x_0 − x̂_0‖² and
    ‖v − v̂‖² = (SNR + 1)‖x_0 − x̂_0‖²). ``"none"``: 1. ``"min_snr"`` (Hang et al., 2023,
    "Min-SNR-γ"): w = min(SNR, γ); chapter 01 tries it as a lever on the toy base (it did not
    help). ``"x0"``: w = 1, x_0 supervision (arXiv 2604.05761), which keeps the high-noise
    steps' weight that the ε loss takes away. ``"epsilon"``: w = SNR, the ε loss (Stable
    Diffusion's) on a model of any prediction. Chapter 05 compares the last two on the toy."""
    if weighting == "none":
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    if prediction not in ("epsilon", "v"):
        raise ValueError(f"prediction: expected 'epsilon' or 'v' to re-weight, got {prediction!r}")
    snr = schedule.snr.to(t.device)[t].float()
    w = {"min_snr": snr.clamp(max=gamma), "x0": torch.ones_like(snr), "epsilon": snr}[weighting]
    return w / (snr if prediction == "epsilon" else snr + 1)


def sample_timesteps(n: int, T: int, sampling: str = "uniform", generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` training timesteps in ``[0, T)``: uniform, or ``"cubic"`` (⌊(1 − u³)·T⌋, u uniform:
    half of them above t = 0.875·T, where the layout is decided)."""
    if sampling == "uniform":
        return torch.randint(0, T, (n,), generator=generator)
    if sampling == "cubic":
        u = torch.rand(n, generator=generator)
        return ((1 - u ** 3) * T).long().clamp(0, T - 1)
    raise ValueError(f"timesteps: expected one of {TIMESTEP_SAMPLINGS}, got {sampling!r}")


def diffusion_loss(model_fn: ModelFn, x0: torch.Tensor, schedule: Schedule, prediction: str,
                   generator: torch.Generator | None = None, weighting: str = "none",
                   timesteps: str = "uniform") -> torch.Tensor:
    """The denoising loss ``E_{t,ε} ‖target − f_θ(x_t, t)‖²`` with ``t`` uniform.

    With ``prediction="epsilon"`` this is the paper's ``‖ε − ε_θ(z_t, t, c_t, c_f)‖²``
    (``model_fn`` closes over the conditions c_t, c_f). ``weighting`` re-weights the
    timesteps (:func:`loss_weights`); the default is the plain mean. ``timesteps`` draws
    them another way (:func:`sample_timesteps`).
    """
    t = sample_timesteps(x0.shape[0], schedule.T, timesteps, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = q_sample(x0, t, noise, schedule)
    target = prediction_target(x0, noise, t, schedule, prediction)
    if weighting == "none":
        return F.mse_loss(model_fn(x_t, t), target)
    per_sample = (model_fn(x_t, t) - target).pow(2).flatten(1).mean(1)
    return (per_sample * loss_weights(t, schedule, prediction, weighting)).mean()


# ----------------------------------------------------------------------------------
# Guidance and samplers
# ----------------------------------------------------------------------------------
def classifier_free_guidance(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float) -> ModelFn:
    """``f = f_uc + β (f_c − f_uc)``: the paper's ``ε = ε_uc + β(ε_c − ε_uc)``.

    ``scale = 1`` is the conditional model alone (the unconditional branch is then
    skipped) and ``0`` the unconditional one.
    """

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return cond_fn(x_t, t)
        out_c, out_uc = cond_fn(x_t, t), uncond_fn(x_t, t)
        return out_uc + scale * (out_c - out_uc)

    return guided


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps from ``T-1`` down, evenly spaced ("trailing": the first is always T-1)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps: expected 1..{T}, got {steps}")
    return sorted({round(T - i * T / steps) - 1 for i in range(steps)}, reverse=True)


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, shape: tuple[int, ...], schedule: Schedule, prediction: str, *,
                steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None,
                x_T: torch.Tensor | None = None, clip_x0: bool = True, progress: bool = False,
                callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """DDIM (Song et al.): deterministic for ``eta = 0``, DDPM-like for ``eta = 1``.

    ``x_{t'} = √ᾱ_{t'} x̂_0 + √(1−ᾱ_{t'}−σ²) ε̂ + σ z``. ``callback(t, x_t, x̂_0)`` sees
    every step (used for the denoising strips in the chapters). Noise is drawn on the
    CPU from ``generator`` and moved to ``device``, so a seed gives the same x_T anywhere.
    """
    x = torch.randn(shape, generator=generator) if x_T is None else x_T.clone()
    x = x if device is None else x.to(device)
    ab = schedule.alphas_cumprod
    ts = ddim_timesteps(schedule.T, steps)
    for k, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress, leave=False)):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        x0, eps = to_x0_eps(model_fn(x, tt), x, tt, schedule, prediction)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            a, s = schedule.coefficients(tt, x)
            eps = (x - a * x0) / s
        if callback is not None:
            callback(t, x, x0)
        if k == len(ts) - 1:
            return x0
        a_prev = ab[ts[k + 1]].item()
        sigma = eta * math.sqrt((1 - a_prev) / (1 - ab[t].item()) * (1 - ab[t].item() / a_prev))
        noise = torch.randn(shape, generator=generator).to(x.device) if eta > 0 else 0.0
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps + sigma * noise
    return x


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, shape: tuple[int, ...], schedule: Schedule, prediction: str, *,
                generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                clip_x0: bool = True, progress: bool = False, device: torch.device | str | None = None) -> torch.Tensor:
    """Ancestral DDPM sampling over all T steps with the posterior q(x_{t−1} | x_t, x̂_0)."""
    x = torch.randn(shape, generator=generator) if x_T is None else x_T.clone()
    x = x if device is None else x.to(device)
    betas = schedule.betas
    ab = schedule.alphas_cumprod
    for t in tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        x0, _ = to_x0_eps(model_fn(x, tt), x, tt, schedule, prediction)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if t == 0:
            return x0
        ab_t, ab_prev, beta = ab[t].item(), ab[t - 1].item(), betas[t].item()
        # posterior mean  μ̃ = (√ᾱ_{t−1} β_t x̂_0 + √α_t (1−ᾱ_{t−1}) x_t) / (1−ᾱ_t)
        mean = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * x) / (1 - ab_t)
        var = beta * (1 - ab_prev) / (1 - ab_t)
        x = mean + math.sqrt(var) * torch.randn(shape, generator=generator).to(x.device)
    return x
