"""Measuring generated Fill50k images: which colours were drawn, and is it a clean disk?

Chapter 01 uses these to check that the toy base follows its prompt; chapter 04 adds
the condition-fidelity IoU against the control image's disk. All functions take
images as float tensors ``(B, 3, H, W)`` in [-1, 1] (what the samplers return) or
``uint8`` arrays ``(B, H, W, 3)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .data import color_rgb, parse_prompt, tensor_to_uint8


def as_uint8_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Accept ``(B, 3, H, W)`` floats in [-1, 1] or ``uint8 (B, H, W, 3)``; return the latter."""
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.numpy()
        else:
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images: expected a float tensor (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
            return tensor_to_uint8(images)
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 (B, H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def background_color(image: np.ndarray) -> np.ndarray:
    """Median colour of the 1-pixel frame of one ``(H, W, 3)`` image (the disk never touches it)."""
    frame = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]]).astype(np.float64)
    return np.median(frame, axis=0)


def segment_circle(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Pixels whose RGB distance (0-255 units) from the background colour exceeds ``threshold``."""
    d = np.linalg.norm(image.astype(np.float64) - background_color(image), axis=-1)
    return d > threshold


def fit_disk(mask: np.ndarray) -> tuple[float, float, float]:
    """Disk with the mask's centroid and area: ``(cx, cy, r)`` in pixel units (centres at +0.5)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (float("nan"),) * 3
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5), float(np.sqrt(len(xs) / np.pi))


def disk_mask(cx: float, cy: float, r: float, size: int | tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the disk ``d <= r`` (same rasterisation as the generator)."""
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return np.hypot(xx - cx, yy - cy) <= r


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def nearest_color(rgb: Sequence[float], palette: Sequence[str]) -> str:
    """The palette colour closest (Euclidean RGB) to ``rgb``."""
    table = np.array([color_rgb(n) for n in palette], np.float64)
    return palette[int(np.argmin(np.linalg.norm(table - np.asarray(rgb, np.float64), axis=1)))]


@dataclass
class PromptFollowing:
    """Per-sample and mean prompt-following figures for a batch of generated images."""

    circle_correct: np.ndarray  #: bool (B,): circle colour nearest to the prompt's
    background_correct: np.ndarray  #: bool (B,)
    disk_iou: np.ndarray  #: (B,): IoU of the segmented circle with its best-fit disk
    circle_pred: list[str]
    background_pred: list[str]

    @property
    def circle_accuracy(self) -> float:
        return float(self.circle_correct.mean())

    @property
    def background_accuracy(self) -> float:
        return float(self.background_correct.mean())

    @property
    def mean_disk_iou(self) -> float:
        return float(np.nanmean(self.disk_iou))

    def summary(self) -> dict[str, float]:
        return {"circle_accuracy": self.circle_accuracy, "background_accuracy": self.background_accuracy,
                "disk_iou": self.mean_disk_iou, "n": len(self.disk_iou)}


def prompt_following(images: torch.Tensor | np.ndarray, prompts: Sequence[str], palette: Sequence[str],
                     threshold: float = 60.0) -> PromptFollowing:
    """Read the colours of each generated image and compare them with its prompt.

    Background = median of the image frame, circle = median of the pixels far from it
    (:func:`segment_circle`); each is snapped to the nearest palette colour. The disk
    IoU fits a disk to the segmented pixels (:func:`fit_disk`) and measures how well
    they fill it: 1.0 for a perfect disk, lower for blobs, rings or speckle.
    """
    imgs = as_uint8_images(images)
    if len(prompts) != len(imgs):
        raise ValueError(f"prompts: expected {len(imgs)} (one per image), got {len(prompts)}")
    palette = list(palette)
    c_ok, b_ok, ious, c_pred, b_pred = [], [], [], [], []
    for img, prompt in zip(imgs, prompts):
        want_c, want_b = parse_prompt(prompt)
        bg = background_color(img)
        mask = segment_circle(img, threshold)
        circle_rgb = np.median(img[mask].astype(np.float64), axis=0) if mask.any() else bg
        pc, pb = nearest_color(circle_rgb, palette), nearest_color(bg, palette)
        c_pred.append(pc)
        b_pred.append(pb)
        c_ok.append(pc == want_c and mask.any())
        b_ok.append(pb == want_b)
        ious.append(iou(mask, disk_mask(*fit_disk(mask), img.shape[:2])) if mask.any() else 0.0)
    return PromptFollowing(np.array(c_ok), np.array(b_ok), np.array(ious), c_pred, b_pred)
