"""Chapter 05's causal tests of the jump: online warnings, loss windows, gradient SNR, spread
tests, and the restart / intervention continuations (on a tiny model, a few steps)."""
import json

import numpy as np
import pytest
import torch

import cnetlib.experiments.jump_causes as jc
from cnetlib.convergence import first_step_above_for, first_step_staying_above, window_trend
from cnetlib.data import Fill50k
from cnetlib.mechanism import BANDS, GradientSNR, MechanismProbe, curve, on_steps, parameter_groups, spread_test, timing
from cnetlib.viz import outline_overlay, seed_colour
from tiny import tiny_base, tiny_controlnet


def test_the_online_reading_fires_on_what_has_been_seen_and_can_fire_falsely():
    steps, y = [0, 25, 50, 75, 100, 125], [0.0, 2.0, 0.0, 2.0, 2.0, 0.0]
    assert first_step_above_for(steps, y, 1.0, 1) == 25            # a false start counts online...
    assert first_step_above_for(steps, y, 1.0, 2) == 100
    assert first_step_staying_above(steps, y, 1.0) is None         # ...which the hindsight reading rejects
    assert first_step_above_for(steps, y, 1.0, 3) is None
    with pytest.raises(ValueError, match="consecutive"):
        first_step_above_for(steps, y, 1.0, 0)


def test_window_trend_recovers_a_known_slope_and_its_noise():
    rng = np.random.default_rng(0)
    x = np.arange(0, 400, 25.0)
    y = 0.05 - 2e-5 * x + rng.normal(0, 0.003, len(x))
    t = window_trend(x, y)
    assert t["n"] == 16 and t["slope"] == pytest.approx(-2e-3, abs=3 * t["slope_se"])   # per 100 steps
    assert 0.0015 < t["noise"] < 0.006 and t["mean"] == pytest.approx(y.mean())
    flat = window_trend(x, np.full(len(x), 0.04))
    assert flat["slope"] == pytest.approx(0.0, abs=1e-12) and flat["noise"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 3"):
        window_trend([0, 25], [1.0, 2.0])


def test_parameter_groups_split_every_trainable_weight_once():
    net = tiny_controlnet(tiny_base())
    groups = parameter_groups(net)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len([p for p in net.parameters() if p.requires_grad])
    assert groups["theta_z1"][0] is net.condition_encoder.layers[-1].weight
    assert {id(p) for p in groups["connectors"]} == {id(p) for p in net.zero_convs.parameters()}


def test_gradient_snr_is_one_for_noise_and_large_for_gradients_that_agree():
    net = tiny_controlnet(tiny_base())
    g = torch.Generator().manual_seed(0)
    snr = GradientSNR(window=25)
    for step in range(1, 51):          # two windows of pure noise
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        snr(step, net)
    for step in range(51, 76):         # one window with a mean of 1 under the same noise
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g) + 1.0
        snr(step, net)
    assert [r["step"] for r in snr.records] == [25, 50, 75]
    for part in ("theta_z1", "connectors", "copy"):
        assert all(0.6 < r[part]["snr"] < 1.5 for r in snr.records[:2]), part
        assert snr.records[2][part]["snr"] > 3.5 and snr.records[2][part]["coord"] > 3.0, part
    calls = []
    both = on_steps(lambda s, n: calls.append(("a", s)), None, lambda s, n: calls.append(("b", s)))
    both(7, net)
    assert calls == [("a", 7), ("b", 7)]


def test_the_gain_of_one_band_is_the_same_number_as_in_the_full_measurement():
    base = tiny_base()
    net = tiny_controlnet(base)
    with torch.no_grad():
        for z in net.zero_convs:
            z.weight.normal_(0, 0.1)
        net.condition_encoder.layers[-1].weight.normal_(0, 0.1)
    probe = MechanismProbe(n=2, draws=1, steps=2, loss_n=6, loss_draws=2, size=16)
    full = probe.condition_gain(base, net)
    high = probe.condition_gain(base, net, bands=["high noise"])
    assert list(high) == ["high noise"] and high["high noise"] == full["high noise"]
    with pytest.raises(ValueError, match="bands"):
        probe.condition_gain(base, net, bands=["very high noise"])


def test_spread_test_tells_a_tight_restart_from_a_wide_one():
    seeds = [350, 450, 1050, 700, 900, 300, 600]
    tight = spread_test([[500, 510, 505, 495], [700, 705, 690, 710]], seeds)
    wide = spread_test([[400, 500, 900, 700], [300, 800, 1000, 650]], seeds)
    assert tight["ratio"] < 0.1 and tight["p"] < 0.01
    assert 0.5 < wide["ratio"] < 1.5 and wide["p"] > 0.2
    assert spread_test([[1, 2]], [1, 3], permutations=50, seed=1) == spread_test([[1, 2]], [1, 3], permutations=50, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        spread_test([[1]], seeds)


def test_outline_overlay_marks_the_outline_and_nothing_else():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    conditions = np.zeros_like(images)
    conditions[:, 1, 1] = 255
    out = outline_overlay(images, conditions, colour=(200, 0, 100), alpha=1.0)
    assert out[0, 1, 1].tolist() == [200, 0, 100] and out[:, 0].max() == 0 and out.dtype == np.uint8
    with pytest.raises(ValueError, match="one shape"):
        outline_overlay(images, conditions[:1])
    assert [seed_colour(s) for s in (0, 1, 10)] == ["C0", "C1", "C0"]


@pytest.fixture
def tiny_causes(tmp_path, monkeypatch):
    """jump_causes on the tiny model: start at step 4, evaluate every 4 steps, stop by step 16."""
    base = tiny_base()
    monkeypatch.setattr(jc, "CAUSES", tmp_path / "causes")
    monkeypatch.setattr(jc, "WORK", tmp_path / "work")
    monkeypatch.setattr(jc, "START", 4)
    monkeypatch.setattr(jc, "CHECK_EVERY", 4)
    monkeypatch.setattr(jc, "MAX_STEP", 16)
    monkeypatch.setattr(jc, "load_or_train_base", lambda progress=True: base)
    monkeypatch.setattr(jc, "_recipe_controlnet", lambda b, seed: tiny_controlnet(b, seed=seed + 1))
    monkeypatch.setattr(jc, "_data", lambda: Fill50k(64, size=16))
    monkeypatch.setattr(jc, "MechanismProbe", lambda: MechanismProbe(n=2, draws=1, steps=2, loss_n=6, loss_draws=1,
                                                                      size=16))
    return base


def test_a_continuation_forks_the_draws_stops_at_the_switch_and_resumes(tiny_causes, monkeypatch):
    monkeypatch.setattr(jc, "SWITCH_LEVEL", -1.0)   # every gain counts: the switch is confirmed at the third check
    own = jc.continuation(0, fork=0, progress=False)
    assert own["steps"] == [4, 8, 12] and own["switch"] == 4 and own["done"] and len(own["losses"]) == 8
    assert [r["step"] for r in own["snr"]] == [8, 12] and set(own["snr"][0]) == {"step", "theta_z1", "connectors", "copy"}
    # fork 0 is the run itself: the same losses as training straight through
    straight = jc._train(tiny_causes, jc._recipe_controlnet(tiny_causes, 0), jc._data(), 0, jc.WORK / "straight", 12)
    np.testing.assert_allclose(own["losses"], np.round(straight.losses[4:], 6), rtol=1e-5, atol=1e-5)   # fp32, 6 decimals
    other = jc.continuation(0, fork=1, progress=False)
    assert other["losses"][0] != own["losses"][0]                   # new batches and noise from step 4 on
    assert json.loads((jc.CAUSES / "seed0_fork1.json").read_text())["done"]
    assert jc.continuation(0, fork=1, progress=False) == other        # a finished record is read, not re-run


def test_no_switch_by_the_last_step_is_none_and_interventions_change_what_they_name(tiny_causes, monkeypatch):
    monkeypatch.setattr(jc, "SWITCH_LEVEL", 1e9)    # nothing reaches it
    r = jc.continuation(1, intervention="z1_x100", progress=False)
    assert r["steps"][-1] == 16 and r["switch"] is None
    assert r["intervention"]["norm_after"] == pytest.approx(100 * r["intervention"]["norm_before"], rel=1e-5)
    assert jc.switch_of({"steps": [4, 8, 12, 16], "gain": [1.0, 0.0, 1.0, 1.0]}) is None          # 2 in a row: not yet
    assert jc.switch_of({"steps": [4, 8, 12, 16, 20], "gain": [1e9, 0.0, 1e9, 1e9, 1e9]}) == 12
    with pytest.raises(ValueError, match="intervention: expected one of"):
        jc.continuation(1, intervention="z1_x1000", progress=False)


def test_the_preregistered_rule_is_calibrated_on_the_shipped_seeds_only():
    from cnetlib.experiments.mechanism import load_curves

    rule = jc.PREREGISTERED["rules"]["gain"]
    assert not set(jc.PREREGISTERED["seeds"]) & {0, 1, 2, 3, 4}
    leads = []
    for s in range(5):
        c = load_curves(s)
        st, g = curve(c, rule["signal"])
        leads.append(timing(*curve(c, "iou")).jump_step - first_step_above_for(st, g, rule["level"], rule["consecutive"]))
    assert leads == [125, 150, 150, 150, 50] and np.median(leads) == rule["lead"]
    assert jc.PREREGISTERED["constant_guess"] == 660


def test_sign_test_is_exact_and_drops_ties():
    from cnetlib.mechanism import sign_test

    assert sign_test([2] * 5, [1] * 5) == {"larger": 5, "n": 5, "p": 0.0625}     # 2 · (1/2)^5
    assert sign_test([1, 2, 3], [1, 1, 4]) == {"larger": 1, "n": 2, "p": 1.0}
    assert sign_test([1.0], [1.0])["n"] == 0
    with pytest.raises(ValueError, match="one length"):
        sign_test([1, 2], [1])


def test_a_probe_told_its_bands_measures_only_those():
    base = tiny_base()
    net = tiny_controlnet(base)
    probe = MechanismProbe(n=2, draws=1, steps=2, loss_n=6, loss_draws=1, size=16, bands=("high noise",))
    assert list(probe.condition_gain(base, net)) == ["high noise"]
    assert len(probe.condition_gain(base, net, bands=list(BANDS))) == 3
