"""Every diffusers ControlNet either loads equal or is refused by name (issue 17).

Each key of diffusers' ``UNet2DConditionModel`` and ``ControlNetModel`` configs is
honoured (``SHARED_KEYS``, the ControlNet's own keys), irrelevant to a ControlNet
(``BASE_ONLY``), or refused unless it holds SD's value (``UNSUPPORTED``). The key lists
are checked against the constructors' signatures, so a key a later diffusers adds fails
here instead of passing silently. Chapter 08's table of what loads is this file's last test.
"""
import inspect
from types import SimpleNamespace

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402

from cnetlib.sd import (  # noqa: E402
    SD21_UNET_CONFIG, TINY_UNET_CONFIG, SDControlNet, controlnet_config, fill_zero_layers,
)
from cnetlib.sd.config import BASE_ONLY, CONTROLNET_KEYS, SHARED_KEYS, UNSUPPORTED  # noqa: E402

KNOWN = set(SHARED_KEYS) | set(UNSUPPORTED) | set(BASE_ONLY)


def params(cls) -> set[str]:
    return {k for k in inspect.signature(cls.__init__).parameters if k != "self"}


def test_every_diffusers_config_key_is_decided():
    assert params(UNet2DConditionModel) - KNOWN == set()
    assert params(ControlNetModel) - KNOWN - set(CONTROLNET_KEYS) == set()


def other_value(neutral):
    """A value other than SD's for a key of UNSUPPORTED."""
    if neutral is None:
        return 8
    if isinstance(neutral, bool):
        return not neutral
    if isinstance(neutral, str):
        return "other"
    if neutral == 0:
        return 0.1
    return 1.41 if isinstance(neutral, float) else 1


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_a_key_sd_controlnet_does_not_implement_is_refused_by_name(key):
    value = other_value(UNSUPPORTED[key])
    with pytest.raises(ValueError, match=f"^{key}: expected"):
        controlnet_config({**TINY_UNET_CONFIG, key: value})
    with pytest.raises(ValueError, match=f"^{key}: expected"):           # and from a diffusers ControlNet's config
        SDControlNet.from_diffusers(SimpleNamespace(config={**controlnet_config(TINY_UNET_CONFIG), key: value}))


@pytest.mark.parametrize("options, message", [
    ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}, "down_block_types: expected blocks among"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type: expected"),
    ({"mid_block_type": None}, "mid_block_type: expected"),
])
def test_blocks_sd_controlnet_does_not_build_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        controlnet_config({**TINY_UNET_CONFIG, **options})


@pytest.mark.parametrize("widths", [(8, 16), (8, 16, 32, 64, 128)])
def test_a_condition_encoder_of_another_depth_is_refused_naming_its_key(widths):
    with pytest.raises(ValueError, match=r"conditioning_embedding_out_channels: expected 4 widths"):
        controlnet_config(TINY_UNET_CONFIG, conditioning_embedding_out_channels=widths)


def diffusers_controlnet(unet_config: dict, **controlnet_options) -> ControlNetModel:
    torch.manual_seed(0)
    model = ControlNetModel.from_unet(UNet2DConditionModel(**unet_config))
    if controlnet_options:   # from_unet takes no global_pool_conditions: the same weights under the other config
        weights = model.state_dict()
        model = ControlNetModel.from_config(model.config, **controlnet_options)
        assert all(model.config[k] == v for k, v in controlnet_options.items())
        model.load_state_dict(weights)
    return fill_zero_layers(model, seed=1).eval()


def assert_residuals_equal(ours: SDControlNet, theirs: ControlNetModel, unet_config: dict) -> None:
    s, b = unet_config["sample_size"], 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 4, s, s, generator=g)
    ehs = torch.randn(b, 7, unet_config["cross_attention_dim"], generator=g)
    cond = torch.rand(b, 3, 8 * s, 8 * s, generator=g)
    with torch.no_grad():
        for kw in ({"conditioning_scale": 1.0}, {"conditioning_scale": 0.5}, {"guess_mode": True}):
            d, m = ours.eval()(x, torch.tensor(321), ehs, cond, **kw)
            d_ref, m_ref = theirs(x, torch.tensor(321), ehs, cond, return_dict=False, **kw)
            for a, r in zip([*d, m], [*d_ref, m_ref]):
                assert a.shape == r.shape
                scale = max(1.0, float(r.abs().max()))     # float32 rounding, scaled to the residuals' size
                torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5 * scale)


#: Chapter 08's table: which published ControlNet families load, and which are refused.
FAMILIES = {
    "ControlNet 1.0 / 1.1 (SD 1.5)": (TINY_UNET_CONFIG, {}),
    "ControlNet 1.1 shuffle (global_pool_conditions)": (TINY_UNET_CONFIG, {"global_pool_conditions": True}),
    "SD 2.x (linear projections, per-level heads)": ({**TINY_UNET_CONFIG, "use_linear_projection": True,
                                                     "attention_head_dim": [2, 4], "cross_attention_dim": 24}, {}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_published_families_load_equal_on_every_path(family, tmp_path):
    unet_config, options = FAMILIES[family]
    theirs = diffusers_controlnet(unet_config, **options)
    ours = SDControlNet.from_diffusers(theirs)
    assert_residuals_equal(ours, theirs, unet_config)                       # from_diffusers
    ours.save_pretrained(tmp_path / "cn")                                   # our save -> our load, and diffusers'
    assert_residuals_equal(SDControlNet.from_pretrained(tmp_path / "cn"), theirs, unet_config)
    assert_residuals_equal(ours, ControlNetModel.from_pretrained(tmp_path / "cn").eval(), unet_config)
    assert_residuals_equal(ours, ours.to_diffusers().eval(), unet_config)  # export
    torch.manual_seed(0)                                                    # from_unet: the same copy as diffusers'
    unet = UNet2DConditionModel(**unet_config)
    copy = fill_zero_layers(SDControlNet.from_unet(unet, global_pool_conditions=options.get(
        "global_pool_conditions", False)), seed=1)
    ref = diffusers_controlnet(unet_config, **options)
    ref.load_state_dict(copy.to_diffusers().state_dict())
    assert_residuals_equal(copy, ref, unet_config)
    if options.get("global_pool_conditions"):
        assert SDControlNet.from_pretrained(tmp_path / "cn").config["global_pool_conditions"] is True


def test_sdxl_controlnets_are_refused_by_name():
    sdxl = {**controlnet_config(TINY_UNET_CONFIG), "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816}
    with pytest.raises(ValueError, match="^addition_embed_type: expected None"):
        SDControlNet.from_diffusers(SimpleNamespace(config=sdxl))
    assert controlnet_config(SD21_UNET_CONFIG)["use_linear_projection"] is True
