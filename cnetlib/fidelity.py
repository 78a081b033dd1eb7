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
  from the target noised to one step t, was tried and dropped: the noised target still
  shows where the circle is, so the base alone scores well without any control.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .controlled import ControlledUNet
from .data import Fill50k, source_to_tensor, target_to_tensor
from .guidance import Control, sample
from .metrics import as_uint8_images, iou, placement, prompt_following, segment_circle


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

    @torch.no_grad()
    def proxy(self, model: ControlledUNet) -> np.ndarray:
        """Per-sample proxy IoU: the with-prompt samples, but from ``proxy_steps`` DDIM steps."""
        return condition_iou(self.samples(model, True, steps=self.proxy_steps), self.masks)

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
            if sampled:
                with_p = self.samples(model, True)
                no_p = self.samples(model, False)
                iou_p, iou_n = condition_iou(with_p, self.masks), condition_iou(no_p, self.masks)
                pl_p, pl_n = placement(with_p, self.masks), placement(no_p, self.masks)
                pf = prompt_following(with_p, self.prompts, self.palette)
                pf_n = prompt_following(no_p, self.prompts, self.palette)  # colours the prompt did not ask for
                out.update({
                    "iou": float(iou_p.mean()), "iou_per_sample": iou_p.round(4).tolist(),
                    "iou_no_prompt": float(iou_n.mean()), "iou_no_prompt_per_sample": iou_n.round(4).tolist(),
                    "within_1px": float(pl_p.within.mean()), "within_1px_no_prompt": float(pl_n.within.mean()),
                    "center_error_per_sample": _finite_or_none(pl_p.center_error),
                    "radius_error_per_sample": _finite_or_none(pl_p.radius_error),
                    "center_error_no_prompt_per_sample": _finite_or_none(pl_n.center_error),
                    "radius_error_no_prompt_per_sample": _finite_or_none(pl_n.radius_error),
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


def _finite_or_none(values: np.ndarray, digits: int = 3) -> list:
    """Per-sample errors for the JSON log: rounded, ``None`` where no circle was drawn (NaN)."""
    return [round(float(v), digits) if np.isfinite(v) else None for v in values]


# ----------------------------------------------------------------------------------
# Prompt settings and guidance tables (chapter 06)
# ----------------------------------------------------------------------------------
#: The paper's prompt settings (§4.2, its ablative study): none, too little, conflicting, full.
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


@dataclass
class Measurement:
    """What :func:`measure` found, per sample (conditions × sampling seeds, seed-major).

    ``iou``, ``within_1px``, ``circle_correct`` … are per-sample arrays, so a table
    can give each mean its bootstrap interval (:mod:`cnetlib.stats`) and two settings
    measured on the same conditions and seeds can be compared pairwise.
    """

    iou: np.ndarray
    center_error: np.ndarray  #: px, nan where no circle was drawn
    radius_error: np.ndarray
    within_1px: np.ndarray  #: bool
    circle_correct: np.ndarray | None = None  #: bool, when the wanted colours are known
    background_correct: np.ndarray | None = None
    images: torch.Tensor | None = None  #: the samples of the first seed

    def mean(self, key: str) -> float:
        return float(np.nanmean(np.asarray(getattr(self, key), dtype=float)))

    def ci(self, key: str = "iou", **options):
        """Mean of a per-sample quantity with its 95 % bootstrap interval (NaNs dropped)."""
        from .stats import bootstrap_ci

        v = np.asarray(getattr(self, key), dtype=float)
        return bootstrap_ci(v[np.isfinite(v)], **options)

    def summary(self) -> dict:
        out = {"iou": self.mean("iou"), "within_1px": self.mean("within_1px"),
               "center_error_median": float(np.nanmedian(self.center_error)) if np.isfinite(self.center_error).any()
               else float("nan")}
        if self.circle_correct is not None:
            out.update(circle_accuracy=self.mean("circle_correct"), background_accuracy=self.mean("background_correct"))
        return out


def measure(base, controls: Sequence[Control], prompts: Sequence[str], masks: np.ndarray, palette: Sequence[str],
            truth: Sequence[str] | None = None, seeds: Sequence[int] = (0,), **sample_options) -> Measurement:
    """Sample with :func:`cnetlib.guidance.sample` once per sampling seed in ``seeds`` and measure
    every sample: the condition IoU, the placement (:func:`cnetlib.metrics.placement`) and, when
    known, whether the colours match ``truth`` (prompts naming the wanted colours, chapter 07) or,
    without it, the prompts themselves when they name colours."""
    if len(seeds) == 0:
        raise ValueError("seeds: expected at least one sampling seed, got none")
    wanted = list(truth) if truth is not None else list(prompts)
    named = all(p.strip() and "background" in p for p in wanted)
    parts: dict[str, list] = {k: [] for k in ("iou", "center", "radius", "within", "circle", "background")}
    first = None
    for seed in seeds:
        images = sample(base, list(prompts), list(controls), seed=seed, **sample_options)
        first = images if first is None else first
        pl = placement(images, masks)
        parts["iou"].append(condition_iou(images, masks))
        parts["center"].append(pl.center_error)
        parts["radius"].append(pl.radius_error)
        parts["within"].append(pl.within)
        if named:
            pf = prompt_following(images, wanted, palette)
            parts["circle"].append(pf.circle_correct)
            parts["background"].append(pf.background_correct)
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    return Measurement(cat["iou"], cat["center"], cat["radius"], cat["within"], cat["circle"], cat["background"], first)


def guidance_table(base, controlnet, probe: FidelityProbe, modes: Sequence[str], guidances: Sequence[float],
                   settings: Sequence[str] = PROMPT_SETTINGS, seeds: Sequence[int] = (0,), progress: bool = False,
                   **sample_options) -> dict[tuple[str, str, float], Measurement]:
    """:func:`measure` for every (setting, mode, guidance) on the probe's conditions, for each sampling seed."""
    from tqdm.auto import tqdm

    table = {}
    combos = [(s, m, g) for s in settings for m in modes for g in guidances]
    for setting, mode, guidance in tqdm(combos, desc="guidance table", disable=not progress):
        prompts = prompt_setting(setting, probe.prompts, probe.palette)
        table[(setting, mode, guidance)] = measure(base, [Control(controlnet, probe.conditions)], prompts, probe.masks,
                                                   probe.palette, seeds=seeds, mode=mode, guidance=guidance,
                                                   steps=probe.steps, **sample_options)
    return table


def guidance_view(base, controls: Sequence[Control], prompts: Sequence[str], masks: np.ndarray | None = None, *,
                  seed: int = 0, steps: int = 20, title: str = "", row_labels: Sequence[str] | None = None,
                  **sample_options):
    """Samples for ``prompts`` under ``controls`` and the sampling options of chapter 06's
    sliders (mode, guidance, conditioning_scale, max_weight, control_start/end), with the
    condition IoU in the title when ``masks`` are given: one row per control's condition,
    then the samples (``row_labels`` names them). Returns ``(figure, numbers)``."""
    from .viz import image_grid

    images = sample(base, list(prompts), list(controls), seed=seed, steps=steps, **sample_options)
    numbers = {"iou": float(condition_iou(images, masks).mean())} if masks is not None else {}
    opts = ", ".join(f"{k}={v}" for k, v in sample_options.items())
    head = f"{title} {opts}".strip() + (f" · IoU {numbers['iou']:.2f}" if numbers else "")
    conds = [c.condition for c in controls]
    rows = [c * 2 - 1 for c in conds] + [images]
    labels = list(row_labels) if row_labels is not None else [f"condition {k + 1}" for k in range(len(conds))] + ["samples"]
    fig = image_grid(torch.cat(rows), ncols=len(prompts), scale=1.15, suptitle=head, row_labels=labels)
    return fig, numbers


def modes_by_settings_grid(base, controlnet, probe: FidelityProbe, modes: Sequence[str],
                           settings: Sequence[str] = PROMPT_SETTINGS, conditions: Sequence[int] = (0, 1, 2), *,
                           guidance: float = 3.0, seed: int = 0, steps: int | None = None, **sample_options):
    """The paper's prompt settings (§4.2) against the guidance modes, at toy scale: one row per
    prompt setting, one column per guidance mode, for each of a few probe ``conditions`` (its
    outline first, with the prompt of that row under it), every cell from the same seed.
    Returns the figure."""
    import matplotlib.pyplot as plt

    from .data import tensor_to_uint8
    from .viz import wrap_prompt

    idx = list(conditions)
    cond = probe.conditions[idx]
    cells, used = {}, {}
    for setting in settings:
        prompts = used[setting] = prompt_setting(setting, [probe.prompts[i] for i in idx], probe.palette)
        for mode in modes:
            cells[(setting, mode)] = tensor_to_uint8(sample(base, prompts, [Control(controlnet, cond)], mode=mode,
                                                           guidance=guidance, seed=seed, steps=steps or probe.steps,
                                                           **sample_options))
    ncols = len(idx) * (len(modes) + 1)
    fig, axes = plt.subplots(len(settings), ncols, figsize=(1.0 * ncols, 1.45 * len(settings) + 0.6), squeeze=False)
    outlines = tensor_to_uint8(cond, (0.0, 1.0))
    for r, setting in enumerate(settings):
        for k in range(len(idx)):
            col0 = k * (len(modes) + 1)
            axes[r][col0].imshow(outlines[k], interpolation="nearest")
            axes[r][col0].set_xlabel(wrap_prompt(used[setting][k] or '""', 16), fontsize=5.5)
            if r == 0:
                axes[r][col0].set_title("outline c,\nprompt under it", fontsize=7)
            for m, mode in enumerate(modes):
                ax = axes[r][col0 + 1 + m]
                ax.imshow(cells[(setting, mode)][k], interpolation="nearest")
                if r == 0:
                    ax.set_title(mode.replace("resolution_weighted", "res. weighted").replace("_", " "), fontsize=7)
        axes[r][0].set_ylabel(setting, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(f"the paper's prompt settings (rows) × guidance modes (columns), β = {guidance:g}, seed {seed}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_guidance_table(table: dict, settings: Sequence[str], modes: Sequence[str], guidances: Sequence[float],
                        key: str = "iou", ylabel: str = "IoU with the outline's disk"):
    """One panel per prompt setting: a per-sample quantity of :func:`guidance_table`'s
    measurements against β, one line per mode, with 95 % bootstrap intervals as error bars."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(3.3 * len(settings), 3.3), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for k, mode in enumerate(modes):
            cis = [table[(setting, mode, g)].ci(key) for g in guidances]
            x = np.asarray(guidances) * (1 + 0.02 * (k - len(modes) / 2))   # spread the bars a little
            ax.errorbar(x, [c.value for c in cis], yerr=[[c.value - c.low for c in cis], [c.high - c.value for c in cis]],
                        fmt="o-", ms=3, capsize=2, label=mode)
        ax.set(title=setting, xlabel="guidance scale β")
    axes[0][0].set_ylabel(f"{ylabel}\n(mean, 95 % interval)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
