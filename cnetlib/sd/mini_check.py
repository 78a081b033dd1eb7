"""Score mini SD and its ControlNet with diffusers' own pipelines and a metric written out here.

Independent of the rest of cnetlib on purpose: no cnetlib sampler (``generate``), no cnetlib
metric (``cnetlib.metrics``), only diffusers' ``StableDiffusionPipeline`` /
``StableDiffusionControlNetPipeline`` and the data generator for held-out pairs. So the
figures below say what a diffusers user gets from the shipped folders::

    python -m cnetlib.sd.mini_check data/mini_sd [data/mini_sd_controlnet]

The metric, for one 64 px image: the background is the median of the 1-px frame; the
circle is every pixel farther than 60 (RGB distance, 0-255) from it; its best-fit disk has
the circle's centroid and area. *Disk IoU* = IoU(circle, best-fit disk) (is it a disk?);
*IoU* = IoU(circle, the condition's disk) (is it the outline's disk?); a colour is *right*
when the palette colour nearest to the circle's (background's) median is the prompt's.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..colours import TOY_PALETTE, color_rgb
from ..data import make_sample, parse_prompt

#: Held-out pairs (the mini SD trains on seed 11, this is seed 12) and how many.
EVAL_SEED, EVAL_N = 12, 64
#: Sampling settings of every score: diffusers' defaults except the size, 25 steps and CFG 3 (at
#: diffusers' 7.5 mini SD oversaturates, as the toy base of chapter 01 does: it too samples at 3).
STEPS, GUIDANCE, SIZE = 25, 3.0, 64


def read_disk(img: np.ndarray, threshold: float = 60.0) -> dict:
    """The circle of one ``(H, W, 3)`` uint8 image: its mask, best-fit disk and two colours."""
    px = img.astype(np.float64)
    frame = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    bg = np.median(frame, axis=0)
    mask = np.linalg.norm(px - bg, axis=-1) > threshold
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    if not mask.any():
        return {"mask": mask, "disk": mask, "background": bg, "circle": None}
    cx, cy, r = xx[mask].mean(), yy[mask].mean(), np.sqrt(mask.sum() / np.pi)
    disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    return {"mask": mask, "disk": disk, "background": bg, "circle": np.median(px[mask], axis=0)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def nearest(rgb, palette=TOY_PALETTE) -> str | None:
    if rgb is None:
        return None
    return min(palette, key=lambda c: float(np.sum((np.asarray(color_rgb(c), float) - rgb) ** 2)))


def held_out(n: int = EVAL_N, size: int = SIZE):
    """``n`` held-out pairs: (outline PIL images, prompts, disk masks)."""
    samples = [make_sample(i, size=size, seed=EVAL_SEED, palette=TOY_PALETTE) for i in range(n)]
    return [Image.fromarray(s.source) for s in samples], [s.prompt for s in samples], np.stack([s.mask for s in samples])


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def score_images(images: np.ndarray, prompts, masks: np.ndarray | None = None) -> dict:
    """Mean disk IoU, share of right circle / background / both colours, and (given masks) the mean IoU."""
    reads = [read_disk(img) for img in images]
    want = [parse_prompt(p) if p else None for p in prompts]
    out = {"disk_iou": float(np.mean([iou(r["mask"], r["disk"]) for r in reads]))}
    if all(w is not None for w in want):
        circle = [nearest(r["circle"]) == w[0] for r, w in zip(reads, want)]
        back = [nearest(r["background"]) == w[1] for r, w in zip(reads, want)]
        out.update(circle_right=float(np.mean(circle)), background_right=float(np.mean(back)),
                   both_right=float(np.mean(np.logical_and(circle, back))))
    if masks is not None:
        per = [iou(r["mask"], m) for r, m in zip(reads, masks)]
        out["iou"], out["iou_per_sample"] = float(np.mean(per)), [round(v, 4) for v in per]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


@torch.no_grad()
def base_images(folder: str | Path, prompts, seed: int = 0, guidance: float = GUIDANCE, steps: int = STEPS):
    """Images of diffusers' ``StableDiffusionPipeline`` loaded from ``folder``, as (B, H, W, 3) uint8."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(list(prompts), height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
               generator=torch.Generator().manual_seed(seed), output_type="np").images
    return _uint8(out)


@torch.no_grad()
def controlnet_images(folder: str | Path, controlnet: str | Path, conditions, prompts, seed: int = 0,
                      guidance: float = GUIDANCE, steps: int = STEPS):
    """Images of diffusers' ``StableDiffusionControlNetPipeline`` (mini SD + a ControlNet folder)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline.from_pretrained(folder, controlnet=ControlNetModel.from_pretrained(controlnet))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(list(prompts), image=list(conditions), height=SIZE, width=SIZE, num_inference_steps=steps,
               guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np").images
    return _uint8(out)


def score_folder(folder: str | Path, controlnet: str | Path | None = None, n: int = EVAL_N) -> dict:
    """The figures of the issue: base disk IoU and colours; ControlNet IoU with and without the prompt."""
    conds, prompts, masks = held_out(n)
    report = {"base": score_images(base_images(folder, prompts), prompts)}
    if controlnet is not None:
        report["controlnet_prompt"] = score_images(controlnet_images(folder, controlnet, conds, prompts), prompts, masks)
        empty = [""] * n
        report["controlnet_no_prompt"] = score_images(controlnet_images(folder, controlnet, conds, empty), empty, masks)
    report["settings"] = {"n": n, "seed": EVAL_SEED, "steps": STEPS, "guidance": GUIDANCE, "size": SIZE}
    return report


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) > 2:
        raise SystemExit("usage: python -m cnetlib.sd.mini_check <mini sd folder> [<controlnet folder>]")
    rep = score_folder(*args)
    for v in rep.values():
        v.pop("iou_per_sample", None)
    print(json.dumps(rep, indent=1))
