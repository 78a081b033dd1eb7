import numpy as np
import pytest

from cnetlib.stats import bootstrap_ci, compare, share_ci


def test_interval_holds_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.8, 0.1, 16), rng.normal(0.8, 0.1, 1024)
    a, b = bootstrap_ci(small), bootstrap_ci(large)
    assert a.low < a.value < a.high and b.low < b.value < b.high
    assert a.value == pytest.approx(small.mean()) and a.n == 16
    assert (b.high - b.low) < (a.high - a.low) / 4          # width ~ 1/sqrt(n): 8x the samples per halving
    assert b.low < 0.8 < b.high


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = [bootstrap_ci(rng.normal(0.5, 0.2, 40), n_boot=400, seed=k).excludes(0.5) is False for k in range(200)]
    assert 0.88 <= np.mean(hits) <= 0.99


def test_grouped_values_resample_seeds_first():
    # three training seeds that disagree: the hierarchical interval must be wider than pooling them
    groups = [np.full(64, 0.70), np.full(64, 0.80), np.full(64, 0.90)]
    pooled = bootstrap_ci(np.concatenate(groups))
    hier = bootstrap_ci(groups)
    assert hier.n == 3 and pooled.n == 192
    assert (hier.high - hier.low) > 4 * (pooled.high - pooled.low)


def test_compare_supports_only_what_the_interval_supports():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.9, 0.05, 64), rng.normal(0.7, 0.05, 64)
    assert compare(a, b).supported and not compare(b, a).supported
    assert (compare(a, b).verdict, compare(b, a).verdict) == ("higher", "lower")
    assert str(compare(a, b)).endswith("(supported)") and "the opposite is supported" in str(compare(b, a))
    same = rng.normal(0.8, 0.1, 64)
    assert not compare(same, same).supported          # a tie never supports a > b
    assert compare(same, same).verdict == "inconclusive" and "includes 0" in str(compare(same, same))
    # paired: a constant improvement of 0.01 on noisy conditions is detected when paired, not when unpaired
    base = rng.uniform(0.3, 1.0, 64)
    assert compare(base + 0.01, base, paired=True).supported
    assert not compare(base + 0.01, base).supported
    with pytest.raises(ValueError, match="paired comparison"):
        compare(base[:10], base, paired=True)


def test_share_and_bad_inputs():
    s = share_ci([True] * 60 + [False] * 4)
    assert s.value == pytest.approx(60 / 64) and s.high <= 1.0 and s.low > 0.8
    with pytest.raises(ValueError, match="at least one measurement"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.1, 0.2], level=95)
