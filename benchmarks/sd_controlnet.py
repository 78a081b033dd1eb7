"""Benchmarks of cnetlib's SD ControlNet, printed side by side in one run (chapter 09).

    python benchmarks/sd_controlnet.py                      # tiny preset on the CPU
    python benchmarks/sd_controlnet.py --preset sd15 --device cuda --dtype bf16

1. cnetlib's ``SDControlNet`` vs diffusers' ``ControlNetModel`` with the same weights:
   forward time and forward + backward time, and their ratio (and the largest residual
   difference, to show they compute the same thing);
2. one ControlNet training step vs one step of fine-tuning the UNet itself, same batch:
   time and memory, and their ratios (the paper, SD on an A100 40GB: +34 % time, +23 %
   memory).

The UNet has random weights, built from its config: nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from functools import partial

import torch

from cnetlib.sd import SD15_UNET_CONFIG, SD21_UNET_CONFIG, TINY_UNET_CONFIG, SDControlNet, fill_zero_layers
from cnetlib.costs import compare_costs

PRESETS = {"tiny": TINY_UNET_CONFIG, "sd15": SD15_UNET_CONFIG, "sd21": SD21_UNET_CONFIG}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--text-tokens", type=int, default=77)
    p.add_argument("--skip-training-cost", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true", help="in the training-step comparison")
    a = p.parse_args(argv)
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging

    logging.set_verbosity_error()

    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    cfg = PRESETS[a.preset]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).to(device, dtype).eval().requires_grad_(False)
    ours = fill_zero_layers(SDControlNet.from_unet(unet), std=0.02, seed=1)  # residuals not all zero
    g = torch.Generator().manual_seed(1)
    theirs = ours.to_diffusers()
    ours, theirs = ours.to(device, dtype), theirs.to(device, dtype)
    s = cfg["sample_size"]
    x = torch.randn(a.batch_size, 4, s, s, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    ehs = torch.randn(a.batch_size, a.text_tokens, cfg["cross_attention_dim"], generator=g).to(device, dtype)
    cond = torch.rand(a.batch_size, 3, 8 * s, 8 * s, generator=g).to(device, dtype)

    def fwd(model, diffusers_api):
        with torch.no_grad():
            return model(x, t, ehs, cond, return_dict=False) if diffusers_api else model(x, t, ehs, cond)

    def fwd_bwd(model, diffusers_api):
        d, m = model(x, t, ehs, cond, return_dict=False) if diffusers_api else model(x, t, ehs, cond)
        (sum(r.float().pow(2).mean() for r in d) + m.float().pow(2).mean()).backward()
        model.zero_grad(set_to_none=True)

    d1, m1 = fwd(ours, False)
    d2, m2 = fwd(theirs, True)
    max_diff = max([(a_ - b_).abs().max().item() for a_, b_ in zip(d1, d2)] + [(m1 - m2).abs().max().item()])
    res = {"preset": a.preset, "device": str(device), "dtype": a.dtype, "batch_size": a.batch_size,
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "controlnet_parameters": sum(q.numel() for q in ours.parameters()), "max_residual_diff": max_diff}
    # partial binds the models now (a lambda would read ``theirs`` late, after the del below)
    res["forward_s"] = {"cnetlib": timed(partial(fwd, ours, False), a.repeats, device),
                        "diffusers": timed(partial(fwd, theirs, True), a.repeats, device)}
    res["forward_backward_s"] = {"cnetlib": timed(partial(fwd_bwd, ours, False), a.repeats, device),
                                 "diffusers": timed(partial(fwd_bwd, theirs, True), a.repeats, device)}
    del theirs
    print(f"\n{a.preset} on {res['gpu']} ({a.dtype}, batch {a.batch_size}); ControlNet "
          f"{res['controlnet_parameters'] / 1e6:.1f} M parameters; largest residual difference {max_diff:.2e}")
    print(f"{'':<26}{'cnetlib':>10}{'diffusers':>11}{'ratio':>8}")
    for k in ("forward_s", "forward_backward_s"):
        c, d = res[k]["cnetlib"], res[k]["diffusers"]
        print(f"{k.replace('_s', '') + ' (s)':<26}{c:>10.4f}{d:>11.4f}{c / d:>8.2f}")
    if not a.skip_training_cost:
        del ours
        cost = compare_costs(unet, batch_size=a.batch_size, text_tokens=a.text_tokens, repeats=a.repeats,
                             gradient_checkpointing=a.gradient_checkpointing)
        res["training_step"] = cost
        cn, ft = cost["controlnet"], cost["finetune"]
        gc = ", gradient checkpointing" if a.gradient_checkpointing else ""
        print(f"\none training step, batch {a.batch_size}{gc}: ControlNet (UNet frozen) vs fine-tuning the UNet")
        print(f"{'':<26}{'ControlNet':>11}{'fine-tune':>11}{'ratio':>8}   paper (A100)")
        print(f"{'time (s)':<26}{cn['seconds']:>11.4f}{ft['seconds']:>11.4f}{cost['time_ratio']:>8.2f}   1.34")
        print(f"{'memory (GiB)':<26}{cn['memory_bytes'] / 2**30:>11.3f}{ft['memory_bytes'] / 2**30:>11.3f}"
              f"{cost['memory_ratio']:>8.2f}   1.23")
        print(f"{'trainable parameters (M)':<26}{cn['trainable_parameters'] / 1e6:>11.1f}"
              f"{ft['trainable_parameters'] / 1e6:>11.1f}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
