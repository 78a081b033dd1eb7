"""ControlNet core: zero convs, the trainable copy, the frozen base, both condition encoders, ablations."""
import warnings

import pytest
import torch

from cnetlib.checkpoint import load_checkpoint, save_checkpoint
from cnetlib.controlnet import ConditionEncoder, ControlNet, ControlNetConfig, gaussian_conv, trainable_copy, zero_conv
from cnetlib.controlled import ControlledUNet, connection_table, control_residuals, parameter_counts
from cnetlib.unet import ToyUNet, UNetConfig
from tiny import TINY_CFG as CFG
from tiny import TINY_HINT, tiny_base, tiny_controlnet

SMALL_HINT = {"paper": (4, 8, 8, 8), "reference": TINY_HINT}
make_base = tiny_base


def make_net(base, **kw) -> ControlNet:
    enc = kw.pop("condition_encoder", "reference")
    return tiny_controlnet(base, condition_encoder=enc, hint_channels=SMALL_HINT[enc], **kw)


def batch(base, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    ctx = base.encode_prompts(["red circle with blue background", "", "gold circle with white background"][:n])
    cond = (torch.rand(n, 3, 16, 16, generator=g) > 0.8).float()
    return x, t, ctx, cond


def test_zero_conv_outputs_zero_but_has_nonzero_weight_gradient():
    z = zero_conv(4, 6)
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    y = z(x)
    assert torch.equal(y, torch.zeros_like(y))
    y.pow(2).sum().backward()  # dL/dy = 2y = 0 here, so use a loss whose gradient is not zero at y = 0
    z.zero_grad()
    (z(x) - 1).pow(2).sum().backward()
    assert z.weight.grad.abs().sum() > 0 and z.bias.grad.abs().sum() > 0
    # dL/dW = dL/dy · x^T, exactly
    expected = (-2 * x).sum(dim=(0, 2, 3))  # dL/dy = -2 everywhere
    # a sum of 50 products can cancel to near 0: scale the tolerance to the dtype and the size of its terms
    atol = 16 * torch.finfo(x.dtype).eps * (2 * x).abs().sum(dim=(0, 2, 3)).max().item()
    torch.testing.assert_close(z.weight.grad[:, :, 0, 0], expected.expand(6, 4), rtol=1e-5, atol=atol)


def test_gaussian_conv_has_the_asked_std():
    c = gaussian_conv(64, 64, std=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(c.weight.std().item() - 0.5) < 0.05 and torch.equal(c.bias, torch.zeros(64))


@pytest.mark.parametrize("encoder", ["paper", "reference"])
def test_identity_at_init_is_bitwise(encoder):
    base = make_base()
    model = ControlledUNet(base, make_net(base, condition_encoder=encoder))
    for seed in range(3):
        x, t, ctx, cond = batch(base, seed=seed)
        with torch.no_grad():
            assert torch.equal(model(x, t, ctx, cond), base(x, t, ctx))


def test_copy_starts_equal_to_the_base_and_is_a_separate_trainable_tensor():
    base = make_base()
    net = make_net(base)
    for a, b in zip(net.input_blocks.parameters(), base.input_blocks.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr() and a.requires_grad
    for a, b in zip(net.middle_block.parameters(), base.middle_block.parameters()):
        assert torch.equal(a, b)
    assert len(net.zero_convs) == len(base.connections) == len(base.skip_shapes()) + 1


def test_base_gets_no_gradient_and_only_zero_convs_move_in_the_first_step():
    base = make_base()
    net = make_net(base)
    model = ControlledUNet(base, net)
    model.train()
    assert not base.training and net.training
    x, t, ctx, cond = batch(base)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = (model(x, t, ctx, cond) - x).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("zero_convs."))
    copy_grads = [g for n, g in grads.items() if n.startswith(("input_blocks.", "middle_block."))]
    assert all(g is None or g.abs().sum() == 0 for g in copy_grads)  # step 0: blocked by the zero convs
    opt.step()
    moved = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("zero_convs.") for k in moved)
    # step 1: the zero convs are no longer zero, so the copy's gradients are not
    opt.zero_grad()
    (model(x, t, ctx, cond) - x).pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters()
               if n.startswith("input_blocks."))
    assert all(p.grad is None for p in base.parameters())


def test_residuals_match_the_base_skips_and_trained_residuals_change_the_output():
    base = make_base()
    net = make_net(base)
    x, t, ctx, cond = batch(base)
    down, mid = net(x, t, ctx, cond)
    assert [tuple(r.shape[1:]) for r in down] == base.skip_shapes() and tuple(mid.shape[1:]) == base.mid_shape()
    with torch.no_grad():
        for z in net.zero_convs:
            z.weight.normal_(0, 0.1)
        out = ControlledUNet(base, net)(x, t, ctx, cond)
    assert not torch.allclose(out, base(x, t, ctx))


@pytest.mark.parametrize("encoder,down,size", [("paper", 0, 16), ("paper", 2, 64), ("reference", 0, 16),
                                               ("reference", 3, 128)])
def test_condition_encoders_adapt_their_strides(encoder, down, size):
    enc = ConditionEncoder(encoder, 3, 8, down)
    out = enc(torch.rand(2, 3, size, size))
    assert out.shape == (2, 8, size >> down, size >> down)
    assert torch.equal(out, torch.zeros_like(out))  # ends in a zero conv
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.layers) == (5 if encoder == "paper" else 8)
    strides = [m.stride[0] for m in enc.layers if isinstance(m, torch.nn.Conv2d)]
    assert strides.count(2) == down
    assert enc.receptive_field() > 1


def test_reference_encoder_for_sd_matches_the_reference_layout():
    enc = ConditionEncoder("reference", 3, 320, 3)
    convs = [m for m in enc.layers if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 96, 96, 256, 320]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert enc(torch.rand(1, 3, 64, 64)).shape == (1, 320, 8, 8)


def test_gaussian_connectors_change_the_output_at_init():
    base = make_base()
    model = ControlledUNet(base, make_net(base, connector="gaussian"))
    x, t, ctx, cond = batch(base)
    with torch.no_grad():
        # the condition encoder's own zero conv keeps c out, but the copy's features get through
        assert not torch.allclose(model(x, t, ctx, cond), base(x, t, ctx))


def test_lite_is_smaller_and_still_identity_at_init():
    base = make_base()
    full, lite = make_net(base), make_net(base, copy="lite")
    assert parameter_counts(lite)["trainable"] < parameter_counts(full)["trainable"] / 2
    x, t, ctx, cond = batch(base)
    d, m = lite(x, t, ctx, cond)
    assert [tuple(r.shape[1:]) for r in d] == base.skip_shapes()
    with torch.no_grad():
        assert torch.equal(ControlledUNet(base, lite)(x, t, ctx, cond), base(x, t, ctx))


def test_parameter_counts_and_connection_table():
    base = make_base()
    net = make_net(base)
    model = ControlledUNet(base, net)
    counts = parameter_counts(model)
    assert counts["frozen"] == sum(p.numel() for p in base.parameters())
    assert counts["trainable"] == sum(p.numel() for p in net.parameters())
    rows = connection_table(net)
    assert [r["h_i"] for r in rows] == [16, 16, 8, 8, 8] and rows[-1]["block"] == "middle"
    assert all(r["connector_params"] == r["channels"] ** 2 + r["channels"] for r in rows)


def test_sum_of_controlnets_and_scales():
    base = make_base()
    a, b = make_net(base), make_net(base)
    with torch.no_grad():
        for net, s in ((a, 0.1), (b, 0.2)):
            for z in net.zero_convs:
                z.weight.normal_(0, s)
    x, t, ctx, cond = batch(base)
    with torch.no_grad():
        da, ma = a(x, t, ctx, cond)
        db, mb = b(x, t, ctx, cond)
        d, m = control_residuals([a, b], x, t, ctx, [cond, cond], [1.0, 0.5])
        for r, ra, rb in zip(d, da, db):
            torch.testing.assert_close(r, ra + 0.5 * rb)
        torch.testing.assert_close(m, ma + 0.5 * mb)
        w = [0.0, 1.0, 2.0, 0.0, 3.0]
        d1, m1 = control_residuals([a], x, t, ctx, cond, 1.0, w)
        assert torch.equal(d1[0], torch.zeros_like(d1[0]))
        torch.testing.assert_close(d1[2], 2 * da[2])
        torch.testing.assert_close(m1, 3 * ma)
        single = ControlledUNet(base, [a])(x, t, ctx, [cond])
        torch.testing.assert_close(single, base(x, t, ctx, down_residuals=da, mid_residual=ma))


def test_bad_inputs_name_what_was_expected():
    base = make_base()
    net = make_net(base)
    model = ControlledUNet(base, net)
    x, t, ctx, cond = batch(base)
    with pytest.raises(ValueError, match=r"condition: expected spatial size 16x16, got 32x32"):
        model(x, t, ctx, torch.zeros(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"condition: expected 3 channels .* got 1"):
        model(x, t, ctx, torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"condition: expected values in \[0.0, 1.0\]"):
        model(x, t, ctx, cond * 2 - 1 - 0.5)
    with pytest.raises(ValueError, match="expected 2 values"):
        control_residuals([net, net], x, t, ctx, [cond, cond], [1.0])
    with pytest.raises(ValueError, match=r"connection_scales: expected 5 values"):
        control_residuals([net], x, t, ctx, cond, 1.0, [1.0] * 4)
    with pytest.raises(ValueError, match=r"down_residuals: expected 4 tensors"):
        base(x, t, ctx, down_residuals=[torch.zeros(3, 8, 16, 16)] * 3)
    other = ToyUNet(UNetConfig(image_size=16, channels=(8, 8), attention_levels=(False, True), context_dim=16,
                               groups=4, text_layers=1))
    with pytest.raises(ValueError, match=r"ControlNet was built for another base: channels: expected \[8, 16\]"):
        ControlledUNet(other, net)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ControlledUNet(make_base(seed=5), net)  # same layout, other weights: a warning, not an error
    assert any("other weights" in str(m.message) for m in w)
    with pytest.raises(ValueError, match="condition_encoder: expected one of"):
        ControlNetConfig(base=CFG.to_dict(), condition_encoder="vae")
    with pytest.raises(ValueError, match=r"condition_size: expected the base's size 16 times a power of 2, got 24"):
        ControlNetConfig(base=CFG.to_dict(), condition_size=24)


def test_checkpoint_round_trip(tmp_path):
    base = make_base()
    net = make_net(base, condition_encoder="paper")
    with torch.no_grad():
        for z in net.zero_convs:
            z.weight.normal_()
    save_checkpoint(net, tmp_path / "cn.pt")
    back = load_checkpoint(tmp_path / "cn.pt", ControlNet, ControlNetConfig)
    assert back.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_trainable_copy_unfreezes():
    m = torch.nn.Linear(2, 2).requires_grad_(False)
    c = trainable_copy(m)
    assert all(p.requires_grad for p in c.parameters()) and not any(p.requires_grad for p in m.parameters())


def test_a_precomputed_condition_embedding_gives_the_same_residuals():
    """c_f = E(c) depends on c alone: passing it in (as the sampler does) changes nothing."""
    base = tiny_base()
    net = tiny_controlnet(base, seed=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every zero layer non-zero
        g = torch.Generator().manual_seed(0)
        x, cond = torch.randn(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
        t, ctx = torch.tensor([10, 900]), base.encode_prompts(["red circle with blue background", ""])
        d, m = net(x, t, ctx, cond)
        d2, m2 = control_residuals([net], x, t, ctx, [cond], 1.0, condition_features=[net.condition_encoder(cond)])
        for a, b in zip([*d, m], [*d2, m2]):
            assert a.abs().max() > 0
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("options, message", [
    (dict(hint_channels=()), "hint_channels: expected one or more positive integer widths"),
    (dict(hint_channels=(16, 0)), "hint_channels: expected one or more positive integer widths"),
    (dict(variant="gaussian", connector_std=float("nan")), "connector_std: expected a finite number > 0"),
])
def test_bad_controlnet_options_are_refused(options, message):
    from cnetlib.controlnet import toy_controlnet

    with pytest.raises(ValueError, match=message):
        toy_controlnet(tiny_base(), **options)


def test_broken_checkpoint_files_name_the_file(tmp_path):
    base = tiny_base()
    good = tmp_path / "good.pt"
    save_checkpoint(base, good)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:1000])
    for name, message in (("empty.pt", "the file is empty"), ("garbage.pt", "not a readable checkpoint"),
                          ("truncated.pt", "not a readable checkpoint")):
        with pytest.raises(ValueError, match=message) as e:
            load_checkpoint(tmp_path / name, ToyUNet, UNetConfig)
        assert name in str(e.value)
    with torch.no_grad():
        next(base.parameters()).fill_(float("nan"))
    save_checkpoint(base, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        load_checkpoint(tmp_path / "nan.pt", ToyUNet, UNetConfig)


def test_base_and_controlnet_swapped_is_named():
    base = tiny_base()
    net = tiny_controlnet(base)
    with pytest.raises(TypeError, match="base: expected the frozen ToyUNet, got ControlNet"):
        ControlledUNet(net, base)
    with pytest.raises(TypeError, match=r"controlnets\[0\]: expected a ControlNet, got ToyUNet"):
        ControlledUNet(base, [base])


def test_controlnet_lite_is_its_own_class_and_loads_through_controlnet(tmp_path):
    from cnetlib.checkpoint import load_checkpoint, save_checkpoint
    from cnetlib.controlnet import ControlNet, ControlNetConfig, ControlNetLite, toy_controlnet
    from tiny import TINY_HINT, tiny_base

    base = tiny_base()
    lite = toy_controlnet(base, "lite", hint_channels=TINY_HINT)
    assert type(lite) is ControlNetLite and not hasattr(lite, "middle_block")
    assert type(ControlNet(lite.config)) is ControlNetLite                  # config-driven, as a checkpoint loads it
    assert type(ControlNetLite.from_unet(base, hint_channels=TINY_HINT)) is ControlNetLite
    assert type(toy_controlnet(base, hint_channels=TINY_HINT)) is ControlNet
    save_checkpoint(lite, tmp_path / "lite.pt")
    again = load_checkpoint(tmp_path / "lite.pt", ControlNet, ControlNetConfig)
    assert type(again) is ControlNetLite
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    c, ctx = torch.rand(2, 3, 16, 16), base.encode_prompts(["a", "b"])
    for a, b in zip(lite(x, t, ctx, c)[0], again(x, t, ctx, c)[0]):
        torch.testing.assert_close(a, b)


def test_cross_norm_connectors_inject_a_fixed_size_residual_from_step_0():
    """ControlNeXt's cross normalisation (chapter 05): r = 0.2·((z − μ_z)/σ_z·σ_h + μ_h),
    per image, whatever the conv's weights; so its size is set by the features, not learned."""
    from cnetlib.controlnet import CrossNormConv

    conn = CrossNormConv(8, generator=torch.Generator().manual_seed(0))
    h = 3.0 + 2.0 * torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    r = conn(h)
    torch.testing.assert_close(r.mean((1, 2, 3)), 0.2 * h.mean((1, 2, 3)))
    torch.testing.assert_close(r.std((1, 2, 3)), 0.2 * h.std((1, 2, 3)), rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        conn.weight.mul_(100.0)   # a 100x larger conv: the same residual size
    torch.testing.assert_close(conn(h).std((1, 2, 3)), 0.2 * h.std((1, 2, 3)), rtol=1e-3, atol=1e-5)
    base = tiny_base()
    net = tiny_controlnet(base, connector="cross_norm")
    assert all(isinstance(z, CrossNormConv) for z in net.zero_convs)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        down, mid = net(x, torch.tensor([10, 500]), base.encode_prompts(["red", "blue"]), torch.rand(2, 3, 16, 16))
    assert all(float(r.abs().max()) > 0 for r in down)   # not zero at step 0, unlike zero convs
