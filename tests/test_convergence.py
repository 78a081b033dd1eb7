"""The sudden-convergence detector on curves whose answer is known."""
import numpy as np
import pytest

from cnetlib.convergence import (
    detect_jump, first_step_staying_above, per_sample_jumps, per_sample_switches, running_median, summarize_per_sample,
)

STEPS = np.arange(0, 2001, 25)


def sigmoid_curve(center, width, lo=0.3, hi=0.9):
    return lo + (hi - lo) / (1 + np.exp(-(STEPS - center) / width))


def test_a_step_is_abrupt_and_found_where_it_is():
    f = np.where(STEPS < 1200, 0.3, 0.9)
    j = detect_jump(STEPS, f)
    assert j.converged and j.abrupt
    assert j.jump_step == 1200 and j.step_10 == 1200 and j.step_90 == 1200 and j.width_10_90 == 0
    assert j.sharpness == pytest.approx(1.0)
    assert j.start == pytest.approx(0.3) and j.end == pytest.approx(0.9)


def test_a_linear_rise_is_not_abrupt():
    f = 0.3 + 0.6 * STEPS / STEPS[-1]
    j = detect_jump(STEPS, f)
    assert j.converged and not j.abrupt
    assert 0.08 < j.sharpness < 0.2
    assert abs(j.step_50 - 1000) <= 125 and j.width_10_90 > 1200


def test_sigmoid_sharpness_grows_as_it_narrows():
    wide, narrow = detect_jump(STEPS, sigmoid_curve(1000, 300)), detect_jump(STEPS, sigmoid_curve(1000, 20))
    assert narrow.sharpness > 0.9 > 0.5 > wide.sharpness
    assert abs(narrow.jump_step - 1000) <= 25


def test_one_noisy_spike_neither_makes_nor_breaks_a_jump():
    f = np.where(STEPS < 1200, 0.3, 0.9)
    f[20] = 0.95  # a lucky evaluation long before the jump
    f[60] = 0.3  # an unlucky one after it
    j = detect_jump(STEPS, f)
    assert j.jump_step == 1200 and j.abrupt


def test_no_gain_is_no_convergence():
    rng = np.random.default_rng(0)
    j = detect_jump(STEPS, 0.4 + 0.02 * rng.standard_normal(len(STEPS)))
    assert not j.converged and j.jump_step is None and not j.abrupt


def test_absolute_threshold():
    j = detect_jump(STEPS, sigmoid_curve(1000, 20), threshold=0.85)
    assert j.jump_step > j.step_50


def test_per_sample_switches():
    m = np.zeros((len(STEPS), 3))
    m[:, :] = 0.2
    m[STEPS >= 500, 0] = 0.9
    m[STEPS >= 1500, 1] = 0.8
    m[10, 2] = 0.9  # a single lucky evaluation is not a switch
    jumps = per_sample_jumps(STEPS, m)
    assert [j.jump_step for j in jumps] == per_sample_switches(STEPS, m) == [500, 1500, None]
    s = summarize_per_sample(jumps)
    assert s["switched"] == pytest.approx(2 / 3) and s["median"] == 1000
    assert s["median_sharpness"] == pytest.approx(1.0) and s["abrupt_share"] == 1.0
    # three equal, abrupt switches at 500, 1000 and 1500 average to a mean curve that is not abrupt
    three = np.full((len(STEPS), 3), 0.2)
    for k, at in enumerate((500, 1000, 1500)):
        three[STEPS >= at, k] = 0.8
    assert all(j.abrupt for j in per_sample_jumps(STEPS, three))
    mean = detect_jump(STEPS, three.mean(axis=1))
    assert not mean.abrupt and mean.sharpness == pytest.approx(1 / 3)


def test_helpers_and_bad_input():
    assert first_step_staying_above([0, 1, 2, 3], [0, 1, 0, 1], 0.5) == 3
    assert first_step_staying_above([0, 1, 2], [0, 0, 0], 0.5) is None
    assert running_median([0, 10, 0, 0]).tolist() == [5, 0, 0, 0]
    with pytest.raises(ValueError, match="same length|one length"):
        detect_jump([0, 1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_jump([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"per_sample: expected shape \(3, n_samples\)"):
        per_sample_switches([0, 1, 2], np.zeros((2, 4)))
