"""SD layouts: the hub ids, SD 1.5 / 2.1 / tiny UNet configs, and the ControlNet config derived from a UNet's."""
from __future__ import annotations

from typing import Any, Sequence

#: The hub id of Stable Diffusion 1.5 (``runwayml/...`` was removed from the hub in 2024): the one place it is named.
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The authors' Canny ControlNet for SD 1.5 on the hub, in diffusers' layout (chapter 07).
CANNY_CONTROLNET_ID = "lllyasviel/sd-controlnet-canny"
#: The annotators' weights (HED, depth, pose...) that controlnet-aux loads from the hub.
ANNOTATORS_ID = "lllyasviel/Annotators"
#: Stable Diffusion 1.5's UNet (``SD15_ID``, ``unet/config.json``).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
#: Stable Diffusion 2.1's UNet: linear projections, per-level head dims, 1024-d text.
SD21_UNET_CONFIG: dict[str, Any] = {**SD15_UNET_CONFIG, "sample_size": 96, "cross_attention_dim": 1024,
                                    "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True}

#: UNet config keys a ControlNet shares (diffusers ``ControlNetModel`` config names).
SHARED_KEYS = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
               "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
               "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
               "attention_head_dim", "num_attention_heads", "use_linear_projection", "upcast_attention",
               "resnet_time_scale_shift", "mid_block_type")
DEFAULTS: dict[str, Any] = {"only_cross_attention": False, "transformer_layers_per_block": 1, "num_attention_heads": None,
                            "use_linear_projection": False, "upcast_attention": False,
                            "resnet_time_scale_shift": "default", "mid_block_type": "UNetMidBlock2DCrossAttn",
                            "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
                            "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0}
UNSUPPORTED = {"class_embed_type": None, "num_class_embeds": None, "addition_embed_type": None,
               "encoder_hid_dim": None, "encoder_hid_dim_type": None}


def controlnet_config(unet_config: dict, conditioning_channels: int = 3,
                      conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256)) -> dict:
    """The ControlNet config (diffusers ``ControlNetModel`` names) for a UNet config."""
    cfg = dict(unet_config)
    for key, neutral in UNSUPPORTED.items():
        if cfg.get(key, neutral) != neutral:
            raise ValueError(f"unet config: {key}={cfg[key]!r} is not supported (SD 1.x/2.x layouts only); "
                             f"expected {neutral!r}")
    out = {k: cfg.get(k, DEFAULTS.get(k)) for k in SHARED_KEYS}
    out["conditioning_channels"] = conditioning_channels
    out["conditioning_embedding_out_channels"] = list(conditioning_embedding_out_channels)
    out["controlnet_conditioning_channel_order"] = "rgb"
    for k, v in out.items():
        if isinstance(v, tuple):
            out[k] = list(v)
    return out


def hint_channels(embedding_out_channels: Sequence[int]) -> tuple[int, ...]:
    """diffusers' ``conditioning_embedding_out_channels`` (16, 32, 96, 256) as our per-conv list
    (16, 16, 32, 32, 96, 96, 256): each level has a stride-1 conv, then a stride-2 conv to the next."""
    c = list(embedding_out_channels)
    out = [c[0]]
    for a, b in zip(c, c[1:]):
        out += [a, b]
    return tuple(out)


def _per_level(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n

#: The tiny preset's UNet: SD's layout (cross-attention down blocks, a plain last block,
#: a cross-attention middle block) at toy width.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 2, "cross_attention_dim": 32, "attention_head_dim": 4,
    "norm_num_groups": 8,
}

#: What :meth:`SDParts.from_pretrained` reads from a model folder, and what a diffusers ControlNet folder holds.
SD_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
CONTROLNET_FILES = ("config.json",)
