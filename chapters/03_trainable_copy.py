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
# # 03 · The trainable copy: copy, freeze, wire
#
# Chapter 02 showed that a zero convolution outputs nothing at first and still learns.
# This chapter builds the rest of the block around it, exactly as the paper writes it:
#
# $$y_c = \mathcal F(x;\Theta) + \mathcal Z\big(\mathcal F(x + \mathcal Z(c;\Theta_{z1});\Theta_c);\Theta_{z2}\big)$$
#
# * F(·; Θ) is the **frozen** encoder of the base model from chapter 01 (input conv,
#   input blocks, middle block); its weights Θ never change;
# * Θc is a **trainable copy** of those same weights: it starts as a perfect clone, so
#   it already knows how to read noisy images and prompts;
# * c is the control image (the outline). A small **condition encoder** E turns it
#   into features c_f, and its last layer is a zero convolution Z(c; Θz1);
# * every output of the copy goes through its own zero convolution Z(·; Θz2) and is
#   added to the matching skip connection of the frozen decoder.
#
# We build it, count it, look inside it, and check with `assert`s the three promises
# that make ControlNet safe to train: at initialisation the output is *exactly* the
# base's, the base never receives a gradient, and the copy starts equal to the base.
#
# **Time on a 2-core CPU:** under a minute, in full and in smoke mode.

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
import matplotlib.pyplot as plt
import numpy as np
import torch

import cnetlib
from cnetlib import pick, save_figure, smoke_mode

SMOKE = smoke_mode()  # set CNETLIB_SMOKE=1 for the short run CI does
print(f"cnetlib {cnetlib.__version__}, torch {torch.__version__}, smoke mode: {SMOKE}")

# %% [markdown]
# ## 1 · Copy
#
# `ControlNet.from_unet(base)` takes the layout of the base from its config, builds the
# same modules again and loads the base's weights into them. Its forward pass is the
# block equation, line by line (`cnetlib/controlnet.py`):
#
# ```python
# c_f = self.condition_encoder(condition)           # E(c), ends in Z(c; Θz1): 0 at step 0
# ...
# temb = self.time_embed(timestep_embedding(t, self.time_dim))   # the copy's own time embedding (Θc)
# ...
# h = x
# for i, (block, z) in enumerate(zip(self.input_blocks, self.zero_convs)):
#     h = block(h, temb, context)                       # F(·; Θc), block by block
#     if i == 0:
#         h = h + c_f                                   # x + Z(c; Θz1), after the input conv
#     outs.append(z(h))                                 # Z(F(x + Z(c); Θc); Θz2)
# h = self.middle_block(h, temb, context)
# return outs, self.zero_convs[-1](h)                   # one residual per skip + the middle one
# ```
#
# The condition joins after the copy's *input conv*, not at its very input: that is
# where the reference code (`cldm.py`: `h += guided_hint`) and diffusers add it, because
# there the image has already become a feature map of the right width.

# %%
from cnetlib.base import load_or_train_base
from cnetlib.controlnet import TOY_HINT_CHANNELS, ControlNet, toy_controlnet
from cnetlib.controlled import ControlledUNet, connection_table, parameter_counts
from cnetlib.probes import count_by_group

base = load_or_train_base()
net = toy_controlnet(base)          # reference-style condition encoder, TOY_HINT_CHANNELS wide
model = ControlledUNet(base, net)   # freezes the base and wires the residuals into it
print(net.config)

# %% [markdown]
# ## 2 · Count
#
# How big is the copy? It holds the encoder half of the base (plus the time embedding),
# a condition encoder and the zero convolutions:

# %%
counts = parameter_counts(model)
groups = count_by_group(net)
n_base = sum(p.numel() for p in base.parameters())
print(f"frozen base F(·; Θ):         {counts['frozen']:>9,}")
print(f"trainable ControlNet:        {counts['trainable']:>9,}  ({counts['trainable'] / n_base:.0%} of the base)")
for g, n in groups.items():
    print(f"   {g:<26}{n:>9,}")
assert counts["frozen"] == n_base and counts["trainable"] == sum(groups.values())
copy_share = groups["Θc (trainable copy)"] / n_base
print(f"the copy Θc is {copy_share:.0%} of the base")
assert 0.35 < copy_share < 0.45   # the encoder half (no decoder, no text encoder): about two fifths

# %% [markdown]
# The copy is about two fifths of the base: it has no decoder and no text encoder (the
# prompt's features c_t come from the frozen text encoder and are shared). On Stable
# Diffusion the same recipe gives 361 M trainable parameters for an 860 M UNet
# (chapter 08 counts them).
#
# ## 3 · Wire: the connection table
#
# One zero convolution per skip connection of the base, plus one for the middle block.
# h_i is the side of the feature map at that connection (chapter 06 weights the
# connections by it):

# %%
rows = connection_table(net)
print(f"{'#':>2}  {'block':<11} {'level':>5} {'channels':>8} {'h_i':>4}  {'connector':<10} {'params':>6}")
for r in rows:
    print(f"{r['index']:>2}  {r['block']:<11} {r['level']:>5} {r['channels']:>8} {r['h_i']:>4}  "
          f"{r['connector']:<10} {r['connector_params']:>6}")
assert len(rows) == len(base.skip_shapes()) + 1 == 7
assert [r["h_i"] for r in rows] == [32, 32, 16, 16, 8, 8, 8]

# %% [markdown]
# ## 4 · Two condition encoders
#
# The paper's text and its code describe two different encoders E:
#
# * **paper**: "four convolution layers with 4 × 4 kernels and 2 × 2 strides (ReLU;
#   16, 32, 64, 128 channels)", then the zero conv Z(c; Θz1). Four stride-2 steps would
#   take 512 px to 32, not to SD's 64 × 64 latent grid, so only as many convs as needed
#   stride (three for SD); the others keep the size;
# * **reference** (the authors' `cldm.py`, diffusers' `ControlNetConditioningEmbedding`):
#   seven 3 × 3 convs with SiLU, 16, 16, 32, 32, 96, 96, 256 channels, three of them
#   stride 2, then a *zero-initialised 3 × 3 conv* to the UNet's width.
#
# `ConditionEncoder` builds either, and adapts the strides to the base: SD works on a
# latent grid 8 × smaller than the image (3 stride-2 steps), our toy base in pixel space
# (0 steps). Here are both, at SD scale (512 px → 64 × 64 × 320) and at the book's toy
# scale (32 px → 32 × 32 × 16, the width of the toy's first level):

# %%
from cnetlib.condition import PAPER_HINT_CHANNELS, REFERENCE_HINT_CHANNELS, ConditionEncoder

width = base.config.channels[0]   # 16
encoders = {
    ("paper", "SD 512 px"): ConditionEncoder("paper", 3, 320, 3, PAPER_HINT_CHANNELS),
    ("reference", "SD 512 px"): ConditionEncoder("reference", 3, 320, 3, REFERENCE_HINT_CHANNELS),
    ("paper", "toy 32 px"): ConditionEncoder("paper", 3, width, 0, (4, 8, 16, 32)),
    ("reference", "toy 32 px"): ConditionEncoder("reference", 3, width, 0, TOY_HINT_CHANNELS),
}
print(f"{'encoder':<10} {'scale':<10} {'params':>8} {'receptive field':>16}  output")
with torch.no_grad():
    for (variant, scale), enc in encoders.items():
        size = 512 if scale.startswith("SD") else 32
        out = enc(torch.rand(1, 3, size, size))
        n = sum(p.numel() for p in enc.parameters())
        print(f"{variant:<10} {scale:<10} {n:>8,} {enc.receptive_field():>13} px  {tuple(out.shape[1:])}")
        assert torch.equal(out, torch.zeros_like(out))          # both end in a zero conv
assert encoders[("reference", "SD 512 px")](torch.rand(1, 3, 512, 512)).shape == (1, 320, 64, 64)

n_params = {k: sum(p.numel() for p in enc.parameters()) for k, enc in encoders.items()}
sd_ratio = n_params[("reference", "SD 512 px")] / n_params[("paper", "SD 512 px")]
full_toy = sum(p.numel() for p in ConditionEncoder("reference", 3, width, 0, REFERENCE_HINT_CHANNELS).parameters())
shrink = [t / r for t, r in zip(TOY_HINT_CHANNELS, REFERENCE_HINT_CHANNELS)]
print(f"\nat SD scale the reference encoder has {sd_ratio:.1f}× the paper's parameters; at toy scale, with the "
      f"reference widths, it would have {full_toy:,} ({full_toy / n_params[('reference', 'toy 32 px')]:.0f}× the toy "
      f"encoder, {full_toy / groups['Θc (trainable copy)']:.0%} of the copy); the toy widths are "
      f"{min(shrink):.3g}–{max(shrink):.3g} of the reference ones")
assert 4.5 < sd_ratio < 5.5 and full_toy > 10 * n_params[("reference", "toy 32 px")]
print("\nreference encoder, toy scale, stage by stage:")
for layer, shape in encoders[("reference", "toy 32 px")].stages(torch.rand(1, 3, 32, 32)):
    print(f"   {layer:<12} -> {shape}")

# %% [markdown]
# The reference encoder has a larger receptive field at SD scale (its three stride-2
# steps come late, after full-resolution 3 × 3 convs) and about 5× the parameters;
# both are tiny next to the copy. **The rest of the book uses the reference variant**:
# it is what the public ControlNet weights contain (chapter 08 loads them), and its
# zero-initialised last conv makes the whole condition path start at zero, as the
# paper's Z(c; Θz1) asks. At toy scale nothing needs to be downsampled, so full
# reference widths (256 channels at 32 × 32) would cost over ten times the toy encoder
# and most of the size of the copy itself; the book's toy encoder keeps the layout at
# an eighth to a half of the widths: `TOY_HINT_CHANNELS`.

# %% [markdown]
# ## 5 · Promise 1: at initialisation the output is exactly the base's
#
# Not approximately: bit for bit, for any noisy image, timestep, prompt and condition.
# The zero convolutions output exact zeros, and adding exact zeros to a float changes
# no bit.

# %%
from cnetlib.data import Fill50k, source_to_tensor

pairs = Fill50k(4, seed=3)
cond = source_to_tensor(pairs.sources)
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
print(f"controlled output == base output, bitwise, in {checked} batches of 4")

# %% [markdown]
# ## 6 · Promise 2: the base never receives a gradient
#
# `ControlledUNet` sets `requires_grad=False` on every base parameter and keeps the base
# in eval mode even when the model is put in training mode. A backward pass fills the
# ControlNet's gradients and leaves the base's empty:

# %%
model.train()
assert not base.training and net.training
ctx = base.encode_prompts(pairs.prompts)
x, t = torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 900])
loss = (model(x, t, ctx, cond) - x).pow(2).mean()
loss.backward()
assert all(p.grad is None for p in base.parameters())
with_grad = sum(p.grad is not None for p in net.parameters())
print(f"base parameters with a gradient: 0 of {len(list(base.parameters()))}; "
      f"ControlNet tensors with a gradient: {with_grad} of {len(list(net.parameters()))}")
net.zero_grad(set_to_none=True)

# %% [markdown]
# (Which of the ControlNet's gradients are non-zero at this first step, and why only
# the zero convolutions', is chapter 02's story.)
#
# ## 7 · Promise 3: the copy starts as the base
#
# Every tensor of the copy equals the base's tensor of the same name, but lives in its
# own memory, so training the copy cannot touch the base:

# %%
pairs_checked = 0
for part in ("time_embed", "text_embed", "input_blocks", "middle_block"):
    ours, theirs = getattr(net, part).state_dict(), getattr(base, part).state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]) and ours[k].data_ptr() != theirs[k].data_ptr()
        pairs_checked += 1
print(f"{pairs_checked} copied tensors equal to the base's, none shared")

# %% [markdown]
# ## 8 · Wrong inputs fail loudly
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
# ## What we have
#
# * `cnetlib.controlnet.ControlNet`: a trainable copy of the base's encoder, a
#   condition encoder (paper or reference variant) and one zero convolution per
#   connection; `ControlNet.from_unet(base)` copies the weights, `toy_controlnet(base)`
#   is the book's configuration, `connection_table` and `parameter_counts` describe it.
# * `cnetlib.controlnet.ControlledUNet`: the frozen base plus the residuals of one or
#   more ControlNets, each with its own scale, optionally per connection.
# * Three checked promises: identical output at step 0, no gradient into Θ, a copy that
#   starts as the base. Chapter 04 trains it, and watches it learn suddenly.
