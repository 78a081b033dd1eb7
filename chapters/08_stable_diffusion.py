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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/08_stable_diffusion.ipynb)
#
# # 08 · ControlNet on Stable Diffusion
#
# Everything so far ran on a toy UNet of 1.1 M parameters. Stable Diffusion's UNet has
# 860 M and does not work on pixels: a **VAE** (variational autoencoder) compresses each
# 512 × 512 image to a 64 × 64 × 4 grid of **latents** z and decodes latents back to an
# image, and the diffusion runs on z. It reads its prompt through **CLIP**, a text
# encoder trained on image captions. The ControlNet recipe does not change: copy the encoder half, freeze the
# original, add a condition encoder and one zero convolution per connection.
# `cnetlib.sd.SDControlNet` does exactly that for a diffusers `UNet2DConditionModel`,
# with the same `trainable_copy`, `zero_conv` and `ConditionEncoder` as chapters 02–03.
#
# This chapter attaches it, inspects it, checks that it computes what diffusers'
# `ControlNetModel` computes, and generates with one and two conditions in every
# guidance mode of chapter 06.
#
# **Where it runs.** On a GPU with internet (Colab) it loads Stable Diffusion 1.5 and
# the public Canny ControlNet (`lllyasviel/sd-controlnet-canny`) in fp16. Offline, or on
# a CPU, or in smoke mode, every cell runs on the **tiny preset**: a complete SD-shaped
# set of components (UNet, VAE, CLIP text model, tokenizer) built from configs with
# random weights. The images are then noise, but every shape, equivalence and code path
# is the real one; every sample figure says so in its title. (If a GPU runtime cannot
# load the real weights, the chapter prints why and falls back to the tiny preset.)
# With the real weights the samples below would be portraits whose outlines follow the
# Canny edges of the photo; this book's machines cannot download the weights, so no
# shipped output shows that (a reader with a GPU and internet can run it).
#
# **You will learn** SD's 13 connection points, how the book's ControlNet matches
# diffusers' number for number, and how control images are made from photos. **You
# need** chapters 03 (the ControlNet) and 06 (the guidance modes). **Time on a 2-core
# CPU:** under a minute.

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

    ensure_installed(book, extras=("sd",))   # pip installs only what is not importable yet

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from IPython.display import display

import cnetlib
from cnetlib import DATA_DIR, pick, save_figure, smoke_mode

diffusers_logging.set_verbosity_error()
SMOKE = smoke_mode()  # set CNETLIB_SMOKE=1 for the short run CI does
print(f"cnetlib {cnetlib.__version__}, torch {torch.__version__}, smoke mode: {SMOKE}")

# %% [markdown]
# ## 1 · SD 1.5's thirteen connections
#
# We do not need SD's weights to look at its shape: built on PyTorch's `meta` device, a
# model has every parameter's shape but no memory behind it. Here is SD 1.5's UNet
# (`cnetlib.sd.SD15_UNET_CONFIG`, the `unet/config.json` of the release) and the
# ControlNet copied from it:
#
# **Predict before you run.** On the toy the ControlNet was close to half the size of the
# frozen model (chapter 03). Will SD's be a larger or a smaller share of its UNet?

# %%
from diffusers import UNet2DConditionModel

from cnetlib.base import load_base
from cnetlib.sd import SD15_UNET_CONFIG, SDControlNet

with torch.device("meta"):
    sd15_unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    sd15_net = SDControlNet.from_unet(sd15_unet)
n_unet = sum(p.numel() for p in sd15_unet.parameters())
n_net = sum(p.numel() for p in sd15_net.parameters())
n_toy = sum(p.numel() for p in load_base().parameters())  # the toy base of chapters 01-07
print(f"SD 1.5 UNet: {n_unet / 1e6:.1f} M parameters ({n_unet / n_toy:,.0f}× the toy base's {n_toy / 1e6:.1f} M); "
      f"its ControlNet: {n_net / 1e6:.1f} M ({n_net / n_unet:.0%})\n")
print(f"{'#':>2}  {'block':<11} {'level':>5} {'channels':>8} {'h_i':>4}")
for c in sd15_net.connections:
    print(f"{c.index:>2}  {c.kind:<11} {c.level:>5} {c.channels:>8} {c.resolution:>4}")
assert [c.index for c in sd15_net.connections] == list(range(13))
assert [c.resolution for c in sd15_net.connections] == [64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8]
assert 355e6 < n_net < 365e6        # the public SD 1.5 ControlNets have 361 M parameters
assert 855e6 < n_unet < 865e6 and round(n_toy / 1e6, 1) == 1.1     # the prose: 860 M and 1.1 M
from cnetlib.diagrams import unet_diagram

fig = unet_diagram(sd15_net.connections, title="SD 1.5's UNet: 12 skips + the middle block = 13 connection points")
save_figure(fig, "08_sd15_connections")
plt.show()

# %% [markdown]
# 12 skip connections at 64, 32, 16 and 8 (the input conv, two ResNet blocks per level,
# three downsamplers) plus the middle block: the paper's 13. The copy is 42 % of the UNet,
# a smaller share than the toy's: SD's text encoder and decoder hold more of its weights.
# Its condition encoder takes the 512 × 512 control image down to the 64 × 64 latent
# grid with three stride-2 convs (chapter 03).
#
# ## 2 · The components
#
# `SDParts` holds what ControlNet steers and never trains: VAE, text encoder,
# tokenizer, UNet, scheduler.

# %%
from cnetlib.sd import CANNY_CONTROLNET_ID, SD15_ID, SDParts, fill_zero_layers, hub_offline


def hub_reachable() -> bool:
    if hub_offline():
        return False
    try:
        import urllib.request

        urllib.request.urlopen("https://huggingface.co", timeout=3)
        return True
    except OSError:
        return False


REAL = torch.cuda.is_available() and not SMOKE and hub_reachable()
why_tiny = ("smoke mode" if SMOKE else "no GPU" if not torch.cuda.is_available() else "the hub is not reachable")
if REAL:
    try:
        parts = SDParts.from_pretrained(SD15_ID, dtype=torch.float16, device="cuda", scheduler="unipc")
        canny_net = SDControlNet.from_pretrained(CANNY_CONTROLNET_ID).to("cuda", torch.float16)
        size, steps = 512, 20
    except OSError as e:   # a GPU runtime without the weights: say why, then run on the tiny preset
        print(f"Could not load the real weights, so this run falls back to the tiny preset.\n{e}")
        REAL, why_tiny = False, "the real weights did not load (above)"
if not REAL:
    parts = SDParts.tiny()
    # the tiny preset has no trained ControlNet: give its zero layers random weights, as training would
    canny_net = fill_zero_layers(SDControlNet.from_unet(parts.unet), seed=0)
    size, steps = 64, pick(10, 4)
canny_net.eval()
# every sample figure says which weights drew it: on the tiny preset the pictures are noise
weights_label = "SD 1.5 + Canny ControlNet" if REAL else "TINY PRESET, random weights: noise, not a result"
print(f"running on Stable Diffusion 1.5 ({SD15_ID}) + {CANNY_CONTROLNET_ID} (fp16, GPU)" if REAL else
      f"running on the TINY PRESET ({why_tiny}): SD-shaped components with random weights. "
      "Images are noise; shapes are real.")
print(f"UNet {sum(p.numel() for p in parts.unet.parameters()) / 1e6:.2f} M parameters, "
      f"latents {parts.unet.config.sample_size}², VAE ×{parts.vae_scale_factor}, ControlNet "
      f"{sum(p.numel() for p in canny_net.parameters()) / 1e6:.2f} M, {len(canny_net.connections)} connections")

# %% [markdown]
# ## 3 · The same numbers as diffusers
#
# `SDControlNet` is cnetlib's own module, but its weights convert to and from diffusers'
# `ControlNetModel` (`to_diffusers`, `from_diffusers`, `save_pretrained`,
# `from_pretrained`), so the public ControlNets load into it. With the same weights and
# inputs the two must produce the same residuals, one per connection (13 for SD 1.5: 12
# down and 1 middle; the tiny preset has fewer):

# %%
from diffusers import StableDiffusionControlNetPipeline

theirs = canny_net.to_diffusers().to(parts.device).eval()
g = torch.Generator().manual_seed(1)
lat = parts.unet.config.sample_size
x = torch.randn(2, 4, lat, lat, generator=g).to(parts.device, parts.dtype)
ehs = torch.randn(2, parts.tokenizer.model_max_length, parts.unet.config.cross_attention_dim, generator=g).to(
    parts.device, parts.dtype)
cond = torch.rand(2, 3, 8 * lat, 8 * lat, generator=g).to(parts.device, parts.dtype)
with torch.no_grad():
    d_ours, m_ours = canny_net(x, torch.tensor(500), ehs, cond)
    d_theirs, m_theirs = theirs(x, torch.tensor(500), ehs, cond, return_dict=False)
diff = max([(a - b).abs().max().item() for a, b in zip(d_ours, d_theirs)] + [(m_ours - m_theirs).abs().max().item()])
largest = max([m_theirs.abs().max().item()] + [b.abs().max().item() for b in d_theirs])
print(f"{len(d_ours) + 1} residuals ({len(d_ours)} down + 1 middle), largest difference from diffusers' "
      f"ControlNetModel: {diff:.2e} (largest residual value {largest:.3g}, {parts.dtype})")
assert diff <= 64 * torch.finfo(parts.dtype).eps * max(1.0, largest)   # equal up to rounding, whatever the dtype and weights
assert len(d_ours) + 1 == len(canny_net.connections) and (len(d_ours) == 12 or not REAL)

# %% [markdown]
# Which published ControlNets load, and which are refused (each row is a case of
# `tests/test_sd_layouts.py`, on tiny models of the same layout):
#
# | family | diffusers config | in cnetlib |
# |---|---|---|
# | ControlNet 1.0 / 1.1 for SD 1.5 (canny, depth, pose, …) | SD 1.5's UNet keys | loads; residuals equal on `from_diffusers`, save → load (ours and diffusers') and export |
# | ControlNet 1.1 *shuffle* | `global_pool_conditions: true` (each residual averaged over H, W) | loads, equal, the flag kept on save |
# | ControlNets for SD 2.x | linear projections, per-level heads, 1024-d text | loads, equal |
# | SDXL ControlNets | `addition_embed_type: "text_time"` (SDXL's size and crop conditioning) | refused: `addition_embed_type: expected None …` |
#
# Every key of diffusers' UNet and ControlNet configs is decided: honoured, irrelevant to
# a ControlNet (the decoder's, the output's), or refused with its name when it holds a
# value SD 1.x/2.x never use (`timestep_post_act`, `resnet_out_scale_factor`, Fourier
# time embeddings, other block types, a condition encoder of another depth…). A key that
# a later diffusers adds fails that test until it is decided, instead of passing silently.
# To check it yourself: `pytest tests/test_sd_layouts.py`.
#
# The authors' own checkpoints (`control_sd15_canny.pth`) use the original layout,
# `control_model.input_blocks.…`, `zero_convs`, `input_hint_block`, `middle_block_out`.
# `SDControlNet.from_original` reads it through an explicit key map (a unit test checks
# the map against diffusers' own converter); a few of its names:

# %%
orig = canny_net.original_state_dict()
ours_names = list(canny_net.state_dict())
for k in [ours_names[0], "condition_encoder.layers.14.weight", "zero_convs.0.weight",
          f"zero_convs.{len(canny_net.connections) - 1}.weight", "down_blocks.0.resnets.0.conv1.weight"]:
    from cnetlib.sd import to_original_key

    print(f"{k:<40} ↔  control_model.{to_original_key(k, canny_net)}")
back = SDControlNet.from_original(orig, dict(parts.unet.config))
assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), canny_net.state_dict().values()))

# %% [markdown]
# ## 4 · A control image from a photo: Canny
#
# ControlNets are trained on *annotations* of photos: edges, depth, pose. The
# `controlnet-aux` package holds the annotators; `cnetlib.sd.annotate` wraps it. Canny
# runs offline (it is OpenCV); the learned ones (HED, MiDaS, OpenPose, …) need the
# `lllyasviel/Annotators` weights and say so when they cannot get them.

# %%
from PIL import Image

from cnetlib.sd import annotate

photo = Image.open(DATA_DIR / "grace_hopper_512.jpg").convert("RGB").resize((size, size))
edges = annotate(photo, "canny", low_threshold=100, high_threshold=200)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, im, title in zip(axes, (photo, edges), ("photo (data/grace_hopper_512.jpg)", "Canny edges: the condition")):
    ax.imshow(im)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
save_figure(fig, "08_canny")
plt.show()
e = np.asarray(edges)
assert e.shape[:2] == (size, size) and set(np.unique(e)) <= {0, 255} and 0.01 < (e > 0).mean() < 0.5
try:
    annotate(photo, "hed")
    print("HED: weights available")
except RuntimeError as err:
    print("HED:", str(err)[:160], "…")

# %% [markdown]
# ## 5 · Generating with one condition
#
# `cnetlib.sd.generate` is chapter 06's sampler on SD: any number of controls, any
# guidance mode, conditioning scale, control window. Which branch of guidance gets the
# control, with which weight per connection, and how several ControlNets add up come from
# `cnetlib.control`, the same functions the toy's sampler calls (a unit test runs every
# mode through both and compares the weights applied). With mode `both` and one ControlNet
# it computes exactly what diffusers' `StableDiffusionControlNetPipeline` does (a unit
# test checks equality); here we check it once more:

# %%
from cnetlib.guidance import Control
from cnetlib.sd import generate

prompt = "a portrait of a woman in uniform, oil painting" if REAL else "a portrait"
ours = generate(parts, [prompt], [Control(canny_net, edges)], guidance=7.5, steps=steps, seed=0)
pipe = StableDiffusionControlNetPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                         unet=parts.unet, controlnet=theirs,
                                         scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
ref = pipe([prompt], image=edges, num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
           generator=torch.Generator().manual_seed(0)).images.float().cpu()
ours = (ours + 1) / 2   # cnetlib returns [-1, 1] like the toy; the pipeline returns [0, 1]
print(f"largest pixel difference from StableDiffusionControlNetPipeline: {(ours - ref).abs().max():.2e}")
assert (ours - ref).abs().max() < (1e-2 if REAL else 1e-5)
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
axes[0].imshow(edges)
axes[1].imshow(ours[0].permute(1, 2, 0).numpy())
for ax in axes:
    ax.axis("off")
axes[0].set_title("condition", fontsize=8)
axes[1].set_title(f"sample ({weights_label})", fontsize=8)
save_figure(fig, "08_one_condition")
plt.show()

# %% [markdown]
# ## 6 · The guidance modes, side by side
#
# The four modes of chapter 06, same seed, same condition, with and without a prompt
# (on the tiny preset the differences are real but the pictures are not: they only show
# that each mode computes something different).
#
# **Predict before you run.** At guidance 7.5 with the empty prompt, will `both` and
# `cond_only` give the same image? (Chapter 06 found them equal at β = 1 only.)

# %%
from cnetlib.guidance import MODES

images = []
for p_ in ("", prompt):
    for mode in MODES:
        images.append((generate(parts, [p_], [Control(canny_net, edges)], mode=mode, guidance=7.5,
                                steps=steps, seed=0)[0] + 1) / 2)
fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
for ax, img, (p_, mode) in zip(axes.flat, images, [(p_, m) for p_ in ("no prompt", "prompt") for m in MODES]):
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(f"{mode}, {p_}", fontsize=8)
    ax.axis("off")
fig.suptitle(f"guidance modes, same seed ({weights_label})", fontsize=9)
fig.tight_layout()
save_figure(fig, "08_modes")
plt.show()
print(f"largest pixel difference between `both` and `cond_only`, empty prompt: "
      f"{(images[0] - images[1]).abs().max() * 255:.1f} of 255")
assert not torch.equal(images[0], images[1])          # "both" and "cond_only" differ

# %% [markdown]
# ## 7 · Two conditions
#
# Several ControlNets add up per connection (chapter 07). On SD one would combine, say,
# Canny and depth; here a second ControlNet (offline: another random one) reads the
# edges of the mirrored photo.

# %%
if REAL:
    second_net = canny_net
else:
    second_net = fill_zero_layers(SDControlNet.from_unet(parts.unet), seed=5).eval()
edges2 = annotate(photo.transpose(Image.FLIP_LEFT_RIGHT), "canny")


def two_conditions(scale_1: float = 1.0, scale_2: float = 1.0, guidance: float = 7.5):
    """Generate with both ControlNets at their scales; the widget below calls it again."""
    img = generate(parts, [prompt], [Control(canny_net, edges, scale_1), Control(second_net, edges2, scale_2)],
                   guidance=guidance, steps=steps, seed=0)
    img = (img + 1) / 2   # [-1, 1] -> [0, 1] for imshow
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    for ax, im, title in zip(axes, (edges, edges2, img[0].permute(1, 2, 0).numpy()),
                             (f"condition 1 × {scale_1:g}", f"condition 2 × {scale_2:g}", f"sample ({weights_label})")):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig, img


fig, both_img = two_conditions()
save_figure(fig, "08_two_conditions")
plt.show()
_, only_first = two_conditions(1.0, 0.0)
plt.close("all")
assert not torch.equal(both_img, only_first)           # the second condition changes the image
assert torch.equal(only_first, ours) or REAL           # scale 0 removes it exactly

# %%
s1 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description="scale 1", continuous_update=False)
s2 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.1, description="scale 2", continuous_update=False)
beta = widgets.FloatSlider(value=7.5, min=1.0, max=12.0, step=0.5, description="guidance", continuous_update=False)


def show(scale_1: float, scale_2: float, guidance: float) -> None:
    two_conditions(scale_1, scale_2, guidance)
    plt.show()


display(widgets.VBox([widgets.HBox([s1, s2, beta]),
                      widgets.interactive_output(show, {"scale_1": s1, "scale_2": s2, "guidance": beta})]))

# %% [markdown]
# > **Key takeaways**
# >
# > * The recipe does not change with scale: SD 1.5's ControlNet copies the encoder and
# >   middle block (361 M parameters) and writes into 13 connections.
# > * SD works on a VAE's 64 × 64 × 4 latents; the condition encoder takes a 512 × 512
# >   control image down to that grid.
# > * The book's `SDControlNet` computes what diffusers' `ControlNetModel` computes, and
# >   its weights load both ways.
# > * The guidance modes of chapter 06 and the summed ControlNets of chapter 07 run
# >   unchanged on SD, through the same functions.
#
# ## Exercises
#
# Worked solutions: `solutions/08_stable_diffusion.py`.
#
# ### Exercise 08.1 · Connection sides [checked]
#
# Write `my_connection_sides(latent, levels, layers)`: the side h_i of every connection of an
# SD-layout UNet (input conv, `layers` ResNets per level, a downsampler after every level
# but the last, the middle block last). SD 1.5: `connection_sides(64, 4, 2)`.

# %%
from cnetlib.exercises import check


def my_connection_sides(latent, levels, layers):
    raise NotImplementedError("your code here")


check("08.1", my_connection_sides)

# %% [markdown]
# ### Exercise 08.2 · What the VAE saves [checked]
#
# How many times fewer numbers does SD 1.5's latent z hold than its 512 × 512 RGB image?

# %%
answer = None   # your number
check("08.2", answer)

# %% [markdown]
# ### Exercise 08.3 · A real ControlNet [open]
#
# On a machine with a GPU and internet, run this chapter interactively (not through
# `make book`, which works offline): section 5 then loads SD 1.5 and the public Canny
# ControlNet. Compare the four guidance modes without a prompt with chapter 06's toy
# ranking.
#
# **In cnetlib:** `cnetlib.sd.SDControlNet` (13 connections, diffusers' and the original
# weight layouts), `cnetlib.sd.generate` (any number of ControlNets, every guidance mode),
# `cnetlib.sd.annotate` (control images from photos).
#
# **Next:** chapter 09 trains such a ControlNet and measures what it costs.
