import pytest
import torch

from cnetlib.checkpoint import ConfigMismatchError, load_checkpoint, save_checkpoint
from cnetlib.unet import Tokenizer, ToyUNet, UNetConfig, count_parameters, default_vocabulary

SMALL = dict(channels=(16, 32), attention_levels=(False, True), context_dim=32, groups=4, text_layers=1)


def small_unet(**kw) -> ToyUNet:
    torch.manual_seed(0)
    return ToyUNet(UNetConfig(image_size=16, **{**SMALL, **kw})).eval()


def inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.config.image_size
    x = torch.randn(batch, 3, s, s, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = model.encode_prompts(["red circle with blue background", ""][:batch] + [""] * (batch - 2))
    return x, t, ctx


def test_tokenizer_marks_empty_prompt_and_unknown_words():
    tok = Tokenizer(default_vocabulary(), max_tokens=8)
    ids = tok(["pale golden rod circle", "", "zzz"])
    assert ids[0, :6].tolist() == [1, tok.stoi["pale"], tok.stoi["golden"], tok.stoi["rod"], tok.stoi["circle"], 2]
    assert ids[1].tolist() == [1, 2, 0, 0, 0, 0, 0, 0]
    assert ids[2, 1].item() == 3
    with pytest.raises(ValueError, match="at most 6 words"):
        tok(["a b c d e f g"])


def test_sd_shaped_config_has_twelve_skips_and_one_middle():
    """SD's layout (4 levels, 2 layers per level) gives 12 skip connections + 1 middle."""
    cfg = UNetConfig(image_size=64, channels=(8, 8, 16, 16), layers_per_block=2,
                     attention_levels=(True, True, True, False), context_dim=16, groups=4, text_layers=1)
    m = ToyUNet(cfg)
    assert len(m.skip_shapes()) == 12
    assert [h for _, h, _ in m.skip_shapes()] == [64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8]
    assert m.mid_shape() == (16, 8, 8)
    assert len(m.output_blocks) == 12


def test_skip_shapes_match_the_actual_skips():
    m = small_unet()
    x, t, ctx = inputs(m)
    seen = []
    hooks = [b.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape[1:]))) for b in m.input_blocks]
    mid = []
    hooks.append(m.middle_block.register_forward_hook(lambda mod, i, o: mid.append(tuple(o.shape[1:]))))
    m(x, t, ctx)
    for h in hooks:
        h.remove()
    assert seen == m.skip_shapes() and mid == [m.mid_shape()]
    assert m.skip_shapes(32)[0] == (16, 32, 32)
    assert [c.kind for c in m.connections] == ["input conv", "resnet", "downsample", "resnet", "middle"]


def test_zero_residuals_change_nothing_and_nonzero_do():
    m = small_unet()
    x, t, ctx = inputs(m)
    with torch.no_grad():
        base = m(x, t, ctx)
        zeros = [torch.zeros(2, *s) for s in m.skip_shapes()]
        same = m(x, t, ctx, down_residuals=zeros, mid_residual=torch.zeros(2, *m.mid_shape()))
        assert torch.equal(base, same)
        bumped = [z.clone() for z in zeros]
        bumped[1] += 0.5
        assert not torch.allclose(base, m(x, t, ctx, down_residuals=bumped))
        assert not torch.allclose(base, m(x, t, ctx, mid_residual=torch.ones(2, *m.mid_shape())))


def test_prompt_changes_the_output():
    m = small_unet()
    x, t, _ = inputs(m)
    with torch.no_grad():
        a = m(x, t, m.encode_prompts(["red circle with blue background"] * 2))
        b = m(x, t, m.encode_prompts(["blue circle with red background"] * 2))
    assert not torch.allclose(a, b)


def test_bad_inputs_name_expected_and_given():
    m = small_unet()
    x, t, ctx = inputs(m)
    with pytest.raises(ValueError, match=r"expected 3 channels.*got 1"):
        m(x[:, :1], t, ctx)
    with pytest.raises(ValueError, match="divisible by 2"):
        m(torch.randn(2, 3, 15, 15), t, ctx)
    with pytest.raises(ValueError, match=r"down_residuals: expected 4 tensors.*got 3"):
        m(x, t, ctx, down_residuals=[torch.zeros(2, *s) for s in m.skip_shapes()[:3]])
    bad = [torch.zeros(2, *s) for s in m.skip_shapes()]
    bad[2] = torch.zeros(2, 16, 4, 4)
    with pytest.raises(ValueError, match=r"down_residuals\[2\]: expected shape \(2, 16, 8, 8\), got \(2, 16, 4, 4\)"):
        m(x, t, ctx, down_residuals=bad)
    with pytest.raises(ValueError, match="mid_residual: expected shape"):
        m(x, t, ctx, mid_residual=torch.zeros(2, 1, 1, 1))
    with pytest.raises(ValueError, match="context: expected shape"):
        m(x, t, ctx[:1])
    with pytest.raises(ValueError, match="attention_levels"):
        UNetConfig(channels=(8, 16), attention_levels=(True,))
    with pytest.raises(ValueError, match="image_size: expected a multiple of 4"):
        UNetConfig(image_size=30, channels=(8, 16, 16), attention_levels=(False, False, False))


def test_checkpoint_round_trip_and_config_mismatch(tmp_path):
    m = small_unet()
    path = save_checkpoint(m, tmp_path / "m.pt", meta={"note": "hi"})
    m2 = load_checkpoint(path, ToyUNet, UNetConfig, expected_config=m.config).eval()
    x, t, ctx = inputs(m)
    with torch.no_grad():
        assert torch.equal(m(x, t, ctx), m2(x, t, m2.encode_prompts(["red circle with blue background", ""])))
    assert m2.checkpoint_meta == {"note": "hi"} and m2.config == m.config
    other = UNetConfig(image_size=16, **{**SMALL, "channels": (16, 16)})
    with pytest.raises(ConfigMismatchError, match=r"channels: expected \[16, 16\], given \[16, 32\]"):
        load_checkpoint(path, ToyUNet, UNetConfig, expected_config=other)
    torch.save({"x": 1}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="expected a cnetlib-checkpoint/1 checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", ToyUNet, UNetConfig)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt", ToyUNet, UNetConfig)


def test_parameter_count_respects_freezing():
    m = small_unet()
    n = count_parameters(m)
    assert n == sum(p.numel() for p in m.parameters()) and n > 0
    m.requires_grad_(False)
    assert count_parameters(m, trainable_only=True) == 0
