"""One control core for the toy and SD: the same mode table and the same sum in both samplers."""
import pytest
import torch

import cnetlib.control as control
from cnetlib.control import MODES, branch_weights, connection_weights, guess_weights, reference_guess_weights
from cnetlib.guidance import Control, sample
from cnetlib.unet import ToyUNet, UNetConfig
from tiny import tiny_controlnet

diffusers = pytest.importorskip("diffusers")


def record(monkeypatch, modules):
    """Every weigh_and_sum (the weights applied) and with_zero_branch (ε_uc left without control)
    call the samplers make, through the names they import."""
    calls = []

    def weigh(residuals, scales, weights=None):
        calls.append(("weights", None if weights is None else [float(w) for w in weights]))
        return control.weigh_and_sum(residuals, scales, weights)

    def zero(down, mid, controlled_first):
        calls.append(("zero_branch", controlled_first))
        return control.with_zero_branch(down, mid, controlled_first)

    for module in modules:
        if hasattr(module, "weigh_and_sum"):
            monkeypatch.setattr(module, "weigh_and_sum", weigh)
        if hasattr(module, "with_zero_branch"):
            monkeypatch.setattr(module, "with_zero_branch", zero)
    return calls


def trained(net):
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("mode", MODES)
def test_the_toy_and_sd_samplers_run_one_mode_table(monkeypatch, mode):
    import cnetlib.controlled as toy_cn
    import cnetlib.guidance as toy_guidance
    import cnetlib.sd.pipeline as sd_pipeline
    from cnetlib.sd import SDControlNet, SDParts, generate

    torch.manual_seed(0)   # a toy base with 3 levels: 7 connections, as SD's tiny preset has
    base = ToyUNet(UNetConfig(image_size=16, channels=(8, 16, 32), attention_levels=(False, False, True),
                              context_dim=16, groups=4, text_layers=1)).eval().requires_grad_(False)
    net = trained(tiny_controlnet(base))
    parts = SDParts.tiny()
    sd_net = trained(SDControlNet.from_unet(parts.unet))
    assert len(base.connections) == len(sd_net.connections) == 7             # one n, so guess mode's w_i coincide

    calls = record(monkeypatch, [toy_cn, toy_guidance, sd_pipeline])
    sample(base, ["red circle with blue background"], [Control(net, torch.rand(1, 3, 16, 16))], mode=mode, steps=1)
    toy = list(calls)
    calls.clear()
    generate(parts, ["a red circle"], [Control(sd_net, torch.rand(1, 3, 64, 64))], mode=mode, steps=1)
    sd = list(calls)

    for got, connections in ((toy, base.connections), (sd, sd_net.connections)):
        w_uc, w_c = branch_weights(mode, connections)
        assert ("weights", w_c) in got                                        # the core's w_i, applied
        assert (("zero_branch", True) in got or ("zero_branch", False) in got) == (w_uc is None)
    if mode in ("both", "cond_only", "guess"):                                # h_i-free modes: identical weights
        assert [c for c in toy if c[0] == "weights"] == [c for c in sd if c[0] == "weights"]


def test_guess_weights_at_the_toys_n_and_at_sds():
    g7, r7 = guess_weights(7), reference_guess_weights(7)
    assert g7[0] == pytest.approx(0.1) and g7[-1] == pytest.approx(1.0)
    assert r7[0] == pytest.approx(0.825 ** 6) and r7[-1] == 1.0               # the reference code's form differs at 7
    assert guess_weights(13) == pytest.approx(reference_guess_weights(13), abs=3e-3)   # and agrees at SD's 13
    assert connection_weights("guess", [32, 32, 16, 16, 8, 8, 8]) == g7
    assert branch_weights("both", [8, 4]) == ([1.0, 1.0], [1.0, 1.0])
    assert branch_weights("resolution_weighted", [8, 4], 2.0) == (None, [1.0, 2.0])
