"""SD layouts: the hub ids, SD 1.5 / 2.1 / tiny UNet configs, and the ControlNet config derived from a UNet's."""
from __future__ import annotations

from typing import Any, Sequence

#: The hub id of Stable Diffusion 1.5 (``runwayml/...`` was removed from the hub in 2024): the one place it is named.
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The authors' Canny ControlNet for SD 1.5 on the hub, in diffusers' layout (chapter 08).
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

#: UNet config keys a ControlNet shares (diffusers ``ControlNetModel`` config names): honoured
#: on every path (from_unet, from_diffusers, save/load, export).
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
#: Keys that change the encoder half but that ``SDControlNet`` does not implement: refused
#: unless they hold the value here (SD 1.x/2.x have it), with a message naming the key.
UNSUPPORTED: dict[str, Any] = {
    "class_embed_type": None, "num_class_embeds": None, "addition_embed_type": None, "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None, "class_embeddings_concat": False,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "dual_cross_attention": False,
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "attention_type": "default", "dropout": 0.0,
}
#: UNet keys that concern only the decoder, the output or the base's own input handling,
#: which a ControlNet does not have (diffusers' ``ControlNetModel`` ignores them too).
BASE_ONLY = ("sample_size", "out_channels", "up_block_types", "reverse_transformer_layers_per_block",
             "conv_out_kernel", "center_input_sample",
             # used by SimpleCrossAttn blocks only, which down_block_types / mid_block_type refuse:
             "mid_block_only_cross_attention", "cross_attention_norm",
             # used with addition_embed_type only, which is refused:
             "addition_embed_type_num_heads")
#: ``ControlNetModel``'s own keys: the condition encoder, the channel order, pooling.
CONTROLNET_KEYS = ("conditioning_channels", "conditioning_embedding_out_channels",
                   "controlnet_conditioning_channel_order", "global_pool_conditions")
#: The blocks SDControlNet builds (SD 1.x / 2.x).
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)


def check_layout(cfg: dict) -> None:
    """Refuse, naming the key, a UNet or ControlNet config that SDControlNet would not reproduce."""
    for key, neutral in UNSUPPORTED.items():
        if key in cfg and cfg[key] != neutral:
            raise ValueError(f"{key}: expected {neutral!r} (SD 1.x/2.x layouts; SDControlNet does not implement "
                             f"other values), got {cfg[key]!r}")
    bad = [b for b in cfg.get("down_block_types", ()) if b not in DOWN_BLOCKS]
    if bad:
        raise ValueError(f"down_block_types: expected blocks among {DOWN_BLOCKS}, got {bad[0]!r}")
    if cfg.get("mid_block_type", MID_BLOCKS[0]) not in MID_BLOCKS:
        raise ValueError(f"mid_block_type: expected {MID_BLOCKS[0]!r}, got {cfg['mid_block_type']!r}")
    widths = cfg.get("conditioning_embedding_out_channels")
    if widths is not None and len(widths) != 4:
        raise ValueError(f"conditioning_embedding_out_channels: expected 4 widths (3 stride-2 steps: the control "
                         f"image at 8x the latent size, SD's VAE factor), got {len(widths)}: {list(widths)}")
    if cfg.get("controlnet_conditioning_channel_order", "rgb") != "rgb":
        raise ValueError("controlnet_conditioning_channel_order: expected 'rgb', got "
                         f"{cfg['controlnet_conditioning_channel_order']!r}")


def controlnet_config(unet_config: dict, conditioning_channels: int = 3,
                      conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
                      global_pool_conditions: bool = False) -> dict:
    """The ControlNet config (diffusers ``ControlNetModel`` names) for a UNet config.

    Every key of the UNet config is honoured (:data:`SHARED_KEYS`), irrelevant to a
    ControlNet (:data:`BASE_ONLY`), or refused unless neutral (:data:`UNSUPPORTED`)."""
    cfg = dict(unet_config)
    check_layout({**cfg, "conditioning_embedding_out_channels": conditioning_embedding_out_channels})
    out = {k: cfg.get(k, DEFAULTS.get(k)) for k in SHARED_KEYS}
    out["conditioning_channels"] = conditioning_channels
    out["conditioning_embedding_out_channels"] = list(conditioning_embedding_out_channels)
    out["controlnet_conditioning_channel_order"] = "rgb"
    out["global_pool_conditions"] = bool(global_pool_conditions)
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
#: The tiny preset's VAE (8× down, 4 latent channels) and CLIP text model (2 layers); the
#: text model's width is the UNet's ``cross_attention_dim``, its vocabulary the local tokenizer's.
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64,
}
TINY_TEXT_CONFIG: dict[str, Any] = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
#: Stable Diffusion 1.5's VAE (``SD15_ID``, ``vae/config.json``) and text encoder (CLIP ViT-L/14's
#: text model, ``text_encoder/config.json``): with ``SD15_UNET_CONFIG``, SD 1.5's architecture
#: built offline with random weights (:meth:`SDParts.random`, ``benchmarks/sd_training.py``).
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG: dict[str, Any] = {"vocab_size": 49408, "intermediate_size": 3072, "num_hidden_layers": 12,
                                    "num_attention_heads": 12, "max_position_embeddings": 77,
                                    "hidden_act": "quick_gelu", "projection_dim": 768}

#: What :meth:`SDParts.from_pretrained` reads from a model folder, and what a diffusers ControlNet folder holds.
SD_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
CONTROLNET_FILES = ("config.json",)
