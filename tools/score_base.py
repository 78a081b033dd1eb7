"""Score a toy base checkpoint with code that shares nothing with ``cnetlib.metrics``.

    python tools/score_base.py [data/base_unet.pt] [--n 112] [--steps 20] [--guidance 3]

The book's own numbers come from ``cnetlib.metrics`` (threshold segmentation against
the frame's median colour). To check that the shipped base meets its targets for
reasons other than how that module happens to measure, this script reads the samples
a second, independent way: every pixel is snapped to the nearest of the 8 palette
colours; the background is the most common label on the image's border, the circle
the most common other label; the disk is that label's pixels. It then asks:

* prompted (held-out colour pairs, guidance β): are both colours the prompt's, and how
  well does the circle's region fill a disk of the same centre and area (disk IoU)?
* empty prompt (β = 1, the unconditional model): is each sample *one clean disk on a
  flat background*: ≥ 97 % of pixels carry one of the two labels, the circle label
  forms one 4-connected region, and its disk IoU is ≥ 0.9?

It prints one JSON line and exits with status 1 if a target of issue "A toy that draws
like the paper" is missed (prompted disk IoU ≥ 0.95, colours ≥ 95 %, clean unprompted
samples ≥ 90 %). Sampling uses cnetlib (that is the model under test); measuring does not.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"prompted_disk_iou": 0.95, "circle_colour": 0.95, "background_colour": 0.95, "unprompted_clean": 0.90}


def snap(image: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest palette colour."""
    d = ((image[:, :, None, :].astype(np.int64) - palette_rgb[None, None].astype(np.int64)) ** 2).sum(-1)
    return d.argmin(-1)


def read(image: np.ndarray, palette_rgb: np.ndarray) -> dict:
    labels = snap(image, palette_rgb)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    bg = Counter(border.tolist()).most_common(1)[0][0]
    others = Counter(labels[labels != bg].tolist()).most_common(1)
    if not others:
        return {"bg": bg, "circle": None, "disk_iou": 0.0, "two_colours": 1.0, "components": 0}
    circle = others[0][0]
    region = labels == circle
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    radius = np.sqrt(region.sum() / np.pi)
    h, w = region.shape
    gy, gx = np.mgrid[0:h, 0:w] + 0.5
    disk = (gx - cx) ** 2 + (gy - cy) ** 2 <= radius**2
    disk_iou = (region & disk).sum() / (region | disk).sum()
    return {"bg": bg, "circle": circle, "disk_iou": float(disk_iou),
            "two_colours": float(np.isin(labels, [bg, circle]).mean()), "components": components(region)}


def components(region: np.ndarray) -> int:
    """Number of 4-connected regions (an iterative flood fill)."""
    seen = np.zeros_like(region, bool)
    count = 0
    for y, x in zip(*np.nonzero(region)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            a, b = stack.pop()
            for na, nb in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                if 0 <= na < region.shape[0] and 0 <= nb < region.shape[1] and region[na, nb] and not seen[na, nb]:
                    seen[na, nb] = True
                    stack.append((na, nb))
    return count


def to_uint8(x) -> np.ndarray:
    """(B, 3, H, W) floats in [-1, 1] -> (B, H, W, 3) uint8."""
    a = ((x.numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", default=str(ROOT / "data" / "base_unet.pt"))
    p.add_argument("--n", type=int, default=112, help="samples per setting (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch  # noqa: F401  (sampling only)
    from cnetlib.base import evaluation_prompts, generate, load_base
    from cnetlib.data import TOY_PALETTE, color_rgb

    base = load_base(a.checkpoint)
    palette = list(TOY_PALETTE)
    palette_rgb = np.array([color_rgb(c) for c in palette])
    prompts = evaluation_prompts(a.n)
    chunks = range(0, a.n, 56)
    prompted = np.concatenate([to_uint8(generate(base, prompts[i:i + 56], guidance=a.guidance, steps=a.steps,
                                                 seed=a.seed + i)) for i in chunks])
    empty = np.concatenate([to_uint8(generate(base, [""] * len(prompts[i:i + 56]), guidance=1.0, steps=a.steps,
                                              seed=a.seed + 1000 + i)) for i in chunks])
    circle_ok, bg_ok, ious = [], [], []
    for img, prompt in zip(prompted, prompts):
        want_circle, want_bg = prompt.removesuffix(" background").split(" circle with ")
        r = read(img, palette_rgb)
        circle_ok.append(r["circle"] is not None and palette[r["circle"]] == want_circle)
        bg_ok.append(palette[r["bg"]] == want_bg)
        ious.append(r["disk_iou"])
    clean = []
    for img in empty:
        r = read(img, palette_rgb)
        clean.append(r["circle"] is not None and r["two_colours"] >= 0.97 and r["components"] == 1
                     and r["disk_iou"] >= 0.9)
    scores = {"checkpoint": Path(a.checkpoint).name, "n": a.n, "steps": a.steps, "guidance": a.guidance,
              "prompted_disk_iou": float(np.mean(ious)), "prompted_disk_iou_min": float(np.min(ious)),
              "circle_colour": float(np.mean(circle_ok)), "background_colour": float(np.mean(bg_ok)),
              "unprompted_clean": float(np.mean(clean))}
    scores["meets_targets"] = all(scores[k] >= v for k, v in TARGETS.items())
    print(json.dumps(scores))
    return 0 if scores["meets_targets"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
