"""Each drift statistic against a value computed by hand, plus the properties users rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stopdrift_common import statistics as st


def test_psi_hand_example_and_symmetry():
    # p = (.2, .3, .5), q = (.3, .3, .4): .1 ln 1.5 + 0 + (-.1) ln .8 = .04055 + .02231
    expected = 0.1 * math.log(1.5) - 0.1 * math.log(0.8)
    assert st.psi([0.2, 0.3, 0.5], [3, 3, 4]) == pytest.approx(expected)
    assert st.psi([3, 3, 4], [0.2, 0.3, 0.5]) == pytest.approx(expected)


def test_psi_empty_bin_is_large_but_finite():
    # q = (1, 0): the empty bin's share is clipped at epsilon = 1e-4
    eps = st.PSI_EPSILON
    expected = (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert st.psi([0.5, 0.5], [10, 0]) == pytest.approx(expected)
    assert math.isfinite(expected) and expected > 4


def test_js_distance_hand_example_bounds_and_base():
    # p = (.5, .5), q = (1, 0): m = (.75, .25); KL(p||m) = .5 log2(2/3) + .5 log2(2),
    # KL(q||m) = log2(4/3); distance = sqrt(mean)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert st.js_distance([1, 1], [1, 0]) == pytest.approx(math.sqrt((kl_p + kl_q) / 2))
    rng = np.random.default_rng(1)
    values = st.js_distance(rng.random((200, 5)), rng.random((200, 5)))
    assert values.min() >= 0 and values.max() <= 1
    assert st.js_distance([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)


def test_wasserstein_binned_hand_example():
    # p = (.25, .25, .25, .25), q = (0, 0, .5, .5): CDFs (.25, .5, .75) vs (0, 0, .5);
    # gaps .25 + .5 + .25 = 1, divided by k - 1 = 3
    assert st.wasserstein_binned([1, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx(1 / 3)
    # moving the mass further scores more (KS would score both 0.5)
    near = st.wasserstein_binned([1, 1, 0, 0], [0, 1, 1, 0])
    far = st.wasserstein_binned([1, 1, 0, 0], [0, 0, 1, 1])
    assert far > near


def test_chi_square_hand_example():
    # shares (.2, .8), counts (10, 10): expected (4, 16): 36/4 + 36/16 = 11.25
    assert st.chi_square([0.2, 0.8], [10, 10]) == pytest.approx(11.25)


def test_shares_and_accuracy_estimates():
    assert st.unseen_share(3, 12) == pytest.approx(0.25)
    assert st.missing_share(0, 0) == 0.0
    assert st.out_of_range_share(2, 8) == pytest.approx(0.25)
    assert st.estimated_accuracy(np.array([0.9, 0.6, 0.6]).sum(), 3) == pytest.approx(0.7)
    assert st.confidence_drop(0.75, 2.1, 3) == pytest.approx(0.05)
    assert st.prediction_share_distance([0.5, 0.5], [5, 5]) == pytest.approx(0.0)


def test_vectorised_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    ref = rng.random(6)
    windows = rng.integers(0, 20, size=(50, 6))
    for fn in (st.psi, st.js_distance, st.wasserstein_binned, st.chi_square):
        stacked = fn(ref, windows)
        single = np.array([fn(ref, w) for w in windows])
        np.testing.assert_allclose(stacked, single)
