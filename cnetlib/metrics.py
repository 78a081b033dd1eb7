"""Measuring generated Fill50k images: which colours were drawn, is it a clean disk,
and is it where the condition put it?

Chapter 01 uses these to check that the toy base follows its prompt and draws clean
disks (:func:`prompt_following`, :func:`clean_disk`); chapter 04 adds the
condition-fidelity IoU against the control image's disk and :func:`placement`, the
centre and radius errors of the drawn disk in pixels. All functions take images as
float tensors ``(B, 3, H, W)`` in [-1, 1] (what the samplers return) or ``uint8``
arrays ``(B, H, W, 3)``.
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


#: RGB distance (0-255 units) within which a pixel counts as "the" background or circle colour.
FLAT_TOLERANCE = 48.0


def clean_disk(image: np.ndarray, threshold: float = 60.0, min_disk_iou: float = 0.9,
               tolerance: float = FLAT_TOLERANCE, min_flat: float = 0.95) -> bool:
    """Is one ``(H, W, 3)`` uint8 image one clean disk on a flat background?

    Four tests, edges excluded (a 32 px disk's rim is where any sampler blurs):
    the segmented circle fills its best-fit disk (disk IoU ≥ ``min_disk_iou``); almost
    none of it lies more than 1.5 px outside that disk (at most 2 % of the disk's area:
    no second blob); at least ``min_flat`` of the pixels more than 1.5 px outside the
    disk lie within ``tolerance`` of the background colour; and as many of those more
    than 1.5 px inside it within ``tolerance`` of the circle's median colour. Speckle, a
    second blob, a ring, a colour gradient or an empty image fail.
    """
    mask = segment_circle(image, threshold)
    if not mask.any():
        return False
    cx, cy, r = fit_disk(mask)
    if iou(mask, disk_mask(cx, cy, r, image.shape[:2])) < min_disk_iou:
        return False
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d = np.hypot(xx - cx, yy - cy)
    px = image.astype(np.float64)
    outside, inside = d > r + 1.5, d < r - 1.5
    if (mask & outside).sum() > max(2.0, 0.02 * mask.sum()):
        return False
    bg = background_color(image)
    circle = np.median(px[mask], axis=0)
    for region, colour in ((outside, bg), (inside, circle)):
        if region.any() and (np.linalg.norm(px[region] - colour, axis=-1) <= tolerance).mean() < min_flat:
            return False
    return True


@dataclass
class PromptFollowing:
    """Per-sample and mean prompt-following figures for a batch of generated images."""

    circle_correct: np.ndarray  #: bool (B,): circle colour nearest to the prompt's
    background_correct: np.ndarray  #: bool (B,)
    disk_iou: np.ndarray  #: (B,): IoU of the segmented circle with its best-fit disk
    circle_pred: list[str]
    background_pred: list[str]
    clean: np.ndarray | None = None  #: bool (B,): one clean disk on a flat background (:func:`clean_disk`)

    @property
    def circle_accuracy(self) -> float:
        return float(self.circle_correct.mean())

    @property
    def background_accuracy(self) -> float:
        return float(self.background_correct.mean())

    @property
    def mean_disk_iou(self) -> float:
        return float(np.nanmean(self.disk_iou))

    @property
    def clean_share(self) -> float:
        """Share of samples that are one clean disk on a flat background."""
        return float(np.mean(self.clean)) if self.clean is not None else float("nan")

    def summary(self) -> dict[str, float]:
        return {"circle_accuracy": self.circle_accuracy, "background_accuracy": self.background_accuracy,
                "disk_iou": self.mean_disk_iou, "clean_share": self.clean_share, "n": len(self.disk_iou)}


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
    c_ok, b_ok, c_pred, b_pred = [], [], [], []
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
    quality = disk_quality(imgs, threshold)
    return PromptFollowing(np.array(c_ok), np.array(b_ok), quality.disk_iou, c_pred, b_pred, quality.clean)


@dataclass
class DiskQuality:
    """How well each image draws a disk, whatever its colours (for samples without a prompt)."""

    disk_iou: np.ndarray  #: (B,) IoU of the segmented circle with its best-fit disk (0 if none)
    clean: np.ndarray  #: bool (B,) one clean disk on a flat background (:func:`clean_disk`)

    def summary(self) -> dict[str, float]:
        return {"disk_iou": float(self.disk_iou.mean()), "clean_share": float(self.clean.mean()),
                "n": len(self.disk_iou)}


def disk_quality(images: torch.Tensor | np.ndarray, threshold: float = 60.0) -> DiskQuality:
    """Disk IoU and :func:`clean_disk` of every image (chapter 01's unprompted samples)."""
    imgs = as_uint8_images(images)
    ious = []
    for img in imgs:
        mask = segment_circle(img, threshold)
        ious.append(iou(mask, disk_mask(*fit_disk(mask), img.shape[:2])) if mask.any() else 0.0)
    return DiskQuality(np.array(ious), np.array([clean_disk(img, threshold) for img in imgs]))


# ----------------------------------------------------------------------------------
# Placement: is the drawn disk where the condition's disk is? (chapters 04-07)
# ----------------------------------------------------------------------------------
@dataclass
class Placement:
    """Per-sample centre and radius errors (pixels) of the drawn disk against the condition's.

    The drawn disk is the best-fit disk (:func:`fit_disk`: centroid and area) of the
    segmented circle, the condition's the same fit of its exact mask, so a perfect
    sample has both errors 0. A sample with no circle at all gets ``nan`` errors and
    counts as not placed.
    """

    center_error: np.ndarray  #: (B,) distance between the centres, px
    radius_error: np.ndarray  #: (B,) drawn radius − condition radius, px (signed)
    tolerance: float = 1.0

    @property
    def within(self) -> np.ndarray:
        """bool (B,): centre and radius both within ``tolerance`` px."""
        with np.errstate(invalid="ignore"):
            return (self.center_error <= self.tolerance) & (np.abs(self.radius_error) <= self.tolerance)

    def summary(self) -> dict[str, float]:
        ok = np.isfinite(self.center_error)
        return {"center_error_median": float(np.median(self.center_error[ok])) if ok.any() else float("nan"),
                "center_error_mean": float(np.mean(self.center_error[ok])) if ok.any() else float("nan"),
                "radius_error_median": float(np.median(np.abs(self.radius_error[ok]))) if ok.any() else float("nan"),
                "within_1px": float(self.within.mean()), "no_circle": float((~ok).mean())}


def placement(images: torch.Tensor | np.ndarray, masks: np.ndarray, threshold: float = 60.0,
              tolerance: float = 1.0) -> Placement:
    """Centre and radius errors of each image's drawn disk against its condition's ``masks`` (B, H, W).

    IoU mixes position, size and shape in one number and understates how well a
    circle is placed when its colours are hard to segment; this says it in pixels.
    """
    imgs = as_uint8_images(images)
    masks = np.asarray(masks, bool)
    if masks.shape != imgs.shape[:3]:
        raise ValueError(f"masks: expected shape {imgs.shape[:3]} (one per image), got {masks.shape}")
    centre, radius = [], []
    for img, m in zip(imgs, masks):
        cx, cy, r = fit_disk(segment_circle(img, threshold))
        tx, ty, tr = fit_disk(m)
        centre.append(float(np.hypot(cx - tx, cy - ty)))
        radius.append(r - tr)
    return Placement(np.array(centre), np.array(radius), tolerance)
