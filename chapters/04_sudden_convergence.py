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
# # 04 · Sudden convergence, measured on a CPU
#
# The ControlNet paper makes a striking claim (its Figure 4): a ControlNet does not
# learn to follow its condition gradually. For thousands of steps its samples ignore
# the condition, then within a few dozen steps (6,100 → 6,133 in the figure) they
# follow it, "usually in less than 10K optimisation steps". Users of the reference code
# report the same, and also the frustration that comes with it: the loss curve shows
# nothing, so one cannot tell from it whether the jump has happened.
#
# No public project measures this with a number, at a scale a reader can run. We do:
#
# 1. train the toy ControlNet of chapter 03 on Fill50k (outline → filled circle) on top
#    of the frozen base of chapter 01, on a 2-core CPU;
# 2. measure **condition fidelity**: sample with fixed seeds for fixed outlines and take
#    the IoU of the drawn circle with the outline's disk;
# 3. detect the jump with a documented definition, for every run, and for every sample;
# 4. run the paper's ablations: Gaussian connectors, ControlNet-lite, prompt dropping
#    0 % vs 50 %, 1k vs 50k training pairs;
# 5. say which of the paper's claims hold at this scale, with the numbers.
#
# **Time on a 2-core CPU:** full mode trains the seven runs of this chapter, about
# 10 minutes each (70 minutes; an interrupted run resumes where it stopped). Smoke mode
# (CI) reads the shipped logs of those runs from `data/sudden_convergence/` and trains
# for a few steps only: 1–2 minutes.

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
# ## 1 · The training loop
#
# `cnetlib.train.train_controlnet` is the paper's recipe at toy scale. Each step draws a
# batch of (outline c, target x_0, prompt c_t) triples, replaces half of the prompts by
# `""` (the paper: "we randomly replace 50 % text prompts with empty strings", so the
# model must learn to read the outline on its own), noises the targets and minimises the
# base's own denoising loss through the controlled model:
#
# ```python
# context = base.encode_prompts(drop_prompts(prompts, 0.5, g))   # c_t, frozen text encoder
# loss = diffusion_loss(lambda x, t: model(x, t, context, cond), x0, schedule, prediction)
# opt.zero_grad(); loss.backward(); opt.step()                     # AdamW on the ControlNet only
# ```
#
# That is the paper's ‖ε − ε_θ(z_t, t, c_t, c_f)‖², with our base's v-prediction target
# (chapter 01) in place of ε. Every few steps a `FidelityProbe` measures fidelity
# (`cnetlib.fidelity`), the log is rewritten to `log.jsonl`, and the whole state
# (ControlNet, optimiser, random generator, log) is checkpointed atomically, so a run
# interrupted with Ctrl-C resumes to bitwise the same weights (a unit test checks it).
#
# The recipe: AdamW, batch 32, 2,000 steps, 50 % prompts dropped, gradients clipped to
# norm 1 (diffusers' default), 50,000 pairs, and a learning rate of 3·10⁻³ that decays
# on a cosine to 10 % at the last step. The paper keeps its rate constant; at 3·10⁻³ a
# constant rate made one of our seeds fall back transiently late in the run (IoU
# 0.78 → 0.69 at step 1,700, ending at 0.76), which the decay prevents. The search that
# led to the recipe is at the end of the chapter.

# %%
from cnetlib.experiments.sudden_convergence import RECIPE

print(RECIPE)

# %% [markdown]
# ## 2 · Measuring condition fidelity
#
# The loss says little about it (we will measure how little), so we look at samples. A
# `FidelityProbe` holds 32 held-out outlines with their prompts and fixed sampling seeds.
# At an evaluation it samples each with DDIM (20 steps) twice: with its full prompt at
# guidance β = 3, and with the empty prompt. It segments the circle each sample draws
# (pixels far from the sample's own background colour) and takes the **IoU with the
# filled disk of the outline**. It also reads the colours of the prompted samples, to
# check that the prompt is still obeyed.
#
# Sampling 32 images twice costs about 5 s on a CPU, so it runs every 100 steps. Every
# 25 steps a **proxy** runs instead: the same prompted samples from 4 DDIM steps instead
# of 20 (8 forward passes instead of 40). We validate it below.
#
# First a few live steps, to see the loop and the probe at work (in full mode the real
# runs follow):

# %%
from cnetlib.base import load_or_train_base
from cnetlib.controlnet import toy_controlnet
from cnetlib.data import Fill50k
from cnetlib.fidelity import FidelityProbe
from cnetlib.train import train_controlnet

base = load_or_train_base()
probe = FidelityProbe(n=pick(32, 8), steps=pick(20, 8))
live = train_controlnet(base, toy_controlnet(base), Fill50k(pick(5000, 500), seed=0), steps=pick(100, 10),
                        lr=RECIPE.lr, probe=probe, eval_every=pick(25, 5), sample_every=pick(50, 10), progress=True)
for row in live.log:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.endswith("per_sample")})
assert len(live.losses) == pick(100, 10) and live.log[0]["step"] == 0 and "iou" in live.log[-1]
assert live.log[-1]["circle_accuracy"] >= 0.75   # a fresh ControlNet leaves the prompt's colours alone

# %% [markdown]
# ## 3 · Three seeds, full length
#
# In full mode the next cell trains the three seeds (about 10 minutes each); in smoke
# mode it reads the logs that the same command wrote when the book was built. Each run
# is `python -m cnetlib.experiments.sudden_convergence --seed S --out DIR`.

# %%
from cnetlib.experiments.runs import SEEDS, load_run, plot_fidelity_and_loss, run_or_load, SHIPPED

seeds = [run_or_load(name, train=not SMOKE) for name in SEEDS]
fig = plot_fidelity_and_loss(seeds, "condition fidelity (top) and loss (bottom), 3 seeds")
save_figure(fig, "04_fidelity_and_loss")
plt.show()
if not SMOKE:  # a full run must land where the shipped one did
    for run in seeds:
        shipped = load_run(SHIPPED / run.name)
        assert abs(run.summary["iou_after"] - shipped.summary["iou_after"]) < 0.05, run.name

# %% [markdown]
# ### Does the loss see it?
#
# The paper's Figure 4 comes with a warning that users of the reference code repeat: the
# loss curve stays flat through the jump, so it cannot tell you whether the model has
# learnt to follow the condition. Over the stretch where fidelity rises from 10 % to 90 %
# of its gain, how much does our loss change, and does it move with fidelity?

# %%
corrs = []
for run in seeds:
    j = run.summary["jump"]
    steps, loss = run.curve("loss")
    lo, hi = j["step_10"], j["step_90"]
    before = loss[(steps > 0) & (steps <= lo)][-8:].mean()
    after = loss[steps >= hi][:8].mean()
    iou_s, iou = run.curve("iou")
    i_lo, i_hi = iou[iou_s <= lo][-1], iou[iou_s >= hi][0]
    loss_at = np.array([loss[steps == x][0] for x in iou_s[1:]])
    corrs.append(np.corrcoef(loss_at, iou[1:])[0, 1])
    print(f"{run.name}: steps {lo}→{hi}: sampled IoU {i_lo:.2f} → {i_hi:.2f} ({(i_hi - i_lo) / i_lo:+.0%}), "
          f"loss {before:.4f} → {after:.4f} ({(after - before) / before:+.0%}); "
          f"correlation of loss and IoU over the run: {corrs[-1]:+.2f}")
    assert (i_hi - i_lo) / i_lo > 2 * abs(after - before) / before   # fidelity moves much more than the loss
assert np.mean(corrs) < -0.5                                           # ...but the loss does follow it

# %% [markdown]
# **At toy scale the paper's observation does not hold**: the loss falls by about a
# tenth while the IoU rises by about two fifths, and over the run the two are strongly
# (negatively) correlated. The difference is one of proportions. Our images are 32 × 32
# and a quarter of their pixels belong to the circle: where the circle goes is a large
# part of what the network must predict at high noise levels, so learning it shows in
# the loss. A 512 × 512 Stable Diffusion image carries far more detail that the
# condition does not explain, and the part of the loss that the condition removes is
# lost in it. What holds at both scales: the loss moves much less, relatively, than
# fidelity, and cannot tell a spread-out improvement from a sudden one. Watch samples.
#
# ### Is the proxy good enough?
#
# Every sampled evaluation also has a proxy value, so we can compare them directly:

# %%
pairs = []
for run in seeds:
    rows = [r for r in run.log if "iou" in r]
    pairs += [(r["proxy_iou"], r["iou"]) for r in rows]
pairs = np.array(pairs)
r = np.corrcoef(pairs.T)[0, 1]
fig, ax = plt.subplots(figsize=(4, 3.6))
ax.plot(pairs[:, 1], pairs[:, 0], "o", ms=3, alpha=0.6)
ax.plot([0.3, 0.9], [0.3, 0.9], "k:", lw=1)
ax.set(xlabel="sampled IoU (20 DDIM steps)", ylabel="proxy IoU (4 DDIM steps)", title=f"proxy vs sampled: r = {r:.3f}")
fig.tight_layout()
save_figure(fig, "04_proxy_validation")
plt.show()
print(f"{len(pairs)} evaluations: correlation {r:.3f}, mean |proxy − sampled| = {np.abs(pairs[:, 0] - pairs[:, 1]).mean():.3f}")
assert r > 0.95

# %% [markdown]
# A one-pass proxy (the x̂_0 a single forward pass predicts from the target noised to
# step t) does not work here: at t = 700 the noised target still shows where the
# circle is, so the untrained ControlNet already scores about 0.8, and at t = 950 it
# barely moves. Four real sampling steps are cheap enough and track the sampled IoU.

# %% [markdown]
# ## 4 · The detector
#
# `cnetlib.convergence.detect_jump` turns a fidelity curve into numbers (its docstring
# has every definition):
#
# * start = the first evaluation, end = the mean of the last 10 %, gain = end − start;
# * the curve is smoothed by a running median of 3 evaluations, so one lucky or
#   unlucky evaluation neither makes nor breaks a jump;
# * **step at q % of the gain**: the first step after which the curve *stays* above
#   start + q · gain; the **jump step** is the step at 50 %;
# * **sharpness**: the largest share of the gain made within any window of 10 % of the
#   run; **abrupt** when it is at least one half. A straight-line rise scores 0.1, a
#   step 1.0.

# %%
from cnetlib.experiments.runs import print_table, summary_table

table = summary_table(seeds)
print_table(table, ["run", "jump_step", "seconds_to_jump", "step_10", "step_90", "sharpness", "abrupt",
                    "iou_before", "iou_after", "circle_accuracy", "background_accuracy"])
for row in table:
    assert row["jump_step"] is not None                          # a jump is detected in every seed...
    assert row["seconds_to_jump"] < 600                          # ...within 10 minutes on a 2-core CPU
    assert row["circle_accuracy"] >= 0.9 and row["background_accuracy"] >= 0.9   # the prompt still rules colour
mean_after = np.mean([row["iou_after"] for row in table])
print(f"\nmean IoU after training: {mean_after:.3f} (before: {np.mean([row['iou_before'] for row in table]):.3f})")

# %% [markdown]
# Every seed jumps, within the first 10 minutes on two CPU cores, and keeps the prompt's
# colours. But the mean curve is at best borderline abrupt: in the shipped runs the
# sharpness is 0.28, 0.42 and 0.51 (seed 2 just crosses the 0.5 line), and 10 % → 90 %
# of the gain takes 600–900 steps. Where does that leave the paper's claim?

# %% [markdown]
# ## 5 · One sample at a time
#
# The paper's Figure 4 follows *one* condition and one seed. Our curves average 32 of
# them. So let us run the detector on each sample's own IoU curve (the proxy's, every
# 25 steps): its own start, end and switching step.

# %%
from cnetlib.convergence import per_sample_jumps

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for k, run in enumerate(seeds):
    steps, m = run.per_sample("proxy_iou_per_sample")
    jumps = per_sample_jumps(steps, m)
    switched = [j.jump_step for j in jumps if j.jump_step is not None]
    axes[0].hist(switched, bins=np.arange(0, 2001, 100), alpha=0.5, label=run.name)
    axes[1].hist([j.sharpness for j in jumps if j.converged], bins=np.linspace(0, 1, 11), alpha=0.5, label=run.name)
axes[0].set(xlabel="switching step of a sample", ylabel="samples", title="when does each sample switch?")
axes[1].set(xlabel="sharpness of a sample's own jump", ylabel="samples", title="how abruptly?")
axes[0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "04_per_sample_switching")
plt.show()
print_table(table, ["run", "samples_switched", "sample_switch_iqr", "sample_sharpness", "samples_abrupt", "sharpness"])
for row in table:
    assert row["samples_abrupt"] >= 0.5 and row["sample_sharpness"] >= 0.5   # most samples switch abruptly
    assert row["sample_sharpness"] > row["sharpness"]                         # each sample more than the mean

# %% [markdown]
# This is the sudden convergence of the paper, at toy scale: **a single sample does
# switch abruptly** — most of them make at least half of their gain within 10 % of
# the run, as in Figure 4 — but the samples switch at different steps, spread over
# several hundred steps, so the average rises smoothly. A "sudden" jump is a property
# of one condition and one seed; a mean over many is a smeared staircase.
#
# Here is that staircase for the first eight outlines: the outline, then the samples at
# the start, at the 10 % point, at the jump, at the 90 % point and at the end.

# %%
from cnetlib.experiments.runs import sample_strip

run0 = seeds[0]
j0 = run0.summary["jump"]
show_steps = [0, j0["step_10"], j0["jump_step"], j0["step_90"], run0.log[-1]["step"]]
conditions = FidelityProbe(n=RECIPE.probe_n).data.sources   # the outlines the runs were evaluated on
fig = sample_strip(run0, show_steps, conditions)
save_figure(fig, "04_samples_over_training")
plt.show()

# %% [markdown]
# Move the slider to see the samples of seed 0 at any evaluated step (top: with the
# prompt; bottom: with the empty prompt).

# %%
step_slider = widgets.SelectionSlider(options=run0.sample_steps(), value=run0.sample_steps()[len(run0.sample_steps()) // 2],
                                      description="step")


def show_step(step: int) -> None:
    from cnetlib.viz import image_grid

    imgs = run0.samples[step]
    k = imgs["images"].shape[0]
    image_grid(np.concatenate([conditions[:k], imgs["images"], imgs["images_no_prompt"]]), ncols=k, scale=1.0,
               suptitle=f"seed 0, step {step}: outline · with prompt · empty prompt")
    plt.show()


show_step(step_slider.value)
display(widgets.VBox([step_slider, widgets.interactive_output(show_step, {"step": step_slider})]))

# %% [markdown]
# ## 6 · The empty prompt
#
# The prompted samples follow the outline. The samples drawn with the empty prompt
# (guidance off: there is nothing to guide towards) hardly do:

# %%
for run in seeds:
    print(f"{run.name}: IoU with the empty prompt {run.log[0]['iou_no_prompt']:.2f} → {run.summary['iou_no_prompt_after']:.2f}"
          f"   (with the prompt {run.summary['iou_before']:.2f} → {run.summary['iou_after']:.2f})")

# %% [markdown]
# The base's unconditional model draws muddled, many-coloured blobs (chapter 01: at
# β = 0 nothing is in focus), and the segmentation cannot find a circle in them. The
# ControlNet has learnt where the circle goes, but at β = 1 with an empty prompt its
# push is too weak against an unconditional base. That is exactly the situation the
# paper's **CFG resolution weighting** was invented for: chapter 05 puts the control
# in the guided term and measures what it does to these numbers.

# %% [markdown]
# ## 7 · Ablations
#
# Four runs, each changing one thing from seed 0:
#
# * **gaussian**: the connectors are initialised with Gaussian weights (std 1/√fan_in)
#   instead of zeros (the paper: quality drops to the "lite" level);
# * **lite**: ControlNet-lite, one conv per block instead of the trainable copy;
# * **drop0**: no prompt dropping (the public tutorial and diffusers' default);
# * **n1000**: 1,000 training pairs instead of 50,000 (the paper: 1k images do not
#   collapse).

# %%
from cnetlib.experiments.runs import RUNS, plot_curves

ablations = [seeds[0]] + [run_or_load(name, train=not SMOKE) for name in ("gaussian", "lite", "drop0", "n1000")]
labels = ["zero convs (seed 0)", "Gaussian connectors", "ControlNet-lite", "0 % prompts dropped", "1k pairs"]
fig = plot_curves(ablations, "iou", labels, "sampled IoU, with prompt")
save_figure(fig, "04_ablations_iou")
plt.show()
fig = plot_curves(ablations, "iou_no_prompt", labels, "sampled IoU, empty prompt")
save_figure(fig, "04_ablations_iou_no_prompt")
plt.show()
ab = {row["run"]: row for row in summary_table(ablations)}
print_table(list(ab.values()), ["run", "jump_step", "sharpness", "iou_before", "iou_after", "iou_no_prompt_after",
                                "circle_accuracy", "samples_abrupt"])

# %% [markdown]
# What the numbers say, claim by claim:

# %%
claims = {
    "Gaussian connectors damage the model at step 0":
        ab["gaussian"]["iou_before"] < ab["seed0"]["iou_before"] - 0.05,
    "Gaussian connectors end clearly below zero convs (by > 0.05)":
        ab["gaussian"]["iou_after"] < ab["seed0"]["iou_after"] - 0.05,
    "ControlNet-lite ends below the trainable copy":
        ab["lite"]["iou_after"] < ab["seed0"]["iou_after"] - 0.05,
    "dropping 50 % of prompts helps the empty-prompt case":
        ab["seed0"]["iou_no_prompt_after"] > ab["drop0"]["iou_no_prompt_after"],
    "1k pairs do not collapse (IoU within 0.05 of 50k)":
        ab["n1000"]["iou_after"] > ab["seed0"]["iou_after"] - 0.05,
}
for claim, holds in claims.items():
    print(f"{'holds' if holds else 'does NOT hold'} at toy scale: {claim}")
assert claims["Gaussian connectors damage the model at step 0"]
assert claims["ControlNet-lite ends below the trainable copy"]
assert claims["1k pairs do not collapse (IoU within 0.05 of 50k)"]
assert not claims["Gaussian connectors end clearly below zero convs (by > 0.05)"]   # they recover here
assert not claims["dropping 50 % of prompts helps the empty-prompt case"]           # and dropping does not help

# %% [markdown]
# In the shipped runs:
#
# * **Gaussian connectors** start far below (IoU 0.28 instead of 0.48: the base's
#   circles are damaged at step 0, as chapter 02 measured) but recover, and end level
#   with zero convolutions (0.80 vs 0.81). At toy scale the damage is real but not
#   lasting: 2,000 steps at lr 3·10⁻³ are enough to undo it. The paper's claim that
#   quality drops to the "lite" level does not hold here.
# * **ControlNet-lite** learns much less: 0.66, and only about two thirds of the samples
#   switch at all. The trainable copy's depth matters even at 32 px. This holds.
# * **Prompt dropping** does *not* help the empty prompt at this scale: without it the
#   empty-prompt IoU ends higher (0.50 vs 0.40), and the prompted IoU is the same (0.80).
#   Our outlines carry no semantics for the ControlNet to learn "from the condition
#   alone", which is what the paper's dropping is for; here dropping only halves the
#   batches in which the ControlNet sees the prompt it must cooperate with.
# * **1,000 pairs** do not collapse: 0.81, level with 50,000, jumping at the same step.
#   This holds (a circle outline is an easy condition to generalise from).

# %% [markdown]
# ## 8 · How the recipe was found
#
# A first probe (before this book's base existed) trained at lr 10⁻³ on a base that
# ignored its prompt and saw a slow, partial rise. With the base of chapter 01 (which
# follows its prompt) we swept, on a GPU machine and then on the CPU, 3,000-step runs:
#
# | lr | batch | condition encoder | flat until | IoU at 1,200 | IoU at 2,700 |
# |---|---|---|---|---|---|
# | 3·10⁻⁴ | 32 | reference | ~1,000 | 0.58 | 0.77 |
# | 10⁻³ | 32 | reference | ~700 | 0.76 | 0.81 |
# | 3·10⁻³ | 32 | reference | ~450 | 0.80 | 0.82 |
# | 10⁻² | 32 | reference | ~450 | 0.69 | 0.78 |
# | 10⁻³ | 128 | reference | ~300 | 0.80 | 0.84 |
# | 3·10⁻³ | 128 | reference | <300 | 0.83 | 0.85 |
# | 3·10⁻³ | 32 | paper | ~450 | 0.79 | 0.83 |
#
# The flat phase shortens as the learning rate grows, up to 3·10⁻³; beyond that
# training gets noisier and ends lower. Batch 128 jumps earlier in steps but costs
# four times as much per step on a CPU. Across all of them the *mean* curve rises over
# several hundred steps, never within one evaluation; the per-sample switches are the
# abrupt part. Lower learning rates delay the jump without sharpening it relative to
# the run: the paper's lr 10⁻⁵ would need far more than 10 CPU minutes.
#
# ## What we have
#
# * `cnetlib.train.train_controlnet`: the paper's training at toy scale, resumable,
#   logging fidelity as it goes; `cnetlib.fidelity.FidelityProbe`: sampled IoU, proxy
#   IoU and prompt colours; `cnetlib.convergence`: the jump detector, per run and per
#   sample; `python -m cnetlib.experiments.sudden_convergence`: all of it from the shell.
# * At this scale: every seed converges within 10 CPU minutes, the prompt keeps its
#   colours; single samples switch abruptly as in the paper's Figure 4, the mean rises
#   over several hundred steps because samples switch at different times.
# * The empty-prompt samples barely follow the outline at β = 1: chapter 05's problem.
