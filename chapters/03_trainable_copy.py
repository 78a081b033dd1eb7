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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/03_trainable_copy.ipynb)
#
# # 03 · The trainable copy: copy, freeze, wire
#
# Chapter 02 showed that a zero convolution outputs nothing at first and still learns.
# This chapter builds the whole ControlNet around it, as the paper writes it (§3.1):
#
# $$y_c = F(x;\Theta) + Z\big(F(x + Z(c;\Theta_{z1});\Theta_c);\Theta_{z2}\big)$$
#
# * F(·; Θ) is chapter 01's **frozen** model with its weights Θ, which never change; the
#   block ControlNet copies is its encoder half (input conv, encoder blocks, middle block);
#   x is that block's input and y_c its output with the control;
# * Θc is a **trainable copy** of those same weights: it starts as a perfect clone, so
#   it already knows how to read noisy images and prompts;
# * c is the control image (the outline). A small **condition encoder** E turns it into
#   a feature map c_f = E(c), and its last layer is a zero convolution (the equation's
#   Z(c; Θz1) is shorthand for E with that layer);
# * every output of the copy goes through its own zero convolution Z(·; Θz2), a
#   **connector**, and is added to the matching skip connection of the frozen model, or
#   to its middle block: one residual r_i per connection point of chapter 01.
#
# We build it, count it, write its forward pass out, and check with `assert`s the three
# promises that make ControlNet safe to train: at initialisation the output is *exactly*
# the frozen model's, the frozen model never receives a gradient, and the copy starts
# equal to it.
#
# **You need** chapter 01's UNet and its connection points, and chapter 02's zero
# convolution. **Time on a 2-core CPU:** under a minute.

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
import matplotlib.pyplot as plt
import numpy as np
import torch

import cnetlib
from cnetlib import pick, save_figure, smoke_mode

SMOKE = smoke_mode()  # set CNETLIB_SMOKE=1 for the short run CI does
print(f"cnetlib {cnetlib.__version__}, torch {torch.__version__}, smoke mode: {SMOKE}")

# %% [markdown]
# ## The whole network, in one picture
#
# The block equation, applied to the frozen model's whole encoder: on the left the
# trainable copy (orange), fed with x_t and, after its input conv, with c_f; each of its
# outputs passes a zero convolution Z and lands in an orange ⊕ of the frozen model
# (blue). The decoder is not copied: it receives the control through the skips and the
# middle block, where the residuals are added.

# %%
from cnetlib.base import load_or_train_base
from cnetlib.diagrams import unet_diagram

base = load_or_train_base()
fig = unet_diagram(base.connections, controlnet=True)
save_figure(fig, "03_controlnet_diagram")
plt.show()

# %% [markdown]
# Why into the skips rather than into the input? Each skip carries one level's features
# straight to the decoder at that level's resolution, so a residual there reaches the
# decoder at every scale, the fine ones included, without passing through the frozen
# encoder, which was never trained to carry an outline. The paper's rule in one line:
# change nothing that is frozen, add only where the frozen model already adds.
#
# ## 1 · The block, on one layer
#
# First the equation itself, on a single 3 × 3 convolution F and a control input c of
# the same shape as x (`cnetlib.controlnet.controlnet_block` is this line):

# %%
import torch.nn as nn

from cnetlib.controlnet import controlnet_block, trainable_copy, zero_conv

torch.manual_seed(0)
F = nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False)       # F(·; Θ), frozen
F_c = trainable_copy(F)                                       # F(·; Θc), starts equal to F
Z1, Z2 = zero_conv(4, 4), zero_conv(4, 4)                     # Z(·; Θz1), Z(·; Θz2)
x, c = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
y_c = controlnet_block(F, F_c, Z1, Z2, x, c)                  # F(x) + Z2(F_c(x + Z1(c)))
assert torch.equal(y_c, F(x))                                 # at initialisation: exactly the frozen block
with torch.no_grad():                                         # as if training had moved the zero convs
    Z1.weight.fill_(0.1)
    Z2.weight.fill_(0.1)
print(f"after the zero convs move, y_c differs from F(x) by {(controlnet_block(F, F_c, Z1, Z2, x, c) - F(x)).abs().max():.3f}")

# %% [markdown]
# ## 2 · Copy, and count
#
# `ControlNet.from_unet(base)` takes the layout of the frozen model from its config,
# builds the same modules again and loads its weights into them; `toy_controlnet(base)`
# is the book's configuration of it, and `ControlledUNet` freezes the base and wires the
# residuals into it.
#
# **Predict before you run.** The copy holds the encoder half of the model. What share
# of the frozen model's parameters do you expect it to have: more than half, or less?

# %%
from cnetlib.controlled import ControlledUNet, connection_table, parameter_counts
from cnetlib.controlnet import TOY_HINT_CHANNELS, toy_controlnet
from cnetlib.probes import count_by_group

net = toy_controlnet(base)          # the book's toy ControlNet (section 5 describes its condition encoder)
model = ControlledUNet(base, net)   # freezes the base and wires the residuals into it
counts = parameter_counts(model)
groups = count_by_group(net)
n_base = sum(p.numel() for p in base.parameters())
print(f"frozen model (all of it):    {counts['frozen']:>9,}")
print(f"trainable ControlNet:        {counts['trainable']:>9,}  ({counts['trainable'] / n_base:.0%} of the frozen model)")
for g, n in groups.items():
    print(f"   {g:<26}{n:>9,}")
assert counts["frozen"] == n_base and counts["trainable"] == sum(groups.values())
copy_share = groups["Θc (trainable copy)"] / n_base
print(f"the copy Θc is {copy_share:.0%} of the frozen model")
assert 0.35 < copy_share < 0.45   # the encoder half (no decoder, no text encoder): about two fifths

# %% [markdown]
# The copy is about two fifths of the frozen model: it has no decoder and no text
# encoder (the prompt's features c_t come from the frozen text encoder and are shared;
# the copy keeps only the small layer that adds their mean to the time embedding).
# On Stable Diffusion the same recipe gives 361 M trainable parameters for an 860 M UNet
# (chapter 08 counts them).
#
# ## 3 · Wire: the connection table
#
# One zero convolution per skip connection, plus one for the middle block. h_i is the
# side of the feature map at connection i (chapter 06 weights the connections by it):

# %%
rows = connection_table(net)
print(f"{'i':>2}  {'block':<11} {'level':>5} {'channels':>8} {'h_i':>4}  {'connector':<10} {'params':>6}")
for r in rows:
    print(f"{r['index']:>2}  {r['block']:<11} {r['level']:>5} {r['channels']:>8} {r['h_i']:>4}  "
          f"{r['connector']:<10} {r['connector_params']:>6}")
assert len(rows) == len(base.skip_shapes()) + 1 == 7
assert [r["h_i"] for r in rows] == [32, 32, 16, 16, 8, 8, 8]

# %% [markdown]
# ## 4 · The forward pass, written out
#
# The ControlNet's forward pass is the block equation, connection by connection. Written
# out (the library's is `ControlNet.forward` in `cnetlib/controlnet.py`; the assert
# checks both give the same residuals, with zero convolutions, E's last layer included,
# that are no longer zero, so that every wire counts). `timestep_embedding` is a fixed
# sinusoidal encoding of t (sines and cosines of t at several frequencies), which the
# learned time embedding of chapter 01 then maps:

# %%
from cnetlib.unet import timestep_embedding


def controlnet_forward(net, x_t, t, c_t, c):
    c_f = net.condition_encoder(c)                                    # c_f = E(c); E ends in Z(c; Θz1)
    temb = net.time_embed(timestep_embedding(t, net.time_dim))        # the copy's own time embedding (part of Θc)
    temb = temb + net.text_embed(c_t.mean(dim=1))                     # which also hears the prompt c_t
    h, residuals = x_t, []
    for i, (block, z) in enumerate(zip(net.input_blocks, net.zero_convs)):
        h = block(h, temb, c_t)                                       # F(·; Θc), one encoder block at a time
        if i == 0:
            h = h + c_f                                               # + c_f, the x + Z(c; Θz1) (after the input conv)
        residuals.append(z(h))                                        # r_i = Z(F(x + Z(c; Θz1); Θc); Θz2)
    h = net.middle_block(h, temb, c_t)                                # the copy's middle block
    return residuals, net.zero_convs[-1](h)                           # 6 skip residuals, and the middle one


from cnetlib.data import Fill50k, source_to_tensor

pairs = Fill50k(4, seed=3)
cond = source_to_tensor(pairs.sources)
trained = toy_controlnet(base)
with torch.no_grad():
    for z in [*trained.zero_convs, trained.condition_encoder.layers[-1]]:   # as if training had grown them
        z.weight.normal_(0, 0.05)
    x_t, t = torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 900])
    c_t = base.encode_prompts(pairs.prompts)
    ours, theirs = controlnet_forward(trained, x_t, t, c_t, cond), trained(x_t, t, c_t, cond)
    for a, b in zip(ours[0] + [ours[1]], theirs[0] + [theirs[1]]):
        torch.testing.assert_close(a, b)
    steered = base(x_t, t, c_t, down_residuals=ours[0], mid_residual=ours[1])   # the frozen model, steered
    assert not torch.allclose(steered, base(x_t, t, c_t))
    without_c = controlnet_forward(trained, x_t, t, c_t, torch.zeros_like(cond))
    assert not torch.allclose(ours[0][0], without_c[0][0])          # the condition's wire counts too
print(f"{len(ours[0])} skip residuals + 1 middle residual, equal to ControlNet.forward's; shapes "
      f"{[tuple(r.shape[1:]) for r in ours[0]]}")

# %% [markdown]
# The condition joins after the copy's *input conv*, not at its very input: that is
# where the reference code (`cldm.py`: `h += guided_hint`) and diffusers add it, because
# there the image has already become a feature map of the right width. So the x of the
# equation's x + Z(c; Θz1) is, in the code, the output of the copy's input conv.
#
# ## 5 · Two condition encoders
#
# The paper's text and its code describe two different encoders E. The **receptive
# field** of an encoder is the side, in input pixels, of the patch that one output value
# sees: how much context E can use to describe a point of the outline.
#
# * **paper**: "four convolution layers with 4 × 4 kernels and 2 × 2 strides (ReLU;
#   16, 32, 64, 128 channels)", then the zero conv Z(c; Θz1) (1 × 1). (ReLU and SiLU are
#   activation functions.) SD works on a **latent grid** 8 × smaller than the image (an
#   autoencoder, SD's VAE, compresses 512 × 512 pixels to 64 × 64, chapter 08), so E must
#   shrink c by 8: three stride-2 steps. Four would give
#   32 × 32, so we stride only as many convs as needed;
# * **reference** (the authors' `cldm.py`, diffusers' `ControlNetConditioningEmbedding`):
#   seven 3 × 3 convs with SiLU, 16, 16, 32, 32, 96, 96, 256 channels, three of them
#   stride 2, then a *zero-initialised 3 × 3 conv* to the UNet's width.
#
# `ConditionEncoder` builds either and adapts the strides to the base: SD 3 stride-2
# steps, our toy (which works on pixels) none. Both at SD scale (512 px → 64 × 64 × 320)
# and at toy scale (32 px → 32 × 32 × 16, the width of the toy's first level):

# %%
from cnetlib.condition import PAPER_HINT_CHANNELS, REFERENCE_HINT_CHANNELS, ConditionEncoder

width = base.config.channels[0]   # 16
encoders = {
    ("paper", "SD 512 px"): ConditionEncoder("paper", 3, 320, 3, PAPER_HINT_CHANNELS),
    ("reference", "SD 512 px"): ConditionEncoder("reference", 3, 320, 3, REFERENCE_HINT_CHANNELS),
    ("paper", "toy 32 px"): ConditionEncoder("paper", 3, width, 0, (4, 8, 16, 32)),
    ("reference", "toy 32 px"): ConditionEncoder("reference", 3, width, 0, TOY_HINT_CHANNELS),
}
print(f"{'encoder':<10} {'scale':<10} {'params':>10} {'receptive field':>16}  output")
with torch.no_grad():
    for (variant, scale), enc in encoders.items():
        size = 512 if scale.startswith("SD") else 32
        out = enc(torch.rand(1, 3, size, size))
        n = sum(p.numel() for p in enc.parameters())
        print(f"{variant:<10} {scale:<10} {n:>10,} {enc.receptive_field():>13} px  {tuple(out.shape[1:])}")
        assert torch.equal(out, torch.zeros_like(out))          # both end in a zero conv
n_params = {k: sum(p.numel() for p in enc.parameters()) for k, enc in encoders.items()}
sd_ratio = n_params[("reference", "SD 512 px")] / n_params[("paper", "SD 512 px")]
print(f"\nat SD scale the reference encoder has {sd_ratio:.1f}× the paper's parameters; the toy's widths "
      f"(TOY_HINT_CHANNELS) are {TOY_HINT_CHANNELS} against the reference's {REFERENCE_HINT_CHANNELS}")
assert 4.5 < sd_ratio < 5.5
for variant in ("paper", "reference"):                          # where each receptive field comes from
    layers, jump, parts = encoders[(variant, "SD 512 px")].conv_layers(), 1, []   # jump: the product of the strides so far
    for kernel, stride in layers:
        parts.append((kernel - 1) * jump)                       # each layer adds (kernel − 1) × jump pixels
        jump *= stride
    print(f"{variant:<10} (kernel, stride) {layers}\n{'':<10} adds {' + '.join(map(str, parts))} = "
          f"{sum(parts)} px, plus the centre pixel: {1 + sum(parts)}")
    assert 1 + sum(parts) == encoders[(variant, "SD 512 px")].receptive_field()

# %% [markdown]
# Each layer widens the receptive field by (kernel − 1) × jump, the jump being the
# product of the strides before it: a layer after the downsampling widens it more than
# the same layer before. The reference encoder's is larger because it has more layers
# (eight against five), five of them after the first stride-2 step (the paper's has three), and because its last layer,
# the zero conv, is a 3 × 3 conv at 1/8 resolution that alone adds 16 px, where the
# paper's is a 1 × 1 conv that adds nothing. Its parameters are about 5× the paper's;
# both are tiny next to the copy.
#
# **The rest of the book uses the reference variant**: it is the layout of the public
# ControlNet weights (chapter 08 loads files in that layout). At toy scale nothing needs to
# be downsampled, and full reference widths (256 channels at 32 × 32) would cost most of
# the copy's size, so the toy encoder keeps the layout at an eighth to a half of the
# widths: `TOY_HINT_CHANNELS` (the reference code calls the control image the "hint").
#
# ## 6 · Promise 1: at initialisation the output is exactly the frozen model's
#
# Not approximately: exactly equal (`torch.equal`), for every noisy image, timestep and
# prompt we try, with a batch of outlines as conditions. The zero convolutions output zeros, and adding zero to a number
# leaves it unchanged.

# %%
checked = 0
with torch.no_grad():
    for seed in range(pick(3, 1)):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(4, 3, 32, 32, generator=g)
        for t in (0, 250, 500, 999):
            for prompts in (pairs.prompts, [""] * 4, ["circle"] * 4):
                ctx = base.encode_prompts(prompts)
                assert torch.equal(model(x, torch.full((4,), t), ctx, cond), base(x, torch.full((4,), t), ctx))
                checked += 1
print(f"controlled output == frozen model's output, exactly, in {checked} batches of 4")

# %% [markdown]
# ## 7 · Promise 2: the frozen model never receives a gradient
#
# `ControlledUNet` sets `requires_grad=False` on every base parameter and keeps the base
# in eval mode even when the model is put in training mode.
#
# **Predict before you run.** After one backward pass, how many of the ControlNet's 148
# parameter tensors (weights and biases) have a *non-zero* gradient? (Chapter 02's
# gradient front has the answer.)

# %%
model.train()
assert not base.training and net.training
ctx = base.encode_prompts(pairs.prompts)
x, t = torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 900])
loss = (model(x, t, ctx, cond) - x).pow(2).mean()
loss.backward()
assert all(p.grad is None for p in base.parameters())
with_grad = [(n, p) for n, p in net.named_parameters() if p.grad is not None]
nonzero = [n for n, p in with_grad if p.grad.abs().max() > 0]
print(f"frozen model: 0 of {len(list(base.parameters()))} tensors received a gradient")
print(f"ControlNet: {len(with_grad)} of {len(list(net.parameters()))} tensors received one; "
      f"{len(nonzero)} of them are non-zero, all in the connectors: {sorted({n.split('.')[0] for n in nonzero})}")
assert len(with_grad) == len(list(net.parameters())) and all(n.startswith("zero_convs.") for n in nonzero)
assert len(nonzero) == 2 * len(net.zero_convs)     # each connector's weight and bias
net.zero_grad(set_to_none=True)

# %% [markdown]
# Every ControlNet tensor takes part in the backward pass, but only the connectors'
# gradients are non-zero at this first step: chapter 02's front.
#
# ## 8 · Promise 3: the copy starts as the frozen model
#
# Every tensor of the copy equals the frozen model's tensor of the same name, but lives
# in its own memory, so training the copy cannot touch the original:

# %%
pairs_checked = 0
for part in ("time_embed", "text_embed", "input_blocks", "middle_block"):
    ours, theirs = getattr(net, part).state_dict(), getattr(base, part).state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]) and ours[k].data_ptr() != theirs[k].data_ptr()
        pairs_checked += 1
print(f"{pairs_checked} copied tensors equal to the frozen model's, none shared")

# %% [markdown]
# ## 9 · Wrong inputs fail loudly
#
# A ControlNet reads a condition of one size and channel count, in [0, 1], and belongs
# to one base. Anything else is an error that says what was expected:

# %%
from cnetlib.unet import ToyUNet, UNetConfig

model.eval()
attempts = {
    "condition of the wrong size": lambda: model(x, t, ctx, torch.zeros(4, 3, 64, 64)),
    "one-channel condition": lambda: model(x, t, ctx, torch.zeros(4, 1, 32, 32)),
    "condition in [-1, 1]": lambda: model(x, t, ctx, cond * 2 - 1),
    "residual list too short": lambda: base(x, t, ctx, down_residuals=[torch.zeros(4, 8, 32, 32)]),
    "ControlNet of another base": lambda: ControlledUNet(ToyUNet(UNetConfig(channels=(8, 16, 64))), net),
}
for what, attempt in attempts.items():
    try:
        attempt()
        raise AssertionError(f"{what}: no error")
    except ValueError as e:
        print(f"{what}:\n    {e}")
        assert "expected" in str(e)

# %% [markdown]
# > **Key takeaways**
# >
# > * ControlNet = a trainable copy Θc of the frozen encoder and middle block, a condition
# >   encoder E, and one zero-initialised connector per connection point (7 on the toy,
# >   13 on SD).
# > * The condition enters after the copy's input conv; the residuals enter the frozen
# >   model's skips and middle block, so nothing frozen is changed.
# > * Three checked promises: exactly the frozen output at step 0, no gradient into Θ, a
# >   copy that starts equal to Θ.
# > * The copy is about two fifths of the model; the reference condition encoder sees a
# >   wider patch than the paper's because of its layers after downsampling.
#
# ## Exercises
#
# Worked solutions: `solutions/03_trainable_copy.py`.
#
# ### Exercise 03.1 · The block equation [checked]
#
# Write `my_controlnet_block(F, F_copy, Z1, Z2, x, c)`: the equation of section 1. The
# checker uses zero convolutions that are no longer zero, so a wrong wiring cannot hide
# behind exact zeros.

# %%
from cnetlib.exercises import check


def my_controlnet_block(F, F_copy, Z1, Z2, x, c):
    raise NotImplementedError("your code here: return y_c")


check("03.1", my_controlnet_block)

# %% [markdown]
# ### Exercise 03.2 · Receptive field [checked]
#
# Write `my_receptive_field(layers)` for a list of (kernel, stride) pairs, and check it
# against section 5's table.

# %%
def my_receptive_field(layers):
    raise NotImplementedError("your code here")


check("03.2", my_receptive_field)

# %% [markdown]
# ### Exercise 03.3 · Counting connections [checked]
#
# How many connectors Z(·; Θz2) does a ControlNet need on a UNet with 3 levels of 2
# ResNet blocks each? Count from chapter 01's rule, without running code.

# %%
answer = None   # your number
check("03.3", answer)

# %% [markdown]
# ### Exercise 03.4 · The paper's encoder [open]
#
# Build `toy_controlnet(base, condition_encoder="paper", hint_channels=(4, 8, 16, 32))`
# and rerun the three promises on it. Which numbers of section 2 change, and which
# cannot?
#
# **Next:** chapter 04 trains this ControlNet on Fill50k and watches it learn, suddenly.
