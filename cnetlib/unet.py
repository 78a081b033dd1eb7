"""A toy text-conditioned UNet shaped like Stable Diffusion's, and its tiny text encoder.

Chapter 01 builds and trains it; chapter 03 copies its encoder into a ControlNet.
The layout follows SD's ``UNetModel`` (the reference code's ``openaimodel.py``):

* ``input_blocks[0]`` is the input conv; then, per resolution level, ``layers_per_block``
  ResNet blocks (each followed by a cross-attention transformer where the level has
  attention) and a downsampling conv except at the last level. **Every input block's
  output is a skip connection**, so SD's config (4 levels, 2 layers) gives its 12.
* ``middle_block`` = ResNet, transformer, ResNet.
* ``output_blocks`` consume the skips in reverse, ``layers_per_block + 1`` per level.

``forward(x, t, context, down_residuals, mid_residual)`` adds ``down_residuals[i]`` to
skip ``i`` and ``mid_residual`` to the middle block's output, which is exactly where a
ControlNet's zero convolutions write (reference: ``h = cat([h, hs.pop() + control.pop()])``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_images
from .colours import CSS_WORDS

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def default_vocabulary() -> tuple[str, ...]:
    """Every word of the CSS colour names plus the template words of the prompts."""
    words = set(CSS_WORDS) | {"circle", "with", "background"}
    return tuple(sorted(words))


class Tokenizer:
    """Word-level tokenizer: ``<bos> w1 w2 ... <eos> <pad> ...`` with a fixed length.

    The empty prompt ``""`` becomes ``<bos> <eos> <pad>...``: the "unconditional" input
    of classifier-free guidance. Unknown words map to ``<unk>``.
    """

    def __init__(self, vocab: Sequence[str], max_tokens: int = 16) -> None:
        self.itos = list(SPECIAL_TOKENS) + [w for w in vocab if w not in SPECIAL_TOKENS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.itos)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.zeros(len(prompts), self.max_tokens, dtype=torch.long)
        for row, p in enumerate(prompts):
            words = p.lower().split()
            if len(words) + 2 > self.max_tokens:
                raise ValueError(f"prompt: expected at most {self.max_tokens - 2} words, got {len(words)}: {p!r}")
            ids = [1] + [self.stoi.get(w, 3) for w in words] + [2]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@dataclass
class UNetConfig:
    """Everything that defines a :class:`ToyUNet`; saved with every checkpoint."""

    image_size: int = 32
    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)
    heads: int = 4
    context_dim: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    groups: int = 4
    time_dim: int = 32
    pooled_text: bool = True
    vocab: tuple[str, ...] = field(default_factory=default_vocabulary)
    prediction: str = "v"
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.vocab = tuple(self.vocab)
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels: expected {len(self.channels)} flags (one per level), "
                             f"got {len(self.attention_levels)}")
        from .diffusion import PREDICTIONS, SCHEDULES

        for name, value, allowed in (("prediction", self.prediction, PREDICTIONS), ("schedule", self.schedule, SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        factor = 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size: expected a multiple of {factor} for {len(self.channels)} levels, "
                             f"got {self.image_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in SD (cos first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GN → SiLU → conv → (+ time embedding) → GN → SiLU → conv, plus a skip path."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention ``softmax(QKᵀ/√d) V``; queries from ``x``, keys/values from ``context``
    (``x`` itself when ``context`` is None: self-attention)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        split = lambda z: z.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  (B, heads, N, d)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.to_out(out.transpose(1, 2).flatten(2))


class SpatialTransformer(nn.Module):
    """Self-attention over pixels, cross-attention from pixels to the prompt tokens
    (queries: pixels; keys and values: text context c_t), and a feed-forward layer."""

    def __init__(self, ch: int, context_dim: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in, self.proj_out = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(ch), nn.LayerNorm(ch), nn.LayerNorm(ch)
        self.self_attn = Attention(ch, heads)
        self.cross_attn = Attention(ch, heads, context_dim)
        self.ff = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = h + self.self_attn(self.ln1(h))
        h = h + self.cross_attn(self.ln2(h), context)
        h = h + self.ff(self.ln3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A sequence of layers; ResNet blocks get the time embedding, transformers the context."""

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, temb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class TextLayer(nn.Module):
    """A pre-norm transformer layer over the prompt tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class TextEncoder(nn.Module):
    """Token + position embeddings and a small pre-norm transformer: the toy "CLIP"."""

    def __init__(self, vocab_size: int, dim: int, max_tokens: int, layers: int, heads: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.layers = nn.Sequential(*[TextLayer(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.token(tokens) + self.position[: tokens.shape[1]]))


@dataclass(frozen=True)
class Connection:
    """One place where a ControlNet adds a residual: skip ``index`` or the middle block."""

    index: int
    kind: str  # "input conv", "resnet", "downsample" or "middle"
    level: int
    channels: int
    resolution: int  # h_i: the feature map's side at the config's image size


class ToyUNet(nn.Module):
    """The frozen backbone F(·; Θ) of the toy chapters (see the module docstring)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch0, temb_dim = cfg.channels[0], 4 * cfg.time_dim
        self.tokenizer = Tokenizer(cfg.vocab, cfg.max_tokens)
        self.text_encoder = TextEncoder(len(self.tokenizer), cfg.context_dim, cfg.max_tokens, cfg.text_layers, cfg.heads)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        # SDXL-style: the mean of the text context, projected, joins the time embedding, so
        # every ResNet block (not only the attention layers) hears the prompt.
        self.text_embed = nn.Linear(cfg.context_dim, temb_dim) if cfg.pooled_text else None

        def transformer(c: int) -> SpatialTransformer:
            return SpatialTransformer(c, cfg.context_dim, cfg.heads, cfg.groups)

        res = cfg.image_size
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch0, 3, padding=1))])
        conns = [Connection(0, "input conv", 0, ch0, res)]
        skip_ch, c = [ch0], ch0
        for level, (cout, attn) in enumerate(zip(cfg.channels, cfg.attention_levels)):
            for _ in range(cfg.layers_per_block):
                layers: list[nn.Module] = [ResBlock(c, cout, temb_dim, cfg.groups)]
                c = cout
                if attn:
                    layers.append(transformer(c))
                self.input_blocks.append(TimestepSequential(*layers))
                conns.append(Connection(len(conns), "resnet", level, c, res))
                skip_ch.append(c)
            if level < len(cfg.channels) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(c)))
                res //= 2
                conns.append(Connection(len(conns), "downsample", level + 1, c, res))
                skip_ch.append(c)
        self.middle_block = TimestepSequential(
            ResBlock(c, c, temb_dim, cfg.groups), transformer(c), ResBlock(c, c, temb_dim, cfg.groups)
        )
        conns.append(Connection(len(conns), "middle", len(cfg.channels) - 1, c, res))
        self.connections: tuple[Connection, ...] = tuple(conns)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channels))):
            cout, attn = cfg.channels[level], cfg.attention_levels[level]
            for k in range(cfg.layers_per_block + 1):
                layers = [ResBlock(c + skip_ch.pop(), cout, temb_dim, cfg.groups)]
                c = cout
                if attn:
                    layers.append(transformer(c))
                if level > 0 and k == cfg.layers_per_block:
                    layers.append(Upsample(c))
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(cfg.groups, c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    # ---- what a ControlNet needs to know --------------------------------------------
    def skip_shapes(self, image_size: int | None = None) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` of every skip connection, in the order of ``down_residuals``."""
        scale = (image_size or self.config.image_size) / self.config.image_size
        return [(k.channels, int(k.resolution * scale), int(k.resolution * scale)) for k in self.connections[:-1]]

    def mid_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """``(C, H, W)`` of the middle block's output (``mid_residual``)."""
        scale = (image_size or self.config.image_size) / self.config.image_size
        k = self.connections[-1]
        return (k.channels, int(k.resolution * scale), int(k.resolution * scale))

    # ---- conditioning ------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> text context c_t of shape ``(B, max_tokens, context_dim)``."""
        device = next(self.parameters()).device
        return self.text_encoder(self.tokenizer(prompts).to(device))

    def time_embedding(self, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The vector every ResNet block receives: embedded t (plus the pooled prompt)."""
        emb = self.time_embed(timestep_embedding(t, self.config.time_dim))
        if self.text_embed is not None:
            emb = emb + self.text_embed(context.mean(dim=1))
        return emb

    # ---- forward ----------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        down_residuals: Sequence[torch.Tensor] | None = None,
        mid_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ε or v (``config.prediction``) for noisy images ``x`` at steps ``t``.

        ``context`` comes from :meth:`encode_prompts`. ``down_residuals`` (one per skip,
        shapes :meth:`skip_shapes`) and ``mid_residual`` are added where ControlNet writes.
        """
        check_images(x, name="x", channels=self.config.in_channels)
        factor = 2 ** (len(self.config.channels) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"x: expected height and width divisible by {factor}, got {tuple(x.shape[-2:])}")
        t = _broadcast_t(t, x.shape[0], x.device)
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.config.context_dim:
            raise ValueError(f"context: expected shape ({x.shape[0]}, L, {self.config.context_dim}), "
                             f"got {tuple(context.shape)}")
        temb = self.time_embedding(t, context)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, temb, context)
            hs.append(h)
        h = self.middle_block(h, temb, context)
        if down_residuals is not None:
            _check_residuals(hs, down_residuals)
            hs = [s + r for s, r in zip(hs, down_residuals)]
        if mid_residual is not None:
            if mid_residual.shape != h.shape:
                raise ValueError(f"mid_residual: expected shape {tuple(h.shape)}, got {tuple(mid_residual.shape)}")
            h = h + mid_residual
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), temb, context)
        return self.out(h)


def _broadcast_t(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t: expected a scalar or shape ({batch},), got {tuple(t.shape)}")
    return t


def _check_residuals(skips: list[torch.Tensor], residuals: Sequence[torch.Tensor]) -> None:
    if len(residuals) != len(skips):
        raise ValueError(f"down_residuals: expected {len(skips)} tensors (one per skip connection), "
                         f"got {len(residuals)}")
    for i, (s, r) in enumerate(zip(skips, residuals)):
        if r.shape != s.shape:
            raise ValueError(f"down_residuals[{i}]: expected shape {tuple(s.shape)}, got {tuple(r.shape)}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
