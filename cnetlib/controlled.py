"""The frozen base steered by one or more ControlNets (chapters 03, 04, 07), and inspection.

:func:`control_residuals` runs each ControlNet and sums their residuals per connection
(:func:`cnetlib.control.weigh_and_sum`); :class:`ControlledUNet` adds them to the frozen
base's skips and middle block, the model chapter 04 trains through.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .control import weigh_and_sum
from .controlnet import ControlNet
from .unet import ToyUNet, UNetConfig, count_parameters


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: expected {n} values (one per ControlNet), got {len(value)}")
        return list(value)
    return [value] * n


def control_residuals(
    controlnets: Sequence[ControlNet],
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    scales: Sequence[float] | float = 1.0,
    connection_scales: Sequence[float] | None = None,
    condition_features: Sequence[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Σ_k s_k · (residuals of ControlNet k), each connection i further scaled by w_i.

    The paper adds the outputs of several ControlNets without weights (all s_k = 1);
    diffusers gives each its own ``controlnet_conditioning_scale``. ``connection_scales``
    (length = number of connections, the middle block last) is the per-connection w_i
    that guess mode and resolution weighting use (chapter 06). ``condition_features``:
    each ControlNet's c_f = E(c_k) if already computed (a sampler computes them once).
    """
    if len(controlnets) == 0:
        raise ValueError("controlnets: expected at least one ControlNet, got none")
    conditions = _as_list(conditions, len(controlnets), "conditions") if isinstance(conditions, (list, tuple)) \
        else [conditions] * len(controlnets)
    scales = _as_list(scales, len(controlnets), "scales")
    n = len(controlnets[0].connections)
    if connection_scales is not None and len(connection_scales) != n:
        raise ValueError(f"connection_scales: expected {n} values (one per connection, middle last), "
                         f"got {len(connection_scales)}")
    features = [None] * len(controlnets) if condition_features is None \
        else _as_list(list(condition_features), len(controlnets), "condition_features")
    residuals = (net(x, t, context, cond, c_f) for net, cond, c_f in zip(controlnets, conditions, features))
    return weigh_and_sum(residuals, scales, connection_scales)   # Σ_k s_k · w_i · r_{k,i} (cnetlib.control)


class ControlledUNet(nn.Module):
    """The frozen base F(·; Θ) with the residuals of one or more ControlNets added.

    The base is kept in eval mode with ``requires_grad=False``: no gradient ever
    reaches Θ, only the ControlNets train. ``forward(x, t, context, conditions,
    scales=1.0, connection_scales=None)``; with one ControlNet, ``conditions`` can be
    a tensor.
    """

    def __init__(self, base: ToyUNet, controlnets: ControlNet | Sequence[ControlNet]) -> None:
        super().__init__()
        if not isinstance(base, ToyUNet):
            raise TypeError(f"base: expected the frozen ToyUNet, got {type(base).__name__}")
        nets = list(controlnets) if isinstance(controlnets, (list, tuple, nn.ModuleList)) else [controlnets]
        if not nets:
            raise ValueError("controlnets: expected at least one ControlNet, got none")
        for k, net in enumerate(nets):
            if not isinstance(net, ControlNet):
                raise TypeError(f"controlnets[{k}]: expected a ControlNet, got {type(net).__name__} "
                                f"(base and ControlNet swapped?)")
            net.check_base(base)
        self.base = base.eval().requires_grad_(False)
        self.controlnets = nn.ModuleList(nets)

    def train(self, mode: bool = True) -> "ControlledUNet":
        super().train(mode)
        self.base.eval()  # the frozen model never leaves eval mode
        return self

    @property
    def config(self) -> UNetConfig:
        return self.base.config

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """c_t from the base's (frozen) text encoder."""
        return self.base.encode_prompts(prompts)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                conditions: torch.Tensor | Sequence[torch.Tensor],
                scales: float | Sequence[float] = 1.0,
                connection_scales: Sequence[float] | None = None) -> torch.Tensor:
        down, mid = control_residuals(list(self.controlnets), x, t, context, conditions, scales, connection_scales)
        return self.base(x, t, context, down_residuals=down, mid_residual=mid)


# ----------------------------------------------------------------------------------
# Inspection: parameter counts and the connection table (chapter 03)
# ----------------------------------------------------------------------------------
def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "frozen": ...}`` parameter counts."""
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    return {"trainable": trainable, "frozen": total - trainable}


def connection_table(net: ControlNet) -> list[dict]:
    """One row per connection: index, block kind, level, channels, h_i, and the zero conv's size."""
    rows = []
    for k, z in zip(net.connections, net.zero_convs):
        rows.append({"index": k.index, "block": k.kind, "level": k.level, "channels": k.channels,
                     "h_i": k.resolution, "connector": f"{z.kernel_size[0]}x{z.kernel_size[0]} conv",
                     "connector_params": z.weight.numel() + z.bias.numel()})
    return rows
