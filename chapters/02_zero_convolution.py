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
# # 02 · Zero convolution: a layer that outputs nothing and still learns
#
# ControlNet attaches a new, trainable network to a frozen diffusion model. A new
# network starts from random weights, and random weights produce random outputs: added
# to the frozen model's features they would wreck what it draws before any learning has
# happened. ControlNet's answer is the **zero convolution** Z: a 1 × 1 convolution whose
# weight and bias are initialised to exactly 0. At step 0 every Z outputs 0, so the
# controlled model *is* the frozen model.
#
# The question users of the reference code ask again and again is: *if the weights are
# zero, aren't the gradients zero too, so that nothing ever trains?* This chapter
# answers it with measurements, on the toy base of chapter 01:
#
# 1. the gradient of a zero layer, by hand and by autograd;
# 2. how the gradient spreads through a ControlNet, one zero layer per step;
# 3. the zero convolutions growing from 0 during a real (short) training;
# 4. what goes wrong with Gaussian-initialised connectors instead: the "harmful noise".
#
# **Time on a 2-core CPU:** about 2 minutes in full mode, 1 in smoke mode.

# %%
# On Colab: fetch the book, then install what this chapter needs (does nothing anywhere else).
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    book = os.path.abspath("controlnet-book")
    if not os.path.isfile(os.path.join(book, "cnetlib", "colab.py")):   # absent, or a clone that failed halfway
        subprocess.run(["rm", "-rf", book], check=True)
        repo = os.environ.get("CNETLIB_REPO", "https://github.com/controlnet-book/controlnet-book")
        if subprocess.run(["git", "clone", "--depth", "1", repo, book]).returncode:
            raise RuntimeError(f"could not clone the book from {repo} (git's message is above): set the "
                               "CNETLIB_REPO environment variable to the book's URL, a fork or a mirror, and rerun")
    if book not in sys.path:
        sys.path.insert(0, book)
    from cnetlib.colab import ensure_installed

    ensure_installed(book, extras=())   # pip installs only what is not importable yet

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
# ## 1 · Zero weights, non-zero gradients
#
# Take one layer y = W x + b and a loss L(y). The chain rule gives
#
# $$\frac{\partial L}{\partial W} = \frac{\partial L}{\partial y}\, x^\top, \qquad
#   \frac{\partial L}{\partial b} = \frac{\partial L}{\partial y}, \qquad
#   \frac{\partial L}{\partial x} = W^\top \frac{\partial L}{\partial y}.$$
#
# With W = 0 and b = 0 the output is 0, but ∂L/∂W = ∂L/∂y · xᵀ is not: it is the input
# x itself, weighted by how the loss wants y to change. Only the gradient that flows
# *through* the layer to what lies before it, ∂L/∂x = Wᵀ ∂L/∂y, is zero. So the zero
# layer learns at once, and what lies behind it learns one step later.
#
# `cnetlib.controlnet.zero_conv` is that layer, a 1 × 1 convolution by default
# (`kernel_size=1`):
#
# ```python
# conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
# nn.init.zeros_(conv.weight)
# nn.init.zeros_(conv.bias)
# ```

# %%
from cnetlib.controlnet import zero_conv

torch.manual_seed(0)
z = zero_conv(4, 2)
x = torch.randn(1, 4, 3, 3, requires_grad=True)
target = torch.ones(1, 2, 3, 3)
y = z(x)
loss = (y - target).pow(2).sum()
loss.backward()
dL_dy = 2 * (y - target)                                        # = -2 everywhere, since y = 0
by_hand = torch.einsum("bohw,bihw->oi", dL_dy, x.detach())      # ∂L/∂W = Σ ∂L/∂y · xᵀ
print("y =", y.abs().max().item(), "everywhere")
print("‖∂L/∂W‖ =", z.weight.grad.norm().item(), "  ‖∂L/∂b‖ =", z.bias.grad.norm().item(),
      "  ‖∂L/∂x‖ =", x.grad.norm().item())
assert torch.equal(y, torch.zeros_like(y))
assert torch.allclose(z.weight.grad[:, :, 0, 0], by_hand)       # autograd agrees with the chain rule
assert z.bias.grad.abs().min() > 0 and torch.equal(x.grad, torch.zeros_like(x.grad))

# %% [markdown]
# ## 2 · The gradient front in a ControlNet
#
# A ControlNet (chapter 03 builds it) has zero layers in two places: the connectors Z
# that write into the frozen model (Θz2) and the last layer of the condition encoder E
# (Θz1). Between the loss and everything trainable there is at least one zero layer.
# So, by the rule above:
#
# * step 0: only the connectors Z get a gradient (their input, the copy's features, is
#   not zero); the copy Θc and the encoder E sit behind a zero layer and get exactly 0;
# * step 1: the connectors are no longer zero, so the gradient reaches the copy Θc and
#   the zero layer inside E (its input, E's hidden features, is not zero);
# * step 2: that layer is no longer zero either, and the rest of E learns.
#
# We measure it: three AdamW steps on one batch of Fill50k, with the gradient norm of
# each group of parameters at each step, and whether its weights moved.

# %%
from cnetlib.base import load_or_train_base
from cnetlib.controlnet import toy_controlnet
from cnetlib.data import Fill50k, source_to_tensor, target_to_tensor
from cnetlib.probes import GROUPS, first_nonzero_step, gradient_front

base = load_or_train_base()
pairs = Fill50k(16, seed=5)
x0, cond = target_to_tensor(pairs.targets), source_to_tensor(pairs.sources)
rows = gradient_front(base, toy_controlnet(base), x0, cond, pairs.prompts, steps=3, lr=1e-3, weight_decay=0.0)
print(f"{'step':>4}  {'group':<24} {'‖gradient‖':>11}  moved")
for r in rows:
    print(f"{r['step']:>4}  {r['group']:<24} {r['grad_norm']:>11.3g}  {'yes' if r['moved'] else 'no'}")
first = first_nonzero_step(rows)
print("\nfirst step with a gradient:", first)
assert first == {GROUPS[0]: 0, GROUPS[1]: 1, GROUPS[2]: 2, GROUPS[3]: 1}
assert [r["group"] for r in rows if r["step"] == 0 and r["moved"]] == [GROUPS[0]]   # step 0 moves only Z

# %% [markdown]
# Exactly as the chain rule says. One caveat that trips people reading the reference
# code: it trains with `torch.optim.AdamW(params, lr)`, whose default weight decay is
# 0.01. Weight decay shrinks *every* weight by lr · 0.01 per step, gradient or not, so
# with it the copy's weights do change at step 0 — by a factor 1 − 10⁻⁵, which is not
# learning. We check that the change is exactly that shrinkage:

# %%
net = toy_controlnet(base)
before = [p.detach().clone() for p in net.input_blocks.parameters()]
rows_wd = gradient_front(base, net, x0, cond, pairs.prompts, steps=1, lr=1e-3, weight_decay=0.01)
moved = {r["group"]: r["moved"] for r in rows_wd}
shrink = [(a - p.detach()).norm() / a.norm() for a, p in zip(before, net.input_blocks.parameters()) if a.norm() > 0]
print("moved at step 0 with weight decay:", moved)
print(f"relative change of the copy: {min(shrink):.3g} … {max(shrink):.3g} (lr × weight decay = {1e-3 * 0.01:g})")
assert moved[GROUPS[3]] and all(abs(s - 1e-5) < 5e-7 for s in shrink)
assert {r["group"]: r["grad_norm"] for r in rows_wd}[GROUPS[3]] == 0.0

# %% [markdown]
# ## 3 · Watching the zero convolutions grow
#
# Now a real training run on Fill50k: the toy ControlNet learns to draw the circle
# inside the outline, with the recipe of chapter 04 (AdamW, lr 3·10⁻³, batch 32, half
# of the prompts dropped). `train_controlnet` calls `on_step` after every optimiser step;
# we record each connector's per-weight RMS, ‖W‖ / √(number of weights). (The total norm
# ‖W‖ grows with the square root of a connector's size, so wide connectors would look
# larger for their size alone.) We also record how far the trainable copy Θc has moved
# from the base weights Θ it was copied from, ‖Θc − Θ‖ / ‖Θ‖, for section 4.

# %%
from cnetlib.probes import connector_rms, copy_drift
from cnetlib.train import train_controlnet

steps, lr = pick(300, 15), 3e-3
train_data = Fill50k(pick(5000, 500), seed=0)
net = toy_controlnet(base)
rms, drift_zero = [connector_rms(net)], [copy_drift(net, base)]


def record(step, cn):
    rms.append(connector_rms(cn))
    drift_zero.append(copy_drift(cn, base))


run = train_controlnet(base, net, train_data, steps=steps, batch_size=32, lr=lr, drop_prompt=0.5, seed=0,
                       on_step=record)
rms = np.array(rms)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for i, conn in enumerate(net.connections):
    ax.plot(rms[:, i], label=f"Z{i}: {conn.kind}, h={conn.resolution}, {net.zero_convs[i].weight.numel()} weights")
ax.set(xlabel="optimiser step", ylabel="RMS of the connector's weights",
       title=f"zero convolutions during training ({steps} steps)")
ax.legend(fontsize=7, ncol=2)
save_figure(fig, "02_zero_conv_norms")
plt.show()
print(f"{run.seconds:.0f} s; RMS at step 0: {rms[0].max():g}, after 1 step: {rms[1].min():.3g}…{rms[1].max():.3g} "
      f"(lr = {lr:g}), at the end: {rms[-1].min():.3g}…{rms[-1].max():.3g}")
assert rms[0].max() == 0.0 and rms[1].min() > 0                 # zero, then moving after one step
assert np.allclose(rms[1], lr, rtol=0.05)                       # Adam's first step: every weight moves by about lr
assert (rms[-1] > rms[1]).all()                                 # and still growing

# %% [markdown]
# Every connector leaves 0 after the first step, every weight by about the learning
# rate: Adam's first update is lr · sign(gradient) for each weight, whatever the
# gradient's size. After that a weight moves by at most about the learning rate per
# step, less when its gradient changes sign: after 300 steps the RMS is only a few to
# ten steps' worth. Chapter 04 follows the loss and the samples over a full run and
# shows what each of them tells about what the ControlNet has learnt.

# %% [markdown]
# ## 4 · Gaussian connectors: the harmful noise
#
# Why not initialise the connectors like any other layer, with small Gaussian weights?
# The paper's ablation does exactly that and finds training worse ("ControlNet-lite"
# level). The reason is visible at step 0: a Gaussian connector adds the copy's
# features, times random weights, to the frozen model's skip connections. The frozen
# model then receives inputs it was never trained on.
#
# We measure how far the controlled prediction moves from the base's, on noisy images
# at several timesteps, as the connectors' standard deviation grows from 0 (a zero
# convolution) to 1, past the scale a standard initialisation would give (of the order
# of 1/√fan_in, a few tenths for these connectors):

# %%
from cnetlib.probes import gaussian_damage

g = torch.Generator().manual_seed(0)
xt = torch.randn(16, 3, 32, 32, generator=g)
tt = torch.linspace(50, 950, 16).long()
stds = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
damage = gaussian_damage(base, stds, xt, tt, pairs.prompts, cond)
for d in damage:
    print(f"std {d['std']:<5}: max |Δ| = {d['max_abs']:.3g}, relative L2 change = {d['rel_l2']:.3g}")
assert damage[0]["max_abs"] == 0.0                                            # zero convs: no change at all
assert all(a["rel_l2"] < b["rel_l2"] for a, b in zip(damage, damage[1:]))     # damage grows with the std

# %% [markdown]
# What does that do to the *samples*? The frozen base, asked for these prompts, draws
# circles of the right colours; the same base with a freshly initialised ControlNet
# should draw exactly the same images, and with zero convolutions it does. With Gaussian
# connectors of the standard scale it draws something else:

# %%
from cnetlib.probes import connector_damage_view

fig, numbers = connector_damage_view(base, None, pairs.prompts[:6], cond[:6], steps=pick(20, 8))
save_figure(fig, "02_gaussian_connectors_samples")
plt.show()
print(numbers)
assert numbers["zero_conv_difference"] == 0.0
assert numbers["gaussian_difference"] > 10                   # pixel units (0-255): visibly different images
assert numbers["gaussian_circle_accuracy"] < numbers["base_circle_accuracy"]

# %% [markdown]
# The slider sets the connectors' standard deviation and shows the damage growing from
# nothing (std 0: the zero convolution) to images the base would never draw.

# %%
std_slider = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=0.5, step=0.25, description="std",
                                    continuous_update=False)


def show_damage(std: float) -> None:
    connector_damage_view(base, std, pairs.prompts[:6], cond[:6], steps=pick(20, 8))
    plt.show()


display(widgets.VBox([std_slider, widgets.interactive_output(show_damage, {"std": std_slider})]))

# %% [markdown]
# ### Does the noise reach the trainable copy?
#
# The paper's argument goes one step further than the frozen model's output: random
# connectors also send noisy gradients back into the trainable copy Θc, which damages
# the copy early in training, before it has learnt anything. That is a claim about Θc,
# so we measure Θc. Train once more with Gaussian connectors (std 1/√fan_in), the same
# data, seed and recipe as section 3's zero-connector run, and follow the copy's drift
# ‖Θc − Θ‖ / ‖Θ‖ from the base weights step by step, side by side with section 3's.

# %%
drift_steps = pick(100, 5)
net_g = toy_controlnet(base, "gaussian")
drift_gauss = [copy_drift(net_g, base)]
run_g = train_controlnet(base, net_g, train_data, steps=drift_steps, batch_size=32, lr=lr, drop_prompt=0.5, seed=0,
                         on_step=lambda step, cn: drift_gauss.append(copy_drift(cn, base)))
drift = {"zero": np.array(drift_zero[: drift_steps + 1]), "gaussian": np.array(drift_gauss)}
loss = {"zero": np.array(run.losses[:drift_steps]), "gaussian": np.array(run_g.losses)}
fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4))
for name, d in drift.items():
    a1.plot(d, label=f"{name} connectors")
    a2.plot(loss[name], lw=0.8, label=f"{name} connectors")
a1.set(xlabel="optimiser step", ylabel="‖Θc − Θ‖ / ‖Θ‖", title="how far the trainable copy moves")
a2.set(xlabel="optimiser step", ylabel="training loss", title="loss, same batches")
a1.legend()
a2.legend()
save_figure(fig, "02_copy_drift")
plt.show()
marks = [k for k in (1, 10, 50, drift_steps) if k <= drift_steps]
for k in marks:
    print(f"step {k:>3}: drift zero {drift['zero'][k]:.4f}, gaussian {drift['gaussian'][k]:.4f} "
          f"(ratio {drift['gaussian'][k] / drift['zero'][k]:.2f})")
tail = slice(-min(20, drift_steps), None)
print(f"mean loss over the last {min(20, drift_steps)} steps: zero {loss['zero'][tail].mean():.4f}, "
      f"gaussian {loss['gaussian'][tail].mean():.4f}")
assert drift["zero"][0] == drift["gaussian"][0] == 0.0          # both start as an exact copy of Θ
# zero connectors: no gradient into Θc at step 0, only AdamW's weight decay (lr · 0.01) shrinks it
assert abs(drift["zero"][1] - lr * 1e-2) < 1e-3 * lr * 1e-2 and drift["gaussian"][1] > 10 * drift["zero"][1]
if not SMOKE:
    assert drift["gaussian"][10] > 1.2 * drift["zero"][10]                  # the noisy start: Θc moves sooner
    assert abs(drift["gaussian"][50] / drift["zero"][50] - 1) < 0.1            # ... and by step 50 no longer
    assert drift["zero"][100] > 0.25 and drift["gaussian"][100] > 0.25         # both leave Θ by a quarter or more
    assert loss["gaussian"][tail].mean() > loss["zero"][tail].mean()          # the output damage persists longer
    assert abs(drift["gaussian"][1] - 0.034) < 1e-3                            # the numbers in the prose below
    assert [f"{drift[k][10]:.2f}" for k in ("gaussian", "zero")] == ["0.13", "0.10"]
    assert f"{drift['gaussian'][50] / drift['zero'][50]:.2f}" == "1.03"
    assert [f"{drift[k][100]:.2f}" for k in ("zero", "gaussian")] == ["0.31", "0.28"]
    assert [f"{loss[k][tail].mean():.3f}" for k in ("gaussian", "zero")] == ["0.064", "0.047"]

# %% [markdown]
# The Gaussian copy moves first, but read the numbers with section 2 in mind. After one
# step the Gaussian run's Θc has drifted 0.034 from Θ, while the zero run's has only
# shrunk by AdamW's weight decay (3·10⁻⁵: its gradient is still zero, and reaches the
# copy one step later). Adam moves every weight with a non-zero gradient by about the
# learning rate at its first update, so this lead is about one extra step: the gap at
# step 10 (0.13 against 0.10) is about the Gaussian copy's drift after step 1 (0.034).
# By step 50 both copies are about equally far from Θ (ratio 1.03), and at step 100 the
# zero run's has moved further (0.31 against 0.28). So on this measure the Gaussian
# connectors give the copy a one-step head start, not a lasting push off course: the
# drift does not show the damage to Θc that the paper's argument predicts. (One seed,
# 100 steps; the drift measures how far the weights move, not in which direction.)
# The loss over the last 20 steps is still higher in the Gaussian run (0.064 against
# 0.047, one seed, noisy batches), which fits section 4's damage to the frozen model's
# output but does not prove it. Chapter 04 (section 7) trains both kinds of
# connectors to the end on three seeds: on this toy they end at the same fidelity.

# %% [markdown]
# ## What we have
#
# * A zero convolution outputs 0 but has the gradient ∂L/∂W = ∂L/∂y · xᵀ ≠ 0: it learns
#   at the first step, and the layers behind it from the second (the third, behind two
#   zero layers). With AdamW's default weight decay the copy also shrinks by lr · 0.01 at
#   step 0, which is not learning.
# * During training the connectors grow steadily from 0, every weight by about the
#   learning rate at the first step (`probes.connector_rms`).
# * Gaussian connectors change the frozen model's output from the first step, and its
#   samples with it: the harmful noise that zero convolutions avoid. They also push the
#   trainable copy away from Θ one step sooner (`probes.copy_drift`), a difference that
#   is gone by step 50 here (one seed). Chapter 04 trains both and compares what they learn.
