"""ControlNet: the zero convolution and the trainable copy.

Chapter 02 explains :func:`zero_conv`; chapter 03 builds :class:`ControlNet` (its
condition encoder is in :mod:`cnetlib.condition`; the frozen base steered by it,
:class:`~cnetlib.controlled.ControlledUNet`, in :mod:`cnetlib.controlled`). The paper's block (Zhang, Rao & Agrawala, 2023, eq. 2):

    y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2)

* F(·; Θ) is a block of the frozen base, here the whole encoder of a :class:`~cnetlib.unet.ToyUNet`
  (its input conv, input blocks and middle block);
* Θc is a **trainable copy** of those weights (:func:`trainable_copy`);
* Z(·; Θz) are **zero convolutions** (1×1, weight and bias 0): at step 0 both output 0,
  so y_c = y and the frozen model is untouched;
* c is the condition image. A small condition encoder E maps it to the feature grid
  first (c_f = E(c)); its last layer is the zero convolution Z(c; Θz1), and c_f is
  added to the output of the copy's input conv (reference code: ``h += guided_hint``).

Every output of the copy's input blocks goes through its own zero conv and is added to
the matching skip connection of the base, the middle block's output to the base's
middle block: one residual per connection (SD: 12 + 1 = 13; the toy base: 6 + 1 = 7).
"""
from __future__ import annotations

import copy
import hashlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_images, check_number
from .condition import CONDITION_ENCODERS, TOY_HINT_CHANNELS, ConditionEncoder  # noqa: F401 (chapter 03 imports them here)
from .unet import Connection, ToyUNet, UNetConfig, _broadcast_t, timestep_embedding

CONNECTORS = ("zero", "gaussian", "cross_norm")
COPIES = ("full", "lite")

#: ControlNet variants of the ablations (chapters 02 and 04).
VARIANTS = ("zero", "gaussian", "lite", "cross_norm")


# ----------------------------------------------------------------------------------
# The two building blocks: zero convolution and trainable copy (chapters 02-03)
# ----------------------------------------------------------------------------------
def zero_conv(in_ch: int, out_ch: int, kernel_size: int = 1) -> nn.Conv2d:
    """Z(·; Θz): a convolution whose weight and bias start at exactly 0.

    Its output is 0 whatever its input, but its gradient is not: for y = W x + b,
    ∂L/∂W = ∂L/∂y · xᵀ ≠ 0 and ∂L/∂b = ∂L/∂y. So the first optimiser step moves W away
    from 0 and the gradient reaches the layers behind it from the second step on
    (chapter 02 measures this).
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def gaussian_conv(in_ch: int, out_ch: int, std: float | None = None, kernel_size: int = 1,
                  generator: torch.Generator | None = None) -> nn.Conv2d:
    """The ablation of chapter 02/04: a connector with weights drawn from N(0, std²), bias 0.

    ``std=None`` uses 1/√fan_in, the scale of a standard initialisation.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    fan_in = in_ch * kernel_size * kernel_size
    with torch.no_grad():
        w = torch.randn(conv.weight.shape, generator=generator)
        conv.weight.copy_(w * (1 / math.sqrt(fan_in) if std is None else std))
        conv.bias.zero_()
    return conv


class CrossNormConv(nn.Conv2d):
    """ControlNeXt's cross normalization (Peng et al., 2024) in place of a zero convolution.

    A Gaussian-initialised conv z = W h + b whose output is re-standardised, per image, to the
    mean and standard deviation of the features h it reads, then scaled by ``scale`` (0.2, as
    ControlNeXt's SD 1.5 code):  r = scale · ((z − μ_z) / σ_z · σ_h + μ_h).  The residual has
    a fixed size from step 0, so training can only turn its direction, never grow it from 0.
    ControlNeXt normalises to the *frozen* branch's features; here h is the trainable copy's
    (equal to the frozen ones at step 0): a stand-in, chapter 05 says so.
    """

    def __init__(self, channels: int, scale: float = 0.2, generator: torch.Generator | None = None) -> None:
        super().__init__(channels, channels, 1)
        self.scale = scale
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) / math.sqrt(channels))
            self.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = super().forward(h)
        dims = tuple(range(1, h.dim()))
        mu_z, sd_z = z.mean(dims, keepdim=True), z.std(dims, keepdim=True)
        mu_h, sd_h = h.mean(dims, keepdim=True), h.std(dims, keepdim=True)
        return self.scale * ((z - mu_z) * (sd_h / (sd_z + 1e-5)) + mu_h)


def trainable_copy(module: nn.Module) -> nn.Module:
    """Θc: a deep copy of a (frozen) module with every parameter trainable again."""
    clone = copy.deepcopy(module)
    clone.requires_grad_(True)
    return clone


def controlnet_block(F_frozen: nn.Module, F_copy: nn.Module, Z1: nn.Module, Z2: nn.Module, x: torch.Tensor,
                     c: torch.Tensor) -> torch.Tensor:
    """The paper's block (§3.1, eq. 2) for any one block F and condition c of x's shape:

        y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2)

    ``F_frozen`` is F(·; Θ), ``F_copy`` its trainable copy F(·; Θc) (:func:`trainable_copy`),
    ``Z1`` and ``Z2`` the zero convolutions (:func:`zero_conv`). :class:`ControlNet` is this
    block with F the base's whole encoder and one Z2 per connection (chapter 03)."""
    return F_frozen(x) + Z2(F_copy(x + Z1(c)))


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights: tells which base a ControlNet was copied from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------
# The ControlNet
# ----------------------------------------------------------------------------------
@dataclass
class ControlNetConfig:
    """Everything that defines a :class:`ControlNet`; saved with every checkpoint.

    ``base`` is the config of the UNet it was copied from. ``condition_size`` is the
    control image's side (the base's image size for the toy; 512 for SD's 64 latents).
    ``connector`` is ``"zero"`` (the paper), ``"gaussian"`` (ablation, std
    ``connector_std``) or ``"cross_norm"`` (ControlNeXt's idea, :class:`CrossNormConv`); ``copy`` is ``"full"`` (the trainable copy) or ``"lite"``
    (ControlNet-lite: one conv per block instead of the copy).
    """

    base: dict
    condition_encoder: str = "reference"
    condition_channels: int = 3
    condition_size: int | None = None
    hint_channels: tuple[int, ...] | None = None
    connector: str = "zero"
    connector_std: float | None = None
    copy: str = "full"
    base_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.base, UNetConfig):
            self.base = self.base.to_dict()
        if self.hint_channels is not None:
            self.hint_channels = tuple(self.hint_channels)
            if not self.hint_channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                             for c in self.hint_channels):
                raise ValueError(f"hint_channels: expected one or more positive integer widths (None for the "
                                 f"default), got {self.hint_channels}")
        if self.connector_std is not None and not (math.isfinite(self.connector_std) and self.connector_std > 0):
            raise ValueError(f"connector_std: expected a finite number > 0 (None for 1/sqrt(fan_in)), "
                             f"got {self.connector_std}")
        for name, value, allowed in (("condition_encoder", self.condition_encoder, CONDITION_ENCODERS),
                                     ("connector", self.connector, CONNECTORS), ("copy", self.copy, COPIES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        size = self.base_config.image_size
        self.condition_size = self.condition_size or size
        ratio = self.condition_size / size
        if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"condition_size: expected the base's size {size} times a power of 2, "
                             f"got {self.condition_size}")

    @property
    def base_config(self) -> UNetConfig:
        return UNetConfig(**self.base)

    @property
    def downsample(self) -> int:
        """Stride-2 steps of the condition encoder: log2(condition size / base input size)."""
        return round(math.log2(self.condition_size / self.base_config.image_size))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class ControlNet(nn.Module):
    """Trainable copy Θc of a base's encoder + condition encoder + one zero conv per connection.

    Build it from a trained base with :meth:`from_unet` (weights copied) or from a
    config (random copy, for loading a checkpoint). ``forward(x, t, context, condition)``
    returns ``(down_residuals, mid_residual)``: exactly what
    :meth:`cnetlib.unet.ToyUNet.forward` adds to its skips and middle block.
    """

    def __new__(cls, config: ControlNetConfig | None = None, *args, **kwargs):
        # ControlNet(config) builds whichever class config.copy names, so a checkpoint of
        # either kind loads through ControlNet (ControlNet-lite is its own class below).
        if cls is ControlNet and config is not None and config.copy == "lite":
            cls = ControlNetLite
        return super().__new__(cls)

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        base = ToyUNet(config.base_config)  # the layout to copy (weights come from from_unet or a checkpoint)
        self.connections: tuple[Connection, ...] = base.connections
        ch0 = base.config.channels[0]
        self.condition_encoder = ConditionEncoder(config.condition_encoder, config.condition_channels, ch0,
                                                  config.downsample, config.hint_channels)
        self.build_copy(base)
        # Z(·; Θz2): one connector per connection, the last one for the middle block
        self.zero_convs = nn.ModuleList([self._connector(k.channels, k.index) for k in self.connections])
        self.time_dim = base.config.time_dim

    def build_copy(self, base: ToyUNet) -> None:
        """Θc: the trainable copy of everything in the encoder path (SD: the time embedding too)."""
        self.time_embed = trainable_copy(base.time_embed)
        self.text_embed = trainable_copy(base.text_embed) if base.text_embed is not None else None
        self.input_blocks = trainable_copy(base.input_blocks)
        self.middle_block = trainable_copy(base.middle_block)

    def load_copy(self, unet: ToyUNet) -> None:
        """Θc ← Θ: the copy starts with the base's weights."""
        self.time_embed.load_state_dict(unet.time_embed.state_dict())
        if self.text_embed is not None:
            self.text_embed.load_state_dict(unet.text_embed.state_dict())
        self.input_blocks.load_state_dict(unet.input_blocks.state_dict())
        self.middle_block.load_state_dict(unet.middle_block.state_dict())

    def _connector(self, ch: int, index: int) -> nn.Conv2d:
        if self.config.connector == "zero":
            return zero_conv(ch, ch)
        if self.config.connector == "cross_norm":
            return CrossNormConv(ch, generator=torch.Generator().manual_seed(index))
        return gaussian_conv(ch, ch, self.config.connector_std, generator=torch.Generator().manual_seed(index))

    @classmethod
    def from_unet(cls, unet: ToyUNet, **options) -> "ControlNet":
        """Copy ``unet``'s encoder into a new ControlNet (options: :class:`ControlNetConfig` fields)."""
        if cls is ControlNetLite:
            options = {**options, "copy": "lite"}
        config = ControlNetConfig(base=unet.config.to_dict(), base_fingerprint=weights_fingerprint(unet), **options)
        net = ControlNet(config)
        net.load_copy(unet)
        return net

    # ---- checks ------------------------------------------------------------------------
    @property
    def condition_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the control image this ControlNet reads."""
        s = self.config.condition_size
        return (self.config.condition_channels, s, s)

    def check_base(self, base: ToyUNet) -> None:
        """Raise if ``base`` has another layout than the UNet this ControlNet was copied from;
        warn if it has the same layout but other weights (a fine-tuned base can still work)."""
        given = base.config.to_dict()
        if given != self.config.base:
            from .checkpoint import config_diff

            raise ValueError("ControlNet was built for another base: " + "; ".join(config_diff(self.config.base, given)))
        fp = self.config.base_fingerprint
        if fp is None:
            return
        if getattr(base, "_fingerprint", None) is None:
            base._fingerprint = weights_fingerprint(base)  # cached: the base is frozen
        if base._fingerprint != fp:
            warnings.warn(f"ControlNet was copied from base weights {fp}, attached to {base._fingerprint}: "
                          "same layout, other weights", stacklevel=3)

    def check_condition(self, condition: torch.Tensor, x: torch.Tensor | None = None, name: str = "condition") -> None:
        """``condition`` is a control image this ControlNet reads: (B, C, H, W) floats in [0, 1],
        ``scale`` times the size of ``x`` (without ``x``: a size the base can take, times ``scale``)."""
        c, s, _ = self.condition_shape
        scale = self.config.condition_size // self.config.base_config.image_size
        want = None if x is None else (x.shape[-2] * scale, x.shape[-1] * scale)
        check_images(condition, name=name, channels=c, size=want, value_range=(0.0, 1.0))
        if x is None:
            multiple = scale * 2 ** (len(self.config.base_config.channels) - 1)
            if condition.shape[-2] % multiple or condition.shape[-1] % multiple:
                raise ValueError(f"{name}: expected height and width multiples of {multiple} ({scale}x the base's "
                                 f"input, which must divide by {multiple // scale}), got {tuple(condition.shape[-2:])}")
        elif condition.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected batch {x.shape[0]} (one per image), got {condition.shape[0]}")
        dtype = next(self.parameters()).dtype
        if condition.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the ControlNet's), got {condition.dtype}; "
                            f"convert it with .to({dtype})")

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                condition: torch.Tensor, c_f: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for every skip connection and for the middle block of the base.

        ``x``: noisy images x_t; ``t``: timesteps; ``context``: the prompt c_t encoded by
        the (frozen) base's text encoder; ``condition``: the control image c in [0, 1].
        ``c_f``: ``self.condition_encoder(condition)`` if already computed. It depends on
        c alone, so a sampler computes it once per image instead of once per step.
        """
        self.check_condition(condition, x)
        if c_f is None:
            c_f = self.condition_encoder(condition)           # E(c), ends in Z(c; Θz1): 0 at step 0
        t = _broadcast_t(t, x.shape[0], x.device)
        outs: list[torch.Tensor] = []
        temb = self.time_embed(timestep_embedding(t, self.time_dim))   # the copy's own time embedding (Θc)
        if self.text_embed is not None:
            temb = temb + self.text_embed(context.mean(dim=1))
        h = x
        for i, (block, z) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, temb, context)                       # F(·; Θc), block by block
            if i == 0:
                h = h + c_f                                   # x + Z(c; Θz1), after the input conv
            outs.append(z(h))                                 # Z(F(x + Z(c); Θc); Θz2)
        h = self.middle_block(h, temb, context)
        return outs, self.zero_convs[-1](h)                   # one residual per skip + the middle one


class ControlNetLite(ControlNet):
    """ControlNet-lite (the paper's ablation, Fig. 8): the base's input conv, then one plain
    conv per later connection instead of the trainable copy; condition encoder and zero
    convolutions as in :class:`ControlNet`. ``ControlNet(config)`` with ``config.copy ==
    "lite"`` builds one; chapter 04 trains it."""

    def build_copy(self, base: ToyUNet) -> None:
        self.input_blocks = nn.ModuleList([trainable_copy(base.input_blocks[0][0])])
        prev = self.connections[0]
        for conn in self.connections[1:]:
            stride = prev.resolution // conn.resolution
            self.input_blocks.append(nn.Conv2d(prev.channels, conn.channels, 3, stride=stride, padding=1))
            prev = conn

    def load_copy(self, unet: ToyUNet) -> None:
        self.input_blocks[0].load_state_dict(unet.input_blocks[0][0].state_dict())

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                condition: torch.Tensor, c_f: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        self.check_condition(condition, x)
        if c_f is None:
            c_f = self.condition_encoder(condition)
        h = self.input_blocks[0](x) + c_f
        outs = [self.zero_convs[0](h)]
        for conv, z in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = F.silu(conv(h))
            outs.append(z(h))
        return outs[:-1], outs[-1]


def toy_controlnet(base: ToyUNet, variant: str = "zero", *, connector_std: float | None = None, seed: int = 0,
                   condition_encoder: str = "reference", hint_channels: Sequence[int] | None = TOY_HINT_CHANNELS,
                   **options) -> ControlNet:
    """The book's toy ControlNet for ``base``: ``variant`` ``"zero"`` (the paper), ``"gaussian"``
    (Gaussian-initialised connectors, std ``connector_std``), ``"lite"`` (ControlNet-lite) or
    ``"cross_norm"`` (ControlNeXt's cross-normalised connectors, chapter 05).
    ``seed`` fixes the condition encoder's random initialisation."""
    if not isinstance(base, ToyUNet):
        raise TypeError(f"base: expected the ToyUNet to copy, got {type(base).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    check_number(seed, name="seed", integer=True)
    torch.manual_seed(seed)
    return ControlNet.from_unet(base, condition_encoder=condition_encoder, hint_channels=hint_channels,
                                connector=variant if variant in CONNECTORS else "zero", connector_std=connector_std,
                                copy="lite" if variant == "lite" else "full", **options)
