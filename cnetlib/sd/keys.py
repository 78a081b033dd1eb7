"""Key maps between our state-dict names, diffusers' ``ControlNetModel`` and the authors' original layout."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import SDControlNet

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
    from ..checkpoint import error_line

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
