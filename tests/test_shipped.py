"""The shipped artefacts are what the book says they are (reads files only: no training)."""
import json

import numpy as np
import pytest
import torch

from cnetlib.base import BASE_CHECKPOINT, BASE_RECIPE
from cnetlib.experiments.mechanism import RECIPE_VARIANTS, VARIANT_EXTRA_SEEDS, VARIANT_SEED
from cnetlib.experiments.runs import SEEDS, SHIPPED, SHIPPED_WEIGHTS
from cnetlib.experiments.sudden_convergence import RECIPE


def test_the_shipped_base_records_its_recipe_and_meets_its_targets():
    meta = torch.load(BASE_CHECKPOINT, map_location="cpu", weights_only=False)["meta"]
    assert meta["recipe"]["steps"] == BASE_RECIPE.steps and meta["recipe"]["stop_at"] is None is BASE_RECIPE.stop_at
    assert meta["steps"] == BASE_RECIPE.steps == len(meta["losses"])    # the whole schedule, not an early stop
    assert tuple(meta["recipe"]["channels"]) == BASE_RECIPE.channels
    assert meta["disk_iou"] >= 0.95 and meta["circle_accuracy"] >= 0.95 and meta["background_accuracy"] >= 0.95
    assert meta["unprompted_disk_iou"] >= 0.9 and meta["unprompted_clean_share"] >= 0.9   # and its unprompted ones
    assert meta["n"] == 112 and "extended" in meta     # its history is recorded, not hidden


@pytest.mark.parametrize("name", SHIPPED_WEIGHTS)
def test_every_shipped_run_has_its_files(name):
    folder = SHIPPED / name
    for f in ("log.jsonl", "summary.json", "samples.npz", "controlnet.pt"):
        assert (folder / f).is_file(), f"{folder / f} missing: regenerate with python -m cnetlib.experiments.runs {name}"
    assert not (folder / "state.pt").exists()      # training state stays under runs/, never in data/


@pytest.mark.parametrize("name", SEEDS)
def test_the_shipped_seeds_meet_the_fidelity_targets(name):
    s = json.loads((SHIPPED / name / "summary.json").read_text())
    iou = np.asarray(s["per_sample_iou_after"])
    assert s["steps"] == RECIPE.steps and len(iou) == RECIPE.final_probe_n
    assert iou.mean() >= 0.90 and (iou >= 0.85).mean() >= 0.80
    assert np.mean(s["per_sample_iou_no_prompt_guided_after"]) >= 0.80
    assert s["no_prompt_guided"] == {"mode": RECIPE.no_prompt_mode, "guidance": RECIPE.no_prompt_guidance}
    for key in ("with_prompt", "no_prompt", "no_prompt_guided"):
        assert 0.0 <= s["placement"][key]["within_1px"] <= 1.0


def test_shipped_ablation_runs_are_whole_arms_of_the_recipe_with_one_change():
    from cnetlib.experiments.runs import ARMS, RUNS, arm_runs

    shipped = [arm for arm in ARMS if arm != "seed" and any((SHIPPED / n).is_dir() for n in arm_runs(arm))]
    for arm in shipped:
        for name in arm_runs(arm):     # an arm ships all its seeds or none: chapter 04 shows whole arms
            folder = SHIPPED / name
            assert (folder / "summary.json").is_file(), f"{name}: python -m cnetlib.experiments.runs {name}"
            assert not (folder / "state.pt").exists() and not (folder / "controlnet.pt").exists()   # logs only
            s = json.loads((folder / "summary.json").read_text())
            expected = {"variant": "zero", "drop_prompt": RECIPE.drop_prompt, "n_train": RECIPE.n_train,
                        "lr": RECIPE.lr, "batch_size": RECIPE.batch_size, "steps": RECIPE.steps, **RUNS[name]}
            assert {k: s[k] for k in expected} == expected, name


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_the_shipped_mechanism_curves_are_whole_runs_of_their_settings(seed):
    from cnetlib.experiments.mechanism import ALPHAS, BOOK_SEEDS, SHIPPED_MECHANISM

    path = SHIPPED_MECHANISM / f"seed{seed}" / "curves.json"
    assert path.is_file(), f"{path} missing: regenerate with python -m cnetlib.experiments.mechanism --book"
    c = json.loads(path.read_text())
    every = BOOK_SEEDS[seed].get("every", 25)
    alpha_every = BOOK_SEEDS[seed].get("alpha_every", 100)
    assert c["seed"] == seed and c["until"] == RECIPE.steps and len(c["loss_per_step"]) == RECIPE.steps
    assert [r["step"] for r in c["snapshots"]] == list(range(0, RECIPE.steps + 1, every))
    for r in c["snapshots"]:
        assert {"gain", "connector_rms", "residual_ratio", "condition_path", "seconds"} <= set(r), r["step"]
        assert ("iou_alpha1" in r) == (r["step"] % c["follow_every"] == 0)
        assert ("iou_alpha" in r) == bool(alpha_every and r["step"] % alpha_every == 0)
        if "iou_alpha" in r:
            assert sorted(map(float, r["iou_alpha"])) == [a for a in ALPHAS if a != 1.0]
    assert c["snapshots"][0]["gain"]["high noise"]["gain"] == 0.0     # zero convolutions at step 0
    assert "train_seconds" in c and "torch" in c
    assert not (path.parent / "snapshots.pt").exists()     # snapshots stay under runs/, never in data/


@pytest.mark.parametrize("seed,name", [(VARIANT_SEED, n) for n in RECIPE_VARIANTS]
                         + [(s, n) for s, names in VARIANT_EXTRA_SEEDS.items() for n in names])
def test_the_shipped_recipe_variants_are_whole_runs_of_their_recipe(seed, name):
    from cnetlib.experiments.mechanism import VARIANT_MEASURE, recipe, variant_path

    path = variant_path(name, seed)
    assert path.is_file(), f"{path} missing: regenerate with python -m cnetlib.experiments.mechanism --variants"
    c = json.loads(path.read_text())
    r = recipe(name)
    assert c["seed"] == seed and c["variant"] == name and c["recipe"] == r   # the recipe it was run with
    assert c["until"] == r["until"] and len(c["loss_per_step"]) == r["until"]
    every = VARIANT_MEASURE["every"]
    assert [s["step"] for s in c["snapshots"]] == list(range(0, r["until"] + 1, every))
    assert {k: c["probe"][k] for k in VARIANT_MEASURE["probe"]} == VARIANT_MEASURE["probe"]
    for s in c["snapshots"]:
        assert {"gain", "connector_rms", "residual_ratio", "condition_path", "iou_alpha1"} <= set(s), s["step"]
        assert np.asarray(s["iou_alpha1"]).shape == (c["probe"]["n"], c["probe"]["draws"])
    if not r.get("open_encoder"):   # Z(c; Θz1) = 0 at step 0: the outline changes nothing yet
        assert c["snapshots"][0]["gain"]["high noise"]["gain"] == 0.0
    assert not (path.parent / "snapshots.pt").exists()


def test_the_shipped_causal_tests_are_whole_continuations_of_their_settings():
    import cnetlib.experiments.jump_causes as jc

    conts = jc.load_continuations()
    expected = {f"seed{s}_fork{k}" for s in jc.RUN_SEEDS for k in range(jc.FORKS + 1)}
    expected |= {f"seed{s}_{n}" for s in jc.RUN_SEEDS for n in jc.INTERVENTIONS}
    assert set(conts) == expected, f"regenerate with python -m cnetlib.experiments.jump_causes all; " \
                                   f"missing {sorted(expected - set(conts))}"
    for name, r in conts.items():
        assert r["done"] and r["start"] == jc.START and r["steps"][0] == jc.START, name
        assert np.all(np.diff(r["steps"]) == jc.CHECK_EVERY) or r["steps"][-1] == jc.MAX_STEP, name
        assert r["switch"] == jc.switch_of(r) and len(r["losses"]) == r["steps"][-1] - jc.START, name
        # one SNR window per 25 steps (a continuation interrupted and resumed lacks the window it was in)
        snr_steps = [row["step"] for row in r["snr"]]
        assert set(snr_steps) <= set(r["steps"][1:]) and len(snr_steps) >= len(r["steps"]) - 2, name
        if r["switch"] is None:
            assert r["steps"][-1] == jc.MAX_STEP, name


@pytest.mark.parametrize("seed", (5, 6, 7, 8, 9))
def test_the_preregistered_seeds_are_whole_runs_of_the_registered_measurement(seed):
    import cnetlib.experiments.jump_causes as jc

    path = jc.seed_path(seed)
    assert path.is_file(), f"{path} missing: regenerate with python -m cnetlib.experiments.jump_causes seeds"
    c = json.loads(path.read_text())
    m = jc.PREREGISTERED["measure"]
    assert c["seed"] == seed and c["until"] == 1200 and c["every"] == m["every"] and c["alpha_every"] == 0
    assert [r["step"] for r in c["snapshots"]] == list(range(0, 1201, m["every"]))
    assert all(("iou_alpha1" in r) == (r["step"] % m["follow_every"] == 0) for r in c["snapshots"])
    assert (c["probe"]["n"], c["probe"]["draws"], c["probe"]["loss_draws"]) == (16, 2, 4)
    assert c["snr_from"] == 0 and [r["step"] for r in c["snr"]] == list(range(25, 1201, 25))
