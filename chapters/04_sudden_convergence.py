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
# 4. measure placement beside IoU (how far the drawn disk's centre and radius are from
#    the outline's), and give every fidelity number in a table a 95 % interval over seeds and outlines;
# 5. say which of the paper's claims hold at this scale, with the numbers.
#
# Section 7 measures, the same way and with 3 seeds each, the paper's ablations of the
# architecture (Gaussian connectors, ControlNet-lite: §4.2) and one of its training
# choices (50 % of the prompts dropped, §3.3).
#
# **Time on a 2-core CPU:** by default the chapter reads the shipped runs from
# `data/sudden_convergence/` and only trains a few live steps: a few minutes. With
# `USE_SHIPPED = False` (next cell) it retrains every run it shows, 9 to 16 minutes
# each on 2 CPU cores; the next cell prints the total before anything starts
# (an interrupted run resumes where it stopped). Smoke mode (CI) always reads the
# shipped runs: 1–2 minutes.

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
# **Shipped runs or your own?** Every figure below comes from 3 training runs (training
# seeds 0, 1, 2). By default the chapter loads the runs that ship with the book. Set
# `USE_SHIPPED = False` to retrain them on this machine; the cell prints what that costs
# before anything starts, and picks the GPU when there is one.

# %%
from cnetlib.experiments.runs import ARMS, SEEDS, SHIPPED, arm_runs, load_run
from cnetlib.runtime import default_device

USE_SHIPPED = True            # False: retrain every run of this chapter (see the estimate printed below)
DEVICE = default_device()     # "cuda" on a GPU runtime (Colab: Runtime → Change runtime type), else "cpu"
TRAIN = not USE_SHIPPED and not SMOKE
# the paper's recipe (3 seeds), then each ablation arm the book has measured (3 seeds each, section 7)
ablations = [arm for arm in ARMS if arm != "seed" and all((SHIPPED / n / "summary.json").is_file() for n in arm_runs(arm))]
chapter_runs = list(SEEDS) + [name for arm in ablations for name in arm_runs(arm)]
run_minutes = [load_run(SHIPPED / name).summary["seconds"] / 60 for name in chapter_runs]
cpu_minutes = sum(run_minutes)
print(f"{len(chapter_runs)} runs; retraining them took {cpu_minutes:.0f} min on 2 CPU cores when the book was built "
      f"({min(run_minutes):.0f} to {max(run_minutes):.0f} min each).")
assert (round(min(run_minutes)), round(max(run_minutes))) == (9, 16)   # the range the introduction quotes
print("→ loading the shipped runs" if not TRAIN else
      f"→ retraining on {DEVICE} (on a CPU about {cpu_minutes:.0f} min; finished runs under runs/ are reused)")

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
# prompts = drop_prompts([data.prompts[i] for i in idx.tolist()], drop_prompt, g)
# with torch.no_grad():
#     context = base.encode_prompts(prompts)  # c_t from the frozen text encoder
# loss = diffusion_loss(lambda x, t: model(x, t, context, cond), x0, schedule,
#                       base.config.prediction, generator=g, weighting=weighting, timesteps=timesteps)
# opt.zero_grad(set_to_none=True)
# loss.backward()
# ...
# opt.step()
# ```
#
# That is the paper's ‖ε − ε_θ(z_t, t, c_t, c_f)‖², with our base's v-prediction target
# (chapter 01) in place of ε. Every few steps a `FidelityProbe` measures fidelity
# (`cnetlib.fidelity`), the log is rewritten to `log.jsonl`, and the whole state
# (ControlNet, optimiser, random generator, log) is checkpointed atomically, so a run
# interrupted with Ctrl-C resumes to bitwise the same weights (a unit test checks it).
#
# The recipe: AdamW, batch 32, 1,200 steps, 50 % prompts dropped, gradients clipped to
# norm 1 (diffusers' default), 50,000 pairs, and a learning rate of 3·10⁻³ that decays
# on a cosine to 10 % at the last step. The paper keeps its rate constant; on the first
# base of chapter 01, at 3·10⁻³, a constant rate made one of our seeds fall back
# transiently late in the run (IoU 0.78 → 0.69 at step 1,700, ending at 0.76), which the
# decay prevented. The search that led to the recipe is at the end of the chapter.

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
# Sampling 32 images twice costs as much as a couple of dozen training steps, so it runs
# every 100 steps. Every 25 steps a **proxy** runs instead: the same prompted samples
# from 4 DDIM steps instead of 20 (8 forward passes instead of 40). We validate it below.
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
                        lr=RECIPE.lr, probe=probe, eval_every=pick(25, 5), sample_every=pick(50, 10), progress=True,
                        device=DEVICE)
for row in live.log:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.endswith("per_sample")})
assert len(live.losses) == pick(100, 10) and live.log[0]["step"] == 0 and "iou" in live.log[-1]
assert live.log[-1]["circle_accuracy"] >= 0.75   # a fresh ControlNet leaves the prompt's colours alone

# %% [markdown]
# ## 3 · Three seeds, full length
#
# Each run is `python -m cnetlib.experiments.sudden_convergence --seed S --out DIR`: the
# recipe above, the probe's curve during training, and at the end one more evaluation on
# 64 held-out outlines (the first 32 are the probe's): with the prompt (β = 3), with the
# empty prompt at β = 1 (the plain controlled model), and with the empty prompt in
# the mode chapter 06 finds best without a prompt (`cond_only`: the control in the
# prompted prediction only, β = 3).

# %%
from cnetlib.experiments.runs import SEEDS, arm_interval, per_sample_after, plot_fidelity_and_loss, run_or_load
from cnetlib.stats import bootstrap_ci, compare

seeds = [run_or_load(name, train=TRAIN, device=DEVICE) for name in SEEDS]
fig = plot_fidelity_and_loss(seeds, "condition fidelity (top) and loss (bottom), 3 seeds")
save_figure(fig, "04_fidelity_and_loss")
plt.show()
if TRAIN:  # a full run must land where the shipped one did
    for run in seeds:
        shipped = load_run(SHIPPED / run.name)
        assert abs(run.summary["iou_after"] - shipped.summary["iou_after"]) < 0.05, run.name

print(f"final evaluation, {seeds[0].summary['final_probe_n']} held-out outlines per seed; mean [95 % interval]")
print(f"{'run':<7}{'IoU, prompt':>20}{'≥ 0.85':>8}{'within 1 px':>20}{'no prompt, β 1':>20}"
      f"{'no prompt, ' + RECIPE.no_prompt_mode:>24}{'minutes':>9}")
for run in seeds:
    s = run.summary
    iou = np.asarray(s["per_sample_iou_after"])
    print(f"{run.name:<7}{str(bootstrap_ci(iou)):>20}{(iou >= 0.85).mean():>8.0%}"
          f"{str(bootstrap_ci(per_sample_after(run, 'within_1px'))):>20}"
          f"{str(bootstrap_ci(s['per_sample_iou_no_prompt_after'])):>20}"
          f"{str(bootstrap_ci(s['per_sample_iou_no_prompt_guided_after'])):>24}{s['seconds'] / 60:>9.1f}")
pooled = {key: arm_interval(seeds, key) for key in ("iou", "within_1px", "iou_no_prompt")}
guided = bootstrap_ci([r.summary["per_sample_iou_no_prompt_guided_after"] for r in seeds])
share_085 = np.mean(np.concatenate([per_sample_after(r, "iou") for r in seeds]) >= 0.85)
print(f"\n3 seeds (intervals resample seeds, then outlines): IoU {pooled['iou']}, {share_085:.0%} of samples ≥ 0.85, "
      f"within 1 px {pooled['within_1px']}; no prompt: β 1 {pooled['iou_no_prompt']}, {RECIPE.no_prompt_mode} {guided}")
for run in seeds:   # the targets of the book's toy, per seed
    iou = np.asarray(run.summary["per_sample_iou_after"])
    assert iou.mean() >= 0.90 and (iou >= 0.85).mean() >= 0.80, run.name
    assert np.mean(run.summary["per_sample_iou_no_prompt_guided_after"]) >= 0.80, run.name
    assert run.summary["circle_accuracy_after"] >= 0.95 and run.summary["background_accuracy_after"] >= 0.95
    assert per_sample_after(run, "within_1px").mean() >= 0.95 and run.summary["seconds"] < 15 * 60
if not TRAIN:   # the numbers in the prose below, from the shipped runs
    assert {f"{r.summary['iou_after']:.2f}" for r in seeds} == {"0.92"}
    assert [f"{np.mean(per_sample_after(r, 'iou') >= 0.85):.0%}" for r in seeds] == ["92%", "92%", "94%"]
    assert [f"{np.mean(r.summary[k]):.2f}" for k in ("per_sample_iou_no_prompt_after", "per_sample_iou_no_prompt_guided_after")
            for r in seeds] == ["0.82", "0.76", "0.79", "0.90", "0.88", "0.90"]
    assert [round(r.summary["seconds"] / 60) for r in seeds] == [14, 10, 9]

# %% [markdown]
# Every seed meets the targets we set for the toy. With the prompt the mean IoU is
# 0.92 in each seed, more than nine samples in ten reach 0.85 (92 %, 92 % and 94 %),
# and every disk is placed within 1 px of the outline's, with both colours right. With
# the empty prompt the plain controlled model (β = 1) reaches 0.76–0.82, and guiding the
# control alone (`cond_only`, β = 3) 0.88–0.90: section 6 and chapter 06 come back to
# that gap. Each run, with its evaluations along the way, took 9 to 14 minutes on two
# CPU cores (the same code and settings; seed 0 ran while the machine was slower). On the
# first base of chapter 01 the same recipe, run for 2,000 steps, ended at IoU 0.80–0.81
# (section 8).
#
# ### Does the loss see it?
#
# The paper's Figure 4 comes with a warning that users of the reference code repeat: the
# loss curve stays flat through the jump, so it cannot tell you whether the model has
# learnt to follow the condition. Over the stretch where fidelity rises from 10 % to 90 %
# of its gain, how much does our loss change, and does it move with fidelity?

# %%
corrs, loss_changes, iou_rises = [], [], []
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
    loss_changes.append((after - before) / before)
    iou_rises.append((i_hi - i_lo) / i_lo)
    print(f"{run.name}: steps {lo}→{hi}: sampled IoU {i_lo:.2f} → {i_hi:.2f} ({(i_hi - i_lo) / i_lo:+.0%}), "
          f"loss {before:.4f} → {after:.4f} ({(after - before) / before:+.0%}); "
          f"correlation of loss and IoU over the run: {corrs[-1]:+.2f}")
    assert (after - before) / before < -0.1 and corrs[-1] < -0.6   # the loss drops visibly, in step with IoU
assert np.mean(corrs) < -0.7
if not TRAIN:   # the prose below: the loss falls by about a quarter, the IoU rises by a quarter to a third
    assert all(-0.3 < c < -0.2 for c in loss_changes) and all(0.2 < r < 0.4 for r in iou_rises)

# %% [markdown]
# **At toy scale the paper's observation does not hold.** Across the jump the loss
# falls by about a quarter while the IoU rises by a fifth to more than a third, and
# over the whole run the two are strongly (negatively) correlated: a reader watching
# this loss curve would see the jump. The difference is one of proportions. Our images are 32 × 32 and a
# quarter of their pixels belong to the circle: where the circle goes is a large part of
# what the network must predict at high noise levels, so learning it shows in the loss.
# A 512 × 512 Stable Diffusion image carries far more detail that the condition does
# not explain, and the part of the loss that the condition removes is lost in it. What
# the loss cannot tell at any scale is *how* the fidelity rose, suddenly or gradually,
# and for which conditions. Watch samples.
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
# step t) did not work on the first base: at t = 700 the noised target still shows
# where the circle is, so the untrained ControlNet already scored about 0.8, and at
# t = 950 it barely moved. Four real sampling steps are cheap enough and track the sampled IoU.

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
    assert row["seconds_to_jump"] < 360                          # ...within 6 minutes on a 2-core CPU
    assert 300 <= row["step_90"] - row["step_10"] <= 400 and 0.3 < row["sharpness"] < 0.6
    assert row["circle_accuracy"] >= 0.9 and row["background_accuracy"] >= 0.9   # the prompt still rules colour
if not TRAIN:   # the numbers in the prose below
    assert [row["jump_step"] for row in table] == [500, 500, 500]
    assert [f"{row['sharpness']:.2f}" for row in table] == ["0.45", "0.56", "0.41"]
mean_after = np.mean([row["iou_after"] for row in table])
print(f"\nmean IoU after training: {mean_after:.3f} (before: {np.mean([row['iou_before'] for row in table]):.3f})")

# %% [markdown]
# Every seed jumps, within the first 6 minutes on two CPU cores (at step 500 in all
# three: the sampled curve is evaluated every 100 steps, so that is a grid point, and in
# seed 1 the 10 % and 50 % points fall on the same evaluation), and keeps the prompt's colours. The mean curve is borderline abrupt: its
# sharpness is 0.45, 0.56 and 0.41 (only seed 1 crosses the 0.5 line), and 10 % → 90 %
# of the gain takes 300–400 steps, a quarter to a third of the run. (On the first base of chapter
# 01 the same measurement gave 0.28, 0.42 and 0.51 over 600–900 steps of 2,000: the
# crisper base jumps sooner, not more abruptly.) The same steps do not survive a change of
# environment: chapter 05 retrains these seeds where the last-bit rounding differs, and
# their jumps come at other steps. The step at which a seed jumps
# is not a property of the seed. Where does that leave the paper's claim?

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
    axes[0].hist(switched, bins=np.arange(0, RECIPE.steps + 1, 50), alpha=0.5, label=run.name)
    axes[1].hist([j.sharpness for j in jumps if j.converged], bins=np.linspace(0, 1, 11), alpha=0.5, label=run.name)
axes[0].set(xlabel="switching step of a sample", ylabel="samples", title="when does each sample switch?")
axes[1].set(xlabel="sharpness of a sample's own jump", ylabel="samples", title="how abruptly?")
axes[0].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "04_per_sample_switching")
plt.show()
print_table(table, ["run", "samples_switched", "sample_switch_iqr", "sample_sharpness", "samples_abrupt", "sharpness"])
for row in table:
    assert row["sample_sharpness"] > row["sharpness"]          # the median sample is sharper than the mean curve
assert np.mean([row["samples_abrupt"] for row in table]) >= 0.5   # over the seeds, most samples switch abruptly
if not TRAIN:   # the numbers in the prose below
    assert [f"{row['sample_sharpness']:.2f}" for row in table] == ["0.53", "0.65", "0.68"]
    assert [f"{row['samples_abrupt']:.0%}" for row in table] == ["59%", "81%", "81%"]

# %% [markdown]
# This is the sudden convergence of the paper, at toy scale, and its limits: **a single
# sample switches more abruptly than the mean** in every seed (median sharpness 0.53,
# 0.65 and 0.68 against 0.45, 0.56 and 0.41 for the mean curve), and in every seed
# most samples make at least half of their gain within 10 % of the run, as in Figure 4
# (59 %, 81 % and 81 % of them). But the
# samples switch at different steps, so the average rises over a few hundred steps: a
# "sudden" jump is a property of one condition and one seed; a mean over many is a
# smeared staircase. A caution: these per-sample curves come from the 4-step proxy,
# and a sample read with a threshold (is the disk here or not?) can look abrupt even
# when what the network learns changes smoothly.
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
                                      description="step", continuous_update=False)


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
# Half of the training prompts were empty, so the ControlNet must also work without one.
# Then the frozen base runs its unconditional model, which chapter 01 found to be its
# weaker half (nine clean disks in ten, against nearly all with a prompt). Two ways to sample with the empty prompt:
# β = 1, the plain controlled model (with no prompt, classifier-free guidance has nothing
# to push towards when the control sits in both predictions), and the control in the
# prompted prediction only, guided at β = 3 (`cond_only`, chapter 06):

# %%
print(f"{'run':<7}{'before':>8}{'β 1, after':>22}{'within 1 px':>13}{'cond_only β 3':>22}{'within 1 px':>13}")
for run in seeds:
    s, pl = run.summary, run.summary["placement"]
    print(f"{run.name:<7}{s['iou_no_prompt_before']:>8.2f}{str(bootstrap_ci(s['per_sample_iou_no_prompt_after'])):>22}"
          f"{pl['no_prompt']['within_1px']:>13.0%}{str(bootstrap_ci(s['per_sample_iou_no_prompt_guided_after'])):>22}"
          f"{pl['no_prompt_guided']['within_1px']:>13.0%}")
gain = compare([np.asarray(r.summary["per_sample_iou_no_prompt_guided_after"]) for r in seeds],
               [np.asarray(r.summary["per_sample_iou_no_prompt_after"]) for r in seeds], paired=True)
print(f"cond_only β 3 minus β 1, 3 seeds: {gain}")
for run in seeds:
    s = run.summary
    assert s["iou_no_prompt_after"] > s["iou_no_prompt_before"] + 0.2        # it learnt to read the outline alone
    assert s["iou_no_prompt_guided_after"] > s["iou_no_prompt_after"]         # guidance helps it further
assert gain.supported
if not TRAIN:   # the numbers in the prose below
    assert {f"{r.summary['iou_no_prompt_before']:.2f}" for r in seeds} == {"0.39"}
    assert str(gain).startswith("0.90 vs 0.79: difference 0.10 [0.07, 0.15]")
    assert [f"{r.summary['placement'][k]['within_1px']:.0%}" for k in ("no_prompt_guided", "no_prompt") for r in seeds] == \
        ["95%", "94%", "95%", "81%", "75%", "78%"]

# %% [markdown]
# The ControlNet has learnt to place the circle from the outline alone: with the empty
# prompt its IoU rises from 0.39 to 0.76–0.82 at β = 1. Guiding the control alone
# (`cond_only`, β = 3) adds another 0.10 on average (interval 0.07–0.15, supported) and
# places 94–95 % of the disks within 1 px, against 75–81 % at β = 1. With no prompt the
# colours are the unconditional model's choice, so only the geometry is measured here.

# %% [markdown]
# ## 7 · Ablations
#
# The paper's ablations (§4.2) replace the zero convolutions by Gaussian-initialised
# ones, and the trainable copy by one convolution per block (ControlNet-lite); its
# training section (§3.3) drops 50 % of the prompts so that the ControlNet learns to
# read the condition without them. `cnetlib.experiments.runs.ARMS` defines each arm as
# one change to the recipe above: `gaussian` (Gaussian connectors), `lite` (ControlNet-lite),
# `drop0` (no prompt dropped, 0 % instead of 50 %) and `n1000` (1,000 training pairs
# instead of 50,000); `zero (paper)` is the three runs of the sections above. Every arm
# is trained with the same 3 seeds (`python -m cnetlib.experiments.runs gaussian lite drop0 n1000`:
# 12 runs of about the length printed in section 3, one after the other). This edition
# ships the `gaussian`, `lite` and `drop0` arms; `n1000` is defined but not trained, and
# the cell lists it as not measured. `cnetlib.stats.compare` calls "A > B" supported
# only when the 95 % interval of the difference (training seeds, then outlines,
# resampled) lies above 0.
#
# The table's columns: IoU before training, at step 100 and at the end, with the prompt;
# the share of disks placed within 1 px; IoU with the empty prompt at β = 1 and with
# `cond_only` at β = 3 (section 6); the jump step and sharpness of each seed (section 4).
# A printed difference is computed from unrounded means, so it can differ by 0.01 from
# the difference of the two rounded means beside it.
# The figure's band spans the lowest to the highest seed, not an interval.

# %%
from cnetlib.experiments.runs import arm_table, per_sample_at, plot_arms

arms = {"zero (paper)": seeds, **{arm: [run_or_load(n, train=TRAIN, device=DEVICE) for n in arm_runs(arm)]
                                  for arm in ablations}}
print(f"measured arms: {', '.join(arms)}; not measured in this edition: "
      f"{', '.join(a for a in ARMS if a != 'seed' and a not in ablations) or 'none'}")
rows = arm_table(arms, keys=("iou", "within_1px", "iou_no_prompt"))
for row, runs in zip(rows, arms.values()):
    row["iou_step_100"] = bootstrap_ci([per_sample_at(r, 100) for r in runs])
    row["no_prompt_cond_only"] = bootstrap_ci([r.summary["per_sample_iou_no_prompt_guided_after"] for r in runs])
print_table(rows, ["arm", "seeds", "iou_before", "iou_step_100", "iou", "within_1px", "iou_no_prompt",
                   "no_prompt_cond_only", "jump_steps", "sharpness"])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, key, label in zip(axes, ("iou", "iou_no_prompt"), ("with the prompt", "no prompt, β 1")):
    plot_arms(arms, key, label, ylabel="IoU with the condition's disk", ax=ax)
axes[0].set(ylim=(0, 1))
fig.suptitle("Sampled IoU while training: mean of 3 training seeds, band from the lowest to the highest seed")
fig.tight_layout()
save_figure(fig, "04_ablations")
plt.show()

# %%
def arm_values(arm: str, key: str, step: int | None = None) -> list[np.ndarray]:
    """Per-sample values of one arm, one array per training seed: final (``step=None``) or at ``step``."""
    return [per_sample_at(r, step, key) if step is not None else per_sample_after(r, key) for r in arms[arm]]


def guided(arm: str) -> list[np.ndarray]:
    """Per-sample IoU of one arm with the empty prompt, guided by the control alone (section 6)."""
    return [np.asarray(r.summary["per_sample_iou_no_prompt_guided_after"]) for r in arms[arm]]


claims = {}
if "gaussian" in arms:
    claims["zero > gaussian, final IoU"] = compare(arm_values("zero (paper)", "iou"), arm_values("gaussian", "iou"))
    claims["zero > gaussian, IoU at step 0"] = compare(arm_values("zero (paper)", "iou", 0), arm_values("gaussian", "iou", 0))
    claims["zero > gaussian, IoU at step 100"] = compare(arm_values("zero (paper)", "iou", 100),
                                                         arm_values("gaussian", "iou", 100))
    claims[f"zero > gaussian, no prompt {RECIPE.no_prompt_mode}"] = compare(guided("zero (paper)"), guided("gaussian"))
    for step in (200, 300, 400, 500):   # the other way round, through the jump: do Gaussian connectors learn sooner?
        claims[f"gaussian > zero, IoU at step {step}"] = compare(arm_values("gaussian", "iou", step),
                                                                 arm_values("zero (paper)", "iou", step))
if "lite" in arms:
    claims["zero > lite, final IoU"] = compare(arm_values("zero (paper)", "iou"), arm_values("lite", "iou"))
    claims[f"zero > lite, no prompt {RECIPE.no_prompt_mode}"] = compare(guided("zero (paper)"), guided("lite"))
    if "gaussian" in arms:   # the paper: Gaussian connectors fall to the level of lite
        claims["gaussian > lite, final IoU"] = compare(arm_values("gaussian", "iou"), arm_values("lite", "iou"))
if "drop0" in arms:
    # the paper's reason for dropping prompts (§3.3): without a prompt, the 50 % arm should do better
    claims["50 % dropped > 0 %, no prompt β 1"] = compare(arm_values("zero (paper)", "iou_no_prompt"),
                                                         arm_values("drop0", "iou_no_prompt"))
    # the other way round: does keeping every prompt help?
    claims["0 % dropped > 50 %, no prompt β 1"] = compare(arm_values("drop0", "iou_no_prompt"),
                                                         arm_values("zero (paper)", "iou_no_prompt"))
    claims[f"0 % dropped > 50 %, no prompt {RECIPE.no_prompt_mode}"] = compare(guided("drop0"), guided("zero (paper)"))
    claims["0 % dropped > 50 %, IoU with the prompt"] = compare(arm_values("drop0", "iou"),
                                                               arm_values("zero (paper)", "iou"))
    claims["0 % dropped > 50 %, IoU at step 300"] = compare(arm_values("drop0", "iou", 300),
                                                           arm_values("zero (paper)", "iou", 300))
for claim, c in claims.items():
    print(f"{claim:<42}{c}")

# what the next paragraphs say, checked against the numbers above
if "gaussian" in arms:
    assert not any(claims[k].supported for k in claims if k.startswith("zero > gaussian"))
    assert abs(claims["zero > gaussian, final IoU"].difference.value) < 0.02
    assert claims["zero > gaussian, IoU at step 0"].difference.value > 0     # lower at the start, not supported
if "lite" in arms:
    assert claims["zero > lite, final IoU"].supported and not claims[f"zero > lite, no prompt {RECIPE.no_prompt_mode}"].supported
if "drop0" in arms:
    assert not claims["50 % dropped > 0 %, no prompt β 1"].supported
    assert all(claims[k].supported for k in ("0 % dropped > 50 %, no prompt β 1", "0 % dropped > 50 %, IoU at step 300",
                                             f"0 % dropped > 50 %, no prompt {RECIPE.no_prompt_mode}"))
if not TRAIN and "gaussian" in arms:   # the numbers the prose quotes, from the shipped runs
    said = {"zero > gaussian, final IoU": "0.92 vs 0.92: difference -0.00 [-0.01, 0.01]",
            "zero > gaussian, IoU at step 0": "0.46 vs 0.43: difference 0.03 [-0.03, 0.09]",
            "zero > gaussian, IoU at step 100": "0.46 vs 0.46",
            "gaussian > zero, IoU at step 200": "0.52 vs 0.45: difference 0.07 [-0.01, 0.15] (not",
            "gaussian > zero, IoU at step 300": "0.69 vs 0.46: difference 0.23 [0.01, 0.38] (supported)",
            "gaussian > zero, IoU at step 400": "0.78 vs 0.59: difference 0.19 [0.06, 0.32] (supported)",
            "gaussian > zero, IoU at step 500": "0.84 vs 0.75: difference 0.09 [-0.01, 0.18] (not"}
    assert all(str(claims[k]).startswith(v) for k, v in said.items()), {k: str(claims[k]) for k in said}
    assert [[r.summary["jump"]["jump_step"] for r in arms[a]] for a in ("zero (paper)", "gaussian")] == \
        [[500, 500, 500], [400, 300, 300]]
    assert all(r.summary["placement"]["with_prompt"]["within_1px"] == 1 for a in ("zero (paper)", "gaussian") for r in arms[a])
    assert str(claims[f"zero > gaussian, no prompt {RECIPE.no_prompt_mode}"]).startswith(
        "0.90 vs 0.88: difference 0.01 [-0.03, 0.06] (not")
if not TRAIN and "lite" in arms:
    said_lite = {"zero > lite, final IoU": "0.92 vs 0.83: difference 0.09 [0.04, 0.16] (supported)",
                 f"zero > lite, no prompt {RECIPE.no_prompt_mode}": "0.90 vs 0.88: difference 0.02 [-0.03, 0.07] (not",
                 "gaussian > lite, final IoU": "0.92 vs 0.83: difference 0.10 [0.04, 0.17] (supported)"}
    assert all(str(claims[k]).startswith(v) for k, v in said_lite.items()), {k: str(claims[k]) for k in said_lite}
    lite_within = [r.summary["placement"]["with_prompt"]["within_1px"] for r in arms["lite"]]
    assert [f"{w:.0%}" for w in lite_within] == ["86%", "39%", "78%"]
    assert [r.summary["parameters"]["trainable"] for r in (seeds[0], arms["lite"][0])] == [490152, 117704]
    assert [f"{f(r.summary['iou_after'] for r in arms['lite']):.2f}" for f in (min, max)] == ["0.75", "0.87"]
    assert [r.summary["jump"]["jump_step"] for r in arms["lite"]] == [500, 1100, 700]
if not TRAIN and "drop0" in arms:
    said_drop = {"50 % dropped > 0 %, no prompt β 1": "0.79 vs 0.89: difference -0.09 [-0.16, -0.03] (not",
                 "0 % dropped > 50 %, no prompt β 1": "0.89 vs 0.79: difference 0.09 [0.03, 0.15] (supported)",
                 f"0 % dropped > 50 %, no prompt {RECIPE.no_prompt_mode}": "0.95 vs 0.90: difference 0.05 [0.02, 0.09] (supported)",
                 "0 % dropped > 50 %, IoU with the prompt": "0.93 vs 0.92: difference 0.01 [0.00, 0.02] (supported)",
                 "0 % dropped > 50 %, IoU at step 300": "0.76 vs 0.46: difference 0.31 [0.12, 0.44] (supported)"}
    assert all(str(claims[k]).startswith(v) for k, v in said_drop.items()), {k: str(claims[k]) for k in said_drop}
    assert [r.summary["jump"]["jump_step"] for r in arms["drop0"]] == [200, 400, 200]
    with_prompt_low = claims["0 % dropped > 50 %, IoU with the prompt"].difference.low
    print(f"lower end of the 0 % > 50 % interval with the prompt: {with_prompt_low:.4f}")
    assert 0 < with_prompt_low < 0.005                # supported, only just (printed as 0.00)
    assert all(r.summary["placement"]["with_prompt"]["within_1px"] == 1 for r in arms["drop0"])

# %% [markdown]
# **Gaussian connectors.** The paper's §4.2 reports that Gaussian-initialised connectors
# drop the quality to the level of ControlNet-lite. At this scale we cannot see it. At
# step 0 random connectors change the frozen base's output by construction, but the IoU
# is only slightly lower (0.43 against 0.46 with zero connectors; the interval of that
# difference, −0.03 to 0.09, includes 0), by step 100 the two arms are level (0.46 and
# 0.46), and they end equal: IoU 0.92 against 0.92 (difference −0.00, interval −0.01 to
# 0.01), every disk within 1 px in both, and without a prompt (`cond_only`) 0.88 against
# 0.90 (difference 0.01, interval −0.03 to 0.06: not supported). If anything the Gaussian arm learns *sooner*: it
# jumps at steps 400, 300 and 300 against 500 in every zero-connector seed, and at
# steps 300 and 400 its IoU is ahead (by 0.23, interval 0.01–0.38, and by 0.19,
# interval 0.06–0.32, both supported; at steps 200 and 500 the intervals include 0).
# Chapter 02 found that random connectors give the trainable copy a head start of
# about one step of gradient, which alone would not move a jump by 100–200 steps; and
# we compared four steps here. Read the earlier jump as a lead to re-test, not a
# settled result. Two caveats keep this from contradicting the paper: the toy's
# trainable copy is 0.5 M parameters, a copy of a base trained on nothing but circles,
# not of SD's pretrained encoder (whose features a noisy start could damage more: a
# likely explanation, not one we tested); and our Gaussian connectors use the scale of
# a standard initialisation (standard deviation 1/√fan-in), one choice among many the
# paper does not specify. Also, the three Gaussian runs share **one** draw of the
# connectors (they are seeded by connector index; the training seed changes the
# condition encoder and the data order), so this arm has three training seeds but one
# connector initialisation.
#
# **ControlNet-lite.** Replacing the trainable copy by one convolution per block (117,704
# trainable parameters instead of 490,152) is the one change the toy clearly punishes:
# final IoU 0.83 against 0.92 (difference 0.09, interval 0.04–0.16, supported), with
# 86 %, 39 % and 78 % of the disks within 1 px on its three seeds against 100 % for the
# copy, and jumps at steps 500, 1,100 and 700: level with the copy's 500 in its first
# seed, later in the other two.
# Its seeds also disagree far more (0.75 to 0.87 final IoU), so the copy buys
# reliability as well as quality. Without a prompt, guided by `cond_only`, lite's
# deficit (0.88 against 0.90) is not supported. The paper's §4.2 ranks Gaussian
# connectors with lite; here Gaussian connectors beat lite by 0.10 (interval
# 0.04–0.17, supported) and match the zero connectors: on the toy the copy matters,
# its initialisation does not.
#
# **Prompt dropping.** The paper (§3.3) drops 50 % of the prompts so that the ControlNet
# learns to read the condition on its own; the public tutorial and diffusers' training
# script default to 0 %. On the toy, 0 % is never worse, and it is better without a
# prompt and in how soon it learns. Without
# a prompt, where the paper expects dropping to help, the 0 % arm follows the outline
# *better*: at β = 1, 0.89 against 0.79 (difference 0.09, interval 0.03–0.15,
# supported; the paper's direction, 50 % above 0 %, is not), and guided by `cond_only`
# 0.95 against 0.90 (0.05, interval 0.02–0.09, supported). With the prompt the arms end
# level for practical purposes: 0.93 against 0.92, every disk within 1 px in both; the
# difference, 0.01, is supported only just (its interval's lower end is above 0 but
# prints as 0.00, and another bootstrap, or other training seeds, could put that lower
# end below 0), so read it as borderline. The 0 % arm also learns sooner: its seeds jump at steps 200, 400 and 200 against 500 in every 50 %
# seed, and at step 300 its IoU is ahead by 0.31 (interval 0.12–0.44). So the paper's
# reason for dropping prompts is not supported here; the toy points the other way. Our
# reading, not tested: Fill50k's prompts name only colours, never where the circle is,
# so the ControlNet must read the outline for geometry whatever the prompt says; and
# the half of the samples with an empty prompt ask it to fix the base's weaker
# unconditional colours, which the outline cannot tell it. On SD, where a prompt can
# describe the very shapes the edge map draws, the paper's argument has more to bite
# on. The assertions at the end of the cell above check each of these statements.

# %% [markdown]
# ## 8 · How the recipe was found
#
# A first probe (before this book's base existed) trained at lr 10⁻³ on a base that
# ignored its prompt and saw a slow, partial rise. With the *first* base of chapter 01
# (narrow, 1,500 steps; it followed its prompt but drew ragged disks) we swept, on a GPU
# machine and then on the CPU, 3,000-step runs:
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
# On that base no run went past IoU 0.85 (the shipped ones ended at 0.80–0.81): the
# ceiling was the base's drawing, not the ControlNet (raising the control scale
# saturated at the same value). On the
# current base we kept the best row of the table (3·10⁻³, batch 32, cosine decay) and
# only shortened the run from 2,000 to 1,200 steps, so that a run, evaluations
# included, stays within a quarter of an hour on two CPU cores.
#
# ## What we have
#
# * `cnetlib.train.train_controlnet`: the paper's training at toy scale, resumable,
#   logging fidelity as it goes; `cnetlib.fidelity.FidelityProbe`: sampled IoU, proxy
#   IoU and prompt colours; `cnetlib.convergence`: the jump detector, per run and per
#   sample; `python -m cnetlib.experiments.sudden_convergence`: all of it from the shell.
# * At this scale: every seed follows the outline (IoU above 0.9 with the prompt, every
#   disk within 1 px) after 9 to 14 minutes on two CPU cores (an ablation run takes up
#   to 16), the jump comes
#   within 6 minutes, and the prompt keeps its colours; single samples switch more
#   abruptly than the mean, which rises over a few hundred steps because samples switch
#   at different times; the loss sees the jump too.
# * With the empty prompt the ControlNet follows the outline less well at β = 1 than
#   with guidance on the control alone: chapter 06 compares the ways to guide.
# * The trainable copy matters: ControlNet-lite ends lower (IoU 0.83 against 0.92) and
#   less reliably. Neither of the paper's other two choices helps at this scale:
#   Gaussian connectors end where zero connectors do (no difference we can detect) and
#   if anything jump sooner; training with every prompt (0 % dropped) is better: it
#   learns sooner and follows the outline without a prompt better than the paper's
#   50 % (both supported). `cnetlib.experiments.runs` names each arm (1,000 training
#   pairs is defined there, not yet trained) and `cnetlib.stats.compare` says which
#   differences the seeds support.
