"""Sampling SD with any number of ControlNets in every guidance mode of chapter 06 (``generate``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..checks import check_images, check_number, check_prompts
from ..control import ControlOptions, weigh_and_sum, with_zero_branch
from ..guidance import Control
from .model import SDControlNet
from .parts import SDParts

# ----------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------
def prepare_condition(image, height: int, width: int, batch: int, device, dtype) -> torch.Tensor:
    """A control image (PIL, uint8 array (H, W, 3), or float tensor in [0, 1]) as (batch, 3, H, W) in [0, 1]."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image[None]
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
    else:
        if isinstance(image, np.ndarray) and image.dtype.kind == "f":  # floats in [0, 1], as diffusers takes them
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            image = image.movedim(-1, -3) if image.shape[-1] in (1, 3) else image
            return prepare_condition(image, height, width, batch, device, dtype)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"control image: expected a uint8 array (H, W, 3) or floats in [0, 1], got "
                                 f"{image.dtype} of shape {image.shape}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"control image: expected a PIL image, a uint8 array or a tensor, got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.LANCZOS)
        x = torch.from_numpy(np.array(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    check_images(x, name="control image", channels=3, size=(height, width), value_range=(0.0, 1.0))
    if x.shape[0] not in (1, batch):
        raise ValueError(f"control image: expected {'1 image' if batch == 1 else f'1 image or {batch}'} "
                         f"(one per prompt), got {x.shape[0]}")
    if x.shape[0] == 1:
        x = x.repeat(batch, 1, 1, 1)
    return x.to(device=device, dtype=dtype)


@torch.no_grad()
def encode_prompts(parts: SDParts, prompts: Sequence[str]) -> torch.Tensor:
    """Text features c_t, as diffusers' pipelines compute them (padded to the tokenizer's length)."""
    tok = parts.tokenizer(list(prompts), padding="max_length", max_length=parts.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt")
    return parts.text_encoder(tok.input_ids.to(parts.text_encoder.device))[0].to(parts.dtype)


@torch.no_grad()
def generate(
    parts: SDParts,
    prompts: str | Sequence[str],
    controls: Control | Sequence[Control] | Sequence[tuple] = (),
    *,
    mode: str = "both",
    guidance: float = 7.5,
    steps: int = 20,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    conditioning_scale: float = 1.0,
    control_start: float = 0.0,
    control_end: float = 1.0,
    max_weight: float = 1.0,
    negative_prompt: str = "",
    progress: bool = False,
    output: str = "image",
) -> torch.Tensor:
    """Text-to-image with any number of SD ControlNets, in any guidance mode of chapter 06.

    ``controls``: :class:`~cnetlib.guidance.Control` (``controlnet``, ``condition`` image,
    ``scale``) or ``(controlnet, image[, scale])`` tuples; residuals are summed per
    connection. ``guidance`` is the classifier-free guidance scale β (diffusers'
    ``guidance_scale``; the toy's ``sample`` takes the same name). Returns images (B, 3, H, W)
    in [-1, 1], the book's one output convention (the toy's samplers return the same range;
    diffusers' pipelines return ``(x + 1) / 2``); ``output="latent"``: the latents.
    With mode ``"both"`` and one ControlNet this is what diffusers'
    ``StableDiffusionControlNetPipeline`` computes (a unit test checks it).
    """
    from diffusers.utils.torch_utils import randn_tensor
    from tqdm.auto import tqdm

    from ..guidance import _as_controls

    opts = ControlOptions(mode, conditioning_scale, control_start, control_end, max_weight)   # checked there
    prompts = check_prompts([prompts] if isinstance(prompts, str) else prompts)
    if not isinstance(negative_prompt, str):
        raise TypeError(f"negative_prompt: expected a string (\"\" for none), got {type(negative_prompt).__name__}")
    if output not in ("image", "latent"):
        raise ValueError(f"output: expected 'image' or 'latent', got {output!r}")
    check_number(seed, name="seed", integer=True)
    b, device, dtype = len(prompts), parts.device, parts.dtype
    vsf = parts.vae_scale_factor
    height = parts.unet.config.sample_size * vsf if height is None else height
    width = parts.unet.config.sample_size * vsf if width is None else width
    for name, value in (("height", height), ("width", width)):
        check_number(value, name=name, low=vsf, integer=True)
        if value % vsf:
            raise ValueError(f"{name}: expected a multiple of {vsf} (the VAE's factor), got {value}")
    check_number(steps, name="steps", low=1, integer=True)
    check_number(guidance, name="guidance")   # NaN would silently turn guidance off
    controls = _as_controls(controls)
    for k, c in enumerate(controls):
        if not isinstance(c.controlnet, SDControlNet):
            raise TypeError(f"controls[{k}].controlnet: expected an SDControlNet (SDControlNet.from_unet, "
                            f"from_pretrained or from_original), got {type(c.controlnet).__name__}")
        check_number(c.scale, name=f"controls[{k}].scale")
    controls = [Control(c.controlnet, prepare_condition(c.condition, height, width, b, device, dtype), c.scale)
                for c in controls]
    # cnetlib.control's mode table and sum, as the toy sampler uses them (chapter 06 -> chapter 08)
    w_uc, w_c = opts.weights(controls[0].controlnet.connections) if controls else (None, None)
    scales = [c.scale * conditioning_scale for c in controls]
    cfg = guidance > 1.0
    cond = encode_prompts(parts, prompts)
    embeds = torch.cat([encode_prompts(parts, [negative_prompt] * b), cond]) if cfg else cond
    sched = parts.scheduler
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps
    g = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor((b, parts.unet.config.in_channels, height // vsf, width // vsf), generator=g,
                           device=device, dtype=dtype) * sched.init_noise_sigma
    for i, t in enumerate(tqdm(timesteps, desc="SD", disable=not progress, leave=False)):
        x_in = torch.cat([latents] * 2) if cfg else latents
        x_in = sched.scale_model_input(x_in, t)
        down = mid = None
        if controls and opts.active(i, len(timesteps)):
            nd = next(controls[0].controlnet.parameters()).dtype  # an fp32 ControlNet may steer an fp16 UNet
            if w_uc is not None or not cfg:  # mode "both" (or no CFG): every latent of the batch is controlled
                res = [c.controlnet(x_in.to(nd), t, embeds.to(nd),
                                    (torch.cat([c.condition] * 2) if cfg else c.condition).to(nd)) for c in controls]
                down, mid = weigh_and_sum(res, scales, w_c)               # Σ_k s_k · w_i · r_{k,i}
            else:  # control only in ε_c: zeros for the unconditional half (diffusers puts it first)
                x_c = sched.scale_model_input(latents, t).to(nd)
                res = [c.controlnet(x_c, t, cond.to(nd), c.condition.to(nd)) for c in controls]
                down, mid = with_zero_branch(*weigh_and_sum(res, scales, w_c), controlled_first=False)
            down, mid = [r.to(dtype) for r in down], mid.to(dtype)
        noise = parts.unet(x_in, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid, return_dict=False)[0]
        if cfg:
            uc, c_ = noise.chunk(2)
            noise = uc + guidance * (c_ - uc)
        latents = sched.step(noise, t, latents, return_dict=False)[0]
    if output == "latent":
        return latents
    image = parts.vae.decode(latents / parts.vae.config.scaling_factor, return_dict=False)[0]
    return image.clamp(-1, 1).float().cpu()
