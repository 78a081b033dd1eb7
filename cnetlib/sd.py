"""ControlNet on Stable Diffusion: the same copy-and-zero-conv machinery on a diffusers UNet.

Chapter 07 explains it; chapter 08 trains it. :class:`SDControlNet` is cnetlib's own
ControlNet for a diffusers ``UNet2DConditionModel`` (SD 1.x / 2.x layouts): a
:func:`~cnetlib.controlnet.trainable_copy` of the UNet's ``conv_in``, time embedding,
``down_blocks`` and ``mid_block`` (Θc), the reference code's condition encoder
(:class:`~cnetlib.controlnet.ConditionEncoder`, 512 px → 64 × 64 × 320), and one
:func:`~cnetlib.controlnet.zero_conv` per skip connection plus one for the middle block
(SD: 12 + 1 = 13). Its weights convert both ways to diffusers' ``ControlNetModel``
(so the public SD 1.5 ControlNets load) and load from the authors' original checkpoint
layout (``control_model.input_blocks…``, ``zero_convs``, ``input_hint_block``,
``middle_block_out``) through an explicit key map.

:func:`generate` samples with any number of ControlNets and every guidance mode of
chapter 05 on top of diffusers components; :meth:`SDParts.tiny` builds a complete,
SD-shaped set of components from configs with random weights, so everything here runs
offline and on a CPU.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .checks import check_control_window, check_images, check_number, check_prompts
from .controlnet import ConditionEncoder, trainable_copy, zero_conv
from .guidance import Control, check_mode, connection_weights, control_active
from .runtime import env_flag, require_extra
from .unet import Connection

require_extra("cnetlib.sd", ("diffusers", "transformers"))  # a clear pip command, not a raw ModuleNotFoundError later

# ----------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------
# The ControlNet
# ----------------------------------------------------------------------------------
class SDControlNet(nn.Module):
    """cnetlib's ControlNet for a diffusers SD UNet (see the module docstring).

    ``SDControlNet(config)`` builds the layout with fresh weights (``config`` from
    :func:`controlnet_config`); :meth:`from_unet` copies a UNet's weights into it;
    :meth:`from_diffusers` and :meth:`from_original` load trained ControlNets.
    ``forward(sample, timestep, encoder_hidden_states, controlnet_cond)`` returns
    ``(down_residuals, mid_residual)`` for ``unet(..., down_block_additional_residuals,
    mid_block_additional_residual)``.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block

        self.config = dict(config)
        cfg = self.config
        if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"mid_block_type: expected 'UNetMidBlock2DCrossAttn', got {cfg['mid_block_type']!r}")
        ch = list(cfg["block_out_channels"])
        n = len(ch)
        if len(cfg["down_block_types"]) != n:
            raise ValueError(f"down_block_types: expected {n} (one per block_out_channels), got {len(cfg['down_block_types'])}")
        heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]  # diffusers' historical naming
        heads = _per_level(heads, n)
        head_dim = _per_level(cfg["attention_head_dim"], n)
        layers_tf = _per_level(cfg.get("transformer_layers_per_block", 1), n)
        only_cross = _per_level(cfg.get("only_cross_attention", False), n)
        temb = ch[0] * 4
        # ---- Θc: the trainable copy of the UNet's encoder half (filled by from_unet) ----
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(ch[0], temb, act_fn=cfg["act_fn"])
        self.down_blocks = nn.ModuleList()
        out_ch = ch[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, ch[i]
            self.down_blocks.append(get_down_block(
                kind, num_layers=cfg["layers_per_block"], transformer_layers_per_block=layers_tf[i],
                in_channels=in_ch, out_channels=out_ch, temb_channels=temb, add_downsample=i < n - 1,
                resnet_eps=cfg["norm_eps"], resnet_act_fn=cfg["act_fn"], resnet_groups=cfg["norm_num_groups"],
                cross_attention_dim=cfg["cross_attention_dim"], num_attention_heads=heads[i],
                attention_head_dim=head_dim[i] if head_dim[i] is not None else out_ch,
                downsample_padding=cfg["downsample_padding"], use_linear_projection=cfg["use_linear_projection"],
                only_cross_attention=only_cross[i], upcast_attention=cfg["upcast_attention"],
                resnet_time_scale_shift=cfg["resnet_time_scale_shift"]))
        self.mid_block = UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=layers_tf[-1], in_channels=ch[-1], temb_channels=temb,
            resnet_eps=cfg["norm_eps"], resnet_act_fn=cfg["act_fn"], output_scale_factor=cfg["mid_block_scale_factor"],
            resnet_time_scale_shift=cfg["resnet_time_scale_shift"], cross_attention_dim=cfg["cross_attention_dim"],
            num_attention_heads=heads[-1], resnet_groups=cfg["norm_num_groups"],
            use_linear_projection=cfg["use_linear_projection"], upcast_attention=cfg["upcast_attention"])
        # ---- E: the condition encoder, 3 stride-2 steps (512 px image -> 64 x 64 latent grid) ----
        self.condition_encoder = ConditionEncoder("reference", cfg["conditioning_channels"], ch[0], 3,
                                                  hint_channels(cfg["conditioning_embedding_out_channels"]))
        # ---- Z: one zero conv per skip connection, the last for the middle block ----
        self.connections = self._connections()
        self.zero_convs = nn.ModuleList([zero_conv(k.channels, k.channels) for k in self.connections])

    def _connections(self, latent_size: int = 64) -> tuple[Connection, ...]:
        ch, L = list(self.config["block_out_channels"]), self.config["layers_per_block"]
        conns, h = [Connection(0, "input conv", 0, ch[0], latent_size)], latent_size
        for level, c in enumerate(ch):
            for _ in range(L):
                conns.append(Connection(len(conns), "resnet", level, c, h))
            if level < len(ch) - 1:
                h //= 2
                conns.append(Connection(len(conns), "downsample", level + 1, c, h))
        conns.append(Connection(len(conns), "middle", len(ch) - 1, ch[-1], h))
        return tuple(conns)

    def connection_table(self, latent_size: int = 64) -> list[Connection]:
        """The connections with h_i at a given latent size (SD 1.5 at 512 px: 64)."""
        return list(self._connections(latent_size))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_unet(cls, unet, conditioning_channels: int = 3,
                  conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256)) -> "SDControlNet":
        """Θc = a trainable copy of ``unet``'s encoder half; E and Z keep their own initialisation.

        The ControlNet is float32 whatever the UNet's dtype: trainable weights stay in fp32
        (chapter 08); call ``.to(dtype)`` for half-precision inference.
        """
        if not all(hasattr(unet, part) for part in ("config", "conv_in", "time_embedding", "down_blocks", "mid_block")):
            raise TypeError(f"unet: expected a diffusers UNet2DConditionModel, got {type(unet).__name__}"
                            + (" (the toy's ControlNet is cnetlib.controlnet.toy_controlnet)"
                               if type(unet).__name__ == "ToyUNet" else ""))
        net = cls(controlnet_config(dict(unet.config), conditioning_channels, conditioning_embedding_out_channels))
        for part in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            setattr(net, part, trainable_copy(getattr(unet, part)).float())
        return net

    @classmethod
    def from_diffusers(cls, model) -> "SDControlNet":
        """From a diffusers ``ControlNetModel`` object, or a folder it was saved to with ``save_pretrained``."""
        if isinstance(model, (str, os.PathLike)):
            from diffusers import ControlNetModel

            try:
                model = ControlNetModel.from_pretrained(model)
            except (OSError, ValueError) as e:
                raise OSError("could not load the ControlNet: "
                              + load_failure(model, "a diffusers ControlNet", e, CONTROLNET_FILES)) from e
        keys = {k: model.config.get(k) for k in (*SHARED_KEYS, *UNSUPPORTED) if k in model.config}
        cfg = controlnet_config(keys, model.config["conditioning_channels"],
                                model.config["conditioning_embedding_out_channels"])
        if model.config.get("controlnet_conditioning_channel_order", "rgb") != "rgb":
            raise ValueError("controlnet_conditioning_channel_order: expected 'rgb', got 'bgr'")
        net = cls(cfg)
        net.load_state_dict({from_diffusers_key(k, net): v for k, v in model.state_dict().items()})
        return net.to(model.dtype)

    def to_diffusers(self):
        """The same weights as a diffusers ``ControlNetModel``."""
        from diffusers import ControlNetModel

        model = ControlNetModel(**self.config)
        model.load_state_dict({to_diffusers_key(k, self): v for k, v in self.state_dict().items()})
        dtype = next(self.parameters()).dtype
        return model if dtype == torch.float32 else model.to(dtype)

    def save_pretrained(self, path: str | Path) -> Path:
        """Save in diffusers' format (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
        self.to_diffusers().save_pretrained(str(path))
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SDControlNet":
        """Load what :meth:`save_pretrained` (or diffusers) wrote."""
        return cls.from_diffusers(path)

    @classmethod
    def from_original(cls, checkpoint: dict | str | Path, unet_config: dict | None = None) -> "SDControlNet":
        """From the authors' checkpoint layout (``control_model.input_blocks.…``), a state
        dict or a ``.pth``/``.ckpt``/``.safetensors`` file. ``unet_config`` defaults to SD 1.5's."""
        if not isinstance(checkpoint, dict):
            checkpoint = _load_state_dict(Path(checkpoint))
        checkpoint = checkpoint.get("state_dict", checkpoint)
        net = cls(controlnet_config(unet_config or SD15_UNET_CONFIG))
        mapped, foreign = {}, []
        for k, v in checkpoint.items():
            if k.startswith("control_model."):
                k = k[len("control_model."):]
            elif any(k.startswith(p) for p in ("model.", "first_stage_model.", "cond_stage_model.")):
                continue  # the frozen SD weights that share a full checkpoint
            try:
                mapped[from_original_key(k, net)] = v
            except KeyError:
                foreign.append(k)
        if foreign or not mapped:
            raise ValueError(f"checkpoint: expected the authors' ControlNet layout (keys control_model.input_blocks…, "
                             f"zero_convs…, input_hint_block…), got {len(foreign)} key(s) it does not have "
                             f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})"
                             + ("" if mapped else " and none of its own"))
        missing, unexpected = net.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise ValueError(f"original checkpoint does not fit the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return net

    def original_state_dict(self, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
        """This ControlNet's weights in the authors' layout (inverse of :meth:`from_original`)."""
        return {prefix + to_original_key(k, self): v for k, v in self.state_dict().items()}

    def enable_gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute the copy's block activations in the backward pass instead of storing them (chapter 08)."""
        import functools

        from torch.utils.checkpoint import checkpoint

        fn = functools.partial(checkpoint, use_reentrant=False)
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):  # diffusers' blocks carry this switch
                module._gradient_checkpointing_func = lambda m, *args: fn(m.__call__, *args)
                module.gradient_checkpointing = enable

    # ---- forward ------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                controlnet_cond: torch.Tensor, conditioning_scale: float = 1.0,
                connection_scales: Sequence[float] | None = None,
                guess_mode: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet's skip connections and middle block.

        ``controlnet_cond``: the control image c, (B, C, 8·h, 8·w) in [0, 1].
        ``connection_scales`` (w_i, the middle block last) or ``guess_mode`` (w_i =
        ``logspace(-1, 0, n)``) scale each connection, times ``conditioning_scale``.
        """
        b, _, h, w = sample.shape
        check_images(controlnet_cond, name="controlnet_cond", channels=self.config["conditioning_channels"],
                     size=(8 * h, 8 * w), value_range=(0.0, 1.0))
        if controlnet_cond.shape[0] != b:
            raise ValueError(f"controlnet_cond: expected batch {b} (one per latent), got {controlnet_cond.shape[0]}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t[None] if t.ndim == 0 else t
        emb = self.time_embedding(self.time_proj(t.expand(b)).to(sample.dtype))
        h_ = self.conv_in(sample) + self.condition_encoder(controlnet_cond)   # x + Z(c; Θz1) after conv_in
        feats = [h_]
        for block in self.down_blocks:                                           # F(·; Θc), block by block
            if getattr(block, "has_cross_attention", False):
                h_, res = block(hidden_states=h_, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                h_, res = block(hidden_states=h_, temb=emb)
            feats += list(res)
        h_ = self.mid_block(h_, emb, encoder_hidden_states=encoder_hidden_states)
        down = [z(f) for z, f in zip(self.zero_convs[:-1], feats)]              # Z(·; Θz2)
        mid = self.zero_convs[-1](h_)
        n = len(self.zero_convs)
        if guess_mode:
            connection_scales = connection_weights("guess", [0] * n)
        if connection_scales is not None and len(connection_scales) != n:
            raise ValueError(f"connection_scales: expected {n} values (one per connection, middle last), "
                             f"got {len(connection_scales)}")
        ws = connection_scales or [1.0] * n
        return [d * (conditioning_scale * wi) for d, wi in zip(down, ws[:-1])], mid * (conditioning_scale * ws[-1])


def fill_zero_layers(net: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every all-zero tensor of ``net`` random N(0, std²) values, as training would.

    A fresh ControlNet outputs exact zeros, which proves nothing in an equivalence test or
    a demo with random weights (chapter 07's tiny preset, the tests, the benchmark).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return net


# ----------------------------------------------------------------------------------
# Key maps: ours <-> diffusers <-> the authors' original layout
# ----------------------------------------------------------------------------------
def _n_down(net: SDControlNet) -> int:
    return len(net.zero_convs) - 1


def to_diffusers_key(key: str, net: SDControlNet) -> str:
    """Our state-dict key -> diffusers ``ControlNetModel``'s."""
    m = re.match(r"condition_encoder\.layers\.(\d+)\.(.*)", key)
    if m:
        j, rest = int(m.group(1)), m.group(2)
        last = len(net.condition_encoder.layers) - 1
        name = "conv_in" if j == 0 else "conv_out" if j == last else f"blocks.{j // 2 - 1}"
        return f"controlnet_cond_embedding.{name}.{rest}"
    m = re.match(r"zero_convs\.(\d+)\.(.*)", key)
    if m:
        i = int(m.group(1))
        return f"controlnet_mid_block.{m.group(2)}" if i == _n_down(net) else f"controlnet_down_blocks.{i}.{m.group(2)}"
    return key


def from_diffusers_key(key: str, net: SDControlNet) -> str:
    """diffusers ``ControlNetModel``'s state-dict key -> ours."""
    last = len(net.condition_encoder.layers) - 1
    m = re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.*)", key)
    if m:
        j = 0 if m.group(1) == "conv_in" else last if m.group(1) == "conv_out" else 2 * int(m.group(2)) + 2
        return f"condition_encoder.layers.{j}.{m.group(3)}"
    m = re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key)
    if m:
        return f"zero_convs.{m.group(1)}.{m.group(2)}"
    if key.startswith("controlnet_mid_block."):
        return f"zero_convs.{_n_down(net)}." + key[len("controlnet_mid_block."):]
    return key


_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def to_original_key(key: str, net: SDControlNet) -> str:
    """Our state-dict key -> the authors' layout (``cldm.py``'s ``ControlNet``), without prefix."""
    L = net.config["layers_per_block"]
    m = re.match(r"condition_encoder\.layers\.(\d+)\.(.*)", key)
    if m:
        return f"input_hint_block.{m.group(1)}.{m.group(2)}"  # same Sequential indices as cldm.py
    m = re.match(r"zero_convs\.(\d+)\.(.*)", key)
    if m:
        i = int(m.group(1))
        return f"middle_block_out.0.{m.group(2)}" if i == _n_down(net) else f"zero_convs.{i}.0.{m.group(2)}"
    for ours, orig in (("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                       ("conv_in.", "input_blocks.0.0.")):
        if key.startswith(ours):
            return orig + key[len(ours):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        b, kind, l_, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        idx = b * (L + 1) + l_ + 1
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_rename(rest, reverse=True)}"
        return f"input_blocks.{idx}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * (L + 1)}.0.op.{m.group(2)}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        kind, k, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":
            return f"middle_block.{2 * k}.{_rename(rest, reverse=True)}"
        return f"middle_block.{2 * k + 1}.{rest}"
    raise KeyError(f"no original-layout name for {key!r}")


def from_original_key(key: str, net: SDControlNet) -> str:
    """The authors' layout (without ``control_model.``) -> our state-dict key."""
    L = net.config["layers_per_block"]
    m = re.match(r"input_hint_block\.(\d+)\.(.*)", key)
    if m:
        return f"condition_encoder.layers.{m.group(1)}.{m.group(2)}"
    m = re.match(r"zero_convs\.(\d+)\.0\.(.*)", key)
    if m:
        return f"zero_convs.{m.group(1)}.{m.group(2)}"
    if key.startswith("middle_block_out.0."):
        return f"zero_convs.{_n_down(net)}." + key[len("middle_block_out.0."):]
    for orig, ours in (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                       ("input_blocks.0.0.", "conv_in.")):
        if key.startswith(orig):
            return ours + key[len(orig):]
    m = re.match(r"input_blocks\.(\d+)\.(\d)\.(.*)", key)
    if m:
        idx, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        b, l_ = (idx - 1) // (L + 1), (idx - 1) % (L + 1)
        if rest.startswith("op."):
            return f"down_blocks.{b}.downsamplers.0.conv.{rest[3:]}"
        if part == 0:
            return f"down_blocks.{b}.resnets.{l_}.{_rename(rest)}"
        return f"down_blocks.{b}.attentions.{l_}.{rest}"
    m = re.match(r"middle_block\.(\d)\.(.*)", key)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        return f"mid_block.resnets.{k // 2}.{_rename(rest)}" if k % 2 == 0 else f"mid_block.attentions.{k // 2}.{rest}"
    raise KeyError(f"no cnetlib name for the original key {key!r}")


def _rename(rest: str, reverse: bool = False) -> str:
    for orig, ours in _RESNET:
        a, b = (ours, orig) if reverse else (orig, ours)
        if rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def _load_state_dict(path: Path) -> dict:
    from .checkpoint import error_line

    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, or pickled objects beyond tensors
        raise ValueError(f"{path}: not a readable state dict ({error_line(e)}); expected a .pth/.ckpt of tensors "
                         f"or a .safetensors file, as the authors publish them") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(sd).__name__}")
    return sd


# ----------------------------------------------------------------------------------
# Components: a real SD, or the tiny offline preset
# ----------------------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte-to-character table (every byte gets a printable character)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_tokenizer(max_length: int = 32):
    """A character-level ``CLIPTokenizer`` built locally (no merges, 514 tokens): no download."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(vocab))
        Path(d, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")), model_max_length=max_length)


#: The tiny preset's UNet: SD's layout (cross-attention down blocks, a plain last block,
#: a cross-attention middle block) at toy width.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 2, "cross_attention_dim": 32, "attention_head_dim": 4,
    "norm_num_groups": 8,
}


@dataclass
class SDParts:
    """The frozen components ControlNet steers: VAE, text encoder, tokenizer, UNet, scheduler."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device=None, dtype=None) -> "SDParts":
        for m in (self.vae, self.text_encoder, self.unet):
            if device is not None:
                m.to(device)
            if dtype is not None and m.dtype != dtype:
                m.to(dtype=dtype)
        return self

    def freeze(self) -> "SDParts":
        for m in (self.vae, self.text_encoder, self.unet):
            m.eval().requires_grad_(False)
        return self

    @classmethod
    def tiny(cls, seed: int = 0, unet_config: dict | None = None, scheduler: str = "ddim") -> "SDParts":
        """A complete SD-shaped set of components with random weights, built from configs:
        64 px images, an 8× VAE, 8 × 8 latents, a 2-layer CLIP text model, a local tokenizer."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**(unet_config or TINY_UNET_CONFIG))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16, 16, 16],
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=1, norm_num_groups=8, sample_size=64)
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=unet.config.cross_attention_dim, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        return cls(vae, text_encoder, tokenizer, unet, make_scheduler(scheduler)).freeze()

    @classmethod
    def from_pretrained(cls, model: str = SD15_ID, dtype: torch.dtype = torch.float32,
                        device: str = "cpu", scheduler: str = "ddim") -> "SDParts":
        """Real SD components from a hub id or a local folder in diffusers' layout."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            parts = cls(AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype),
                        CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype),
                        CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                        UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype),
                        make_scheduler(scheduler, model))
        except (OSError, ValueError) as e:
            raise OSError(f"could not load Stable Diffusion: {load_failure(model, 'a Stable Diffusion model', e)} "
                          "(SDParts.tiny() builds an SD-shaped model with random weights, offline.)") from e
        return parts.to(device).freeze()


#: What :meth:`SDParts.from_pretrained` reads from a model folder, and what a diffusers ControlNet folder holds.
SD_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
CONTROLNET_FILES = ("config.json",)


def hub_offline() -> bool:
    """Is the Hugging Face hub switched off (``HF_HUB_OFFLINE``) for this process?"""
    return env_flag("HF_HUB_OFFLINE")


def load_failure(model: str | os.PathLike, what: str, error: BaseException, expected: Sequence[str] = SD_SUBFOLDERS) -> str:
    """Why loading ``model`` (a hub id or a folder) as ``what`` failed, and what to do: one cause, named
    (a folder with parts missing, a folder that does not exist, the hub switched off, the hub refusing)."""
    name = str(model)
    path = Path(name).expanduser()
    cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if path.is_dir():
        missing = [p for p in expected if not (path / p).exists()]
        if missing:
            return (f"{name!r} is a folder but not {what} in diffusers' layout: it lacks {', '.join(missing)} "
                    f"(expected {', '.join(expected)}). Point to the folder that holds them.")
        return f"{name!r} has the layout of {what} but did not load ({cause}): the files may be incomplete or corrupt."
    looks_like_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None
    if not looks_like_id:
        return f"{name!r}: no such folder, and not a hub id (owner/name). Check the path."
    if hub_offline():
        return (f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it. "
                f"On a machine with internet run `huggingface-cli download {name}` (then copy the cache, or pass "
                f"the downloaded folder), or unset HF_HUB_OFFLINE.")
    return (f"could not fetch {name!r} from the Hugging Face hub ({cause}). Check that the id is spelt right and "
            f"still exists, log in with `huggingface-cli login` if the model is gated, or download it and pass "
            f"the folder.")


SCHEDULERS = ("ddim", "unipc", "pndm")


def make_scheduler(name: str = "ddim", model: str | None = None):
    """SD's noise schedule (scaled linear, 0.00085 → 0.012) with a DDIM, UniPC or PNDM sampler."""
    from diffusers import DDIMScheduler, PNDMScheduler, UniPCMultistepScheduler

    classes = {"ddim": DDIMScheduler, "unipc": UniPCMultistepScheduler, "pndm": PNDMScheduler}
    if name not in classes:
        raise ValueError(f"scheduler: expected one of {SCHEDULERS}, got {name!r}")
    if model is not None:
        return classes[name].from_pretrained(model, subfolder="scheduler")
    return classes[name](beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1) if name == "ddim" else \
        classes[name](beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


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
    guidance_scale: float = 7.5,
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
    """Text-to-image with any number of SD ControlNets, in any guidance mode of chapter 05.

    ``controls``: :class:`~cnetlib.guidance.Control` (``controlnet``, ``condition`` image,
    ``scale``) or ``(controlnet, image[, scale])`` tuples; residuals are summed per
    connection. Returns images (B, 3, H, W) in [0, 1] (``output="latent"``: the latents).
    With mode ``"both"`` and one ControlNet this is what diffusers'
    ``StableDiffusionControlNetPipeline`` computes (a unit test checks it).
    """
    from diffusers.utils.torch_utils import randn_tensor
    from tqdm.auto import tqdm

    from .guidance import _as_controls

    check_mode(mode)
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
    for name, value in (("guidance_scale", guidance_scale), ("conditioning_scale", conditioning_scale)):
        check_number(value, name=name)   # NaN would silently turn guidance off
    check_control_window(control_start, control_end)
    controls = _as_controls(controls)
    for k, c in enumerate(controls):
        if not isinstance(c.controlnet, SDControlNet):
            raise TypeError(f"controls[{k}].controlnet: expected an SDControlNet (SDControlNet.from_unet, "
                            f"from_pretrained or from_original), got {type(c.controlnet).__name__}")
        check_number(c.scale, name=f"controls[{k}].scale")
    controls = [Control(c.controlnet, prepare_condition(c.condition, height, width, b, device, dtype), c.scale)
                for c in controls]
    cfg = guidance_scale > 1.0
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
        if controls and control_active(i, len(timesteps), control_start, control_end):
            for c in controls:
                w = connection_weights(mode, c.controlnet.connections, max_weight)
                s = c.scale * conditioning_scale
                nd = next(c.controlnet.parameters()).dtype  # an fp32 ControlNet may steer an fp16 UNet
                if mode == "both" or not cfg:
                    image = torch.cat([c.condition] * 2) if cfg else c.condition
                    d, m = c.controlnet(x_in.to(nd), t, embeds.to(nd), image.to(nd), conditioning_scale=s,
                                        connection_scales=None if mode == "both" else w)
                else:  # control only in ε_c: zeros for the unconditional half
                    d, m = c.controlnet(sched.scale_model_input(latents, t).to(nd), t, cond.to(nd), c.condition.to(nd),
                                        conditioning_scale=s, connection_scales=None if mode == "cond_only" else w)
                    d, m = [torch.cat([torch.zeros_like(r), r]) for r in d], torch.cat([torch.zeros_like(m), m])
                d, m = [r.to(dtype) for r in d], m.to(dtype)
                down = d if down is None else [x + y for x, y in zip(down, d)]
                mid = m if mid is None else mid + m
        noise = parts.unet(x_in, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid, return_dict=False)[0]
        if cfg:
            uc, c_ = noise.chunk(2)
            noise = uc + guidance_scale * (c_ - uc)
        latents = sched.step(noise, t, latents, return_dict=False)[0]
    if output == "latent":
        return latents
    image = parts.vae.decode(latents / parts.vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1).float().cpu()


# ----------------------------------------------------------------------------------
# Annotators (controlnet-aux)
# ----------------------------------------------------------------------------------
ANNOTATORS = ("canny", "hed", "midas", "openpose", "mlsd", "lineart", "normalbae")
_AUX = {"hed": "HEDdetector", "midas": "MidasDetector", "openpose": "OpenposeDetector", "mlsd": "MLSDdetector",
        "lineart": "LineartDetector", "normalbae": "NormalBaeDetector"}


def _import_controlnet_aux():
    """controlnet-aux, imported without the notices it and its dependencies print on import
    (``torch.jit.script`` and ``timm.models.layers`` deprecations, timm registry overwrites, the
    optional mediapipe it does not need for any annotator here):
    they concern controlnet-aux's code, not the reader's. Only the import is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Overwriting .* in registry", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"The module 'mediapipe' is not installed", category=UserWarning)
        import controlnet_aux
    return controlnet_aux


def annotate(image, kind: str = "canny", **options):
    """A control image from a photo with controlnet-aux: ``"canny"`` works offline (OpenCV);
    the others need the ``lllyasviel/Annotators`` weights and fail with a clear message
    when those cannot be loaded."""
    from PIL import Image

    if kind not in ANNOTATORS:
        raise ValueError(f"kind: expected one of the annotators {ANNOTATORS}, got {kind!r}")
    require_extra(f"annotate({kind!r})", ("controlnet_aux",))
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if min(image.size) < 64:
        raise ValueError(f"image: expected at least 64 px on each side (controlnet-aux resizes to multiples of 64), "
                         f"got {image.size[0]}x{image.size[1]}")
    controlnet_aux = _import_controlnet_aux()
    if kind == "canny":
        CannyDetector = controlnet_aux.CannyDetector

        side = min(image.size)  # keep the input's size (controlnet-aux resizes to 512 by default)
        opts = {"low_threshold": 100, "high_threshold": 200, "detect_resolution": side, "image_resolution": side,
                **options}
        return CannyDetector()(image, **opts)
    try:
        detector = getattr(controlnet_aux, _AUX[kind]).from_pretrained(options.pop("repo", ANNOTATORS_ID))
    except Exception as e:  # offline, or the hub is unreachable
        raise RuntimeError(f"annotator {kind!r} needs the weights of {ANNOTATORS_ID!r} from the Hugging Face "
                           f"Hub, which could not be loaded ({type(e).__name__}: {str(e)[:200]}). Connect to the "
                           "internet or pre-download them; 'canny' works offline.") from e
    return detector(image, **options)
