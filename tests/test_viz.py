import matplotlib.pyplot as plt
import numpy as np
import torch

from cnetlib.base import sample_grid
from cnetlib.data import Fill50k
from cnetlib.diffusion import cosine_schedule, linear_schedule
from cnetlib.unet import ToyUNet, UNetConfig
from cnetlib.viz import image_grid, noised_grid, plot_losses, plot_schedules, wrap_prompt


def test_image_grid_accepts_floats_and_uint8():
    ds = Fill50k(5)
    fig = image_grid(ds.targets, ["a"] * 5, ncols=3)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "a"
    img = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(img), ds.targets[0])
    fig2 = image_grid(torch.zeros(2, 3, 8, 8))
    assert np.asarray(fig2.axes[0].images[0].get_array()).max() in (127, 128)
    plt.close("all")


def test_noised_grid_at_t0_is_the_image_and_title_has_coefficients():
    x0 = torch.from_numpy(Fill50k(3).targets).permute(0, 3, 1, 2).float() / 127.5 - 1
    fig = noised_grid(x0, 999, linear_schedule())
    assert "√ᾱ_t = 0.068" in fig._suptitle.get_text()
    plt.close("all")


def test_other_plots_return_figures():
    assert len(plot_schedules([linear_schedule(), cosine_schedule()]).axes) == 2
    assert plot_losses(list(np.linspace(1, 0.1, 100)), smooth=10).axes[0].get_yscale() == "log"
    assert wrap_prompt("light golden rod yellow circle with red background", 12).count("\n") >= 2
    torch.manual_seed(0)
    m = ToyUNet(UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True), context_dim=16))
    fig = sample_grid(m.eval(), ["red circle with blue background"] * 2, guidance=2.0, steps=2)
    assert len(fig.axes) == 2 and "β = 2" in fig._suptitle.get_text()
    plt.close("all")
