"""``SDControlNet``: the trainable copy of a diffusers UNet's encoder, its condition encoder and zero convolutions (chapter 08)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..checks import check_images
from ..control import connection_weights, weigh_and_sum
from ..controlnet import ConditionEncoder, trainable_copy, zero_conv
from ..unet import Connection
from .config import CONTROLNET_FILES, SD15_UNET_CONFIG, _per_level, check_layout, controlnet_config, hint_channels
from .keys import _load_state_dict, from_diffusers_key, from_original_key, to_diffusers_key, to_original_key
from .parts import load_failure

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
        check_layout(cfg)
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
                  conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
                  global_pool_conditions: bool = False) -> "SDControlNet":
        """Θc = a trainable copy of ``unet``'s encoder half; E and Z keep their own initialisation.

        The ControlNet is float32 whatever the UNet's dtype: trainable weights stay in fp32
        (chapter 09); call ``.to(dtype)`` for half-precision inference.
        """
        if not all(hasattr(unet, part) for part in ("config", "conv_in", "time_embedding", "down_blocks", "mid_block")):
            raise TypeError(f"unet: expected a diffusers UNet2DConditionModel, got {type(unet).__name__}"
                            + (" (the toy's ControlNet is cnetlib.controlnet.toy_controlnet)"
                               if type(unet).__name__ == "ToyUNet" else ""))
        net = cls(controlnet_config(dict(unet.config), conditioning_channels, conditioning_embedding_out_channels,
                                    global_pool_conditions))
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
        check_layout(dict(model.config))   # every key honoured, or refused by name
        cfg = controlnet_config({k: v for k, v in model.config.items() if not k.startswith("_")},
                                model.config["conditioning_channels"], model.config["conditioning_embedding_out_channels"],
                                model.config.get("global_pool_conditions", False))
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
        """Recompute the copy's block activations in the backward pass instead of storing them (chapter 09)."""
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
        pooled = bool(self.config.get("global_pool_conditions"))
        if guess_mode and not pooled:   # diffusers: a pooled (shuffle) ControlNet's guess mode keeps w_i = 1
            connection_scales = connection_weights("guess", self.connections)
        down, mid = weigh_and_sum([(down, mid)], [conditioning_scale], connection_scales)   # s · w_i · r_i
        if pooled:   # ControlNet 1.1 shuffle: one value per channel, the mean over H, W
            down, mid = [d.mean(dim=(2, 3), keepdim=True) for d in down], mid.mean(dim=(2, 3), keepdim=True)
        return down, mid


def fill_zero_layers(net: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every all-zero tensor of ``net`` random N(0, std²) values, as training would.

    A fresh ControlNet outputs exact zeros, which proves nothing in an equivalence test or
    a demo with random weights (chapter 08's tiny preset, the tests, the benchmark).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return net
