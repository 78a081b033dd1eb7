"""Measurements with several sampling seeds, their intervals, and the arm tables of chapter 04."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cnetlib.controlled import ControlledUNet
from cnetlib.fidelity import FidelityProbe, Measurement, guidance_table, measure, modes_by_settings_grid, \
    plot_guidance_table
from cnetlib.guidance import Control
from tiny import tiny_base, tiny_controlnet


@pytest.fixture(scope="module")
def setup():
    base = tiny_base()
    net = tiny_controlnet(base)
    probe = FidelityProbe(n=3, size=16, steps=2, seed=2)
    return base, net, probe


def test_measure_concatenates_seeds_and_gives_intervals(setup):
    base, net, probe = setup
    one = measure(base, [Control(net, probe.conditions)], probe.prompts, probe.masks, probe.palette, seeds=(0,), steps=2)
    three = measure(base, [Control(net, probe.conditions)], probe.prompts, probe.masks, probe.palette, seeds=(0, 1, 2),
                    steps=2)
    assert isinstance(three, Measurement) and three.iou.shape == (9,) and three.within_1px.dtype == bool
    np.testing.assert_array_equal(three.iou[:3], one.iou)          # seed 0 first, the same samples
    assert three.circle_correct.shape == (9,) and three.images.shape == (3, 3, 16, 16)
    ci = three.ci("iou")
    assert ci.low <= ci.value <= ci.high and ci.n == 9
    assert set(three.summary()) >= {"iou", "within_1px", "circle_accuracy", "background_accuracy"}
    empty = measure(base, [], [""] * 3, probe.masks, probe.palette, seeds=(0,), steps=2)
    assert empty.circle_correct is None                             # an empty prompt names no colour
    with pytest.raises(ValueError, match="at least one sampling seed"):
        measure(base, [], [""] * 3, probe.masks, probe.palette, seeds=(), steps=2)


def test_guidance_table_and_its_figures(setup):
    base, net, probe = setup
    table = guidance_table(base, net, probe, ["both", "cond_only"], [1.0, 3.0], ["no prompt", "full"], seeds=(0, 1))
    assert len(table) == 8 and table[("full", "both", 3.0)].iou.shape == (6,)
    # no prompt in mode both: ε_c and ε_uc are one prediction, β changes nothing
    np.testing.assert_array_equal(table[("no prompt", "both", 1.0)].iou, table[("no prompt", "both", 3.0)].iou)
    fig = plot_guidance_table(table, ["no prompt", "full"], ["both", "cond_only"], [1.0, 3.0])
    assert len(fig.axes) == 2
    plt.close(fig)
    fig = modes_by_settings_grid(base, net, probe, ["both", "guess"], ["no prompt", "full"], conditions=(0, 1), steps=2)
    assert len(fig.axes) == 2 * 2 * 3        # rows × (conditions × (outline + modes))
    plt.close(fig)


def test_probe_logs_placement(setup):
    base, net, probe = setup
    out = probe.evaluate(ControlledUNet(base, net))
    assert len(out["center_error_per_sample"]) == 3 and 0.0 <= out["within_1px"] <= 1.0
    json.dumps({k: v for k, v in out.items() if not k.startswith("images")}, allow_nan=False)  # strict JSON


def test_arm_tables_resample_seeds(tmp_path):
    from cnetlib.experiments.runs import Run, arm_interval, arm_table, per_sample_after

    def run(name, ious, centre):
        pl = {"center_error_per_sample": centre, "radius_error_per_sample": [0.0] * len(centre)}
        s = {"per_sample_iou_after": ious, "per_sample_iou_no_prompt_after": ious, "iou_before": 0.5,
             "placement": {"with_prompt": pl, "no_prompt": pl}, "jump": {"jump_step": 500, "sharpness": 0.6}}
        return Run(name, tmp_path, [], s)

    a = [run("a0", [0.9] * 8, [0.5] * 8), run("a1", [0.95] * 8, [None] * 8), run("a2", [0.85] * 8, [2.0] * 8)]
    assert per_sample_after(a[0], "within_1px").tolist() == [1.0] * 8
    assert per_sample_after(a[1], "within_1px").tolist() == [0.0] * 8      # no circle drawn: not placed
    ci = arm_interval(a, "iou")
    assert ci.value == pytest.approx(0.9) and ci.n == 3 and ci.low < 0.9 < ci.high
    rows = arm_table({"a": a})
    assert rows[0]["jump_steps"] == (500, 500, 500) and rows[0]["within_1px"].value == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="expected iou"):
        per_sample_after(a[0], "loss")


def test_plot_arms_draws_each_arms_seed_mean(tmp_path):
    from cnetlib.experiments.runs import Run, plot_arms

    def run(offset):
        return Run("r", tmp_path, [{"step": s, "iou": 0.5 + offset + s / 1000} for s in (0, 100, 200)], {})

    fig = plot_arms({"zero": [run(0.0), run(0.1), run(0.2)], "lite": [run(-0.2), run(-0.1), run(0.0)]}, "iou")
    lines = fig.axes[0].get_lines()
    assert [l.get_label() for l in lines] == ["zero (3 seeds)", "lite (3 seeds)"]
    assert lines[0].get_ydata().tolist() == pytest.approx([0.6, 0.7, 0.8])   # mean of the seeds at each step
    assert lines[1].get_ydata().tolist() == pytest.approx([0.4, 0.5, 0.6])
    import matplotlib.pyplot as plt

    fig2, (left, right) = plt.subplots(1, 2)
    assert plot_arms({"zero": [run(0.0)]}, "iou", ax=right) is fig2        # draws on the axes it is given
    assert len(right.get_lines()) == 1 and len(left.get_lines()) == 0


def test_per_sample_at_reads_one_logged_evaluation(tmp_path):
    from cnetlib.experiments.runs import Run, per_sample_at

    log = [{"step": s, "iou_per_sample": [s / 100, s / 100 + 0.5]} for s in (0, 100, 200)]
    log.insert(1, {"step": 25, "proxy_iou_per_sample": [0.1, 0.2]})        # rows without the key are skipped
    run = Run("r", tmp_path, log, {})
    assert per_sample_at(run, 100).tolist() == [1.0, 1.5]
    assert per_sample_at(run, 25, "proxy_iou").tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match="got 50"):
        per_sample_at(run, 50)
    with pytest.raises(KeyError, match="got 'loss'"):
        per_sample_at(run, 100, "loss")
