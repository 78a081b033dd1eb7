"""ControlNet on Stable Diffusion: the same copy-and-zero-conv machinery on a diffusers UNet.

Chapter 08 explains it; chapter 09 trains it. :class:`SDControlNet` is cnetlib's own
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
chapter 06 on top of diffusers components; :meth:`SDParts.tiny` builds a complete,
SD-shaped set of components from configs with random weights, so everything here runs
offline and on a CPU.

The package holds one file per concern: ``config`` (hub ids and layouts), ``model``
(:class:`SDControlNet`), ``keys`` (weight names: ours, diffusers', the authors'),
``parts`` (the frozen SD components), ``pipeline`` (:func:`generate`) and ``annotators``
(:func:`annotate`). Everything is importable from ``cnetlib.sd``.
"""
from __future__ import annotations

from ..runtime import require_extra

require_extra("cnetlib.sd", ("diffusers", "transformers"))  # a clear pip command, not a raw ModuleNotFoundError later

from .annotators import ANNOTATORS, annotate  # noqa: E402
from .config import (  # noqa: E402
    ANNOTATORS_ID, CANNY_CONTROLNET_ID, CONTROLNET_FILES, DEFAULTS, SD15_ID, SD15_TEXT_CONFIG, SD15_UNET_CONFIG,
    SD15_VAE_CONFIG, SD21_UNET_CONFIG, SD_SUBFOLDERS, SHARED_KEYS, TINY_UNET_CONFIG, UNSUPPORTED, check_layout,
    controlnet_config, hint_channels,
)
from .keys import from_diffusers_key, from_original_key, to_diffusers_key, to_original_key  # noqa: E402
from .model import SDControlNet, fill_zero_layers  # noqa: E402
from .parts import SCHEDULERS, SDParts, hub_offline, load_failure, make_scheduler, tiny_tokenizer  # noqa: E402
from .pipeline import encode_prompts, generate, prepare_condition  # noqa: E402

__all__ = [
    "ANNOTATORS", "ANNOTATORS_ID", "CANNY_CONTROLNET_ID", "CONTROLNET_FILES", "DEFAULTS", "SCHEDULERS", "SD15_ID",
    "SD15_TEXT_CONFIG", "SD15_UNET_CONFIG", "SD15_VAE_CONFIG", "SD21_UNET_CONFIG", "SD_SUBFOLDERS", "SHARED_KEYS",
    "TINY_UNET_CONFIG", "UNSUPPORTED",
    "SDControlNet", "SDParts", "annotate", "check_layout", "controlnet_config", "encode_prompts", "fill_zero_layers",
    "from_diffusers_key", "from_original_key", "generate", "hint_channels", "hub_offline", "load_failure",
    "make_scheduler", "prepare_condition", "tiny_tokenizer", "to_diffusers_key", "to_original_key",
]
