"""The frozen SD components ControlNet steers: a real SD from the hub or a folder, or the tiny offline preset."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..runtime import env_flag
from .config import (SD15_ID, SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD_SUBFOLDERS, TINY_TEXT_CONFIG,
                     TINY_UNET_CONFIG, TINY_VAE_CONFIG)

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


def byte_vocab() -> dict[str, int]:
    """CLIP's 512 byte-level base tokens (each byte, and each byte ending a word): the vocabulary
    every local tokenizer starts from."""
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    return vocab


def local_clip_tokenizer(vocab: dict[str, int], merges: Sequence[str] = (), max_length: int = 32):
    """A ``CLIPTokenizer`` from a vocabulary and BPE merges made in memory (start and end tokens
    appended): no download."""
    from transformers import CLIPTokenizer

    vocab = {**vocab}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(vocab))
        Path(d, "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
        return CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")), model_max_length=max_length)


def tiny_tokenizer(max_length: int = 32):
    """A character-level ``CLIPTokenizer`` built locally (no merges, 514 tokens): no download."""
    return local_clip_tokenizer(byte_vocab(), max_length=max_length)

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
        return cls.random(unet_config or TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, seed=seed,
                          scheduler=scheduler)

    @classmethod
    def random(cls, unet_config: dict = SD15_UNET_CONFIG, vae_config: dict = SD15_VAE_CONFIG,
               text_config: dict = SD15_TEXT_CONFIG, *, seed: int = 0, scheduler: str = "ddim",
               device: str | torch.device = "cpu") -> "SDParts":
        """Components of the architecture the configs describe (default: SD 1.5's) with random
        weights, built on ``device`` and offline: for benchmarks and tests that need SD's size,
        not its weights. The tokenizer is the local :func:`tiny_tokenizer` (its ids fit any
        vocabulary of 514 tokens or more), padded to the text model's positions (77 for SD)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        with torch.device(device):
            unet = UNet2DConditionModel(**unet_config)
            vae = AutoencoderKL(**vae_config)
            tokenizer = tiny_tokenizer(text_config.get("max_position_embeddings", 32))
            text = {"vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length, **text_config}
            if text["vocab_size"] < len(tokenizer):
                raise ValueError(f"text_config: vocab_size {text['vocab_size']} is smaller than the local "
                                 f"tokenizer's {len(tokenizer)} tokens")
            text_encoder = CLIPTextModel(CLIPTextConfig(
                hidden_size=unet.config.cross_attention_dim, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text))
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
