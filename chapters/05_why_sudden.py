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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/controlnet-book/controlnet-book/blob/main/chapters/05_why_sudden.ipynb)
#
# # 05 · Why is convergence sudden? The mechanism, measured
#
# Chapter 04 showed *that* the toy ControlNet jumps: for hundreds of steps its samples
# ignore the outline, then within a few hundred steps they follow it. The paper shows
# the same (§3.3, its Figure 4) and explains nothing; users of the reference code keep
# asking what is happening and when to stop training (lllyasviel/ControlNet#215,
# huggingface/diffusers#3591). Two stories fit chapter 04's curves:
#
# * **the network changes abruptly**: for a long time the ControlNet does not use the
#   condition, then it learns to, quickly;
# * **the sampler makes the jump**: the network's use of the condition grows smoothly,
#   and the 20 DDIM steps turn it into a yes-or-no decision per sample once it crosses
#   some threshold.
#
# They predict different things, and we can measure each. We retrain chapter 04's runs
# keeping the ControlNet every 25 steps (a **snapshot**), and measure every snapshot
# twice: the network without sampling (how much the right outline lowers the loss, how
# much the condition features c_f = E(c) vary with the outline, the connectors, the
# residuals), and the sampler (16 noise draws per outline, and the control scaled by a
# factor α).
#
# **You will learn** to tell a network's change from a sampler's, to read a quantity
# that grows from 10⁻⁷ on a log axis, and a cheap signal that announces the jump before
# samples show it. **You need** chapters 02–04. What changes the jump (learning rate,
# loss weighting, timesteps, connectors, prompts, data) is in
# [appendix A05](A05_recipe_variants.ipynb).
#
# **Time on a 2-core CPU:** by default the chapter reads the measured curves shipped in
# `data/mechanism/` and runs one live measurement: under a minute. With
# `USE_SHIPPED = False` it retrains and measures every run (the next cell prints the
# cost).

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
from cnetlib import save_figure, smoke_mode

SMOKE = smoke_mode()  # set CNETLIB_SMOKE=1 for the short run CI does
print(f"cnetlib {cnetlib.__version__}, torch {torch.__version__}, smoke mode: {SMOKE}")

# %% [markdown]
# **Shipped curves or your own?** Seeds 0, 1 and 2 are chapter 04's training seeds and
# carry every measurement; seeds 3 and 4 are held out: section 6 uses them to test an
# early warning calibrated on the first three. Each seed's `curves.json` is written by
#
# ```
# python -m cnetlib.experiments.mechanism --seed S --out data/mechanism/seedS
# ```
#
# and `python -m cnetlib.experiments.mechanism --book` writes all five (seeds 3 and 4
# with a snapshot every 50 steps and no control-scale sweep).

# %%
from cnetlib.experiments.mechanism import SHIPPED_MECHANISM, load_curves

USE_SHIPPED = True            # False: retrain and measure every seed here (cost printed below)
TRAIN = not USE_SHIPPED and not SMOKE
SEEDS = (0, 1, 2)
HELD_OUT = tuple(s for s in (3, 4) if TRAIN or (SHIPPED_MECHANISM / f"seed{s}" / "curves.json").is_file())
assert HELD_OUT, f"no held-out curves in {SHIPPED_MECHANISM}: python -m cnetlib.experiments.mechanism --book"
shipped = {s: load_curves(s) for s in SEEDS + HELD_OUT}
minutes = {s: (c["train_seconds"] + sum(r["seconds"] for r in c["snapshots"])) / 60 for s, c in shipped.items()}
print(f"{len(shipped)} seeds; training and measuring each took {min(minutes.values()):.0f} to "
      f"{max(minutes.values()):.0f} min on 2 CPU cores ({sum(minutes.values()):.0f} min in all)")
curves = {s: load_curves(s, train=True) for s in SEEDS + HELD_OUT} if TRAIN else shipped

# %% [markdown]
# What is measured where: the condition's path through the ControlNet (orange) into the
# frozen model (blue), with the network's measurements at each stage, then the sampler.

# %%
from cnetlib.diagrams import flow_diagram

fig = flow_diagram([("control image c", "neutral"), ("E(c) = c_f\noutline content of c_f", "trainable"),
                    ("copy Θc", "trainable"), ("connectors Z\nresidual ratio ‖r_i‖/‖h_i‖", "zero"),
                    ("frozen model → v̂\ncondition gain", "frozen"),
                    ("sampler: 20 DDIM steps\n16 draws, control × α", "neutral")],
                   per_row=6, title="the network's measurements (left) and the sampler's (right)",
                   notes=["condition gain = loss with another image's outline − loss with the right one, "
                          "per band of noise levels (0 at step 0: zero convolutions)"])
save_figure(fig, "05_what_is_measured")
plt.show()

# %% [markdown]
# ## 1 · The same runs, with snapshots
#
# A snapshot is the ControlNet's state dict, copied every 25th step by an `on_step`
# callback of chapter 04's `train_controlnet` (`cnetlib.mechanism.Snapshots`).
#
# Same recipe, same seed, same data: are these chapter 04's runs? The first steps say
# yes; after that, no.

# %%
from cnetlib.experiments.runs import SHIPPED, load_run
from cnetlib.mechanism import curve, timing

print(f"{'seed':<6}{'|Δ loss| at 25':>16}{'at 100':>10}{'max to 1200':>13}{'jump, ch. 04':>14}{'jump here':>11}")
jumps = {}
for s in SEEDS:
    c, ch04 = curves[s], load_run(SHIPPED / f"seed{s}")
    per_step = np.array(c["loss_per_step"])
    diff = {r["step"]: abs(per_step[r["step"] - 25: r["step"]].mean() - r["loss"]) for r in ch04.log if r["step"] > 0}
    jumps[s] = timing(*curve(c, "iou")).jump_step
    print(f"seed{s:<2}{diff[25]:>16.1e}{diff[100]:>10.1e}{max(diff.values()):>13.3f}"
          f"{ch04.summary['jump']['jump_step']:>14}{jumps[s]:>11}")
    assert diff[25] < 1e-6 and max(diff.values()) > 1e-3
print(f"measured with torch {curves[SEEDS[0]]['torch']}")

# %% [markdown]
# Over the first 25 steps the mean loss agrees with chapter 04's log to 10⁻⁷ or better:
# same data, batches, noise and starting weights. Chapter 04's runs were trained in an
# earlier environment of this book that rounded differently in the last bits (they do
# not record their PyTorch build); those differences grow into different trajectories,
# and the jumps come at steps 1050, 650 and 750 instead of 500, 500 and 500. The first
# finding: **the step at which a given seed jumps is not a property of the seed**.
# Everything below is measured on these runs, each against its own sampled curve.
#
# ## 2 · Does the network change abruptly, or the sampler?
#
# For each snapshot, without sampling (`cnetlib.mechanism.MechanismProbe`, on 64
# held-out pairs, the same noise for every snapshot):
#
# * **condition gain**: the loss with another image's outline minus the loss with the
#   right one, ℓ(c′) − ℓ(c), per band of diffusion steps t. At step 0 it is exactly 0
#   (zero convolutions); it can only become positive if the network reads the outline.
#   For each band the same noised pairs go through the controlled model with the right
#   outlines and with the outlines rolled by one image.
# * **outline content of c_f**: ‖c_f − mean(c_f)‖ / ‖h_0‖, the part of the condition
#   features c_f = E(c) (E's last layer is the zero conv Z(·; Θz1)) that differs from
#   outline to outline, next to the features h_0 of the trainable copy it is added to (a
#   bias or any constant in c_f carries no outline);
# * **residual ratio** ‖r_i‖ / ‖h_i‖ and the connectors' per-weight RMS (section 4).
#
# And with the sampler: the mean IoU of 8 outlines × 16 noise draws, 20 DDIM steps,
# mode "both", β = 3 (chapter 04's probe), every 50 steps. Each curve is rescaled to
# rise from 0 to 1 and timed with chapter 04's detector.
#
# **Predict before you run.** If the sampler makes the jump, the network's curves rise
# smoothly and early, the samples' late and sharp. If the network does, both rise
# together. Which do you expect?

# %%
from cnetlib.mechanism import BANDS

NETWORK = {"gain:high noise": "condition gain, high noise", "path:signal": "outline content of c_f, ‖c_f − mean‖/‖h_0‖",
           "ratio": "residual ratio (mean)", "rms": "connector RMS (mean)"}
SAMPLER = {"iou": "sampled IoU (α = 1)", "following": "share of draws following (IoU ≥ 0.8)"}

fig, axes = plt.subplots(1, len(SEEDS), figsize=(13, 3.6), sharey=True)
table = []
for ax, s in zip(axes, SEEDS):
    for metric, label in {**SAMPLER, **NETWORK}.items():
        st, y = curve(curves[s], metric)
        j = timing(st, y)
        table.append({"seed": s, "metric": metric, **j.to_dict()})
        tail = y[-max(1, len(y) // 10):].mean()
        ax.plot(st, (y - y[0]) / (tail - y[0]), "o-" if metric in SAMPLER else "-", ms=3, label=label,
                lw=2 if metric in SAMPLER else 1.2)
    ax.set(title=f"seed {s}", xlabel="training step", ylim=(-0.15, 1.3))
axes[0].set_ylabel("rise, rescaled to 0 → 1")
axes[-1].legend(fontsize=7, loc="upper left")
fig.tight_layout()
save_figure(fig, "05_network_and_sampler")
plt.show()

print(f"{'seed':<6}{'metric':<20}{'10 %':>6}{'50 %':>6}{'90 %':>6}{'sharpness':>11}")
for row in table:
    print(f"{row['seed']:<6}{row['metric']:<20}{row['step_10']:>6}{row['step_50']:>6}{row['step_90']:>6}"
          f"{row['sharpness']:>11.2f}")
by = {(r["seed"], r["metric"]): r for r in table}
for s in SEEDS:   # the network's use of the outline rises first, then the samples follow
    assert by[(s, "path:signal")]["step_10"] <= by[(s, "gain:high noise")]["step_10"] < by[(s, "iou")]["step_10"]
    assert by[(s, "rms")]["step_50"] < by[(s, "gain:high noise")]["step_10"] / 2

# %% [markdown]
# On a linear axis the network's use of the outline is as sudden as the samples, and
# comes first: the condition gain reaches 10 % of its rise 25–50 steps before the sampled
# IoU does (steps 950, 475, 625 against 1000, 500, 650), and the outline's part of c_f
# earlier still. Sharpness (chapter 04: the largest share of the rise made within 10 % of
# the run, after a 3-point running median) is of the same order for the gain (0.75,
# 0.30, 0.36) as for the IoU (0.69, 0.37, 0.49), and higher for the outline content of
# c_f (1.00, 0.59, 0.94): the samples are not sharper than the network. The connectors
# are another matter: their RMS makes half of its rise in the first 50–125 steps, and
# the residual ratio jumps at the very first snapshot (section 4 prints it): the
# ControlNet changes the base's features long before it reads the outline. What does
# "zero" mean for the gain before the jump, though? A linear axis cannot tell a quantity
# that is absent from one that grows exponentially from 10⁻⁷. A log axis can.

# %%
from cnetlib.convergence import first_step_staying_above
from cnetlib.mechanism import log_growth

WARN, ON = 1e-5, 1e-3    # a gain above most of its wandering before the jump; a gain the samples can show
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
switch, warn, climb = {}, {}, {}
for s in SEEDS:
    st, g = curve(curves[s], "gain:high noise")
    line, = axes[0].semilogy(st[1:], np.clip(g[1:], 1e-9, None), "-", lw=1.2, label=f"seed {s}")
    axes[0].axvline(jumps[s], color=line.get_color(), ls=":", lw=1)
    st_sig, sig = curve(curves[s], "path:signal")
    axes[1].semilogy(st_sig[1:], sig[1:], "-", lw=1.2, color=line.get_color(), label=f"seed {s}")
    warn[s], switch[s] = first_step_staying_above(st, g, WARN), first_step_staying_above(st, g, ON)
    climb[s] = log_growth(st, g, low=1e-6, high=1e-2)
for ax in axes:
    ax.axhline(WARN if ax is axes[0] else np.nan, color="0.6", lw=0.8)
axes[0].set(xlabel="training step", ylabel="ℓ(shuffled c) − ℓ(c), high noise (≤ 0 drawn at 10⁻⁹)",
            title="the network's use of the outline (dotted: sampled jump)")
axes[1].set(xlabel="training step", ylabel="‖c_f − mean(c_f)‖ / ‖h_0‖", title="outline content of c_f")
axes[0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "05_log_scale")
plt.show()
for s in SEEDS:
    print(f"seed {s}: gain stays ≥ 10⁻⁵ from step {warn[s]}, ≥ 10⁻³ from step {switch[s]}; it climbs from 10⁻⁶ "
          f"(step {climb[s][1]}) to 10⁻² (step {climb[s][2]}), {climb[s][0]:.0f} steps per ×10; "
          f"sampled IoU: 10 % at {by[(s, 'iou')]['step_10']}, jump (50 %) at {jumps[s]}")
    assert warn[s] <= switch[s] <= by[(s, "iou")]["step_10"]     # the network first, then the samples
    assert climb[s][0] <= 60                                      # four decades within a few hundred steps
for s in SEEDS:   # before the jump: how large, and how it grows
    st, g = curve(curves[s], "gain:high noise")
    before = (st > 0) & (st < warn[s])
    positive_from = int(st[np.nonzero(before & (g <= 0))[0].max() + 1]) if (before & (g <= 0)).any() else int(st[1])
    print(f"seed {s}: before step {warn[s]} the gain lies in [{g[before].min():.1e}, {g[before].max():.1e}]; "
          f"positive at every snapshot from step {positive_from}")
st, g = curve(curves[0], "gain:high noise")
creep = (750 - 375) / np.log10(g[st == 750][0] / g[st == 375][0])
print(f"seed 0 creeps up before the jump: {g[st == 375][0]:.1e} at step 375, {g[st == 750][0]:.1e} at step 750, "
      f"{g[st == 875][0]:.1e} at step 875 ({creep:.0f} steps per ×10 from 375 to 750)")

# %% [markdown]
# Before the jump the gain is tiny but not nothing. In seed 1 it wanders, with a false
# start (it reaches 10⁻⁴ and falls back below zero). In seeds 0 and 2 it is positive at
# every snapshot for hundreds of steps before the jump and creeps up: in seed 0 from
# about 10⁻⁷ at step 375 to 10⁻⁶ at step 750, about 430 steps per factor of ten, far
# below anything a sample can show. Then, in every seed, its growth speeds up roughly
# tenfold: from 10⁻⁶ to 10⁻² at 31 to 56 steps per factor of ten, four decades in 125 to
# 225 steps. We call the step from which the gain stays above 10⁻³ the **switch**:
# steps 950, 475 and 575. The outline content of c_f (right panel) also creeps, then
# takes off at the same snapshots: the condition encoder passes the outline on in
# earnest when the rest of the network starts to use it. After the switch the gain
# keeps growing, slowly, for hundreds of steps, and the sampled IoU rises with it: a
# slow exponential start far below what samples show, a fast take-off, then a gradual
# climb.
#
# ### Scaling the control: is a weak, correct signal hiding in the flat phase?
#
# If the network carried a weak but correct control signal before the jump, and the
# sampler only needed it to be larger, multiplying the residuals by α > 1 at sampling
# time would make the samples follow the outline earlier. Every 100 steps each outline
# was also sampled with α ∈ {0.5, 2, 4, 8} (8 draws each):
#
# **Predict before you run.** During the flat phase, will α = 8 make the samples follow
# the outline?

# %%
from cnetlib.experiments.mechanism import ALPHAS

fig, axes = plt.subplots(1, len(SEEDS), figsize=(13, 3.4), sharey=True)
alpha_rows = []
for ax, s in zip(axes, SEEDS):
    for a in ALPHAS:
        st, y = curve(curves[s], "iou", alpha=a)
        ax.plot(st, y, "o-", ms=3, lw=2 if a == 1.0 else 1, label=f"α = {a:g}")
        alpha_rows.append({"seed": s, "alpha": a, "steps": st, "iou": y})
    ax.axvline(switch[s], color="0.5", ls=":", lw=1)
    ax.set(title=f"seed {s} (dotted: the gain reaches 10⁻³)", xlabel="training step")
axes[0].set_ylabel("mean IoU with the outline's disk")
axes[-1].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "05_control_scale")
plt.show()

from cnetlib.stats import compare


def per_outline(c: dict, step: int, alpha: float) -> np.ndarray:
    """Each outline's mean IoU over its draws at ``step`` and control scale ``alpha``."""
    row = next(r for r in c["snapshots"] if r["step"] == step)
    return np.asarray(row["iou_alpha1"] if alpha == 1.0 else row["iou_alpha"][str(alpha)]).mean(1)


flat_gap, after_gap, pairs = [], [], []
for s in SEEDS:
    rows = {r["alpha"]: r for r in alpha_rows if r["seed"] == s}
    at0 = rows[1.0]["iou"][0]
    # the flat phase: every evaluation after step 0 and before the gain reaches 10⁻³ for good
    best = max(r["iou"][(r["steps"] > 0) & (r["steps"] < switch[s])].max() for r in rows.values())
    after = int(rows[2.0]["steps"][np.argmax(rows[2.0]["steps"] >= switch[s])])   # the first sweep after it
    at = {a: float(r["iou"][r["steps"] == after][0]) for a, r in rows.items()}
    flat_gap.append(best - at0)
    after_gap.append(at[2.0] - at[1.0])
    pairs.append((per_outline(curves[s], after, 2.0), per_outline(curves[s], after, 1.0)))
    print(f"seed {s}: before step {switch[s]} the best IoU of any α is {best:.2f} (step 0: {at0:.2f}); at step "
          f"{after}: " + ", ".join(f"α {a:g} {v:.2f}" for a, v in at.items()))
doubling = compare([a for a, _ in pairs], [b for _, b in pairs], paired=True)
print(f"α 2 against α 1 at the first sweep after the switch, per outline (3 seeds × 8): {doubling}")
assert max(flat_gap) < 0.05          # no α makes the samples follow the outline before the switch
assert min(after_gap) > 0 and doubling.supported   # after it, doubling the control brings the following forward

# %% [markdown]
# No. Up to the switch, no control scale from 0.5 to 8 lifts the IoU above its step-0
# value by more than 0.02 (0.37, 0.37 and 0.36 against 0.35): whatever the network knows
# of the outline then, scaling it by up to 8 cannot expose it, and α = 8 even draws
# worse disks (the residuals of a ControlNet that barely reads the outline are noise to
# the base). Just after the
# switch, doubling the control does help: per outline, α = 2 beats α = 1 by 0.09
# [0.03, 0.14] at the first sweep after it. So the sampler's threshold is real, but it
# only matters once the network's use of the outline has taken off; it does not make
# the flat phase.
#
# ### One outline at a time
#
# The sampler does add something of its own. Each outline was sampled with 16 noise
# draws at every 50 steps, so it has a probability of being followed at each step, and
# each draw lands on one side or the other:

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
widths, middle = [], []
for s in SEEDS:
    rows = [r for r in curves[s]["snapshots"] if "iou_alpha1" in r]
    st = np.array([r["step"] for r in rows])
    iou = np.array([r["iou_alpha1"] for r in rows])          # (steps, outlines, draws)
    p = (iou >= curves[s]["probe"]["threshold"]).mean(2)      # (steps, outlines)
    for k in range(p.shape[1]):
        axes[0].plot(st, p[:, k], "-", lw=0.8, color=f"C{s}", alpha=0.7)
        lo, hi = np.argmax(p[:, k] >= 0.1), np.argmax(p[:, k] >= 0.9)
        if p[:, k].max() >= 0.9:
            widths.append(st[hi] - st[lo])
    rising = (st >= by[(s, "iou")]["step_10"]) & (st <= by[(s, "iou")]["step_90"])
    middle.append(iou[rising].ravel())
for s in SEEDS:
    axes[0].plot([], [], color=f"C{s}", label=f"seed {s}")
axes[0].legend(fontsize=8)
axes[0].set(xlabel="training step", ylabel="P(draw follows the outline)", title="8 outlines × 3 seeds, 16 draws each")
draws = np.concatenate(middle)
axes[1].hist(draws, bins=np.linspace(0, 1, 26), color="0.4")
axes[1].set(xlabel="IoU of one draw", ylabel="draws", title="every draw while the mean IoU rises (10 % → 90 %)")
fig.tight_layout()
save_figure(fig, "05_one_outline")
plt.show()
share_mid = np.mean((draws > 0.5) & (draws < 0.8))
print(f"per outline, P(follow) goes from 0.1 to 0.9 in {np.median(widths):.0f} steps (median of the {len(widths)} "
      f"of {len(SEEDS) * 8} outlines that reach 0.9 by step 1200; range {min(widths)}–{max(widths)}); while the mean rises, {share_mid:.0%} of the draws "
      f"land between IoU 0.5 and 0.8")

# %% [markdown]
# Per outline, the probability of being followed climbs from 0.1 to 0.9 over a median
# of 250 steps (100 to 450; the 15 of 24 outlines that reach 0.9 by step 1200): one
# condition, averaged over its noise draws, does not switch at one step either. A single
# draw is closer to yes or no: while the mean rises, only 27 % of the draws land
# between IoU 0.5 and 0.8; the rest are spread below 0.5 or sit in the peak of followed
# disks above 0.8 (the threshold cuts into that peak's left flank). The paper's Figure 4 shows one condition with one noise: that is the
# most abrupt view there is.
#
# ## 3 · Where the control enters: which noise levels first?
#
# The condition gain per band of diffusion steps: t ∈ [667, 1000) (high noise: the
# layout is decided), [333, 667) and [0, 333) (low noise: details).

# %%
fig, axes = plt.subplots(1, len(SEEDS), figsize=(13, 3.4), sharey=True)
first = {}
for ax, s in zip(axes, SEEDS):
    for band in BANDS:
        st, g = curve(curves[s], f"gain:{band}")
        ax.semilogy(st[1:], np.clip(g[1:], 1e-9, None), label=band)
        first[(s, band)] = first_step_staying_above(st, g, 1e-4)
    ax.set(title=f"seed {s}", xlabel="training step")
axes[0].set_ylabel("condition gain (clipped at 10⁻⁹)")
axes[-1].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "05_bands")
plt.show()
last = {s: curves[s]["snapshots"][-1]["gain"] for s in SEEDS}
final = {b: np.mean([(last[s][b]["base"] - last[s][b]["true"]) / last[s][b]["base"] for s in SEEDS]) for b in BANDS}
for s in SEEDS:
    print(f"seed {s}: the gain stays ≥ 10⁻⁴ from step " + ", ".join(f"{first[(s, b)]} ({b})" for b in BANDS))
print("at step 1200 the controlled model's loss is lower than the frozen base's by " +
      ", ".join(f"{v:.0%} ({b})" for b, v in final.items()) + " (mean of the seeds)")

# %% [markdown]
# The high-noise band is first in every seed: its gain stays above 10⁻⁴ from step 925,
# 450 and 575, the mid band 0–25 steps later and the low band 0–50 steps later. At that
# level the bands switch nearly together; lower down, on the log axis, the high band
# leaves the others earlier (by hundreds of steps in seed 0). What differs most is how
# much the outline is worth to each. At the end the controlled model's loss is 51 % below
# the frozen base's at high noise, 14 % below at mid noise and 2 % above it at low noise
# (printed as −2 %), where the layout is already visible in x_t: there the right outline
# still beats a wrong one, but by little. The jump is a change in how the model places
# the disk while the image is still noise.
#
# ## 4 · The connectors
#
# Chapter 02 showed that the zero convolutions Z move from the first step. Their
# per-weight RMS (not the total norm, which grows with √(number of weights)) and the
# residuals they inject, relative to the frozen features h_i at each resolution:

# %%
from cnetlib.base import load_base

base_net = load_base()
sides = [k.resolution for k in base_net.connections]
c0 = curves[SEEDS[0]]
st = np.array([r["step"] for r in c0["snapshots"]])
rms = np.array([r["connector_rms"] for r in c0["snapshots"]])
ratio = np.array([r["residual_ratio"] for r in c0["snapshots"]])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for i, side in enumerate(sides):
    label = f"{'middle' if i == len(sides) - 1 else f'skip {i}'} ({side}×{side})"
    axes[0].plot(st, rms[:, i], label=label)
    axes[1].plot(st, ratio[:, i], label=label)
axes[0].set(xlabel="training step", ylabel="per-weight RMS of Z", title=f"connectors, seed {SEEDS[0]}")
axes[1].set(xlabel="training step", ylabel="‖r_i‖ / ‖h_i‖", title="residual next to the frozen feature")
axes[1].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "05_connectors")
plt.show()
for s in SEEDS:
    r = np.array([np.mean(x["connector_rms"]) for x in curves[s]["snapshots"]])
    stp = np.array([x["step"] for x in curves[s]["snapshots"]])
    half = stp[np.argmax(r >= 0.5 * r[-1])]
    end = curves[s]["snapshots"][-1]["residual_ratio"]
    print(f"seed {s}: mean ‖r_i‖/‖h_i‖ at step 25: {np.mean(curves[s]['snapshots'][1]['residual_ratio']):.2f}")
    print(f"seed {s}: the connectors reach half their final RMS at step {half}; the gain reaches 10⁻³ "
          f"for good at step {switch[s]}; at the end ‖r_i‖/‖h_i‖ = " + ", ".join(f"{v:.2f}" for v in end))
    assert half < switch[s] / 2 and min(end[-2:]) > 0.7 and max(end[:2]) < 0.07

# %% [markdown]
# The connectors grow from the first step (chapter 02's gradient front) and reach half
# of their final RMS within 50 to 125 steps, hundreds of steps before the switch (950,
# 475, 575). At the end two of the three 8×8 connections (the last skip and the middle
# block) add residuals about as large as the features they are added to, the finest
# (32×32) a few per cent of them. The RMS grows again a little after the switch, but
# nothing in it announces the switch, and the residual ratio was a tenth of the features
# long before it: watching the connectors' size does not tell whether the outline is
# being read.
#
# ## 5 · A live measurement
#
# The shipped curves come from `cnetlib.mechanism.MechanismProbe`; here it is on two
# ControlNets you can hold: a fresh one (zero connectors) and chapter 04's trained seed 0.

# %%
from cnetlib.base import load_or_train_base
from cnetlib.controlnet import toy_controlnet
from cnetlib.experiments.runs import load_controlnet
from cnetlib.mechanism import MechanismProbe, condition_path

base = load_or_train_base()
probe = MechanismProbe(loss_draws=1)
fresh, trained = toy_controlnet(base, "zero"), load_controlnet("seed0")
for name, net in (("fresh", fresh), ("trained", trained)):
    g = probe.condition_gain(base, net)
    path = condition_path(net, probe, base)
    print(f"{name:>8}: gain " + ", ".join(f"{b} {v['gain']:.4f}" for b, v in g.items())
          + f"; outline content of c_f {path['signal']:.3f}")
g_fresh, g_trained = probe.condition_gain(base, fresh), probe.condition_gain(base, trained)
assert all(v["gain"] == 0.0 for v in g_fresh.values())             # zero connectors: the outline changes nothing
assert g_trained["high noise"]["gain"] > g_trained["low noise"]["gain"] > 0
assert condition_path(fresh, probe, base)["signal"] == 0.0 < condition_path(trained, probe, base)["signal"]

# %% [markdown]
# ## 6 · An early warning?
#
# The condition gain costs two forward passes of the controlled model over a fixed
# held-out batch with fixed noise: no sampling. Does it announce the sampled jump? We
# calibrate on seeds 0–2 the lead between the step from which the high-noise gain stays
# above 10⁻⁵ and the sampled jump (50 % of the IoU's rise), and test it on the held-out
# seeds, which nothing above used (they were measured every 50 steps, not 25).

# %%
for s in SEEDS:   # "stays above" needs the whole run; the first touch of the level can be a false start
    st, g = curve(curves[s], "gain:high noise")
    print(f"seed {s}: the gain first touches 10⁻⁵ at step {int(st[np.argmax(g >= WARN)])}, stays above it from {warn[s]}")
leads = [jumps[s] - warn[s] for s in SEEDS]
lead = float(np.mean(leads))
mean_jump = float(np.mean([jumps[s] for s in SEEDS]))
print(f"calibration (seeds {', '.join(map(str, SEEDS))}): the warning comes {', '.join(map(str, leads))} steps "
      f"before the jump (mean {lead:.0f})")
errors, constant_errors = [], []
for s in HELD_OUT:
    st, g = curve(curves[s], "gain:high noise")
    w = first_step_staying_above(st, g, WARN)
    actual = timing(*curve(curves[s], "iou")).jump_step
    errors.append(abs(w + lead - actual))
    constant_errors.append(abs(mean_jump - actual))
    print(f"held-out seed {s}: warning at step {w}, predicted jump {w + lead:.0f}, sampled jump {actual} "
          f"(error {w + lead - actual:+.0f}); the mean jump of seeds 0–2 ({mean_jump:.0f}) would be off by "
          f"{mean_jump - actual:+.0f}")
    assert w < actual                               # the warning comes before the jump on every held-out seed
print(f"mean error: warning {np.mean(errors):.0f} steps, constant guess {np.mean(constant_errors):.0f} steps")
assert all(e < c for e, c in zip(errors, constant_errors)) and max(errors) <= 75

# %% [markdown]
# It does. The gain stays above 10⁻⁵ 175 to 200 steps before the sampled jump in seeds
# 0–2; with that lead it predicts the jumps of the held-out seeds 3 and 4 at steps 392
# and 442 against 450 and 400 measured, errors of 58 and 42 steps on a 50-step grid. A
# constant guess cannot do that here, because the jump step itself varies from seed to
# seed (400 to 1050 across the five seeds) as much as it varied between environments in
# section 1. Two cautions. "Stays above" looks at the whole run: while training, a
# reader sees the gain cross 10⁻⁵ and must wait a few evaluations to know it stays
# (seed 0 touched it at step 75 and seed 1 at step 300, and both fell back); an online
# rule of that kind is not tested here. And the rule is calibrated on three seeds and
# tested on two, of one recipe; appendix A05 checks it on other recipes.

# %% [markdown]
# ## 7 · What the toy shows
#
# **The jump is in the network, not made by the sampler.** For hundreds of steps the
# ControlNet's use of the outline is tiny: the condition gain stays far below anything a
# sample can show, and no control scale up to α = 8 lifts the mean IoU by more than 0.02.
# It grows slowly (about 430 steps per factor of ten in seed 0), then about tenfold
# faster (31 to 56 steps per factor of ten) from the switch at steps 950, 475 and 575,
# with the outline content of c_f taking off at the same snapshots; the sampled IoU
# starts to rise one or two evaluations later. The sampler adds a threshold of its own
# (one outline's probability of being followed rises over a median of 250 steps, and
# just after the switch α = 2 is ahead of α = 1), but it only sharpens what the network
# does. In one sentence: a slow exponential start far below what samples can show, a
# fast take-off, then gradual learning.
#
# **What to watch when training a ControlNet on Stable Diffusion.** Not the loss alone,
# and not a handful of samples: the condition gain on a fixed held-out batch with fixed
# noise costs two forward passes and no sampling, and on a log axis it shows the
# condition path opening before the samples do. On the toy it came 175 to 200 steps
# ahead, and on two seeds it had never seen it placed the jump within 42 and 58 steps,
# where the mean of the other seeds missed by 367 and 417. Whether the lead holds at
# SD's size is not measured here.
#
# **Why does the network do that?** [Appendix A05](A05_recipe_variants.ipynb) changes the
# recipe one thing at a time, on three seeds each, and tests the published explanations.
#
# > **Key takeaways**
# >
# > * Measure the network and the sampler separately: the condition gain (loss with a
# >   shuffled condition minus loss with the right one) needs no sampling.
# > * On a log axis the gain grows from about 10⁻⁷: slowly for hundreds of steps, then
# >   four decades in a few hundred steps. The jump is in the network.
# > * Scaling the control at sampling time cannot reveal a signal the network does not
# >   carry yet; the sampler only sharpens the network's take-off.
# > * The high-noise steps, where the layout is decided, switch first.
# > * The gain is an early warning: it opens before the samples follow.
#
# ## Exercises
#
# Worked solutions: `solutions/05_why_sudden.py`.
#
# ### Exercise 05.1 · Σ lr [checked]
#
# Write `my_cumulative_lr(step, steps, lr, schedule)`: the sum of the learning rates of the
# first `step` optimiser steps, for a constant rate or chapter 04's cosine (from lr down
# to 10 % at the last step).

# %%
from cnetlib.exercises import check


def my_cumulative_lr(step, steps, lr, schedule):
    raise NotImplementedError("your code here")


check("05.1", my_cumulative_lr)

# %% [markdown]
# ### Exercise 05.2 · Counting pairs [checked]
#
# The exact rank test of appendix A05 compares a handful of runs with U, the number of
# pairs (a_i, b_j) with a_i earlier than b_j. Write `u_statistic(a, b)`: ties count ½, and
# None (a run that never jumped) is later than every number.

# %%
def my_u_statistic(a, b):
    raise NotImplementedError("your code here")


check("05.2", my_u_statistic)

# %% [markdown]
# ### Exercise 05.3 · How small can p be? [checked]
#
# With 3 runs of a variant against 5 of the recipe, what is the smallest one-sided p
# value an exact rank test can give? (It bounds what three seeds can ever establish.)

# %%
answer = None   # your number
check("05.3", answer)

# %% [markdown]
# ### Exercise 05.4 · A warning while training [open]
#
# Section 6's warning reads "stays above 10⁻⁵" over the whole run. Write an online rule
# (for example: above 10⁻⁵ at three evaluations in a row) and replay it on the five
# shipped seeds with `curve(curves[s], "gain:high noise")`. How early does it fire, and
# does it fire falsely?
#
# **In cnetlib:** `cnetlib.mechanism` (`Snapshots`, `MechanismProbe`, `condition_path`,
# `curve`, `timing`, `log_growth`) and `python -m cnetlib.experiments.mechanism --seed S`.
#
# **Next:** chapter 06 asks where the control should enter classifier-free guidance.
