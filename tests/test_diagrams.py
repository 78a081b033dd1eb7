"""The diagrams are drawn from the code's own tables: what they show follows the objects given."""
import matplotlib.pyplot as plt
import pytest

from cnetlib.diagrams import (cfg_control_diagram, controlnet_block_diagram, flow_diagram, gradient_front_diagram,
                              multi_control_diagram, unet_diagram)
from cnetlib.probes import GROUPS
from cnetlib.unet import ToyUNet, UNetConfig


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_the_unet_diagram_marks_one_residual_per_connection_with_its_side():
    toy = ToyUNet(UNetConfig(channels=(8, 16, 32), attention_levels=(False, False, True), context_dim=16))
    shown = texts(unet_diagram(toy.connections))
    assert [t for t in shown if t.startswith("r_")] == [f"r_{c.index}  (h = {c.resolution})" for c in toy.connections]
    sd_like = ToyUNet(UNetConfig(channels=(4, 4, 4, 4), layers_per_block=2, attention_levels=(False,) * 4,
                                 image_size=64, context_dim=8))
    fig = unet_diagram(sd_like.connections, controlnet=True)
    assert sum(t.startswith("r_") for t in texts(fig)) == 13 and "12 skips + middle = 13 connections" in texts(fig)
    assert texts(fig).count("Z") == 13                       # one zero conv per connection, the middle one included
    with pytest.raises(ValueError, match="ending with the middle block"):
        unet_diagram(sd_like.connections[:-1])
    plt.close("all")


def test_the_gradient_front_diagram_shades_what_the_measurement_says():
    fig = gradient_front_diagram({GROUPS[0]: 0, GROUPS[1]: 1, GROUPS[2]: 2, GROUPS[3]: 1})
    green = [p for p in fig.axes[0].patches if getattr(p, "get_facecolor", None) and p.get_facecolor()[:3] ==
             pytest.approx((0xa1 / 255, 0xd9 / 255, 0x9b / 255), abs=1e-3)]
    assert len(green) == 1 + 3 + 4                           # step 0: Z; step 1: Z, Θc, Z in E; step 2: all four
    never = gradient_front_diagram({g: None for g in GROUPS})
    assert not [p for p in never.axes[0].patches if p.get_facecolor()[:3] == pytest.approx((0xa1 / 255, 0xd9 / 255, 0x9b / 255), abs=1e-3)]
    plt.close("all")


def test_the_cfg_diagram_follows_the_mode_table():
    fig = cfg_control_diagram(("both", "cond_only"))
    both, cond_only = ([t.get_text() for t in ax.texts] for ax in fig.axes)
    assert "no control" not in both and sum(t.startswith("s · r_i") for t in both) == 2
    assert any('read\nwith ""' in t for t in both)           # the ε_uc branch's ControlNet reads the empty prompt
    assert "no control" in cond_only and cond_only.count("s · r_i") == 1
    plt.close("all")


def test_the_block_multi_and_flow_diagrams():
    assert "y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2)" in texts(controlnet_block_diagram())
    assert sum(t.startswith("c_") for t in texts(multi_control_diagram(("a", "b", "c")))) == 3
    fig = flow_diagram([("one", "neutral"), ("two", "trainable"), ("three", "frozen")], back=(2, 1, "grad"),
                       notes=["a note"])
    assert {"one", "two", "three", "grad", "a note"} <= set(texts(fig))
    with pytest.raises(ValueError, match="expected kinds"):
        flow_diagram([("x", "purple")])
    plt.close("all")
