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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/02_zero_convolution.ipynb)
#
# # 02 · Zero convolution: a layer that outputs nothing and still learns
#
# ControlNet attaches a new, trainable network to a frozen diffusion model. A new
# network starts from random weights, and random weights produce random outputs: added
# to the frozen model's features they would wreck what it draws before any learning has
# happened. ControlNet's answer is the **zero convolution** Z: a convolution (1 × 1 for
# most of them) whose weight and bias start at exactly 0. At step 0 every Z outputs 0, so the controlled
# model *is* the frozen model.
#
# The question users of the reference code ask again and again: *if the weights are
# zero, aren't the gradients zero too, so that nothing ever trains?* This chapter answers
# it with measurements on the frozen toy model of chapter 01:
#
# 1. the gradient of a zero layer, by hand and by autograd;
# 2. how the gradient spreads through a ControlNet, one zero layer per step;
# 3. the zero convolutions growing from 0 during a short training run;
# 4. what goes wrong with Gaussian-initialised layers instead: the "harmful noise".
#
# **You need** chapter 01's frozen model F(·; Θ) and the chain rule. **Time on a 2-core
# CPU:** about 2 minutes in full mode.

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
        clone = subprocess.run(["git", "clone", "--depth", "1", repo, book], capture_output=True, text=True)
        if clone.returncode:
            raise RuntimeError(f"could not clone the book from {repo} (git: {clone.stderr.strip()[-300:]}): set the "
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
# ## The ControlNet block, in one picture
#
# Chapter 03 builds ControlNet in full; this chapter needs its shape. The paper (§3.1)
# takes one block F(·; Θ) of the frozen model, whose input is a feature map x and whose
# output is y = F(x; Θ), and adds a control image c; y_c is the block's output with the
# control:
#
# $$y_c = F(x; \Theta) + Z\big(F(x + Z(c; \Theta_{z1}); \Theta_c); \Theta_{z2}\big).$$
#
# * **F(·; Θc)** is a *trainable copy* of the block: the same layers, initialised with
#   the same weights Θ, but free to change (Θc).
# * **Z(·; Θz1)** and **Z(·; Θz2)** are two zero convolutions. Z(c; Θz1) feeds the
#   control image into the copy. On the real network Z(c; Θz1) is shorthand: c first goes
#   through a small **condition encoder E** that turns it into a feature map, and
#   Z(·; Θz1) is E's last layer (a 3 × 3 zero convolution in the reference design). Z(·; Θz2) feeds the copy's
#   output back into the frozen model; on the real network there is one per connection
#   point of chapter 01 (7 on the toy), and we call them the **connectors**.

# %%
from cnetlib.diagrams import controlnet_block_diagram

fig = controlnet_block_diagram()
save_figure(fig, "02_controlnet_block")
plt.show()

# %% [markdown]
# ## 1 · Zero weights, non-zero gradients
#
# Take one layer y = W x + b and a loss L(y). The chain rule gives
#
# $$\frac{\partial L}{\partial W} = \frac{\partial L}{\partial y}\, x^\top, \qquad
#   \frac{\partial L}{\partial b} = \frac{\partial L}{\partial y}, \qquad
#   \frac{\partial L}{\partial x} = W^\top \frac{\partial L}{\partial y}.$$
#
# A 1 × 1 convolution is this layer applied at every pixel of every image with the same
# W, so its gradients are these, summed over pixels and batch.
#
# **Predict before you run.** With W = 0 and b = 0 the output is 0 everywhere. Which of
# the three gradients are 0 too?
#
# `cnetlib.controlnet.zero_conv` is that layer:
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
by_hand = torch.einsum("bohw,bihw->oi", dL_dy, x.detach())      # ∂L/∂W = Σ over pixels and batch of ∂L/∂y · xᵀ
print(f"largest |y| = {y.abs().max().item():g}")
print(f"‖∂L/∂W‖ = {z.weight.grad.norm():.3f}, ‖∂L/∂b‖ = {z.bias.grad.norm():.3f}, ‖∂L/∂x‖ = {x.grad.norm():g}")
assert torch.equal(y, torch.zeros_like(y))
torch.testing.assert_close(z.weight.grad[:, :, 0, 0], by_hand)  # autograd agrees with the chain rule
assert z.bias.grad.abs().min() > 0 and torch.equal(x.grad, torch.zeros_like(x.grad))

# %% [markdown]
# Only ∂L/∂x, the gradient that flows *through* the layer to what lies before it, is
# zero. ∂L/∂W is the input x itself, weighted by how the loss wants y to change. So the
# zero layer learns at once, and what lies behind it learns one step later.
#
# ## 2 · The gradient front in a ControlNet
#
# A ControlNet has zero layers in two places: the connectors Z(·; Θz2) that write into
# the frozen model, and E's last layer Z(·; Θz1). Between the loss and every trainable
# weight except the connectors' own there is at least one zero layer.
#
# **Predict before you run.** Draw the chain on paper, loss ← frozen model ← connectors
# ← copy ← E's last layer ← rest of E, and shade what gets a gradient at optimiser steps
# 0, 1 and 2. Then read on. By the rule above:
#
# * step 0: only the connectors get a gradient (their input, the copy's features, is not
#   zero); the copy Θc and E sit behind a zero layer and get exactly 0;
# * step 1: the connectors are no longer zero, so the gradient reaches Θc and E's last
#   layer (its input, E's hidden features, is not zero);
# * step 2: E's last layer is no longer zero either, and the rest of E learns.
#
# The measurement: three AdamW steps on one batch, the gradient norm of each group of
# weights at each step, and whether its weights moved (the group "E (condition encoder)"
# is E without its last layer, "the rest of E").

# %%
from cnetlib.base import load_or_train_base
from cnetlib.controlnet import toy_controlnet
from cnetlib.data import Fill50k, source_to_tensor, target_to_tensor
from cnetlib.diagrams import gradient_front_diagram
from cnetlib.probes import GROUPS, first_nonzero_step, gradient_front

base = load_or_train_base()
pairs = Fill50k(16, seed=5)
x0, cond = target_to_tensor(pairs.targets), source_to_tensor(pairs.sources)
rows = gradient_front(base, toy_controlnet(base), x0, cond, pairs.prompts, steps=3, lr=1e-3, weight_decay=0.0)
print(f"{'step':>4}  {'group':<24} {'‖gradient‖':>11}  moved")
for r in rows:
    print(f"{r['step']:>4}  {r['group']:<24} {r['grad_norm']:>11.3g}  {'yes' if r['moved'] else 'no'}")
first = first_nonzero_step(rows)
assert first == {GROUPS[0]: 0, GROUPS[1]: 1, GROUPS[2]: 2, GROUPS[3]: 1}
assert [r["group"] for r in rows if r["step"] == 0 and r["moved"]] == [GROUPS[0]]   # step 0 moves only Z
fig = gradient_front_diagram(first, title="the gradient front, as measured above")
save_figure(fig, "02_gradient_front")
plt.show()

# %% [markdown]
# Exactly as the chain rule says. One caveat trips people reading the reference code:
# it trains with `torch.optim.AdamW(params, lr)`, whose default **weight decay** is 0.01.
# Weight decay shrinks *every* weight by a factor 1 − lr · 0.01 per step (lr: the learning
# rate), gradient or not,
# so with it the copy's weights do change at step 0: by 10⁻⁵ of their size here, which
# is not learning. We check that the change is exactly that shrinkage:

# %%
net = toy_controlnet(base)
before = [p.detach().clone() for p in net.input_blocks.parameters()]
rows_wd = gradient_front(base, net, x0, cond, pairs.prompts, steps=1, lr=1e-3, weight_decay=0.01)
shrink = [(a - p.detach()).norm() / a.norm() for a, p in zip(before, net.input_blocks.parameters()) if a.norm() > 0]
print(f"with weight decay, the copy Θc moved at step 0: relative change {min(shrink):.3g} to {max(shrink):.3g} "
      f"(lr × weight decay = {1e-3 * 0.01:g}), with a gradient of exactly 0")
assert {r["group"]: r["moved"] for r in rows_wd}[GROUPS[3]] and all(abs(s - 1e-5) < 5e-7 for s in shrink)
assert {r["group"]: r["grad_norm"] for r in rows_wd}[GROUPS[3]] == 0.0

# %% [markdown]
# ## 3 · Watching the zero convolutions grow
#
# Now a short training run on Fill50k with the recipe of chapter 04 (AdamW, learning
# rate lr = 3·10⁻³, batch 32, half of the prompts dropped). 300 steps is too short for
# the ControlNet to learn to follow the outline (chapter 04 shows that this comes later,
# and suddenly); here we only watch the connectors. `train_controlnet` calls `on_step`
# after every optimiser step, and we record each connector's per-weight RMS,
# ‖W‖ / √(number of weights) (the plain norm ‖W‖ grows with a connector's size, so wide
# connectors would look larger for their size alone). We also record how far the copy
# has moved from the weights it was copied from, ‖Θc − Θ‖ / ‖Θ‖, for section 4.
#
# **Predict before you run.** Adam's first update is lr · m̂ / (√v̂ + ε), with m̂ and v̂ its
# running averages of the gradient and of its square (after the first step, just g and
# g²). What RMS do you expect each connector to have after that step, at lr = 3·10⁻³?

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
mid = min(40, steps)
print(f"{run.seconds:.0f} s. RMS per connector, and in units of lr = {lr:g} (\"steps' worth\"):")
print("h_i: the side of the feature map at that connection (chapter 01)")
print(f"{'':<4}{'h_i':>4}{'step 1':>9}{f'step {mid}':>10}{f'step {steps}':>11}{'× lr':>7}")
for i, conn in enumerate(net.connections):
    print(f"Z{i:<3}{conn.resolution:>4}{rms[1, i]:>9.4f}{rms[mid, i]:>10.4f}{rms[-1, i]:>11.4f}{rms[-1, i] / lr:>7.1f}")
assert rms[0].max() == 0.0 and rms[1].min() > 0                 # zero, then moving after one step
assert np.allclose(rms[1], lr, rtol=0.05)                       # Adam's first step: every weight moves by about lr
shallow, deep = [i for i, c in enumerate(net.connections) if c.resolution == 32], \
                [i for i, c in enumerate(net.connections) if c.resolution == 8]
if not SMOKE:
    assert rms[-1, deep].min() > 3 * rms[-1, shallow].max()     # the deep, coarse connectors grow most
    assert (rms[-1, shallow] < 1.5 * rms[mid, shallow]).all()   # the finest ones hardly move after step 40
    print(f"end RMS, deepest (h = 8) over finest (h = 32): {rms[-1, deep].min() / rms[-1, shallow].max():.1f}× "
          f"to {rms[-1, deep].max() / rms[-1, shallow].min():.1f}×")

# %% [markdown]
# Every connector leaves 0 after the first step, every weight by about the learning
# rate: Adam's first update is lr · sign(gradient) for each weight. After that a weight
# moves by at most about lr per step, less when its gradient changes sign, so 300 steps
# leave each connector between 2 and 15 steps' worth of RMS (the last column). They do
# not grow alike. The two at the finest resolution (h = 32) grow little after about 40
# steps; the connectors at the coarsest resolution (h = 8, the middle block among them)
# keep growing and end several times larger (the ratio is printed). The deep connections
# are where the trainable copy writes most into the frozen model; chapter 05 watches
# them again at the moment the ControlNet starts to follow the outline.
#
# ## 4 · Gaussian connectors: the harmful noise
#
# Why not initialise the connectors like any other layer, with small random weights?
# The paper's ablation (§4.2) does exactly that and finds the result as poor as
# "ControlNet-lite", its cheapest variant (the trainable copy replaced by one plain conv
# per block). The reason is visible at step 0: a Gaussian connector adds the copy's
# features, times random weights, to the frozen model's skip connections, so the frozen
# model receives inputs it was never trained on.
#
# We measure how far the controlled prediction moves from the frozen model's, on noisy
# images at several timesteps, as the connectors' standard deviation grows from 0 (a
# zero convolution) to 1. A standard initialisation would use 1/√fan_in, where fan_in is
# the number of inputs of one output (here the connector's input channels):

# %%
from cnetlib.probes import gaussian_damage

fan_in = sorted({c.channels for c in net.connections})
print("1/√fan_in for these connectors:", ", ".join(f"{1 / f ** 0.5:.3f} ({f} channels)" for f in fan_in))
g = torch.Generator().manual_seed(0)
xt = torch.randn(16, 3, 32, 32, generator=g)
tt = torch.linspace(50, 950, 16).long()
stds = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
damage = gaussian_damage(base, stds, xt, tt, pairs.prompts, cond)
print(f"\n{'std':>6} {'largest |change|':>17} {'relative change':>16}")
for d in damage:
    print(f"{d['std']:>6} {d['max_abs']:>17.3g} {d['rel_l2']:>16.1%}")
assert damage[0]["max_abs"] == 0.0                                            # zero convs: no change at all
assert all(a["rel_l2"] < b["rel_l2"] for a, b in zip(damage, damage[1:]))     # damage grows with the std

# %% [markdown]
# The "relative change" is ‖prediction with the new ControlNet − frozen prediction‖ over
# ‖frozen prediction‖. Already at std 0.01, far below a standard initialisation, the
# frozen model's prediction moves by 5.6 %; at std 0.1, by 47 %. Zero convolutions move
# it by exactly nothing.
#
# What does that do to the *samples*? Below: the control images, then the frozen model's
# samples for six prompts, then the same model with a freshly initialised ControlNet
# attached, once with zero convolutions and once with Gaussian connectors at the
# standard scale. The slider under it moves the Gaussian std over the values the table
# measured, and to the standard initialisation.

# %%
from cnetlib.probes import connector_damage_view

STANDARD = "1/√fan_in"   # the standard initialisation's scale, per connector
std_slider = widgets.SelectionSlider(options=[f"{s:g}" for s in stds] + [STANDARD], value=STANDARD,
                                     description="std", continuous_update=False)


def show_damage(choice: str) -> None:
    std = None if choice == STANDARD else float(choice)
    fig, numbers = connector_damage_view(base, std, pairs.prompts[:6], cond[:6], steps=pick(20, 8))
    if std is None:
        save_figure(fig, "02_gaussian_connectors_samples")
    plt.show()
    print(f"circle colour right: frozen model {numbers['base_circle_accuracy']:.0%}, with zero convs "
          f"{numbers['zero_conv_circle_accuracy']:.0%}, with Gaussian connectors {numbers['gaussian_circle_accuracy']:.0%}")


display(widgets.VBox([std_slider, widgets.interactive_output(show_damage, {"choice": std_slider})]))
_, numbers = connector_damage_view(base, None, pairs.prompts[:6], cond[:6], steps=pick(20, 8))
plt.close("all")
assert numbers["zero_conv_difference"] == 0.0 and numbers["zero_conv_circle_accuracy"] == numbers["base_circle_accuracy"]
assert numbers["gaussian_difference"] > 10                   # pixel units (0-255): visibly different images
assert numbers["gaussian_circle_accuracy"] < numbers["base_circle_accuracy"]

# %% [markdown]
# With zero convolutions the images are the frozen model's, pixel for pixel. With
# Gaussian connectors of the standard scale they change visibly (the mean pixel change
# is in the title): the colour reader of chapter 01 (`prompt_following`, the line under
# the figure) finds one of the six circles in the wrong colour, and in the figure one
# sample draws no clean disk at all.
#
# ### Does the noise reach the trainable copy?
#
# The paper's argument goes one step further: random connectors also send noisy
# gradients back into the trainable copy Θc, which would damage the copy early in
# training. That is a claim about Θc, so we measure Θc. Train once more with Gaussian
# connectors (std 1/√fan_in), same data, seed and recipe as section 3, and follow the
# copy's drift ‖Θc − Θ‖ / ‖Θ‖ step by step beside section 3's.

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
a2.set(xlabel="optimiser step", ylabel="training loss", yscale="log", title="loss, same batches")
a1.legend()
a2.legend()
fig.tight_layout()
save_figure(fig, "02_copy_drift")
plt.show()
for k in [k for k in (1, 10, 50, drift_steps) if k <= drift_steps]:
    print(f"step {k:>3}: drift zero {drift['zero'][k]:.4f}, gaussian {drift['gaussian'][k]:.4f}")
head, tail = slice(0, min(5, drift_steps)), slice(-min(20, drift_steps), None)
print(f"mean loss, first 5 steps: zero {loss['zero'][head].mean():.3f}, gaussian {loss['gaussian'][head].mean():.3f}; "
      f"last 20: zero {loss['zero'][tail].mean():.4f}, gaussian {loss['gaussian'][tail].mean():.4f}")
assert drift["zero"][0] == drift["gaussian"][0] == 0.0          # both start as an exact copy of Θ
# zero connectors: no gradient into Θc at step 0, only AdamW's weight decay (lr · 0.01) shrinks it
assert abs(drift["zero"][1] - lr * 1e-2) < 1e-3 * lr * 1e-2 and drift["gaussian"][1] > 10 * drift["zero"][1]
assert loss["gaussian"][head].mean() > 3 * loss["zero"][head].mean()      # the damaged start
if not SMOKE:
    assert loss["zero"][tail].mean() > loss["zero"][head].mean()            # the zero run's loss rises too
if not SMOKE:
    assert drift["gaussian"][10] > 1.2 * drift["zero"][10]                  # the noisy start: Θc moves sooner
    assert abs(drift["gaussian"][50] / drift["zero"][50] - 1) < 0.1            # ... and by step 50 no longer
    assert drift["zero"][100] > 0.25 and drift["gaussian"][100] > 0.25         # both leave Θ by a quarter or more
    assert loss["gaussian"][tail].mean() > loss["zero"][tail].mean()
    assert abs(drift["gaussian"][1] - 0.034) < 1e-3                            # the numbers in the prose below
    assert [f"{drift[k][10]:.2f}" for k in ("gaussian", "zero")] == ["0.13", "0.10"]
    assert f"{drift['gaussian'][50] / drift['zero'][50]:.2f}" == "1.03"
    assert [f"{drift[k][100]:.2f}" for k in ("zero", "gaussian")] == ["0.31", "0.28"]
    assert [f"{loss[k][tail].mean():.3f}" for k in ("gaussian", "zero")] == ["0.064", "0.047"]

# %% [markdown]
# The loss shows the damage to the frozen model's output at once: the Gaussian run
# starts many times higher (first five steps, printed above). The copy's drift tells a
# milder story. After one step the Gaussian run's Θc has drifted 0.034 from Θ, while the
# zero run's has only shrunk by weight decay (its gradient reaches the copy one step
# later, section 2). Adam moves every weight with a non-zero gradient by about lr at its
# first update, so this lead is about one extra step: the gap at step 10 (0.13 against
# 0.10) is about the Gaussian copy's drift after step 1. By step 50 both copies are
# about equally far from Θ (ratio 1.03), and at step 100 the zero run's has moved
# further (0.31 against 0.28). So on this measure Gaussian connectors give the copy a
# one-step head start, not a lasting push off course: the drift does not show the
# damage to Θc that the paper's argument predicts. (One seed, 100 steps; the drift
# measures how far the weights move, not in which direction.) The loss over the last 20
# steps is still higher in the Gaussian run (0.064 against 0.047, one seed). The zero
# run's loss rises too over these 100 steps (from its first five steps to its last 20,
# printed above): once its connectors leave 0, the untrained copy's residuals also
# disturb the frozen model, later and less than random connectors do at step 0 (our
# reading; chapter 04 shows the loss falling once the ControlNet reads the outline).
# Chapter 04 trains both kinds of connectors to the end on three seeds: on this toy they
# end at the same condition fidelity (how well the samples follow the outline).
#
# > **Key takeaways**
# >
# > * A zero convolution outputs 0, but ∂L/∂W = ∂L/∂y · xᵀ is not 0: it learns at the
# >   first step. Only the gradient *through* it, Wᵀ ∂L/∂y, is 0.
# > * The gradient front advances one zero layer per step: connectors at step 0, the copy
# >   and E's last layer at step 1, the rest of E at step 2.
# > * Adam moves every weight by about lr at its first step; afterwards the deep, coarse
# >   connectors grow most.
# > * Gaussian connectors change the frozen model's output and samples from step 0 (the
# >   harmful noise); on the copy's weights the difference is a one-step head start.
#
# ## Exercises
#
# Replace each `raise NotImplementedError` (or `None`) and rerun the cell; the checker
# compares your answer with the library. Worked solutions:
# `solutions/02_zero_convolution.py`.
#
# ### Exercise 02.1 · The three gradients of a zero convolution [checked]
#
# Write `my_zero_conv_grads(dL_dy, x)` returning ∂L/∂W (shape out × in), ∂L/∂b and ∂L/∂x of
# a 1 × 1 convolution with W = 0 and b = 0, for a batch of images.

# %%
from cnetlib.exercises import check


def my_zero_conv_grads(dL_dy, x):
    raise NotImplementedError("your code here: return dL_dW, dL_db, dL_dx")


check("02.1", my_zero_conv_grads)

# %% [markdown]
# ### Exercise 02.2 · Adam's first step [checked]
#
# What is the RMS of a zero convolution's weights after one AdamW step at lr = 10⁻³?

# %%
answer = None   # your number
check("02.2", answer)

# %% [markdown]
# ### Exercise 02.3 · Two zero layers deep [checked]
#
# At which optimiser step (0, 1, 2, …) do the layers of E *before* its zero conv first
# get a non-zero gradient? Reason it out from the chain rule, then check.

# %%
answer = None   # your number
check("02.3", answer)

# %% [markdown]
# ### Exercise 02.4 · Without Adam [open]
#
# Rerun section 2's measurement with `torch.optim.SGD` in place of AdamW (copy
# `cnetlib.probes.gradient_front` and change one line). Does the front move differently?
# Do all connectors still move by the same amount at step 0?
#
# **Next:** chapter 03 builds the whole ControlNet around these zero convolutions: the
# copy, the condition encoder and the wiring into the frozen model.
