"""Guided sampling on the toy: the formula's two passes vs cnetlib's one batch, side by side.

    python benchmarks/sampling.py [--n 32] [--steps 20] [--repeat 2]

Classifier-free guidance with ControlNet needs ε_c and ε_uc at every step (chapter 06).
Written as the formula reads, that is two passes of the controlled model of batch B, each
encoding the condition again. ``cnetlib.guidance.guided_model_fn`` computes c_f = E(c)
once per image and runs ε_c and ε_uc as one batch of 2B in channels-last memory. This
script times a whole DDIM run both ways on the shipped base (same seed, same x_T) for
mode ``both`` and ``cond_only`` at β 3 and for β 1, and prints the time ratio and the
mean and largest difference between the two outputs. Both come from float rounding
alone (one step agrees to float32 precision: tests/test_guidance.py); over 20 steps at
β 3 a rounding difference can grow in a few pixels of a sample, so the largest
difference is bigger than the mean.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from cnetlib.base import load_or_train_base
from cnetlib.controlnet import toy_controlnet
from cnetlib.controlled import ControlledUNet
from cnetlib.diffusion import ddim_sample, make_schedule
from cnetlib.fidelity import FidelityProbe
from cnetlib.guidance import Control, sample


def two_pass_fn(model: ControlledUNet, cond, c_cond, c_uncond, mode: str, guidance: float):
    """ε = ε_uc + β (ε_c − ε_uc), each term its own pass (control in ε_uc only for "both")."""
    def fn(x, t):
        eps_c = model(x, t, c_cond, cond)
        if guidance == 1.0:
            return eps_c
        eps_uc = model(x, t, c_uncond, cond) if mode == "both" else model.base(x, t, c_uncond)
        return eps_uc + guidance * (eps_c - eps_uc)
    return fn


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per way (the fastest is kept)")
    a = p.parse_args(argv)
    base = load_or_train_base(progress=False)
    net = toy_controlnet(base, "zero", seed=0).eval()
    with torch.no_grad():
        for q in net.parameters():
            q.add_(0.02 * torch.randn_like(q))  # a "trained" ControlNet: no zero layer left
    probe = FidelityProbe(n=a.n, steps=a.steps)
    model = ControlledUNet(base, net).eval()
    schedule = make_schedule(base.config.schedule)
    shape = (a.n, 3, base.config.image_size, base.config.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for mode, beta, prompts in (("both", 3.0, probe.prompts), ("cond_only", 3.0, [""] * a.n), ("both", 1.0, [""] * a.n)):
        c_cond, c_uncond = base.encode_prompts(prompts), base.encode_prompts([""] * a.n)

        def two_pass():
            with torch.no_grad():
                return ddim_sample(two_pass_fn(model, probe.conditions, c_cond, c_uncond, mode, beta), shape, schedule,
                                   base.config.prediction, steps=a.steps, x_T=x_T.clone())

        def one_batch():
            return sample(base, prompts, [Control(net, probe.conditions)], mode=mode, guidance=beta, steps=a.steps,
                          x_T=x_T.clone())

        times, outs = {}, {}
        for name, f in (("two passes", two_pass), ("one batch", one_batch)):
            best = float("inf")
            for _ in range(a.repeat):
                start = time.perf_counter()
                outs[name] = f()
                best = min(best, time.perf_counter() - start)
            times[name] = best
        rows.append({"mode": mode, "guidance": beta, "n": a.n, "steps": a.steps,
                     "two_passes_s": round(times["two passes"], 2), "one_batch_s": round(times["one batch"], 2),
                     "ratio": round(times["one batch"] / times["two passes"], 3),
                     "mean_abs_diff": float((outs["two passes"] - outs["one batch"]).abs().mean()),
                     "max_abs_diff": float((outs["two passes"] - outs["one batch"]).abs().max())})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'mode':<10}{'β':>4}{'two passes s':>14}{'one batch s':>13}{'ratio':>8}{'mean |diff|':>13}{'max |diff|':>12}")
    for r in rows:
        print(f"{r['mode']:<10}{r['guidance']:>4g}{r['two_passes_s']:>14.2f}{r['one_batch_s']:>13.2f}"
              f"{r['ratio']:>8.3f}{r['mean_abs_diff']:>13.2e}{r['max_abs_diff']:>12.2e}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
