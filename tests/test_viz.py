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


def test_image_grid_labels_its_rows_and_refuses_a_wrong_count():
    import pytest

    fig = image_grid(torch.zeros(4, 3, 8, 8), ncols=2, row_labels=["base", "ControlNet"])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["base", "ControlNet"]
    with pytest.raises(ValueError, match="expected 2 labels"):
        image_grid(torch.zeros(4, 3, 8, 8), ncols=2, row_labels=["one"])
    plt.close("all")


def test_noised_grid_title_has_coefficients_and_its_leak_row_shows_the_colour_only_for_linear():
    data = Fill50k(8)
    x0 = torch.from_numpy(data.targets).permute(0, 3, 1, 2).float() / 127.5 - 1
    true_mean = data.targets.reshape(8, -1, 3).mean(1)
    error = {}
    for schedule in (linear_schedule(), cosine_schedule()):
        fig = noised_grid(x0, 999, schedule)
        leak = np.stack([np.asarray(fig.axes[8 + k].images[0].get_array())[0, 0] for k in range(8)]).astype(float)
        error[schedule.name] = np.abs(leak - true_mean).mean()    # row 2: the mean colour of x_T / √ᾱ_T
    assert "√ᾱ_t = 0.068" not in fig._suptitle.get_text() and "cosine" in fig._suptitle.get_text()
    assert "√ᾱ_t = 0.068" in noised_grid(x0, 999, linear_schedule())._suptitle.get_text()
    # SD's schedule leaks each image's colour (noise in the mean: about 1/32 / 0.068 of the range);
    # the cosine schedule leaves nothing to read
    assert error["linear"] < 45 < 90 < error["cosine"]
    plt.close("all")


def test_other_plots_return_figures():
    assert len(plot_schedules([linear_schedule(), cosine_schedule()]).axes) == 2
    assert plot_losses(list(np.linspace(1, 0.1, 100)), smooth=10).axes[0].get_yscale() == "log"
    assert wrap_prompt("light golden rod yellow circle with red background", 12).count("\n") >= 2
    torch.manual_seed(0)
    m = ToyUNet(UNetConfig(image_size=16, channels=(8, 16), attention_levels=(False, True), context_dim=16))
    fig = sample_grid(m.eval(), ["red circle with blue background"] * 2, guidance=2.0, steps=2)
    assert len(fig.axes) == 2 and "β_cfg = 2" in fig._suptitle.get_text()
    assert "not measured" in sample_grid(m.eval(), ["red circle with blue background"], guidance=2.5, steps=2,
                                         measured=(1.0, 3.0))._suptitle.get_text()
    plt.close("all")
