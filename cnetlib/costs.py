"""The cost of a training step: ControlNet against fine-tuning the whole UNet (chapter 09).

The paper reports that training with ControlNet on one A100 takes about 23 % more GPU
memory and 34 % more time per iteration than fine-tuning SD itself. :func:`compare_costs`
measures both on the same UNet, device and dtype, side by side in one run
(``benchmarks/sd_controlnet.py`` prints it at SD 1.5's size).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .sd import SDControlNet

class SavedTensorBytes:
    """Counts the bytes autograd keeps for the backward pass (each storage once), as a CPU
    stand-in for peak activation memory: ``with SavedTensorBytes() as m: loss = f(x)``."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def _pack(self, t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            key = id(t)
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes() if t.device.type != "meta" else 0
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)


def accounted_memory(frozen, trainable, saved_bytes: int) -> int:
    """A CPU stand-in for a training step's peak memory: the ``frozen`` parameters once, the
    ``trainable`` ones four times (θ, ∇θ and AdamW's two moments), and the bytes autograd
    saved for the backward pass (:class:`SavedTensorBytes`)."""
    def nbytes(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    return nbytes(frozen) + 4 * nbytes(trainable) + saved_bytes


def step_cost(unet, what: str, *, batch_size: int = 2, latent_size: int | None = None, text_tokens: int = 77,
              repeats: int = 3, gradient_checkpointing: bool = False) -> dict:
    """Time and memory of one training step on ``unet``'s device and dtype: ``what="controlnet"``
    (frozen UNet + trainable ControlNet, the paper's setting) or ``"finetune"`` (the UNet
    itself trained), AdamW in both.

    Memory: on CUDA the peak allocated during the step. On the CPU an accounting of the
    same thing: frozen weights once, trainable weights four times (θ, ∇θ and AdamW's two
    moments), plus the activations autograd saves for the backward pass.
    """
    if what not in ("controlnet", "finetune"):
        raise ValueError(f"what: expected 'controlnet' or 'finetune', got {what!r}")
    device, dtype = unet.device, unet.dtype
    latent = latent_size or unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch_size, unet.config.in_channels, latent, latent, generator=g).to(device, dtype)
    c_t = torch.randn(batch_size, text_tokens, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    cond = torch.rand(batch_size, 3, 8 * latent, 8 * latent, generator=g).to(device, dtype)
    t = torch.randint(0, 1000, (batch_size,), generator=g).to(device)
    target = torch.randn(z.shape, generator=g).to(device, dtype)
    frozen: list = []
    if gradient_checkpointing:  # in both settings the whole UNet is checkpointed: like with like
        unet.enable_gradient_checkpointing()
    if what == "controlnet":
        net = SDControlNet.from_unet(unet).to(device, dtype)
        if gradient_checkpointing:
            net.enable_gradient_checkpointing()
        unet.requires_grad_(False)
        trainable = list(net.parameters())
        frozen = list(unet.parameters())
    else:
        net = None
        unet.requires_grad_(True)
        trainable = list(unet.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-6)
    cuda = device.type == "cuda"

    def step() -> int:
        with SavedTensorBytes() as saved:
            if net is not None:
                down, mid = net(z, t, c_t, cond)
                pred = unet(z, t, c_t, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            else:
                pred = unet(z, t, c_t).sample
            loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return saved.bytes

    try:
        step()  # warm-up (and AdamW's state)
        times, act = [], 0
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            t0 = time.perf_counter()
            act = step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        memory = torch.cuda.max_memory_allocated() if cuda else accounted_memory(frozen, trainable, act)
    finally:
        unet.requires_grad_(False)
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
    return {"what": what, "seconds": sorted(times)[len(times) // 2], "memory_bytes": int(memory),
            "activation_bytes": int(act), "trainable_parameters": sum(p.numel() for p in trainable),
            "device": device.type}


def compare_costs(unet, **options) -> dict:
    """:func:`step_cost` for both settings, side by side, with the ControlNet / fine-tune ratios
    (the paper, on an A100 with SD: memory +23 %, time +34 %)."""
    cn = step_cost(unet, "controlnet", **options)
    ft = step_cost(unet, "finetune", **options)
    return {"controlnet": cn, "finetune": ft, "time_ratio": cn["seconds"] / ft["seconds"],
            "memory_ratio": cn["memory_bytes"] / ft["memory_bytes"]}
