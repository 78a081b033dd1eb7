"""The toy base model of the book: its recipe, checkpoint, generation and evaluation.

Chapter 01 trains it; every later chapter loads it with :func:`load_or_train_base`
as the frozen backbone F(·; Θ). Regenerate the shipped checkpoint with::

    python -m cnetlib.base --out data/base_unet.pt
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import check_writable, load_checkpoint, save_checkpoint
from .data import TOY_PALETTE, Fill50k, check_palette
from .metrics import DiskQuality, PromptFollowing, disk_quality, prompt_following
from .runtime import DATA_DIR, ROOT, pick, smoke_mode
from .train import TrainResult, train_denoiser
from .unet import ToyUNet, UNetConfig

BASE_CHECKPOINT = DATA_DIR / "base_unet.pt"
#: Guidance scale β the toy chapters use unless they say otherwise.
DEFAULT_GUIDANCE = 3.0


@dataclass(frozen=True)
class BaseRecipe:
    """How the shipped base was trained (chapter 01 explains each choice and its levers)."""

    steps: int = 8000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    drop_prompt: float = 0.3
    ema_decay: float = 0.999
    n_train: int = 20000
    image_size: int = 32
    seed: int = 0
    palette: tuple[str, ...] = TOY_PALETTE
    channels: tuple[int, ...] = (16, 32, 64)
    weighting: str = "none"
    #: Where the run ends inside its ``steps``-long cosine schedule (None: at its end).
    stop_at: int | None = None

    def config(self) -> UNetConfig:
        """The UNet this recipe trains: ``channels`` per level, attention on the coarsest."""
        n = len(self.channels)
        return UNetConfig(image_size=self.image_size, channels=self.channels,
                          attention_levels=(False,) * (n - 1) + (True,), groups=min(4, min(self.channels)))


BASE_RECIPE = BaseRecipe()
#: A few steps of a narrow model only: what smoke mode trains when it must train at all.
SMOKE_RECIPE = BaseRecipe(steps=20, batch_size=16, n_train=512, channels=(8, 16, 32))


def train_base(recipe: BaseRecipe = BASE_RECIPE, config: UNetConfig | None = None,
               progress: bool = True, init: str | Path | None = None,
               device: torch.device | str = "cpu", out_dir: str | Path | None = None,
               snapshot_every: int | None = None) -> TrainResult:
    """Train a :class:`ToyUNet` on Fill50k targets with their prompts.

    The model is fresh (``config``, default: the recipe's :meth:`BaseRecipe.config`),
    or starts from the weights of checkpoint ``init`` (to continue a run with more
    steps; the optimiser starts afresh). With ``out_dir`` the run is resumable
    (:func:`~cnetlib.train.train_denoiser`).
    """
    torch.manual_seed(recipe.seed)
    if init is not None:
        model = load_checkpoint(init, ToyUNet, UNetConfig, expected_config=config).requires_grad_(True)
        config = model.config
    else:
        config = config or recipe.config()
        model = ToyUNet(config)
    if config.image_size != recipe.image_size:
        raise ValueError(f"config.image_size: expected the recipe's {recipe.image_size}, got {config.image_size}")
    data = Fill50k(recipe.n_train, size=recipe.image_size, seed=recipe.seed, palette=recipe.palette)
    return train_denoiser(model, data, steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                          warmup=recipe.warmup, drop_prompt=recipe.drop_prompt, ema_decay=recipe.ema_decay,
                          seed=recipe.seed, progress=progress, device=device, out_dir=out_dir,
                          snapshot_every=snapshot_every, weighting=recipe.weighting, stop_at=recipe.stop_at)


def training_meta(recipe: BaseRecipe, result: TrainResult, **extra) -> dict:
    """What a base checkpoint records about its training (chapter 01 reads these keys)."""
    return {"recipe": asdict(recipe), "steps": len(result.losses), "seconds": round(result.seconds, 1),
            "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:]), "losses": result.losses, **extra}


def load_base(path: str | Path = BASE_CHECKPOINT, expected_config: UNetConfig | None = None) -> ToyUNet:
    """Load a base checkpoint, frozen (``requires_grad=False``) and in eval mode."""
    model = load_checkpoint(path, ToyUNet, UNetConfig, expected_config=expected_config)
    return model.eval().requires_grad_(False)


def load_or_train_base(path: str | Path = BASE_CHECKPOINT, recipe: BaseRecipe | None = None,
                       config: UNetConfig | None = None, progress: bool = True) -> ToyUNet:
    """The shipped base if ``path`` exists, else train one and save it there.

    In smoke mode a missing checkpoint is replaced by a 20-step model that is *not*
    saved, so CI never writes a useless base where the real one belongs. Otherwise the
    training is resumable: an interrupted one continues next time from ``runs/base`` (for
    the shipped checkpoint's path) or from ``<path stem>_run/`` beside ``path``.
    """
    path = Path(path)
    if path.is_file():
        return load_base(path, expected_config=config)
    recipe = recipe or pick(BASE_RECIPE, SMOKE_RECIPE)
    run_dir = ROOT / "runs" / "base" if path.resolve() == BASE_CHECKPOINT.resolve() else path.parent / f"{path.stem}_run"
    result = train_base(recipe, config, progress=progress, out_dir=None if smoke_mode() else run_dir)
    if not smoke_mode() and not result.interrupted:
        save_checkpoint(result.model, path, meta=training_meta(recipe, result))
    return result.model.eval().requires_grad_(False)


@torch.no_grad()
def generate(model: ToyUNet, prompts: Sequence[str], *, guidance: float = DEFAULT_GUIDANCE,
             sampler: str = "ddim", steps: int = 50, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Sample one image per prompt with classifier-free guidance; returns ``(B, 3, H, W)`` in [-1, 1].

    ``sampler`` is ``"ddim"`` (``steps`` steps, deterministic) or ``"ddpm"`` (all T
    steps). This is :func:`cnetlib.guidance.sample` with no control, the form chapter 01
    uses; later chapters pass ControlNets to ``sample`` directly.
    """
    from .guidance import sample

    return sample(model, prompts, guidance=guidance, sampler=sampler, steps=steps, seed=seed, progress=progress)


def sample_grid(model: ToyUNet, prompts: Sequence[str], guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
                steps: int = 25, measured: Sequence[float] = ()):
    """Generate one image per prompt and show them with their prompts (the guidance slider's view).
    ``measured``: the guidance scales a chapter measured; the title says whether this one is."""
    from .viz import image_grid, wrap_prompt

    images = generate(model, prompts, guidance=guidance, steps=steps, seed=seed)
    note = "" if not measured else (" (a measured value)" if any(abs(guidance - m) < 1e-9 for m in measured)
                                    else f" (not measured; measured: {', '.join(f'{m:g}' for m in measured)})")
    return image_grid(images, [wrap_prompt(p) for p in prompts], ncols=len(prompts),
                      suptitle=f"guidance scale β_cfg = {guidance:g}{note}, DDIM {steps} steps, seed {seed}")


def evaluation_prompts(n: int, palette: Sequence[str] = TOY_PALETTE, seed: int = 1234) -> list[str]:
    """``n`` held-out prompts: every ordered colour pair in turn, from a seed other than training's."""
    names = check_palette(palette)
    pairs = [(a, b) for a in names for b in names if a != b]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [f"{pairs[order[i % len(pairs)]][0]} circle with {pairs[order[i % len(pairs)]][1]} background"
            for i in range(n)]


def evaluate_prompt_following(model: ToyUNet, n: int = 112, *, guidance: float = DEFAULT_GUIDANCE,
                              steps: int = 50, seed: int = 0, palette: Sequence[str] = TOY_PALETTE,
                              batch_size: int = 56, progress: bool = False) -> PromptFollowing:
    """Generate ``n`` images for held-out prompts and read their colours (:func:`prompt_following`)."""
    prompts = evaluation_prompts(n, palette)
    images = torch.cat([generate(model, prompts[i:i + batch_size], guidance=guidance, steps=steps,
                                 seed=seed + i, progress=progress)
                        for i in range(0, n, batch_size)])
    return prompt_following(images, prompts, palette)


def evaluate_unprompted(model: ToyUNet, n: int = 112, *, steps: int = 20, seed: int = 0,
                        batch_size: int = 56, progress: bool = False) -> DiskQuality:
    """Sample ``n`` images with the empty prompt (the unconditional model, β irrelevant) and
    measure their drawing (:func:`~cnetlib.metrics.disk_quality`): chapter 01's second target."""
    images = torch.cat([generate(model, [""] * min(batch_size, n - i), guidance=1.0, steps=steps,
                                 seed=seed + 1000 + i, progress=progress)
                        for i in range(0, n, batch_size)])
    return disk_quality(images)


def score_base(model: ToyUNet, n: int = 112, *, steps: int = 20, guidance: float = DEFAULT_GUIDANCE,
               seed: int = 0) -> dict[str, float]:
    """The base's targets in one dict: prompted colours, disk IoU and clean share (β = ``guidance``),
    and the unprompted model's disk IoU and clean share, each over ``n`` samples (DDIM ``steps``)."""
    pf = evaluate_prompt_following(model, n, guidance=guidance, steps=steps, seed=seed)
    un = evaluate_unprompted(model, n, steps=steps, seed=seed)
    return {"circle_accuracy": pf.circle_accuracy, "background_accuracy": pf.background_accuracy,
            "disk_iou": pf.mean_disk_iou, "clean_share": pf.clean_share,
            "unprompted_disk_iou": float(un.disk_iou.mean()), "unprompted_clean_share": float(un.clean.mean()),
            "n": n, "eval_steps": steps, "eval_guidance": guidance}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cnetlib.base",
                                description="Train the toy base UNet, save it and print its scores.")
    p.add_argument("--out", type=Path, default=BASE_CHECKPOINT, help="checkpoint path (default: %(default)s)")
    p.add_argument("--steps", type=int, default=BASE_RECIPE.steps, help="length of the lr schedule (default: %(default)s)")
    p.add_argument("--stop-at", type=int, default=BASE_RECIPE.stop_at,
                   help="end the run after this many steps of the schedule (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=BASE_RECIPE.batch_size)
    p.add_argument("--seed", type=int, default=BASE_RECIPE.seed)
    p.add_argument("--lr", type=float, default=BASE_RECIPE.lr)
    p.add_argument("--drop-prompt", type=float, default=BASE_RECIPE.drop_prompt)
    p.add_argument("--channels", type=int, nargs="+", default=list(BASE_RECIPE.channels),
                   help="channels per level (default: %(default)s); attention on the last level")
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint's weights")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "base",
                   help="resumable training state (default: %(default)s); rerun the same command to resume")
    p.add_argument("--snapshot-every", type=int, default=None, help="keep the EMA weights every N steps in run-dir")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--eval", type=int, default=112, help="number of samples to evaluate (0: skip)")
    args = p.parse_args(argv)
    check_writable(args.out, "--out")  # before hours of training, not after
    recipe = BaseRecipe(steps=args.steps, stop_at=args.stop_at, seed=args.seed, lr=args.lr, batch_size=args.batch_size,
                        drop_prompt=args.drop_prompt, channels=tuple(args.channels))
    result = train_base(recipe, init=args.init, device=args.device, out_dir=args.run_dir,
                        snapshot_every=args.snapshot_every)
    if result.interrupted:
        raise SystemExit(f"interrupted: no checkpoint written; run the same command again to resume from {args.run_dir}")
    model = result.model.to(args.device)
    scores = score_base(model, args.eval) if args.eval else {}
    meta = training_meta(recipe, result, init=str(args.init) if args.init else None, device=args.device, **scores)
    save_checkpoint(model.cpu(), args.out, meta=meta)
    print(json.dumps({"checkpoint": str(args.out), **{k: v for k, v in meta.items() if k != "losses"}}))


if __name__ == "__main__":
    from .checks import cli_errors

    with cli_errors("python -m cnetlib.base"):
        main()
