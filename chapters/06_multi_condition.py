# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Two conditions at once: summing ControlNets
#
# One frozen model, several ControlNets, each trained alone on its own condition. The
# paper composes them in the simplest way there is (section 4, "Composing multiple
# ControlNets"): run each ControlNet on its condition and **add their outputs**,
# connection by connection, "without extra weighting or linear interpolation". diffusers
# (`MultiControlNetModel`) does the same, with one `controlnet_conditioning_scale` per
# ControlNet.
#
# To test it we need a second condition that carries *different* information from the
# outline. Ours is a **colour hint**: the target image averaged over a 4 × 4 grid of
# blocks, blown back up. It says which colours go roughly where, but draws no outline;
# the outline says exactly where the circle is, but no colour. Neither prompt is given:
# the conditions must carry everything. We measure how well samples satisfy each
# condition alone and both together, with the plain sum and with scales, and what
# happens when the two disagree.
#
# **Time on a 2-core CPU:** about 2 minutes in full mode (the colour ControlNet ships in
# `data/sudden_convergence/colour/`; retraining it is
# `python -m cnetlib.experiments.runs colour`, 10 minutes), 1 minute in smoke mode.

# %%
# On Colab: fetch the book and install cnetlib (does nothing anywhere else).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("controlnet-book"):
    repo = os.environ.get("CNETLIB_REPO", "https://github.com/controlnet-book/controlnet-book")
    subprocess.run(["git", "clone", "--depth", "1", repo, "controlnet-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "controlnet-book"], check=True)
    sys.path.insert(0, os.path.abspath("controlnet-book"))

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import cnetlib
from cnetlib import pick, save_figure, smoke_mode

SMOKE = smoke_mode()  # set CNETLIB_SMOKE=1 for the short run CI does
print(f"cnetlib {cnetlib.__version__}, torch {torch.__version__}, smoke mode: {SMOKE}")

# %% [markdown]
# ## 1 · The second condition
#
# `cnetlib.data.colour_hint` makes it from a target; `Fill50k(n, condition="colour_hint")`
# serves it as the source. The colour ControlNet was trained exactly like the outline
# one of chapter 04 (same recipe, same base, 2,000 steps), only on these sources.

# %%
from cnetlib.data import Fill50k, colour_hint, source_to_tensor
from cnetlib.viz import image_grid

pairs = Fill50k(pick(32, 8), seed=1)           # chapter 04's held-out pairs
outline = source_to_tensor(pairs.sources)
hint = source_to_tensor(colour_hint(pairs.targets))
truth = pairs.prompts                            # the colours we want: never shown to the model
fig = image_grid(np.concatenate([pairs.sources[:6], colour_hint(pairs.targets[:6]), pairs.targets[:6]]), ncols=6,
                 scale=1.2, suptitle="outline · colour hint · target")
save_figure(fig, "06_conditions")
plt.show()

# %%
from cnetlib.base import load_or_train_base
from cnetlib.experiments.runs import load_controlnet, load_run, SHIPPED

base = load_or_train_base()
net_outline = load_controlnet("seed0")
net_colour = load_controlnet("colour")
colour_run = load_run(SHIPPED / "colour")
print("colour ControlNet, as trained (with the empty prompt, colours right):",
      f"circle {colour_run.summary['circle_accuracy_no_prompt_before']:.2f} → "
      f"{colour_run.summary['circle_accuracy_no_prompt_after']:.2f}, "
      f"background {colour_run.summary['background_accuracy_no_prompt_before']:.2f} → "
      f"{colour_run.summary['background_accuracy_no_prompt_after']:.2f}")

# %% [markdown]
# ## 2 · Each alone, and both summed
#
# `sample(base, prompts, controls)` takes any list of `Control(controlnet, condition,
# scale)`; `control_residuals` adds their residuals per connection, each times its scale:
#
# ```python
# for net, cond, s in zip(controlnets, conditions, scales):
#     d, m = net(x, t, context, cond)
#     d = [r * (s * wi) for r, wi in zip(d, w[:-1])]          # its scale (and chapter 05's w_i)
#     m = m * (s * w[-1])
#     down = d if down is None else [a + b for a, b in zip(down, d)]
#     mid = m if mid is None else mid + m
# ```
#
# All samples use the empty prompt. Chapter 05 showed that without a prompt the control
# must sit in the guided term to be heard, so we sample in mode `cond_only` at β = 3.
# For each setting: the IoU with the outline's disk, and whether the circle and
# background colours are the pair's (which only the colour hint knows).

# %%
from cnetlib.fidelity import measure
from cnetlib.guidance import Control
from cnetlib.data import TOY_PALETTE

opts = dict(mode="cond_only", guidance=3.0, steps=pick(20, 6))
empty = [""] * len(truth)
settings = {
    "no control": [],
    "outline alone": [Control(net_outline, outline)],
    "colour alone": [Control(net_colour, hint)],
    "outline + colour": [Control(net_outline, outline), Control(net_colour, hint)],
}
results = {name: measure(base, ctrls, empty, pairs.masks, TOY_PALETTE, truth=truth, **opts)
           for name, ctrls in settings.items()}
print(f"{'':<18}{'IoU':>6}{'circle colour':>15}{'background':>12}")
for name, r in results.items():
    print(f"{name:<18}{r['iou']:>6.2f}{r['circle_accuracy']:>15.2f}{r['background_accuracy']:>12.2f}")

# %%
from cnetlib.guidance import sample

k = 6
rows = [sample(base, empty[:k], [Control(c.controlnet, c.condition[:k]) for c in ctrls], seed=0, **opts)
        for ctrls in settings.values()]
fig = image_grid(torch.cat([outline[:k] * 2 - 1, hint[:k] * 2 - 1] + rows), ncols=k, scale=1.15,
                 suptitle="outline · colour hint · samples: no control · outline · colour · outline + colour")
save_figure(fig, "06_single_and_both")
plt.show()

# %% [markdown]
# What the sum does, in numbers:

# %%
chance = 1 / len(TOY_PALETTE)
both, o, c = results["outline + colour"], results["outline alone"], results["colour alone"]
if not SMOKE:
    assert o["iou"] > results["no control"]["iou"] + 0.1             # the outline places the circle...
    assert o["circle_accuracy"] < 3 * chance                          # ...but knows no colour
    assert c["background_accuracy"] > 0.5                              # the hint carries colour
    assert both["iou"] > c["iou"]                                      # the sum keeps the outline's geometry...
    assert both["background_accuracy"] > o["background_accuracy"]     # ...and the hint's colours
    assert both["iou"] > o["iou"]                                      # better placed than by either alone
    assert min(both["circle_accuracy"] - c["circle_accuracy"],
               both["background_accuracy"] - c["background_accuracy"]) > -0.1   # colours about as good as the hint's
print(f"sum vs outline alone: IoU {both['iou']:.2f} vs {o['iou']:.2f}; "
      f"background colour {both['background_accuracy']:.2f} vs {o['background_accuracy']:.2f}")

# %% [markdown]
# In the full run (32 held-out pairs, empty prompt, `cond_only`, β = 3):
#
# * **No control**: the unconditional base draws a circle somewhere (IoU 0.31) in random
#   colours (6–9 % right, chance is about 8 %).
# * **Outline alone** places the circle (IoU 0.49) and knows no colour (still at chance).
# * **Colour hint alone** gets the colours (circle 81 %, background 72 %) and, because
#   its blurred blocks show roughly where the circle is, a fair IoU (0.62).
# * **The plain sum** keeps both: colours as good as the hint's (78 % / 72 %) and an IoU
#   of 0.73, better than either alone. Two ControlNets trained separately, never
#   together, compose by addition, as the paper says.
#
# ## 3 · Scales
#
# diffusers gives each ControlNet its own `controlnet_conditioning_scale`. How do the two
# kinds of fidelity trade as we turn one condition up and the other down?

# %%
grid = pick([0.0, 0.5, 1.0, 1.5], [0.0, 1.0])
table = {}
for so in grid:
    for sc in grid:
        table[(so, sc)] = measure(base, [Control(net_outline, outline, so), Control(net_colour, hint, sc)], empty,
                                  pairs.masks, TOY_PALETTE, truth=truth, **opts)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, key, title in ((axes[0], "iou", "IoU with the outline's disk"),
                       (axes[1], "background_accuracy", "background colour right")):
    m = np.array([[table[(so, sc)][key] for sc in grid] for so in grid])
    im = ax.imshow(m, origin="lower", vmin=0, vmax=1, cmap="viridis")
    ax.set(xticks=range(len(grid)), xticklabels=grid, yticks=range(len(grid)), yticklabels=grid,
           xlabel="colour-hint scale", ylabel="outline scale", title=title)
    for i in range(len(grid)):
        for j in range(len(grid)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
fig.colorbar(im, ax=axes, shrink=0.8)
save_figure(fig, "06_scales")
plt.show()

# %% [markdown]
# ## 4 · When the conditions disagree
#
# Now give the outline of one pair and the colour hint of *another*: the hint's blurred
# circle sits somewhere else, in other colours. The sum cannot satisfy both; which one
# wins, and does the image stay a circle at all?

# %%
from cnetlib.fidelity import condition_iou
from cnetlib.metrics import prompt_following

shift = np.roll(np.arange(len(truth)), 1)      # pair i gets the colour hint of pair i-1
hint_other = hint[shift]
truth_other = [truth[i] for i in shift]
conflict = sample(base, empty, [Control(net_outline, outline), Control(net_colour, hint_other)], seed=0, **opts)

iou_outline = condition_iou(conflict, pairs.masks).mean()
iou_hint = condition_iou(conflict, pairs.masks[shift]).mean()
colours = prompt_following(conflict, truth_other, TOY_PALETTE)
print(f"IoU with the outline's disk {iou_outline:.2f}, with the hint's disk {iou_hint:.2f}; "
      f"colours of the hint: circle {colours.circle_accuracy:.2f}, background {colours.background_accuracy:.2f}")
if not SMOKE:   # neither condition is met as well as when they agree
    assert iou_outline < both["iou"] and iou_hint < both["iou"]
fig = image_grid(torch.cat([outline[:k] * 2 - 1, hint_other[:k] * 2 - 1, conflict[:k]]), ncols=k, scale=1.15,
                 suptitle="conflict: outline · another pair's colour hint · their sum")
save_figure(fig, "06_conflict")
plt.show()

# %% [markdown]
# In the full run's conflict the hint pulls harder: the samples overlap the hint's disk
# (IoU 0.53) a little more than the outline's (0.48), take the hint's background colour
# (81 %) and, half of the time, its circle colour (53 %). Neither condition is met as well
# as when the two agree (0.73): the sum is a compromise, often a circle between the two
# places. The sliders show how turning the outline up moves it back.

# %% [markdown]
# ## 5 · Try it
#
# One scale per ControlNet, and the choice between the matching hint and a conflicting one.

# %%
from cnetlib.fidelity import guidance_view

s_outline = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description="outline")
s_colour = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description="colour hint")
which = widgets.ToggleButtons(options=["matching hint", "conflicting hint"], description="hint")


def show(so: float, sc: float, which: str) -> None:
    h = hint if which == "matching hint" else hint_other
    guidance_view(base, [Control(net_outline, outline[:k], so), Control(net_colour, h[:k], sc)], empty[:k],
                  pairs.masks[:k], title="conditions on top;", **opts)
    plt.show()


show(1.0, 1.0, "matching hint")
display(widgets.VBox([widgets.HBox([s_outline, s_colour]), which,
                      widgets.interactive_output(show, {"so": s_outline, "sc": s_colour, "which": which})]))

# %% [markdown]
# ## What we have
#
# * `cnetlib.guidance.sample` and `control_residuals` take any number of
#   `Control(controlnet, condition, scale)`; their residuals add per connection, as in
#   the paper (all scales 1) and in diffusers (one scale each).
# * A second toy ControlNet on a second kind of condition, trained by the same command,
#   shipped as `data/sudden_convergence/colour/controlnet.pt`.
# * Measured above: each condition alone does its own job, their sum does both; when
#   they disagree the sum is a compromise whose balance the scales set.
