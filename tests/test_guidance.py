"""Guidance modes checked against hand computations on a tiny model; multi-condition sums."""
import pytest
import torch

from cnetlib.controlled import ControlledUNet, control_residuals
from cnetlib.diffusion import classifier_free_guidance, ddim_timesteps
from cnetlib.guidance import (
    MODES, Control, connection_weights, control_active, guess_weights, guided_model_fn, resolution_weights, sample,
)
from tiny import tiny_base, tiny_controlnet



def setup(seed=0):
    base = tiny_base()
    nets = []
    for k in range(2):
        net = tiny_controlnet(base, seed=10 + k).eval()
        with torch.no_grad():
            for p in net.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.2)  # a "trained" ControlNet: every zero layer non-zero
        nets.append(net)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([500, 500])
    cond = (torch.rand(2, 3, 16, 16, generator=g) > 0.7).float()
    c = base.encode_prompts(["red circle with blue background", "gold circle with white background"])
    u = base.encode_prompts(["", ""])
    return base, nets, x, t, cond, c, u


def test_guess_weights_are_logspace_and_0825_powers():
    w = guess_weights(13)
    assert torch.allclose(torch.tensor(w, dtype=torch.float64), torch.logspace(-1, 0, 13, dtype=torch.float64))
    assert all(abs(wi - 0.825 ** (12 - i)) < 0.003 for i, wi in enumerate(w))
    assert w[-1] == 1.0 and abs(w[0] - 0.1) < 1e-12


def test_resolution_weights_follow_64_over_h():
    hs = [64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8]          # SD's 13 connections
    assert resolution_weights(hs, max_weight=8.0) == [64 / h for h in hs]  # the paper's literal w_i
    w1 = resolution_weights(hs, max_weight=1.0)
    assert max(w1) == 1.0 and min(w1) == 0.125
    base, *_ = setup()
    assert connection_weights("resolution_weighted", base.connections, 2.0) == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert connection_weights("both", base.connections) == [1.0] * 5


def test_control_window():
    on = [control_active(k, 10, 0.2, 0.7) for k in range(10)]
    assert on == [False, False, True, True, True, True, True, False, False, False]
    assert all(control_active(k, 10) for k in range(10))


def test_both_with_scale_one_is_plain_cfg_of_the_controlled_model():
    base, nets, x, t, cond, c, u = setup()
    model = ControlledUNet(base, nets[0])
    ts = ddim_timesteps(1000, 2)
    with torch.no_grad():
        fn = guided_model_fn(base, [Control(nets[0], cond)], c, u, ts + [500], mode="both", guidance=4.0)
        ref = classifier_free_guidance(lambda x_, t_: model(x_, t_, c, cond), lambda x_, t_: model(x_, t_, u, cond), 4.0)
        torch.testing.assert_close(fn(x, t), ref(x, t))   # float32 defaults: rtol 1.3e-6, atol 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_guidance_one_is_the_controlled_model_with_the_prompt(mode):
    base, nets, x, t, cond, c, u = setup()
    with torch.no_grad():
        fn = guided_model_fn(base, [Control(nets[0], cond)], c, u, [500], mode=mode, guidance=1.0)
        w = connection_weights(mode, base.connections)
        torch.testing.assert_close(fn(x, t), ControlledUNet(base, nets[0])(x, t, c, cond, connection_scales=w))


def test_two_controlnets_in_one_batch_match_two_passes():
    """The guided fn runs ε_c and ε_uc as one batch of 2B with c_f = E(c) computed once:
    the same ε as the two passes of the formula, for several ControlNets too."""
    base, nets, x, t, cond, c, u = setup()
    cond2 = torch.flip(cond, dims=[-1])
    model = ControlledUNet(base, nets)
    with torch.no_grad():
        fn = guided_model_fn(base, [Control(nets[0], cond, 0.8), Control(nets[1], cond2, 0.5)], c, u, [500],
                             mode="both", guidance=5.0)
        eps_c, eps_uc = model(x, t, c, [cond, cond2], [0.8, 0.5]), model(x, t, u, [cond, cond2], [0.8, 0.5])
        torch.testing.assert_close(fn(x, t), eps_uc + 5.0 * (eps_c - eps_uc))


@pytest.mark.parametrize("mode", ["cond_only", "guess", "resolution_weighted"])
def test_conditional_only_modes_leave_the_unconditional_branch_alone(mode):
    base, nets, x, t, cond, c, u = setup()
    beta, scale, mw = 3.0, 0.7, 2.0
    with torch.no_grad():
        fn = guided_model_fn(base, [Control(nets[0], cond)], c, u, [500], mode=mode, guidance=beta,
                             conditioning_scale=scale, max_weight=mw)
        w = connection_weights(mode, base.connections, mw)
        d, m = nets[0](x, t, c, cond)
        eps_c = base(x, t, c, down_residuals=[r * scale * wi for r, wi in zip(d, w[:-1])], mid_residual=m * scale * w[-1])
        eps_uc = base(x, t, u)
        torch.testing.assert_close(fn(x, t), eps_uc + beta * (eps_c - eps_uc))   # r*(s*w) vs r*s*w rounds differently


def test_control_outside_its_window_is_off():
    base, nets, x, t, cond, c, u = setup()
    ts = [999, 500, 1]
    with torch.no_grad():
        fn = guided_model_fn(base, [Control(nets[0], cond)], c, u, ts, guidance=2.0, control_start=0.0, control_end=0.4)
        plain = classifier_free_guidance(lambda x_, t_: base(x_, t_, c), lambda x_, t_: base(x_, t_, u), 2.0)
        assert not torch.allclose(fn(x, torch.tensor([999, 999])), plain(x, torch.tensor([999, 999])))
        torch.testing.assert_close(fn(x, t), plain(x, t))  # t = 500 is step 1 of 3: after the window


def test_sum_of_one_controlnet_is_that_controlnet_and_two_add():
    base, nets, x, t, cond, c, u = setup()
    with torch.no_grad():
        one = sample(base, ["red circle with blue background"] * 2, [Control(nets[0], cond)], steps=3)
        again = sample(base, ["red circle with blue background"] * 2, [(nets[0], cond, 1.0)], steps=3)
        assert torch.equal(one, again)
        d1, m1 = nets[0](x, t, c, cond)
        d2, m2 = nets[1](x, t, c, cond)
        d, m = control_residuals(nets, x, t, c, [cond, cond], [1.0, 1.0])
        for a, b, e in zip([*d, m], [*d1, m1], [*d2, m2]):
            torch.testing.assert_close(a, b + e)
        two = sample(base, ["red circle with blue background"] * 2, [Control(nets[0], cond), Control(nets[1], cond)],
                     steps=3)
        assert not torch.equal(one, two)


def test_bad_input():
    base, nets, x, t, cond, c, u = setup()
    with pytest.raises(ValueError, match="mode: expected one of"):
        sample(base, ["a"] * 2, [Control(nets[0], cond)], mode="cfg_rw")
    with pytest.raises(ValueError, match=r"conditions of one size"):
        sample(base, ["a"] * 2, [Control(nets[0], cond), Control(nets[1], torch.zeros(2, 3, 32, 32))])
    with pytest.raises(ValueError, match=r"condition: expected shape \(2, C, H, W\)"):
        sample(base, ["a"] * 2, [Control(nets[0], cond[:1])])
    with pytest.raises(TypeError, match="controls: expected Control"):
        sample(base, ["a"] * 2, ["not a control"])
    assert set(MODES) == {"both", "cond_only", "resolution_weighted", "guess"}


def test_bad_sampling_arguments_are_named():
    base, nets, x, t, cond, c, u = setup()
    prompts = ["red circle with blue background"] * 2
    ok = [Control(nets[0], cond)]
    cases = [
        (dict(prompts="red circle with blue background"), TypeError, "prompts: expected a list of strings"),
        (dict(steps=0), ValueError, "steps: expected an integer >= 1"),
        (dict(guidance=float("nan")), ValueError, "guidance: expected a finite number"),
        (dict(conditioning_scale=float("inf")), ValueError, "conditioning_scale: expected a finite number"),
        (dict(control_start=0.8, control_end=0.2), ValueError, "expected start < end"),
        (dict(control_end=1.5), ValueError, "control_end: expected a number <= 1"),
        (dict(max_weight=0.0), ValueError, "max_weight: expected a number > 0"),
        (dict(controls=[Control(nets[0], cond, float("nan"))]), ValueError, r"controls\[0\].scale"),
        (dict(controls=[Control(nets[0], cond * float("nan"))]), ValueError, "condition: expected finite values"),
        (dict(controls=[Control(nets[0], cond.numpy())]), TypeError, r"controls\[0\].condition: expected a torch.Tensor"),
        (dict(controls=[Control(base, cond)]), TypeError, r"controls\[0\].controlnet: expected a ControlNet, got ToyUNet"),
    ]
    for kw, error, message in cases:
        args = {"prompts": prompts, "controls": ok, "steps": 2, **kw}
        with pytest.raises(error, match=message):
            sample(base, args.pop("prompts"), args.pop("controls"), **args)


def test_the_sampling_benchmark_runs_and_its_two_ways_agree(capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "sampling.py"
    spec = importlib.util.spec_from_file_location("sampling_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--n", "2", "--steps", "2", "--repeat", "1"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["mode"] for r in rows] == ["both", "cond_only", "both"]
    for r in rows:                                   # the formula's two passes and the one batch: same samples
        assert r["two_passes_s"] > 0 and r["one_batch_s"] > 0 and r["mean_abs_diff"] < 1e-4
