"""The algorithms the chapters write out, line by line beside their equations, compute what
the library computes: each is taken from its chapter's source (not copied here) and run
against the library on the same inputs. The library stays the one canonical implementation;
a chapter that drifts from it fails here (and in its own cell, which asserts the same)."""
import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from cnetlib.data import Fill50k
from cnetlib.diffusion import (classifier_free_guidance, cosine_schedule, ddim_sample, ddim_timesteps, ddpm_sample,
                               linear_schedule, q_sample)
from tiny import tiny_base, tiny_controlnet

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


def written_out(chapter: str, *names: str) -> dict:
    """The functions ``names`` as the chapter defines them, with the chapter's own imports."""
    path = next(CHAPTERS.glob(f"{chapter}_*.py"))
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
            or (isinstance(n, ast.FunctionDef) and n.name in names)]
    found = {n.name for n in keep if isinstance(n, ast.FunctionDef)}
    assert found == set(names), f"{path.name} does not define {set(names) - found}"
    namespace: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def grown(net):
    """A ControlNet whose zero convolutions (the connectors and E's last layer) have left zero,
    as training would have moved them, so that every wire of it counts."""
    with torch.no_grad():
        for z in [*net.zero_convs, net.condition_encoder.layers[-1]]:
            z.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(int(z.weight.numel())))
    return net


def test_chapter_01_forward_process_is_q_sample():
    f = written_out("01", "forward_process")["forward_process"]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1, torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    for schedule in (linear_schedule(), cosine_schedule()):
        torch.testing.assert_close(f(x0, t, eps, schedule.alphas_cumprod), q_sample(x0, t, eps, schedule))


def test_chapter_01_ddim_and_ddpm_loops_are_the_librarys_samplers():
    fns = written_out("01", "ddim_step", "ddim_loop", "ddpm_step", "ddpm_loop")
    base, sched = tiny_base(), cosine_schedule()
    c, u = base.encode_prompts(["red circle with blue background"] * 2), base.encode_prompts(["", ""])
    model_fn = classifier_free_guidance(lambda x, t: base(x, t, c), lambda x, t: base(x, t, u), 3.0)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for steps in (1, 5, 20):
            ours = fns["ddim_loop"](model_fn, x_T, sched.alphas_cumprod, ddim_timesteps(1000, steps))
            torch.testing.assert_close(ours, ddim_sample(model_fn, x_T.shape, sched, "v", steps=steps, x_T=x_T),
                                       rtol=1e-4, atol=1e-4)
    cheap = lambda x, t: 0.3 * x - 0.2 * torch.tanh(x) + t.view(-1, 1, 1, 1) / 5000   # noqa: E731
    ours = fns["ddpm_loop"](cheap, (2, 3, 4, 4), sched.betas, sched.alphas_cumprod, torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, ddpm_sample(cheap, (2, 3, 4, 4), sched, "v", generator=torch.Generator().manual_seed(2)),
                               rtol=1e-4, atol=1e-4)


def test_chapter_01_training_step_is_one_step_of_train_denoiser():
    from cnetlib.train import train_denoiser

    step = written_out("01", "base_training_step")["base_training_step"]
    model, data = tiny_base().requires_grad_(True).train(), Fill50k(64, size=16, seed=3)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    loss = step(ours, torch.optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.0), data, 8, 0.3,
                torch.Generator().manual_seed(5), cosine_schedule().alphas_cumprod)
    lib = train_denoiser(theirs, data, steps=1, batch_size=8, lr=1e-3, warmup=1, drop_prompt=0.3, seed=5, progress=False)
    torch.testing.assert_close(loss, lib.losses[0], rtol=1e-4, atol=1e-5)
    moved = 0
    for p, q, p0 in zip(ours.parameters(), lib.raw.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
        moved += not torch.equal(p, p0)
    assert moved > 10                                           # the step really changed the weights


def test_chapter_03_forward_pass_is_controlnet_forward():
    forward = written_out("03", "controlnet_forward")["controlnet_forward"]
    base = tiny_base()
    net = grown(tiny_controlnet(base))
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    t, ctx = torch.tensor([5, 500, 990]), base.encode_prompts(["gold circle with blue background"] * 3)
    with torch.no_grad():
        (down, mid), (d2, m2) = forward(net, x, t, ctx, c), net(x, t, ctx, c)
    for a, b in zip(down + [mid], d2 + [m2]):
        torch.testing.assert_close(a, b)
    assert mid.abs().max() > 0
    with torch.no_grad():                                       # the condition's own wire is exercised too
        assert not torch.allclose(forward(net, x, t, ctx, torch.zeros_like(c))[0][0], down[0])


def test_chapter_04_training_step_is_one_step_of_train_controlnet():
    from cnetlib.controlled import ControlledUNet
    from cnetlib.train import train_controlnet

    step = written_out("04", "controlnet_training_step")["controlnet_training_step"]
    base, data = tiny_base(), Fill50k(64, size=16, seed=4)
    net = tiny_controlnet(base)
    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    opt = torch.optim.AdamW(ours.parameters(), lr=3e-3, weight_decay=1e-2)
    loss = step(ControlledUNet(base, ours), opt, data, 8, 0.5, torch.Generator().manual_seed(7),
                cosine_schedule().alphas_cumprod)
    lib = train_controlnet(base, theirs, data, steps=1, batch_size=8, lr=3e-3, drop_prompt=0.5, seed=7, progress=False)
    torch.testing.assert_close(loss, lib.losses[0], rtol=1e-4, atol=1e-5)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert not any(torch.equal(p, q) for p, q in zip(ours.zero_convs.parameters(), net.zero_convs.parameters()))


@pytest.mark.parametrize("mode", ["both", "cond_only", "resolution_weighted", "guess"])
def test_chapter_06_guided_prediction_is_guided_model_fn(mode):
    from cnetlib.guidance import Control, guided_model_fn

    guided = written_out("06", "guided_prediction")["guided_prediction"]
    base = tiny_base()
    net = grown(tiny_controlnet(base))
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    t = torch.tensor([700, 700])
    ct, cu = base.encode_prompts(["red circle with gold background"] * 2), base.encode_prompts(["", ""])
    with torch.no_grad():
        for beta, max_weight in ((3.0, 1.0), (5.0, 2.0)):
            ours = guided(base, net, x, t, ct, cu, c, mode, beta, max_weight)
            lib = guided_model_fn(base, [Control(net, c)], ct, cu, [700], mode=mode, guidance=beta,
                                  max_weight=max_weight)(x, t)
            torch.testing.assert_close(ours, lib, rtol=1e-4, atol=1e-5)
    assert np.isfinite(ours.numpy()).all()
