"""Drift statistics on count vectors and proportions: pure numpy, no I/O.

Every function takes the reference first and the current window second. Counts are normalised
inside, so a window's raw counts can be passed as they are. Every function also works on a stack
of windows at once: the bins are the LAST axis, and a ``(W, k)`` array of counts gives ``W``
values. The benchmarks and the detector's bootstrap rely on that to score thousands of windows
with a few numpy calls.

Choices, and why:

- PSI clips both shares at ``PSI_EPSILON`` (1e-4) before the log, so an empty bin costs a large
  but finite amount instead of infinity (the usual convention; 1e-4 is small next to the
  1/window_events resolution of a 500-event window).
- Jensen-Shannon distance uses log base 2, so it lies in [0, 1] (0 = same shares, 1 = disjoint).
- For numeric features the "distance" is a normalised Wasserstein-1 on the binned histograms
  rather than a binned KS: the bins are reference quantiles, so moving one bin moves about 1/k
  of the reference mass, and W1 = sum |CDF_ref - CDF_cur| / (k - 1) lies in [0, 1]; unlike KS it
  grows with how far the mass moved, not only with the largest CDF gap.
- The estimated accuracy is the mean max-probability (the idea behind NannyML's CBPE): it needs
  no labels but assumes the model's probabilities are calibrated on the current data. Under
  concept drift (same inputs, different labels) it stays put while the real accuracy falls.

>>> round(float(psi([0.5, 0.5], [0.25, 0.75])), 4)
0.2747
>>> float(js_distance([1, 0], [0, 1]))
1.0
>>> float(wasserstein_binned([1, 0, 0], [0, 0, 1]))
1.0
"""

from __future__ import annotations

import numpy as np

PSI_EPSILON = 1e-4


def _shares(x: np.ndarray | list) -> np.ndarray:
    """Counts or shares -> shares along the last axis (an all-zero vector stays all zero)."""
    a = np.asarray(x, dtype=float)
    total = a.sum(axis=-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def psi(reference: np.ndarray | list, current: np.ndarray | list, eps: float = PSI_EPSILON):
    """Population stability index: sum (q - p) ln(q / p), shares clipped at ``eps``.

    0 when the shares match; a common rule of thumb reads > 0.1 as a moderate and > 0.25 as a
    large shift, but stopdrift calibrates its thresholds instead (``detectors.py``). A window
    with no values at all scores 0 (no evidence).

    Hand check: p = (.5, .5), q = (.25, .75):
    (.25 - .5) ln(.5) + (.75 - .5) ln(1.5) = .1733 + .1014 = .2747.

    >>> round(float(psi([0.5, 0.5], [0.25, 0.75])), 4)
    0.2747
    >>> float(psi([2, 2], [0, 0]))
    0.0
    >>> psi([0.5, 0.5], [[1, 1], [1, 3]]).round(4).tolist()
    [0.0, 0.2747]
    """
    p = np.clip(_shares(reference), eps, None)
    q_raw = _shares(current)
    q = np.clip(q_raw, eps, None)
    value = ((q - p) * np.log(q / p)).sum(axis=-1)
    return np.where(q_raw.sum(axis=-1) > 0, value, 0.0)


def js_distance(reference: np.ndarray | list, current: np.ndarray | list):
    """Jensen-Shannon distance, log base 2: sqrt of the JS divergence, in [0, 1].

    Hand check: p = (1, 0), q = (.5, .5): m = (.75, .25);
    KL(p||m) = log2(4/3) = .4150, KL(q||m) = .5 log2(2/3) + .5 log2(2) = .2075;
    JSD = (.4150 + .2075) / 2 = .3113; distance = sqrt(.3113) = .5579.

    >>> round(float(js_distance([1, 0], [1, 1])), 4)
    0.5579
    >>> float(js_distance([3, 1], [6, 2]))
    0.0
    """
    p = _shares(reference)
    q = _shares(current)
    p, q = np.broadcast_arrays(p, q)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ratio = np.divide(a, b, out=np.ones_like(a), where=(a > 0) & (b > 0))
        return (a * np.log2(ratio)).sum(axis=-1)

    divergence = np.clip((kl(p, m) + kl(q, m)) / 2, 0.0, 1.0)
    return np.sqrt(divergence)


def wasserstein_binned(reference: np.ndarray | list, current: np.ndarray | list):
    """Normalised Wasserstein-1 between two histograms on the same ordered bins, in [0, 1].

    Bins are treated as equally spaced positions 0..k-1 (they are reference quantiles, so each
    holds about 1/k of the reference), W1 = sum over bins of |CDF_ref - CDF_cur|, divided by
    k - 1, the largest possible value. A single bin, or an empty window, gives 0.

    Hand check: p = (.5, .5, 0), q = (0, .5, .5): CDFs (.5, 1, 1) vs (0, .5, 1), sum of gaps
    1.0, divided by k - 1 = 2: 0.5.

    >>> float(wasserstein_binned([1, 1, 0], [0, 1, 1]))
    0.5
    >>> float(wasserstein_binned([1], [5]))
    0.0
    """
    p = _shares(reference)
    q_raw = np.asarray(current, dtype=float)
    q = _shares(q_raw)
    k = p.shape[-1]
    if k < 2:
        return np.zeros(np.broadcast_shapes(p.shape, q.shape)[:-1])
    gaps = np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1))[..., :-1].sum(axis=-1)
    return np.where(q_raw.sum(axis=-1) > 0, gaps / (k - 1), 0.0)


def chi_square(reference: np.ndarray | list, current_counts: np.ndarray | list):
    """Pearson's chi-square statistic of observed category counts against reference shares.

    Expected counts are n * reference share over the categories the reference knows (all with
    share > 0); values outside them are measured by ``unseen_share``, not here. The statistic
    grows with n: compare it only with thresholds calibrated at the same window size.

    Hand check: shares (.5, .5), counts (30, 10): expected (20, 20):
    (10^2 + 10^2) / 20 = 10.

    >>> float(chi_square([0.5, 0.5], [30, 10]))
    10.0
    >>> float(chi_square([0.5, 0.5], [0, 0]))
    0.0
    """
    p = _shares(reference)
    obs = np.asarray(current_counts, dtype=float)
    n = obs.sum(axis=-1, keepdims=True)
    expected = n * p
    terms = np.divide((obs - expected) ** 2, expected, out=np.zeros_like(obs), where=expected > 0)
    return terms.sum(axis=-1)


def _ratio(part, whole):
    part = np.asarray(part, dtype=float)
    whole = np.asarray(whole, dtype=float)
    return np.divide(
        part, whole, out=np.zeros(np.broadcast_shapes(part.shape, whole.shape)), where=whole > 0
    )


def unseen_share(unseen_count, n):
    """Share of a window's non-missing categorical values that the reference never saw.

    >>> float(unseen_share(5, 50))
    0.1
    >>> float(unseen_share(0, 0))
    0.0
    """
    return _ratio(unseen_count, n)


def missing_share(missing_count, n):
    """Share of a window's values that are missing (None/NaN).

    >>> float(missing_share(415, 500))
    0.83
    """
    return _ratio(missing_count, n)


def out_of_range_share(out_of_range_count, present_count):
    """Share of a window's non-missing numeric values outside the feature's valid range.

    >>> float(out_of_range_share(1, 4))
    0.25
    """
    return _ratio(out_of_range_count, present_count)


def prediction_share_distance(reference_shares, current_counts):
    """Distance between the reference's predicted-class shares and a window's: the
    Jensen-Shannon distance (base 2, in [0, 1]) on the class shares.

    >>> float(prediction_share_distance([0.5, 0.5], [10, 10]))
    0.0
    >>> round(float(prediction_share_distance([1, 0], [1, 1])), 4)
    0.5579
    """
    return js_distance(reference_shares, current_counts)


def estimated_accuracy(sum_max_proba, n):
    """Confidence-based accuracy estimate: the mean of the max class probability.

    This is the idea behind NannyML's CBPE: if the probabilities are calibrated, an event whose
    top class has probability 0.7 is right 70% of the time, so the mean max-probability
    estimates accuracy without labels. Limitation: it assumes calibration on the CURRENT data;
    it misses concept drift and is biased when the model is over- or under-confident.

    >>> float(estimated_accuracy(3.5, 5))
    0.7
    """
    return _ratio(sum_max_proba, n)


def confidence_drop(reference_mean_confidence: float, sum_max_proba, n):
    """How far a window's mean max-probability fell below the reference's (one-sided, >= 0).

    >>> round(float(confidence_drop(0.8, 3.5, 5)), 6)
    0.1
    >>> float(confidence_drop(0.6, 3.5, 5))
    0.0
    """
    return np.clip(reference_mean_confidence - estimated_accuracy(sum_max_proba, n), 0.0, None)
