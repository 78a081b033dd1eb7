"""Chapter 05's measurements: snapshots, the probe's network and sampler measures, and the timing helpers."""
import json

import numpy as np
import pytest
import torch

from cnetlib.data import Fill50k
from cnetlib.experiments.mechanism import load_curves, trajectory_check
from cnetlib.mechanism import (METRICS, MechanismProbe, Snapshots, condition_path, curve, log_growth, rank_test, trend_test,
                               shuffled, timing)
from cnetlib.train import train_controlnet
from tiny import tiny_base, tiny_controlnet

DATA = Fill50k(64, size=16)
KW = dict(batch_size=8, lr=3e-3, seed=3, progress=False)


def probe():
    return MechanismProbe(n=2, draws=3, steps=2, loss_n=6, loss_draws=1, size=16)


def test_snapshots_keep_copies_and_stop_at_continues_the_same_run(tmp_path):
    base = tiny_base()
    straight = train_controlnet(base, tiny_controlnet(base), DATA, steps=6, **KW)
    snaps = Snapshots(2)
    net = tiny_controlnet(base)
    first = train_controlnet(base, net, DATA, steps=6, out_dir=tmp_path, on_step=snaps, stop_at=4, **KW)
    assert len(first.losses) == 4 and not first.interrupted and sorted(snaps.states) == [2, 4]
    assert not torch.equal(snaps.states[2]["zero_convs.0.weight"], snaps.states[4]["zero_convs.0.weight"])
    # copies, not views: training on must not change a kept snapshot
    kept = {k: v.clone() for k, v in snaps.states[4].items()}
    second = train_controlnet(base, tiny_controlnet(base), DATA, steps=6, out_dir=tmp_path, on_step=snaps, **KW)
    assert second.resumed_from == 4 and second.losses == straight.losses   # the lr schedule is the 6-step run's
    assert all(torch.equal(kept[k], snaps.states[4][k]) for k in kept) and sorted(snaps.states) == [2, 4, 6]
    assert all(torch.equal(a, b) for a, b in zip(straight.controlnet.state_dict().values(),
                                                 second.controlnet.state_dict().values()))
    with pytest.raises(ValueError, match="stop_at"):
        train_controlnet(base, tiny_controlnet(base), DATA, steps=6, stop_at=7, **KW)


def test_snapshots_in_a_folder_survive_a_resume_in_a_new_process(tmp_path):
    base = tiny_base()
    straight = Snapshots(2)
    train_controlnet(base, tiny_controlnet(base), DATA, steps=6, on_step=straight, **KW)
    first = Snapshots(2, tmp_path / "snaps")
    train_controlnet(base, tiny_controlnet(base), DATA, steps=6, out_dir=tmp_path / "run", on_step=first, stop_at=4, **KW)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["step000002.pt", "step000004.pt"]
    again = Snapshots(2, tmp_path / "snaps")     # what a new process sees: the first part, read back
    assert sorted(again.states) == [2, 4]
    train_controlnet(base, tiny_controlnet(base), DATA, steps=6, out_dir=tmp_path / "run", on_step=again, **KW)
    assert sorted(again.states) == sorted(straight.states) == [2, 4, 6]
    for step, state in straight.states.items():
        for k, v in state.items():
            torch.testing.assert_close(again.states[step][k], v)


def test_shuffled_gives_every_image_another_condition():
    c = torch.arange(4.0).view(4, 1, 1, 1)
    assert shuffled(c).flatten().tolist() == [3.0, 0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="at least 2"):
        shuffled(c[:1])


def test_a_fresh_controlnet_ignores_the_condition_and_an_open_condition_path_is_read():
    base, p = tiny_base(), probe()
    fresh = tiny_controlnet(base)
    gain = p.condition_gain(base, fresh)
    assert set(gain) == {"high noise", "mid noise", "low noise"}
    for band in gain.values():   # zero connectors: the controlled model is the base, whatever the outline
        torch.testing.assert_close(band["true"], band["base"])
        assert band["gain"] == 0.0
    assert p.residual_ratio(base, fresh) == [0.0] * len(fresh.zero_convs)
    assert condition_path(fresh, p, base) == {"encoder_zero_rms": 0.0, "size": 0.0, "signal": 0.0}
    trained = tiny_controlnet(base)
    train_controlnet(base, trained, DATA, steps=8, **KW)
    path = condition_path(trained, p, base)
    assert path["encoder_zero_rms"] > 0 and path["size"] >= path["signal"] > 0
    assert all(r > 0 for r in p.residual_ratio(base, trained))
    # 8 steps leave the outline's part of c_f at ~1e-6, below the loss's float resolution: open the path by hand
    with torch.no_grad():
        trained.condition_encoder.layers[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    assert condition_path(trained, p, base)["signal"] > 100 * path["signal"]
    assert all(band["gain"] != 0.0 for band in p.condition_gain(base, trained).values())
    iou = p.following(base, trained, scale=2.0)
    assert iou.shape == (2, 3) and ((iou >= 0) & (iou <= 1)).all()
    with pytest.raises(ValueError, match="band"):
        p.residual_ratio(base, trained, band="loud")


def test_the_probe_refuses_sizes_it_cannot_measure():
    with pytest.raises(ValueError, match="loss_n"):
        MechanismProbe(loss_n=1, size=16)
    with pytest.raises(ValueError, match="threshold"):
        MechanismProbe(threshold=1.5, size=16)


def synthetic_curves():
    rows = []
    for step in range(0, 201, 25):
        up = float(step >= 100)
        rows.append({"step": step, "connector_rms": [0.01 * step] * 2, "residual_ratio": [0.1, 0.3],
                     "condition_path": {"encoder_zero_rms": 0.1, "size": 0.5, "signal": 10 ** (step / 50 - 4)},
                     "gain": {b: {"gain": 0.1 * up, "base": 1.0} for b in ("high noise", "mid noise", "low noise")}})
        if step % 50 == 0:
            rows[-1]["iou_alpha1"] = [[0.3 + 0.6 * up] * 4] * 2
        if step % 100 == 0:
            rows[-1]["iou_alpha"] = {"2.0": [[0.3 + 0.6 * float(step >= 100)] * 2] * 2}
    return {"snapshots": rows, "probe": {"threshold": 0.8}, "alphas": [1.0, 2.0]}


def test_curve_reads_every_metric_and_names_what_is_missing():
    c = synthetic_curves()
    for metric in METRICS:
        steps, y = curve(c, metric)
        assert len(steps) == len(y) > 0
    steps, y = curve(c, "following")
    assert steps.tolist() == [0, 50, 100, 150, 200] and y.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_allclose(curve(c, "ratio")[1], 0.2)
    assert curve(c, "iou", alpha=2.0)[0].tolist() == [0, 100, 200]
    with pytest.raises(ValueError, match="metric"):
        curve(c, "loss")
    with pytest.raises(ValueError, match="control scale 8"):
        curve(c, "iou", alpha=8.0)


def test_timing_and_log_growth_on_known_curves():
    steps = np.arange(0, 1001, 50)
    jump = timing(steps, np.where(steps >= 500, 3.0, 1.0))   # any unit: rescaled to 0 → 1
    assert jump.jump_step == 500 and jump.sharpness == pytest.approx(1.0) and jump.abrupt
    assert timing(steps, steps / 1000).sharpness < 0.2       # a straight line is not abrupt
    per_ten, lo, hi = log_growth(steps, 10 ** (steps / 200 - 4), low=1e-3, high=1e-1)
    assert per_ten == pytest.approx(450 / 2) and (lo, hi) == (150, 600)   # 2 decades in 450 steps on a 50-step grid
    with pytest.raises(ValueError, match="never reaches"):
        log_growth(steps, np.full(len(steps), 1e-3), low=1e-2, high=1.0)
    with pytest.raises(ValueError, match="no rise"):
        timing(steps, np.ones(len(steps)))


def test_the_trajectory_check_compares_logged_means():
    losses = [0.1] * 50
    log = [{"step": 0, "loss": 0.0}, {"step": 25, "loss": 0.1}, {"step": 50, "loss": 0.13}, {"step": 75, "loss": 1.0}]
    assert trajectory_check(losses, log, 25) == pytest.approx(0.03)
    assert trajectory_check(losses[:10], log, 25) is None


def test_missing_curves_name_the_command_that_makes_them(tmp_path, monkeypatch):
    import cnetlib.experiments.mechanism as m

    monkeypatch.setattr(m, "SHIPPED_MECHANISM", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m cnetlib.experiments.mechanism --seed 7"):
        load_curves(7)
    (tmp_path / "seed7").mkdir()
    (tmp_path / "seed7" / "curves.json").write_text(json.dumps(synthetic_curves()))
    assert len(load_curves(7)["snapshots"]) == 9


def test_recipe_variants_change_only_what_they_name_and_unknown_ones_are_refused(tmp_path, monkeypatch):
    import cnetlib.experiments.mechanism as m
    from cnetlib.experiments.sudden_convergence import RECIPE

    plain = m.recipe()
    assert (plain["lr"], plain["lr_schedule"], plain["steps"], plain["until"]) == (RECIPE.lr, "cosine", RECIPE.steps,
                                                                                  RECIPE.steps)
    for name, change in m.RECIPE_VARIANTS.items():
        r = m.recipe(name)
        assert {k for k in r if r[k] != plain.get(k)} <= set(change) | {"steps"}, name
        assert all(r[k] == v for k, v in change.items()), name
        # a constant learning rate has no schedule to finish: the run is as long as it is measured
        assert r["steps"] == (r["until"] if r["lr_schedule"] == "constant" else RECIPE.steps), name
    with pytest.raises(ValueError, match="variant: expected one of"):
        m.recipe("adamw_1e-5")
    monkeypatch.setattr(m, "SHIPPED_VARIANTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="--variant drop0 --seed 1"):
        m.load_variant("drop0")
    with pytest.raises(FileNotFoundError, match=r"--variant drop0 --seed 2 --out .*drop0/seed2"):
        m.load_variant("drop0", seed=2)


def test_train_controlnet_refuses_an_unknown_weighting_or_timestep_sampling(tmp_path):
    base = tiny_base()
    for bad in ({"weighting": "p2"}, {"timesteps": "logit_normal"}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}: expected one of"):
            train_controlnet(base, tiny_controlnet(base), DATA, steps=2, out_dir=tmp_path, **bad, **KW)
        assert not any(tmp_path.iterdir())   # refused before anything is written


def test_landmarks_find_where_a_known_run_crosses_each_level():
    from cnetlib.mechanism import landmarks

    got = landmarks(synthetic_curves())   # the gain goes 0 -> 0.1 and the IoU 0.3 -> 0.9 at step 100
    assert (got["warning"], got["switch"], got["jump"]) == (100, 100, 100)
    assert got["climb"] == pytest.approx(25 / 4)   # 1e-6 -> 1e-2 (four decades) between steps 75 and 100
    assert got["bands"] == {"high noise": 100, "mid noise": 100, "low noise": 100}
    assert got["iou_end"] == pytest.approx(0.9) and got["last_step"] == 200
    never = landmarks(synthetic_curves(), levels={"iou": 0.95, "switch": 0.5})
    assert never["jump"] is None and never["switch"] is None and never["warning"] == 100
    assert got["opening"] == 100 and never["opening"] is None
    lost = synthetic_curves()   # the gain reaches the switch level at step 125 and falls back at 175
    for row in lost["snapshots"]:
        row["gain"]["high noise"]["gain"] = 0.1 if 125 <= row["step"] < 175 else 1e-7
    lost_marks = landmarks(lost)
    assert lost_marks["opening"] == 125 and lost_marks["switch"] is None


def test_cumulative_lr_sums_the_schedule():
    from cnetlib.train import controlnet_lr, cumulative_lr

    assert cumulative_lr(100, 400, 2e-3, "constant") == pytest.approx(0.2)
    assert cumulative_lr(0, 400, 2e-3, "cosine") == 0.0
    full = cumulative_lr(400, 400, 2e-3, "cosine")   # a cosine from lr to 10 %: 55 % of lr × steps
    assert full == pytest.approx(0.55 * 2e-3 * 400, rel=0.01)
    assert cumulative_lr(3, 400, 2e-3, "cosine") == pytest.approx(sum(controlnet_lr(k, 400, 2e-3, "cosine")
                                                                      for k in range(3)))


def test_an_open_encoder_starts_theta_z1_random_and_reproducibly():
    from cnetlib.experiments.mechanism import _recipe_controlnet

    base = tiny_base()
    shut, a, b = (_recipe_controlnet(base, 3, "cross_norm", open_encoder=o) for o in (False, True, True))
    assert float(shut.condition_encoder.layers[-1].weight.detach().abs().max()) == 0.0
    w = a.condition_encoder.layers[-1].weight.detach()
    assert float(w.abs().max()) > 0 and torch.equal(w, b.condition_encoder.layers[-1].weight)


def test_rank_test_is_exact_on_small_groups_and_counts_never_as_latest():
    out = rank_test([100, 150, 200], [350, 600, 700, 950, 1100])   # all three before all five
    assert out["u"] == 15 and out["p_earlier"] == pytest.approx(1 / 56) and out["p"] == pytest.approx(2 / 56)
    assert out["p_later"] == 1.0
    late = rank_test([None, None, 1200], [350, 600, 700, 950, 1100])   # never = later than any step
    assert late["u"] == 0 and late["p_later"] == pytest.approx(1 / 56)
    mixed = rank_test([400, 800, 1000], [350, 600, 700, 950, 1100])
    assert mixed["p"] == 1.0 and 0 < mixed["u"] < 15
    tie = rank_test([5], [5])   # one split each way, u = 0.5 either way
    assert tie["u"] == 0.5 and tie["p"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        rank_test([], [1])
    with pytest.raises(ValueError, match="max_splits"):
        rank_test(list(range(20)), list(range(20)), max_splits=1000)


def test_trend_test_is_exact_and_reduces_to_the_rank_test_for_two_groups():
    from itertools import permutations

    falling = trend_test([[600, 650, 700], [400, 450, 500], [200, 250, 300], [50, 100, 150]])
    assert falling["j"] == 0 and falling["pairs"] == 54   # 4 groups of 3: 369,600 assignments, one this extreme
    assert falling["p_falling"] == pytest.approx(1 / 369_600) and falling["p_rising"] == 1.0
    for a, b in [([100, 150, 200], [350, 600, 700, 950, 1100]), ([None, 5, 5], [5, None, 3]), ([400, 800, 1000], [350, None])]:
        two, rank = trend_test([a, b]), rank_test(a, b)
        assert two["j"] == rank["u"] and two["p_rising"] == pytest.approx(rank["p_earlier"])
        assert two["p_falling"] == pytest.approx(rank["p_later"]) and two["p"] == pytest.approx(rank["p"])
    groups = [[3, None], [3], [1, 7]]   # ties and a run that never got there, against brute force over 5! orders
    out = trend_test(groups)
    pooled = [g for grp in groups for g in grp]
    cut = [0, 2, 3, 5]

    def j_of(vals):
        key = [float("inf") if v is None else v for v in vals]
        return sum(1.0 if key[i] < key[k] else 0.5 if key[i] == key[k] else 0.0
                   for g in range(3) for h in range(g + 1, 3) for i in range(cut[g], cut[g + 1]) for k in range(cut[h], cut[h + 1]))
    null = [j_of(order) for order in permutations(pooled)]
    assert out["j"] == j_of(pooled)
    assert out["p_rising"] == pytest.approx(sum(x >= out["j"] for x in null) / len(null))
    assert out["p_falling"] == pytest.approx(sum(x <= out["j"] for x in null) / len(null))
    with pytest.raises(ValueError, match="at least two groups"):
        trend_test([[1, 2]])
    with pytest.raises(ValueError, match="max_splits"):
        trend_test([list(range(6))] * 4, max_splits=1000)
