"""The condition encoder E: the control image c to the feature map c_f = E(c) (chapter 03).

The paper describes four 4×4 convolutions with ReLU (16/32/64/128 channels); the
reference code (``cldm.py``) and diffusers use seven 3×3 convolutions with SiLU, three of
them stride 2, then a zero-initialised conv to the copy's width: the zero convolution
Z(c; Θz1), so c_f is 0 at step 0. Chapter 03 compares both.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

CONDITION_ENCODERS = ("paper", "reference")
#: The paper's text: four 4×4 convs with ReLU, 16/32/64/128 channels.
PAPER_HINT_CHANNELS = (16, 32, 64, 128)
#: The reference code (``cldm.py``, diffusers): seven 3×3 convs with SiLU, three of them stride 2.
REFERENCE_HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)
#: The toy chapters' condition encoder: the reference layout at 1/8 of its widths (capped at 32),
#: because at 32 px nothing is downsampled and full widths would cost more than the whole base.
TOY_HINT_CHANNELS = (8, 8, 16, 16, 32, 32, 32)


def receptive_field(layers: Sequence[tuple[int, int]]) -> int:
    """Side, in input pixels, of the region one output pixel of a stack of convolutions sees.

    ``layers`` are (kernel size, stride) in order. Each layer widens the field by
    (kernel − 1) × the product of the strides before it (its "jump"), so a late layer at a
    coarse resolution widens it more than the same layer early on (chapter 03)."""
    rf, jump = 1, 1
    for kernel, stride in layers:
        if kernel < 1 or stride < 1:
            raise ValueError(f"layers: expected kernel and stride >= 1, got ({kernel}, {stride})")
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


class ConditionEncoder(nn.Module):
    """E(c): maps a control image (B, C, H, W) in [0, 1] to (B, out_ch, H/2^k, W/2^k).

    ``variant="paper"``: the paper's text, convs with 4×4 kernels and ReLU
    (default 16, 32, 64, 128 channels), followed by the zero conv Z(c; Θz1) (1×1).
    ``variant="reference"``: the reference code, 3×3 convs with SiLU (default
    16, 16, 32, 32, 96, 96, 256) and a zero-initialised 3×3 output conv.

    ``downsample`` = k stride-2 steps (3 for SD: 512 → 64). When the grid is finer
    than the variant's own count (the toy base works in pixel space: k = 0), the
    surplus stride-2 convs run at stride 1: the strides adapt to the base.
    """

    def __init__(self, variant: str, in_ch: int, out_ch: int, downsample: int,
                 channels: Sequence[int] | None = None) -> None:
        from .controlnet import zero_conv   # the building block chapter 02 explains (imported here: no cycle)

        super().__init__()
        if variant not in CONDITION_ENCODERS:
            raise ValueError(f"condition encoder: expected one of {CONDITION_ENCODERS}, got {variant!r}")
        self.variant, self.downsample = variant, downsample
        layers: list[nn.Module] = []
        if variant == "paper":
            chans = tuple(channels or PAPER_HINT_CHANNELS)
            if downsample > len(chans):
                raise ValueError(f"downsample: the paper encoder has {len(chans)} convs, cannot downsample {downsample}x")
            c = in_ch
            for k, ch in enumerate(chans):
                if k >= len(chans) - downsample:  # 4×4 / 2 halves the side with padding 1
                    layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.ReLU()]
                else:  # 4×4 / 1 keeps it with padding 1 before and 2 after
                    layers += [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(c, ch, 4), nn.ReLU()]
                c = ch
            layers.append(zero_conv(c, out_ch, 1))
        else:
            chans = tuple(channels or REFERENCE_HINT_CHANNELS)
            # stride-2 candidates: every conv that increases the channel count after the first
            candidates = [k for k in range(1, len(chans)) if k % 2 == 0]
            if downsample > len(candidates):
                raise ValueError(f"downsample: the reference encoder has {len(candidates)} stride-2 convs, "
                                 f"cannot downsample {downsample}x")
            strided = set(candidates[len(candidates) - downsample:])
            c = in_ch
            for k, ch in enumerate(chans):
                layers += [nn.Conv2d(c, ch, 3, stride=2 if k in strided else 1, padding=1), nn.SiLU()]
                c = ch
            layers.append(zero_conv(c, out_ch, 3))
        self.layers = nn.Sequential(*layers)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.layers(c)

    def stages(self, c: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
        """``(layer, output shape)`` after every conv: what chapter 03 prints."""
        out = []
        for layer in self.layers:
            c = layer(c)
            if isinstance(layer, nn.Conv2d):
                out.append((f"conv {layer.kernel_size[0]}x{layer.kernel_size[0]} /{layer.stride[0]}", tuple(c.shape[1:])))
        return out

    def conv_layers(self) -> list[tuple[int, int]]:
        """(kernel size, stride) of every conv, in order."""
        return [(m.kernel_size[0], m.stride[0]) for m in self.layers if isinstance(m, nn.Conv2d)]

    def receptive_field(self) -> int:
        """Side, in input pixels, of the region one output pixel sees (:func:`receptive_field`)."""
        return receptive_field(self.conv_layers())
