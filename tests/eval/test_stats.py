"""The verdict rule of the claims table on synthetic per-seed values."""

from __future__ import annotations

import math

import pytest

from mmfast.eval.stats import (
    RULE,
    format_mean_sd,
    mean_sd,
    paired_verdict,
    t_critical,
)


def test_mean_sd_uses_the_sample_standard_deviation():
    mean, sd = mean_sd([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(1.0)
    assert mean_sd([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))
    assert mean_sd([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert format_mean_sd([0.8, 0.9]) == "0.850 +- 0.071 (n=2)"
    assert format_mean_sd([0.8]) == "0.800 (n=1)" and format_mean_sd([]) == "n/a"


def test_t_critical_is_the_one_sided_95_quantile():
    assert t_critical(2) == pytest.approx(2.919986, abs=1e-5)
    assert t_critical(4) == pytest.approx(2.131847, abs=1e-5)
    assert t_critical(1000) == pytest.approx(1.6464, abs=1e-3)
    with pytest.raises(ValueError, match="df"):
        t_critical(0)


def test_consistent_gain_holds():
    # d = 0.05, 0.06, 0.04: mean 0.05, se 0.00577, threshold 2.92 * se = 0.0169
    v = paired_verdict({0: 0.85, 1: 0.86, 2: 0.84}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert v.status == "holds" and v.seeds == (0, 1, 2)
    assert v.mean_diff == pytest.approx(0.05)
    assert v.se == pytest.approx(0.01 / math.sqrt(3))
    assert v.threshold == pytest.approx(t_critical(2) * v.se)
    assert "d = +0.050" in v.summary() and "(n=3)" in v.summary()


def test_a_gain_that_a_seed_reverses_is_within_noise():
    # mean d = +0.03 but d = +0.10, +0.04, -0.05: se 0.043, threshold 0.127
    v = paired_verdict({0: 0.90, 1: 0.84, 2: 0.75}, {0: 0.80, 1: 0.80, 2: 0.80})
    assert v.status == "within noise" and v.mean_diff == pytest.approx(0.03)
    # a real but small gain, too small for 2 seeds' t = 6.31
    assert paired_verdict({0: 0.82, 1: 0.85}, {0: 0.80, 1: 0.80}).status == "within noise"


def test_consistent_loss_does_not_hold():
    v = paired_verdict({0: 0.70, 1: 0.72, 2: 0.71}, {0: 0.80, 1: 0.81, 2: 0.80})
    assert v.status == "does not hold" and v.mean_diff < -v.threshold


def test_one_seed_is_only_indicative():
    v = paired_verdict({0: 0.9}, {0: 0.5})
    assert v.status == "indicative" and v.mean_diff == pytest.approx(0.4)
    assert math.isnan(v.se) and "se" not in v.summary()


def test_lower_is_better_flips_the_sign():
    drop_method, drop_rival = {0: 0.05, 1: 0.06, 2: 0.05}, {0: 0.20, 1: 0.22, 2: 0.21}
    assert paired_verdict(drop_method, drop_rival, higher_is_better=False).status == "holds"
    assert paired_verdict(drop_method, drop_rival).status == "does not hold"


def test_only_seeds_both_have_are_paired_and_missing_values_are_not_evaluated():
    v = paired_verdict({0: 0.9, 1: 0.9, 2: 0.9, 7: 0.1}, {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.99})
    assert v.seeds == (0, 1, 2) and v.status == "holds"  # identical d: se 0, d > 0
    assert paired_verdict({0: 0.9}, {1: 0.9}).status == "not evaluated"
    assert paired_verdict({0: None, 1: float("nan")}, {0: 0.1, 1: 0.2}).status == "not evaluated"
    assert paired_verdict({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5}).status == "within noise"


def test_rule_text_states_the_test_and_the_confidence():
    for phrase in ("paired", "t(0.95, n-1)", "holds", "within noise", "does not hold",
                   "indicative"):
        assert phrase in RULE
