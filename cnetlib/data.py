"""Fill50k-style data: a seeded, procedural stand-in for the authors' Fill50K.

Chapter 01 introduces it. A pair is a *source* (the control image c: a white circle
outline on black) and a *target* (the image: that circle filled with one CSS colour
on a background of another) with the prompt ``"<circle colour> circle with
<background colour> background"``, colour names written as words ("pale golden rod").
Nothing is downloaded: every image is drawn from ``(seed, index)``. The same code
writes and reads the authors' on-disk layout (``prompt.json`` as JSON Lines,
``source/N.png``, ``target/N.png``), so the real Fill50K works too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text
from .checks import check_number

from .colours import (  # noqa: F401 (the data's colours, importable from here as chapter 01 does)
    CSS_COLORS, CSS_WORDS, FULL_PALETTE, TOY_PALETTE, check_palette, color_rgb, colour_name,
)


# ----------------------------------------------------------------------------------
# One sample
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircleSpec:
    """Everything that defines one Fill50k pair, in pixel units (pixel centres at +0.5)."""

    center_x: float
    center_y: float
    radius: float
    circle_color: str
    background_color: str

    @property
    def prompt(self) -> str:
        return f"{self.circle_color} circle with {self.background_color} background"


@dataclass(frozen=True)
class Fill50kSample:
    """One pair as ``uint8`` arrays ``(H, W, 3)`` plus its ground truth."""

    source: np.ndarray  #: white outline on black
    target: np.ndarray  #: filled circle on the background colour
    mask: np.ndarray  #: bool (H, W), True inside the disk
    spec: CircleSpec

    @property
    def prompt(self) -> str:
        return self.spec.prompt


def outline_width(size: int) -> float:
    """Width in pixels of the drawn outline: 1 px at 32 px, 4 px at 512 px."""
    return max(1.0, size / 128)


def sample_spec(index: int, *, size: int = 32, seed: int = 0, palette: Sequence[str] = TOY_PALETTE) -> CircleSpec:
    """Draw the circle of sample ``index``; depends only on ``(seed, index)``, not on ``n``.

    The radius is 15-40 % of the side and the whole disk lies inside the image, so the
    ground-truth mask is exact; circle and background colours always differ.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    names = check_palette(palette)
    rng = np.random.default_rng([seed, index])
    radius = float(rng.uniform(0.15, 0.40) * size)
    margin = radius + outline_width(size)
    cx, cy = (float(v) for v in rng.uniform(margin, size - margin, size=2))
    i, j = rng.choice(len(names), size=2, replace=False)
    return CircleSpec(cx, cy, radius, names[i], names[j])


def render(spec: CircleSpec, size: int = 32) -> Fill50kSample:
    """Draw a spec: target = disk ``d <= r`` in the circle colour, source = ring ``|d - r| <= w/2``."""
    if size < 8:
        raise ValueError(f"size: expected at least 8 pixels, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dist = np.hypot(xx - spec.center_x, yy - spec.center_y)
    mask = dist <= spec.radius
    target = np.empty((size, size, 3), np.uint8)
    target[:] = color_rgb(spec.background_color)
    target[mask] = color_rgb(spec.circle_color)
    ring = np.abs(dist - spec.radius) <= outline_width(size) / 2
    source = np.zeros((size, size, 3), np.uint8)
    source[ring] = 255
    return Fill50kSample(source=source, target=target, mask=mask, spec=spec)


def make_sample(index: int, *, size: int = 32, seed: int = 0, palette: Sequence[str] = TOY_PALETTE) -> Fill50kSample:
    """Sample ``index`` of the generator: ``render(sample_spec(...))``."""
    return render(sample_spec(index, size=size, seed=seed, palette=palette), size)


# ----------------------------------------------------------------------------------
# Conversions between uint8 images and the tensors the models see
# ----------------------------------------------------------------------------------
def source_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 (..., H, W, 3)`` -> float ``(..., 3, H, W)`` in [0, 1] (the control image c)."""
    x = torch.as_tensor(images)
    _check_uint8_hwc(x, "source")
    return x.movedim(-1, -3).float() / 255.0


def target_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 (..., H, W, 3)`` -> float ``(..., 3, H, W)`` in [-1, 1] (the image x0)."""
    x = torch.as_tensor(images)
    _check_uint8_hwc(x, "target")
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def tensor_to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float ``(..., 3, H, W)`` in ``value_range`` -> ``uint8 (..., H, W, 3)``, clipping."""
    lo, hi = value_range
    y = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (y * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def _check_uint8_hwc(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.uint8:
        raise ValueError(f"{name}: expected uint8 pixels in [0, 255], got dtype {x.dtype}")
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (..., H, W, 3) with 3 RGB channels, got {tuple(x.shape)}")


def mask_from_target(target: np.ndarray, circle_rgb: Sequence[int], background_rgb: Sequence[int]) -> np.ndarray:
    """Recover the disk mask of a target image from its two colours (nearest colour wins).

    This is how the ground truth of a folder dataset (the real Fill50K too) is found.
    """
    t = target.astype(np.float64)
    dc = ((t - np.asarray(circle_rgb, np.float64)) ** 2).sum(-1)
    db = ((t - np.asarray(background_rgb, np.float64)) ** 2).sum(-1)
    return dc < db


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``"<c> circle with <b> background"`` -> ``(c, b)`` as CSS names; errors name the prompt."""
    words = prompt.strip().split()
    try:
        k = words.index("circle")
        if words[k + 1] != "with" or words[-1] != "background":
            raise ValueError
        circle, background = " ".join(words[:k]), " ".join(words[k + 2 : -1])
    except (ValueError, IndexError):
        raise ValueError(
            f"prompt: expected '<colour> circle with <colour> background', got {prompt!r}"
        ) from None
    return colour_name(circle), colour_name(background)


# ----------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------
class _PairDataset(Dataset):
    """Shared item logic: uint8 arrays in memory, tensors out."""

    sources: np.ndarray  # (N, H, W, 3) uint8
    targets: np.ndarray
    prompts: list[str]
    with_meta: bool

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        item = {
            "source": source_to_tensor(self.sources[i]),
            "target": target_to_tensor(self.targets[i]),
            "prompt": self.prompts[i],
        }
        if self.with_meta:
            item.update(self.meta(i))
        return item

    def meta(self, i: int) -> dict:
        """Ground truth of item ``i``: disk mask and both colours (names and RGB)."""
        circle, background = parse_prompt(self.prompts[i])
        c_rgb, b_rgb = color_rgb(circle), color_rgb(background)
        return {
            "mask": torch.from_numpy(self.mask(i)),
            "circle_color": circle,
            "background_color": background,
            "circle_rgb": torch.tensor(c_rgb),
            "background_rgb": torch.tensor(b_rgb),
        }

    def mask(self, i: int) -> np.ndarray:
        circle, background = parse_prompt(self.prompts[i])
        return mask_from_target(self.targets[i], color_rgb(circle), color_rgb(background))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole set as ``uint8`` tensors ``(N, H, W, 3)`` for fast random batches."""
        return {"source": torch.from_numpy(self.sources), "target": torch.from_numpy(self.targets)}


class Fill50k(_PairDataset):
    """The procedural Fill50k-style dataset, generated in memory.

    ``Fill50k(n, size=32, seed=0, palette=TOY_PALETTE)``: item ``i`` is
    ``make_sample(i, size=size, seed=seed, palette=palette)``. Items are dicts with
    ``source`` (3, H, W) in [0, 1], ``target`` (3, H, W) in [-1, 1] and ``prompt``;
    with ``with_meta=True`` also the exact disk ``mask`` and the colours.
    ``condition`` picks what ``source`` holds: ``"outline"`` (Fill50K's) or
    ``"colour_hint"`` (:func:`colour_hint`, chapter 07's second condition).
    Introduced in chapter 01.
    """

    def __init__(
        self,
        n: int,
        *,
        size: int = 32,
        seed: int = 0,
        palette: Sequence[str] = TOY_PALETTE,
        with_meta: bool = False,
        progress: bool = False,
        condition: str = "outline",
    ) -> None:
        check_number(n, name="n", low=1, integer=True)
        check_number(size, name="size", low=8, integer=True)
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, got {condition!r}")
        self.condition = condition
        self.size, self.seed, self.palette, self.with_meta = size, seed, check_palette(palette), with_meta
        self.specs = [sample_spec(i, size=size, seed=seed, palette=self.palette) for i in range(n)]
        self.sources = np.empty((n, size, size, 3), np.uint8)
        self.targets = np.empty((n, size, size, 3), np.uint8)
        self.masks = np.empty((n, size, size), bool)
        for i, spec in enumerate(tqdm(self.specs, desc="Fill50k", disable=not progress, leave=False)):
            s = render(spec, size)
            self.sources[i], self.targets[i], self.masks[i] = s.source, s.target, s.mask
        self.prompts = [s.prompt for s in self.specs]
        if condition == "colour_hint":
            self.sources = colour_hint(self.targets)

    def mask(self, i: int) -> np.ndarray:
        return self.masks[i]


#: What a Fill50k source image can be.
CONDITIONS = ("outline", "colour_hint")


def colour_hint(targets: np.ndarray, cells: int = 4) -> np.ndarray:
    """A coarse colour map of each target: the mean colour of each of ``cells`` × ``cells``
    blocks, blown back up to full size (uint8 ``(..., H, W, 3)``). It carries both colours
    and a blurred position, but no outline (chapter 07's second condition)."""
    t = np.asarray(targets)
    if t.dtype != np.uint8 or t.shape[-1] != 3 or t.shape[-2] % cells or t.shape[-3] % cells:
        raise ValueError(f"targets: expected uint8 (..., H, W, 3) with H and W divisible by {cells}, "
                         f"got {t.dtype} {t.shape}")
    h, w = t.shape[-3], t.shape[-2]
    blocks = t.reshape(*t.shape[:-3], cells, h // cells, cells, w // cells, 3).astype(np.float64).mean(axis=(-4, -2))
    up = np.repeat(np.repeat(blocks, h // cells, axis=-3), w // cells, axis=-2)
    return np.round(up).astype(np.uint8)


PROMPT_FILE = "prompt.json"


def write_fill50k(
    root: str | Path,
    n: int,
    *,
    size: int = 512,
    seed: int = 0,
    palette: Sequence[str] = FULL_PALETTE,
    progress: bool = True,
) -> Path:
    """Write ``n`` pairs in the authors' layout: ``prompt.json`` (JSON Lines) plus
    ``source/N.png`` and ``target/N.png``. Returns ``root``. Existing files are overwritten;
    ``prompt.json`` is written last and atomically, so an interrupted run leaves no
    prompt file that names missing images.
    """
    check_number(n, name="n", low=1, integer=True)   # an empty folder would be one its own reader rejects
    check_number(size, name="size", low=8, integer=True)
    root = Path(root)
    (root / "source").mkdir(parents=True, exist_ok=True)
    (root / "target").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(n), desc="write Fill50k", disable=not progress):
        s = make_sample(i, size=size, seed=seed, palette=palette)
        Image.fromarray(s.source).save(root / "source" / f"{i}.png")
        Image.fromarray(s.target).save(root / "target" / f"{i}.png")
        lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": s.prompt}))
    atomic_write_text(root / PROMPT_FILE, "\n".join(lines) + "\n")
    return root


class Fill50kFolder(_PairDataset):
    """A dataset in the authors' layout (``prompt.json`` + ``source/`` + ``target/``):
    the real Fill50K, or what :func:`write_fill50k` wrote.

    The whole folder is checked before anything is read: a missing ``prompt.json``,
    a malformed line or any missing image raises an error that lists them, rather than
    serving half a dataset. Images are loaded into memory (optionally resized to
    ``size``, nearest-neighbour for the outline so it stays binary-like).
    """

    def __init__(self, root: str | Path, *, size: int | None = None, limit: int | None = None,
                 with_meta: bool = False, progress: bool = False) -> None:
        self.root, self.with_meta = Path(root), with_meta
        if limit is not None:
            check_number(limit, name="limit", low=1, integer=True)
        if size is not None:
            check_number(size, name="size", low=8, integer=True)
        records = read_prompt_file(self.root)
        if limit is not None:
            records = records[:limit]
        check_folder(self.root, records)
        self.prompts = [r["prompt"] for r in records]
        srcs, tgts = [], []
        for r in tqdm(records, desc=f"read {self.root.name}", disable=not progress, leave=False):
            srcs.append(_load_rgb(self.root / r["source"], size, Image.NEAREST))
            tgts.append(_load_rgb(self.root / r["target"], size, Image.BILINEAR))
        shapes = {a.shape for a in srcs + tgts}
        if len(shapes) != 1:
            raise ValueError(f"{self.root}: expected every image to have one size, got sizes {sorted(shapes)}; pass size=")
        self.sources, self.targets = np.stack(srcs), np.stack(tgts)
        self.size = self.sources.shape[1]


def check_folder(root: Path, records: list[dict]) -> None:
    """Raise, listing them, if any image named in ``prompt.json`` is missing."""
    missing = [p for r in records for p in (r["source"], r["target"]) if not (root / p).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{root}: incomplete dataset: {len(missing)} image file(s) named in {PROMPT_FILE} are missing ({shown})"
        )


class LazyPairs(Dataset):
    """Pairs made one at a time, for 512 px training where 50,000 pairs do not fit in memory
    (chapter 09). ``LazyPairs(n, size=512)`` renders generator samples on demand;
    ``LazyPairs.from_folder(root, size)`` reads the authors' layout file by file (checked
    for completeness first). Items: ``source`` (3, H, W) in [0, 1], ``target`` in [-1, 1],
    ``prompt``, and ``mask`` (the disk, generated pairs only). ``condition="colour_hint"``
    makes the source chapter 07's colour hint of the target instead of the outline.
    """

    def __init__(self, n: int, *, size: int = 512, seed: int = 0, palette: Sequence[str] = FULL_PALETTE,
                 condition: str = "outline") -> None:
        check_number(n, name="n", low=1, integer=True)
        check_number(size, name="size", low=8, integer=True)
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, got {condition!r}")
        self.n, self.size, self.seed, self.palette = n, size, seed, check_palette(palette)
        self.condition = condition
        self.root: Path | None = None
        self.records: list[dict] = []

    @classmethod
    def from_folder(cls, root: str | Path, size: int = 512, limit: int | None = None,
                    condition: str = "outline") -> "LazyPairs":
        records = read_prompt_file(root)[:limit]
        check_folder(Path(root), records)
        out = cls(len(records), size=size, condition=condition)
        out.root, out.records = Path(root), records
        return out

    def fingerprint(self) -> str:
        """What a resumed training checks it still trains on (chapter 09's ``--resume``): the
        generator's settings, or for a folder its prompt file, the size of every image and the
        bytes of 16 evenly spaced pairs (hashing 100,000 full images at every resume would not pay)."""
        import hashlib

        h = hashlib.sha1()
        if self.condition != "outline":   # (outline runs keep the fingerprint they had before conditions)
            h.update(self.condition.encode())
        if self.root is None:
            h.update(json.dumps([self.n, self.size, self.seed, list(self.palette)]).encode())
            return h.hexdigest()[:16]
        h.update(json.dumps(self.records).encode())
        files = [self.root / r[k] for r in self.records for k in ("source", "target")]
        h.update(json.dumps([f.stat().st_size for f in files]).encode())
        for i in np.linspace(0, len(files) - 1, min(32, len(files))).round().astype(int):
            h.update(files[i].read_bytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.root is None:
            s = make_sample(i, size=self.size, seed=self.seed, palette=self.palette)
            src, tgt, prompt = s.source, s.target, s.prompt
            extra = {"mask": torch.from_numpy(s.mask)}
        else:
            r = self.records[i]
            src = _load_rgb(self.root / r["source"], self.size, Image.NEAREST)
            tgt = _load_rgb(self.root / r["target"], self.size, Image.BILINEAR)
            prompt, extra = r["prompt"], {}
        if self.condition == "colour_hint":
            src = colour_hint(tgt)
        return {"source": source_to_tensor(src), "target": target_to_tensor(tgt), "prompt": prompt, **extra}


def read_prompt_file(root: str | Path) -> list[dict]:
    """Parse ``root/prompt.json`` (JSON Lines with ``source``, ``target``, ``prompt``)."""
    path = Path(root) / PROMPT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root}: expected a Fill50K folder with {PROMPT_FILE}, found none")
    records = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{k}: expected a JSON object per line, got {line[:80]!r} ({e})") from None
        if not isinstance(r, dict) or not {"source", "target", "prompt"} <= set(r):
            raise ValueError(f"{path}:{k}: expected keys source, target, prompt, got {line[:80]!r}")
        for key in ("source", "target"):  # inside the folder: a dataset is one folder, and nothing outside it
            rel = Path(r[key])
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"{path}:{k}: {key}: expected a path inside {root} relative to it "
                                 f"(like source/0.png), got {r[key]!r}")
        if not isinstance(r["prompt"], str):
            raise ValueError(f"{path}:{k}: prompt: expected a string, got {r['prompt']!r}")
        records.append(r)
    if not records:
        raise ValueError(f"{path}: expected at least one pair, the file is empty")
    return records


def _load_rgb(path: Path, size: int | None, resample) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), resample)
        return np.asarray(im, dtype=np.uint8).copy()
