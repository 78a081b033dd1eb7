"""The small base and ControlNet most tests build: 16 px, two levels, seeded."""
import torch

from cnetlib.controlnet import ControlNet
from cnetlib.unet import ToyUNet, UNetConfig

TINY_CFG = UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True), context_dim=16, groups=4,
                      text_layers=1)
TINY_HINT = (4, 4, 8, 8, 8, 8, 8)   # the reference encoder's 7 stages, shrunk


def tiny_base(seed: int = 0) -> ToyUNet:
    """A frozen toy base with random weights from ``seed``."""
    torch.manual_seed(seed)
    return ToyUNet(TINY_CFG).eval().requires_grad_(False)


def tiny_controlnet(base: ToyUNet, seed: int = 1, **kw) -> ControlNet:
    """A fresh ControlNet on ``base`` (its own encoder and connectors drawn from ``seed``)."""
    torch.manual_seed(seed)
    return ControlNet.from_unet(base, **{"hint_channels": TINY_HINT, **kw})
