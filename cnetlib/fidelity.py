"""Condition fidelity: does a sample put its circle where the outline says? (chapter 04)

The loss of a ControlNet says little about whether it follows its condition (the
paper: the loss curve stays flat through the sudden convergence), so we measure the
samples themselves:

* **sampled IoU**: generate with DDIM from fixed seeds for fixed conditions (with the
  full prompt and with the empty prompt), segment the generated circle (pixels far
  from the generated background colour, :func:`cnetlib.metrics.segment_circle`) and
  take its IoU with the filled disk of the condition's outline;
* **prompt fidelity**: the colours of the samples drawn with the prompt still match it;
* **proxy IoU**: the same measurement from a 4-step DDIM run instead of a 20-step one
  (8 forward passes instead of 40), cheap enough to take every few training steps.
  Chapter 04 validates it against the sampled IoU. (A one-pass proxy, x̂_0 predicted
  from the noised target at one step t, :meth:`FidelityProbe.x0_proxy`, does not work
  here: at t = 700 the noised target still shows where the circle is, so the base alone
  scores 0.79.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .controlnet import ControlledUNet
from .data import Fill50k, source_to_tensor, target_to_tensor
from .diffusion import make_schedule, q_sample, to_x0_eps
from .guidance import Control, sample
from .metrics import as_uint8_images, iou, prompt_following, segment_circle


def condition_iou(images: torch.Tensor | np.ndarray, masks: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Per-image IoU of the generated circle (segmented) with the condition's disk ``masks`` (B, H, W)."""
    imgs = as_uint8_images(images)
    masks = np.asarray(masks, bool)
    if masks.shape != imgs.shape[:3]:
        raise ValueError(f"masks: expected shape {imgs.shape[:3]} (one per image), got {masks.shape}")
    return np.array([iou(segment_circle(im, threshold), m) for im, m in zip(imgs, masks)])


@dataclass
class FidelityProbe:
    """A fixed evaluation set: conditions, prompts, disks, seeds. Call :meth:`evaluate`.

    ``Fill50k(n, seed=seed)`` gives held-out pairs (training uses seed 0). Sampling uses
    DDIM with ``steps`` steps, mode "both" at guidance ``guidance`` with the prompt and
    the plain controlled model (β = 1) without it.
    """

    n: int = 32
    seed: int = 1
    steps: int = 20
    guidance: float = 3.0
    proxy_steps: int = 4
    extra_t: tuple[int, ...] = ()
    size: int = 32
    palette: Sequence[str] | None = None
    keep_images: int = 8
    condition: str = "outline"
    data: Fill50k = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kw = {} if self.palette is None else {"palette": self.palette}
        self.data = Fill50k(self.n, size=self.size, seed=self.seed, condition=self.condition, **kw)
        self.conditions = source_to_tensor(self.data.sources)
        self.targets = target_to_tensor(self.data.targets)
        self.masks = self.data.masks
        self.prompts = list(self.data.prompts)
        self.palette = self.data.palette
        g = torch.Generator().manual_seed(self.seed + 10_000)
        self.proxy_noise = torch.randn(self.targets.shape, generator=g)

    @torch.no_grad()
    def proxy(self, model: ControlledUNet) -> np.ndarray:
        """Per-sample proxy IoU: the with-prompt samples, but from ``proxy_steps`` DDIM steps."""
        return condition_iou(self.samples(model, True, steps=self.proxy_steps), self.masks)

    @torch.no_grad()
    def x0_proxy(self, model: ControlledUNet, t_proxy: int) -> np.ndarray:
        """Per-sample IoU of x̂_0 predicted in one pass from the target noised to ``t_proxy`` (empty prompt)."""
        cfg = model.config
        device = next(model.parameters()).device
        schedule = make_schedule(cfg.schedule)
        t = torch.full((self.n,), t_proxy, dtype=torch.long, device=device)
        x_t = q_sample(self.targets.to(device), t, self.proxy_noise.to(device), schedule)
        out = model(x_t, t, model.encode_prompts([""] * self.n), self.conditions.to(device))
        x0, _ = to_x0_eps(out, x_t, t, schedule, cfg.prediction)
        return condition_iou(x0.clamp(-1, 1).cpu(), self.masks)

    @torch.no_grad()
    def samples(self, model: ControlledUNet, with_prompt: bool, seed: int = 0, steps: int | None = None) -> torch.Tensor:
        """The probe's samples: with the full prompt at β = ``guidance``, or with "" at β = 1."""
        controls = [Control(net, self.conditions) for net in model.controlnets]
        prompts = self.prompts if with_prompt else [""] * self.n
        return sample(model.base, prompts, controls, mode="both", guidance=self.guidance if with_prompt else 1.0,
                      steps=steps or self.steps, seed=seed)

    def evaluate(self, model: ControlledUNet, sampled: bool = True) -> dict:
        """Proxy IoU always; sampled IoU (with and without prompt) and prompt colours if ``sampled``."""
        was_training = model.training
        model.eval()
        try:
            px = self.proxy(model)
            out: dict = {"proxy_iou": float(px.mean()), "proxy_iou_per_sample": px.round(4).tolist()}
            for t in self.extra_t:
                out[f"x0_iou_t{t}"] = float(self.x0_proxy(model, t).mean())
            if sampled:
                with_p = self.samples(model, True)
                no_p = self.samples(model, False)
                iou_p, iou_n = condition_iou(with_p, self.masks), condition_iou(no_p, self.masks)
                pf = prompt_following(with_p, self.prompts, self.palette)
                pf_n = prompt_following(no_p, self.prompts, self.palette)  # colours the prompt did not ask for
                out.update({
                    "iou": float(iou_p.mean()), "iou_per_sample": iou_p.round(4).tolist(),
                    "iou_no_prompt": float(iou_n.mean()), "iou_no_prompt_per_sample": iou_n.round(4).tolist(),
                    "circle_accuracy": pf.circle_accuracy, "background_accuracy": pf.background_accuracy,
                    "circle_accuracy_no_prompt": pf_n.circle_accuracy,
                    "background_accuracy_no_prompt": pf_n.background_accuracy,
                    # uint8 (k, H, W, 3) for sample grids; the trainer keeps them out of the JSON log
                    "images": as_uint8_images(with_p[: self.keep_images]),
                    "images_no_prompt": as_uint8_images(no_p[: self.keep_images]),
                })
            return out
        finally:
            model.train(was_training)


# ----------------------------------------------------------------------------------
# Prompt settings and guidance tables (chapter 05)
# ----------------------------------------------------------------------------------
#: The paper's prompt settings (its Figure 5): none, too little, conflicting, full.
PROMPT_SETTINGS = ("no prompt", "insufficient", "conflicting", "full")


def prompt_setting(setting: str, prompts: Sequence[str], palette: Sequence[str]) -> list[str]:
    """The prompts of one setting for conditions whose true prompts are ``prompts``.

    ``"no prompt"``: ``""``; ``"insufficient"``: ``"circle"``; ``"full"``: the true prompt;
    ``"conflicting"``: a full prompt with other colours (each colour moved three places
    along the palette): the outline says nothing about colour, so the prompt is obeyable,
    but it contradicts the pair the outline was drawn from.
    """
    from .data import parse_prompt

    if setting == "no prompt":
        return [""] * len(prompts)
    if setting == "insufficient":
        return ["circle"] * len(prompts)
    if setting == "full":
        return list(prompts)
    if setting == "conflicting":
        names = list(palette)
        out = []
        for p in prompts:
            c, b = parse_prompt(p)
            c2, b2 = names[(names.index(c) + 3) % len(names)], names[(names.index(b) + 3) % len(names)]
            out.append(f"{c2} circle with {b2} background")
        return out
    raise ValueError(f"setting: expected one of {PROMPT_SETTINGS}, got {setting!r}")


def measure(base, controls: Sequence[Control], prompts: Sequence[str], masks: np.ndarray, palette: Sequence[str],
            truth: Sequence[str] | None = None, **sample_options) -> dict:
    """Sample with :func:`cnetlib.guidance.sample` and return the condition IoU and the share of
    samples whose colours match ``truth`` (prompts naming the wanted colours, chapter 06) or,
    without it, the prompts themselves when they name colours."""
    images = sample(base, list(prompts), list(controls), **sample_options)
    out = {"iou": float(condition_iou(images, masks).mean())}
    wanted = list(truth) if truth is not None else list(prompts)
    if all(p.strip() and "background" in p for p in wanted):
        pf = prompt_following(images, wanted, palette)
        out.update(circle_accuracy=pf.circle_accuracy, background_accuracy=pf.background_accuracy)
    return out


def guidance_table(base, controlnet, probe: FidelityProbe, modes: Sequence[str], guidances: Sequence[float],
                   settings: Sequence[str] = PROMPT_SETTINGS, progress: bool = False, **sample_options) -> list[dict]:
    """:func:`measure` for every (setting, mode, guidance) on the probe's conditions and seeds."""
    from tqdm.auto import tqdm

    rows = []
    combos = [(s, m, g) for s in settings for m in modes for g in guidances]
    for setting, mode, guidance in tqdm(combos, desc="guidance table", disable=not progress):
        prompts = prompt_setting(setting, probe.prompts, probe.palette)
        r = measure(base, [Control(controlnet, probe.conditions)], prompts, probe.masks, probe.palette,
                    mode=mode, guidance=guidance, steps=probe.steps, **sample_options)
        rows.append({"setting": setting, "mode": mode, "guidance": guidance, **r})
    return rows


def guidance_view(base, controls: Sequence[Control], prompts: Sequence[str], masks: np.ndarray | None = None, *,
                  seed: int = 0, steps: int = 20, title: str = "", **sample_options):
    """Samples for ``prompts`` under ``controls`` and the sampling options of chapter 05's
    sliders (mode, guidance, conditioning_scale, max_weight, control_start/end), with the
    condition IoU in the title when ``masks`` are given. Returns ``(figure, numbers)``."""
    from .viz import image_grid

    images = sample(base, list(prompts), list(controls), seed=seed, steps=steps, **sample_options)
    numbers = {"iou": float(condition_iou(images, masks).mean())} if masks is not None else {}
    opts = ", ".join(f"{k}={v}" for k, v in sample_options.items())
    head = f"{title} {opts}".strip() + (f" · IoU {numbers['iou']:.2f}" if numbers else "")
    conds = [c.condition for c in controls]
    rows = [torch.cat(conds) * 2 - 1] + [images] if conds else [images]
    fig = image_grid(torch.cat(rows), ncols=len(prompts), scale=1.15, suptitle=head)
    return fig, numbers
