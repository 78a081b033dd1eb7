"""One ControlNet training step: cnetlib's ``train_sd`` against diffusers' example loop, side by side (chapter 09).

    python benchmarks/sd_training.py                                   # tiny preset on the CPU (a test runs it)
    python benchmarks/sd_training.py --preset sd15 --device cuda \\
        --out benchmarks/results/sd15_training.json                     # SD 1.5 at 512 px: 1/4/8 × 3 precisions × GC

Both arms train the same ControlNet (the same initial weights: diffusers' ``ControlNetModel``
is cnetlib's ``SDControlNet`` exported with ``to_diffusers``) on the same frozen VAE, text
encoder and UNet, the same batch, under the same 🤗 accelerate ``Accelerator``:

* **cnetlib**: :func:`cnetlib.train_sd.train_step`, the function ``train_sd`` runs every step
  (``controlnet_loss``: VAE encode, tokenise and encode the prompts, noise, ControlNet + UNet,
  ‖ε − ε_θ‖²; then backward, clipping, AdamW, gradients set to None);
* **diffusers**: the step of diffusers' ``examples/controlnet/train_controlnet.py`` written with
  its public classes (``AutoencoderKL``, ``CLIPTextModel``, ``ControlNetModel``,
  ``UNet2DConditionModel``, a noise scheduler): prompts tokenised beforehand, as its data
  loader does, the text encoded in the step; ``set_grads_to_none``.

Precisions: ``fp32`` (no autocast), ``bf16`` and ``fp16`` (frozen parts in that dtype, the
ControlNet's weights in fp32 under autocast; fp16 with accelerate's gradient scaler).
Gradient checkpointing ``on`` checkpoints the ControlNet *and* the frozen UNet in both arms
(diffusers' example checkpoints only the ControlNet; the UNet's decoder is in the backward
pass too). SD 1.5's architecture is built from its configs with random weights
(:meth:`cnetlib.sd.SDParts.random`): nothing is downloaded.

Memory: on CUDA the peak allocated over the arm's steps (frozen parts included). On the CPU,
an accounting of the same thing: frozen weights, trainable weights × 4 (θ, ∇θ, AdamW's two
moments) and the activations autograd saves. Each precision runs in its own process
(accelerate's mixed-precision state is per process); the arms alternate which goes first.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
ARMS = ("cnetlib", "diffusers")


def build_parts(preset: str, device: str, weight_dtype: torch.dtype):
    from cnetlib.sd import SDParts

    parts = SDParts.tiny() if preset == "tiny" else SDParts.random(device=device)
    return parts.to(device, weight_dtype).freeze()


def make_batch(parts, batch_size: int, resolution: int, seed: int, drop_prompt: float, device) -> dict:
    """A fixed batch, on the device, for both arms: Fill50k-style pairs, and for the diffusers arm
    the token ids of the prompts with the same prompts dropped (its data loader's work)."""
    from cnetlib.data import FULL_PALETTE, LazyPairs
    from cnetlib.train_sd import draw_batch

    g = torch.Generator().manual_seed(seed)
    batch = draw_batch(LazyPairs(1000, size=resolution, seed=seed, palette=FULL_PALETTE), batch_size, g)
    keep = torch.rand(batch_size, generator=g) >= drop_prompt
    tok = parts.tokenizer([p if k else "" for p, k in zip(batch["prompt"], keep.tolist())], padding="max_length",
                          max_length=parts.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return {"source": batch["source"].to(device), "target": batch["target"].to(device), "prompt": batch["prompt"],
            "input_ids": tok.input_ids.to(device)}


def diffusers_step(acc, parts, controlnet, opt, batch: dict, weight_dtype: torch.dtype, max_grad_norm: float):
    """The training step of diffusers' ``train_controlnet.py``, with its public classes."""
    from cnetlib.train_sd import apply_gradients

    vae, unet, scheduler = parts.vae, parts.unet, parts.scheduler
    latents = vae.encode(batch["target"].to(dtype=weight_dtype)).latent_dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
    noisy = scheduler.add_noise(latents, noise, t)
    text = parts.text_encoder(batch["input_ids"])[0]
    down, mid = controlnet(noisy, t, encoder_hidden_states=text,
                           controlnet_cond=batch["source"].to(dtype=weight_dtype), return_dict=False)
    pred = unet(noisy, t, encoder_hidden_states=text,
                down_block_additional_residuals=[d.to(dtype=weight_dtype) for d in down],
                mid_block_additional_residual=mid.to(dtype=weight_dtype)).sample
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    apply_gradients(acc, controlnet, opt, loss, max_grad_norm)   # backward, clip, AdamW: the same in both loops
    return loss


def measure_arm(arm: str, acc, parts, init, batch: dict, weight_dtype, *, checkpointing: bool, warmup: int,
                repeats: int, drop_prompt: float = 0.5, max_grad_norm: float = 1.0) -> dict:
    """Median step time and peak memory of one arm, from a fresh ControlNet (``init``'s weights)
    and a fresh AdamW (lr 1e-5, weight decay 1e-2, as both scripts)."""
    from cnetlib.costs import SavedTensorBytes, accounted_memory
    from cnetlib.train_sd import train_step

    device = parts.device
    cuda = device.type == "cuda"
    net = (init.to_diffusers() if arm == "diffusers" else copy.deepcopy(init)).to(device, torch.float32).train()
    if checkpointing:
        net.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=1e-2)
    net, opt = acc.prepare(net, opt)
    g = torch.Generator().manual_seed(0)

    def step() -> torch.Tensor:
        if arm == "cnetlib":
            return train_step(acc, parts, net, opt, batch, g, drop_prompt, weight_dtype, max_grad_norm)
        return diffusers_step(acc, parts, net, opt, batch, weight_dtype, max_grad_norm)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved = 0
    for _ in range(warmup):   # the first step also creates AdamW's moments
        if cuda:
            step()
        else:
            with SavedTensorBytes() as s:
                step()
            saved = max(saved, s.bytes)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        memory = torch.cuda.max_memory_allocated()
    else:
        frozen = [p for m in (parts.vae, parts.text_encoder, parts.unet) for p in m.parameters()]
        memory = accounted_memory(frozen, list(net.parameters()), saved)
    seconds = sorted(times)[len(times) // 2]
    out = {"seconds": seconds, "samples_per_s": batch["target"].shape[0] / seconds, "memory_bytes": int(memory),
           "loss": float(loss.detach())}
    acc.free_memory()   # accelerate's references; the caller collects the rest
    return out


def collect() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_precision(preset: str, device: str, precision: str, batch_sizes, checkpointing, resolution: int,
                  warmup: int, repeats: int) -> list[dict]:
    """Every (gradient checkpointing, batch size) cell of one precision, both arms, in this process."""
    from accelerate import Accelerator
    from diffusers.utils import logging

    from cnetlib.sd import SDControlNet

    logging.set_verbosity_error()
    acc = Accelerator(mixed_precision=PRECISIONS[precision], cpu=device == "cpu")
    weight_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    parts = build_parts(preset, device, weight_dtype)
    init = SDControlNet.from_unet(parts.unet).float().cpu()   # both arms start from these weights
    rows = []
    for i, ckpt in enumerate(checkpointing):
        if ckpt:
            parts.unet.enable_gradient_checkpointing()
        else:
            parts.unet.disable_gradient_checkpointing()
        for j, bs in enumerate(batch_sizes):
            batch = make_batch(parts, bs, resolution, seed=j, drop_prompt=0.5, device=parts.device)
            row = {"precision": precision, "gradient_checkpointing": ckpt, "batch_size": bs}
            order = ARMS if (i + j) % 2 == 0 else ARMS[::-1]
            for arm in order:
                try:
                    row[arm] = measure_arm(arm, acc, parts, init, batch, weight_dtype, checkpointing=ckpt,
                                           warmup=warmup, repeats=repeats)
                except torch.OutOfMemoryError:
                    row[arm] = {"error": "out of memory"}
                    acc.free_memory()
                collect()
            if "error" not in row["cnetlib"] and "error" not in row["diffusers"]:
                c, d = row["cnetlib"], row["diffusers"]
                row["speed_ratio"] = c["samples_per_s"] / d["samples_per_s"]
                row["memory_ratio"] = c["memory_bytes"] / d["memory_bytes"]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    gc_ = "on" if row["gradient_checkpointing"] else "off"
    head = f"{row['precision']:<6}{gc_:<5}{row['batch_size']:>4}"
    if "speed_ratio" not in row:
        return head + "   " + "; ".join(f"{a}: {row[a].get('error', 'ok')}" for a in ARMS)
    c, d = row["cnetlib"], row["diffusers"]
    return (head + f"{c['samples_per_s']:>10.2f}{d['samples_per_s']:>11.2f}{row['speed_ratio']:>7.2f}"
            f"{c['memory_bytes'] / 2**30:>10.2f}{d['memory_bytes'] / 2**30:>11.2f}{row['memory_ratio']:>7.2f}")


HEADER = (f"{'prec':<6}{'GC':<5}{'bs':>4}{'cnetlib':>10}{'diffusers':>11}{'ratio':>7}{'cnetlib':>10}{'diffusers':>11}"
          f"{'ratio':>7}\n{'':<15}{'samples/s':>21}{'':>7}{'peak memory (GiB)':>21}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, help="default: 64 (tiny), 512 (sd15)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 2 (tiny), 1 4 8 (sd15)")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                   help="default: fp32 on the CPU, fp32 bf16 fp16 on CUDA")
    p.add_argument("--gradient-checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--in-process", action="store_true", help="(internal) one precision, in this process")
    a = p.parse_args(argv)
    res_ = a.resolution or (64 if a.preset == "tiny" else 512)
    batch_sizes = a.batch_sizes or ([1, 2] if a.preset == "tiny" else [1, 4, 8])
    precisions = a.precisions or (["fp32"] if a.device == "cpu" else list(PRECISIONS))
    if a.device == "cpu" and "fp16" in precisions:
        raise SystemExit("--precisions fp16: fp16 autocast with a gradient scaler needs a GPU (--device cuda); "
                         "on the CPU use fp32 or bf16")
    ckpt = [x == "on" for x in a.gradient_checkpointing]
    print(f"one ControlNet training step, {a.preset} at {res_} px on {a.device}: cnetlib train_sd vs diffusers' "
          f"example loop\n{HEADER}", flush=True)
    rows: list[dict] = []
    if a.in_process or len(precisions) == 1:
        for prec in precisions:
            rows += run_precision(a.preset, a.device, prec, batch_sizes, ckpt, res_, a.warmup, a.repeats)
    else:
        for prec in precisions:   # accelerate's mixed precision is fixed per process: one process each
            with tempfile.TemporaryDirectory() as d:
                out = Path(d, "rows.json")
                cmd = [sys.executable, __file__, "--in-process", "--preset", a.preset, "--device", a.device,
                       "--resolution", str(res_), "--precisions", prec, "--warmup", str(a.warmup), "--repeats",
                       str(a.repeats), "--out", str(out), "--batch-sizes", *map(str, batch_sizes),
                       "--gradient-checkpointing", *a.gradient_checkpointing]
                done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
                print("\n".join(done.stdout.splitlines()[3:]), flush=True)   # its rows, without the header
                if done.returncode:
                    raise SystemExit(f"precision {prec}: the benchmark process failed (exit {done.returncode})")
                rows += json.loads(out.read_text())["rows"]
    floors = {arm: min((r[arm]["memory_bytes"] for r in rows if r["batch_size"] == min(batch_sizes)
                        and "memory_bytes" in r[arm]), default=None) for arm in ARMS}
    result = {"preset": a.preset, "resolution": res_, "device": a.device,
              "hardware": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu",
              "torch": torch.__version__, "warmup": a.warmup, "repeats": a.repeats,
              "memory": "peak allocated (CUDA)" if a.device.startswith("cuda") else "accounted (CPU)",
              "command": "python benchmarks/sd_training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows, f"batch_{min(batch_sizes)}_memory_floor_bytes": floors}
    if not a.in_process:
        ok = [r for r in rows if "speed_ratio" in r]
        if ok:
            print(f"slowest ratio {min(r['speed_ratio'] for r in ok):.2f}, largest memory ratio "
                  f"{max(r['memory_ratio'] for r in ok):.2f} (cnetlib / diffusers; ≥ 1 and ≤ 1 are the goal)")
        print(f"batch {min(batch_sizes)} memory floor: " + ", ".join(
            f"{arm} {v / 2**30:.2f} GiB" for arm, v in floors.items() if v is not None))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
