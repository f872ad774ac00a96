"""Two-sample statistics on counts, and their evidence: pure numpy/scipy, no I/O.

Every statistic compares a window with the REFERENCE AS A SAMPLE (it has ``N`` rows, not
known population shares), so the reference's own sampling noise is part of each statistic's
null distribution, not an error the monitor later pays for in false alarms.

Each function takes the reference's counts first and the window's second, and works on stacks
of windows: categories or bins are the LAST axis, leading axes are windows (the calibration
scores thousands of bootstrap windows with a few numpy calls).

Evidence is ``-log10(p)`` of the statistic's asymptotic p-value: 2 means p = 0.01, 5 means
p = 1e-5. It puts every statistic on one scale; ``calibration.py`` then corrects each one with
the bootstrap (sparse categories, discreteness) and sets one threshold for the family.

>>> round(float(chi_square([50, 50], [10, 30])[0]), 4)
7.2917
>>> round(float(normal_evidence(np.array(1.959964), "two")), 3)
1.301
"""

from __future__ import annotations

import numpy as np
from scipy import special

LN10 = float(np.log(10.0))
MAX_EVIDENCE = 300.0  # p = 1e-300: a cap, so an overwhelming window still gives a finite number


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def chi_square(reference_counts, window_counts) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-square test of homogeneity of two count vectors (a 2 x K table):
    ``(statistic, degrees of freedom)``. Columns empty in both are left out; a category the
    reference never saw is an ordinary column (it adds about ``N / n`` per unseen event).

    Closed form: ``sum_k (r_k W - w_k R)^2 / (R W t_k)`` with ``t_k = r_k + w_k``, R and W the
    totals. Hand check, r = (50, 50), w = (10, 30): R = 100, W = 40, t = (60, 80):
    (2000 - 1000)^2 / (100 * 40 * 60) + (2000 - 3000)^2 / (100 * 40 * 80) = 4.1667 + 3.125.

    >>> stat, df = chi_square([50, 50], [10, 30])
    >>> round(float(stat), 4), int(df)
    (7.2917, 1)
    >>> stat, df = chi_square([[60, 40, 0]], [[6, 4, 0]])
    >>> stat.tolist(), df.tolist()
    ([0.0], [1])
    """
    r = _f(reference_counts)
    w = _f(window_counts)
    r, w = np.broadcast_arrays(r, w)
    t = r + w
    big_r = r.sum(axis=-1, keepdims=True)
    big_w = w.sum(axis=-1, keepdims=True)
    num = (r * big_w - w * big_r) ** 2
    den = big_r * big_w * t
    terms = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    df = np.maximum((t > 0).sum(axis=-1) - 1, 0)
    empty = (big_r[..., 0] <= 0) | (big_w[..., 0] <= 0)
    return np.where(empty, 0.0, terms.sum(axis=-1)), np.where(empty, 0, df)


def chi_square_evidence(statistic, df) -> np.ndarray:
    """``-log10`` of the chi-square upper tail (0 where df is 0).

    >>> round(float(chi_square_evidence(3.841459, 1)), 3)
    1.301
    """
    x = _f(statistic)
    d = np.asarray(df, dtype=float)
    with np.errstate(divide="ignore"):  # a tail below 1e-308 is capped, not an error
        p = special.chdtrc(np.where(d > 0, d, 1.0), np.maximum(x, 0.0))
        ev = -np.log10(p)
    return np.where(d > 0, np.clip(ev, 0.0, MAX_EVIDENCE), 0.0) + 0.0


def proportion_z(reference_hits, reference_n, window_hits, window_n) -> np.ndarray:
    """Two-sample z of a share (pooled variance): positive when the window's share is higher.
    0 when either sample is empty or the pooled share is 0 or 1.

    Hand check: 10/100 vs 30/100: pooled .2, se = sqrt(.2 * .8 * (1/100 + 1/100)) = .05657,
    z = (.3 - .1) / .05657 = 3.536.

    >>> round(float(proportion_z(10, 100, 30, 100)), 3)
    3.536
    """
    a, n1, b, n2 = _f(reference_hits), _f(reference_n), _f(window_hits), _f(window_n)
    pooled = np.divide(
        a + b, n1 + n2, out=np.zeros(np.broadcast(a, n1, b, n2).shape), where=(n1 + n2) > 0
    )
    var = (
        pooled
        * (1 - pooled)
        * (
            np.divide(1.0, n1, out=np.zeros_like(pooled), where=n1 > 0)
            + np.divide(1.0, n2, out=np.zeros_like(pooled), where=n2 > 0)
        )
    )
    ok = (n1 > 0) & (n2 > 0) & (var > 0)
    diff = np.divide(b, n2, out=np.zeros_like(pooled), where=n2 > 0) - np.divide(
        a, n1, out=np.zeros_like(pooled), where=n1 > 0
    )
    return np.where(ok, diff / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def unseen_evidence(reference_n, window_hits, window_n) -> np.ndarray:
    """``-log10 p`` that ``window_hits`` events of a kind the reference never showed (0 of
    ``reference_n``) all fall in the window: the exact one-sided test of a rise from zero,
    ``p = C(n, a) / C(N + n, a)`` (hypergeometric). A normal approximation would call one
    such event in 500 significant at p = 0.004; the exact p is 0.11.

    >>> round(float(unseen_evidence(4000, 1, 500)), 3)
    0.954
    >>> float(unseen_evidence(4000, 0, 500))
    0.0
    """
    big_n, a, n = _f(reference_n), _f(window_hits), _f(window_n)
    log_p = _log_comb(n, a) - _log_comb(big_n + n, a)
    return np.where(a > 0, np.minimum(-log_p / LN10, MAX_EVIDENCE), 0.0)


def _log_comb(n, k):
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def share_evidence(reference_hits, reference_n, window_hits, window_n, sided: str = "two"):
    """Evidence that a share differs (``two``) or rose (``upper``) or fell (``lower``): the
    normal test of ``proportion_z``, or the exact test of ``unseen_evidence`` where the
    reference shows none of it (or all of it), which the normal test gets badly wrong.

    >>> round(float(share_evidence(10, 100, 30, 100)), 3)
    3.39
    >>> round(float(share_evidence(0, 4000, 1, 500, "upper")), 3)
    0.954
    """
    a, n1, b, n2 = np.broadcast_arrays(
        _f(reference_hits), _f(reference_n), _f(window_hits), _f(window_n)
    )
    z = proportion_z(a, n1, b, n2)
    ev = normal_evidence(z, sided)
    # where the reference has none (or only) of the kind: exact, and one direction only
    none_ref = a <= 0
    all_ref = a >= n1
    rise = unseen_evidence(n1, b, n2)
    fall = unseen_evidence(n1, n2 - b, n2)
    two = 1 if sided == "two" else 0
    if sided in ("two", "upper"):
        ev = np.where(none_ref, np.maximum(rise - two * np.log10(2), 0.0), ev)
    elif sided == "lower":
        ev = np.where(none_ref, 0.0, ev)
    if sided in ("two", "lower"):
        ev = np.where(all_ref, np.maximum(fall - two * np.log10(2), 0.0), ev)
    elif sided == "upper":
        ev = np.where(all_ref, 0.0, ev)
    return np.where(n1 > 0, ev, 0.0)


def category_evidence(reference_counts, window_counts) -> np.ndarray:
    """Evidence that some ONE category's share moved: the largest two-sided share evidence over
    the categories (each category against the rest), less log10 of their number (Bonferroni
    over categories). Where one state's share moves, the chi-square spreads its power over
    K - 1 directions; this test keeps it.

    Hand check, r = (25, 25, 25, 25), w = (30, 10, 10, 10): the first category, .25 -> .5,
    pooled 55/160, z = .25 / sqrt(.34375 * .65625 * (1/100 + 1/60)) = 3.22, two-sided
    p = .00128, evidence 2.89, less log10(4).

    >>> float(category_evidence([50, 50], [20, 20]))
    0.0
    >>> round(float(category_evidence([25] * 4, [30, 10, 10, 10])), 2)
    2.3
    """
    r = _f(reference_counts)
    w = _f(window_counts)
    r, w = np.broadcast_arrays(r, w)
    big_r = r.sum(axis=-1, keepdims=True)
    big_w = w.sum(axis=-1, keepdims=True)
    ev = share_evidence(r, big_r, w, big_w, "two")
    k = max(r.shape[-1], 1)
    return np.clip(ev.max(axis=-1) - np.log10(k), 0.0, MAX_EVIDENCE) + 0.0


def rank_z(reference_bins, window_bins) -> np.ndarray:
    """Mann-Whitney rank-sum z of the window against the reference on ORDERED bins (the
    reference's quantile bins): values in one bin are ties. Positive: the window's values are
    larger. The test of choice for a shift (a feature multiplied by 1.3, say), where a
    chi-square over the bins spreads its power over K - 1 directions.

    With ties, Var(S) = R W / 12 * ((T + 1) - sum(t^3 - t) / (T (T - 1))).
    Hand check, r = (2, 2), w = (0, 2): pooled t = (2, 4), T = 6, mid-ranks (1.5, 4.5),
    S = 9, E = 2 * 7 / 2 = 7, Var = 4 * 2 / 12 * (7 - (6 + 60) / 30) = 3.2, z = 2 / 1.789.

    >>> round(float(rank_z([2, 2], [0, 2])), 4)
    1.118
    """
    r = _f(reference_bins)
    w = _f(window_bins)
    r, w = np.broadcast_arrays(r, w)
    t = r + w
    big_r = r.sum(axis=-1)
    big_w = w.sum(axis=-1)
    big_t = big_r + big_w
    mid = np.cumsum(t, axis=-1) - t + (t + 1) / 2
    s = (w * mid).sum(axis=-1)
    expected = big_w * (big_t + 1) / 2
    ties = np.divide(
        (t**3 - t).sum(axis=-1), big_t * (big_t - 1), out=np.zeros_like(big_t), where=big_t > 1
    )
    var = big_r * big_w / 12 * ((big_t + 1) - ties)
    ok = var > 0
    return np.where(ok, (s - expected) / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def mean_drop_z(
    reference_sum, reference_squares, reference_n, window_sum, window_squares, window_n
) -> np.ndarray:
    """Welch z of a fall in a mean (positive when the window's mean is LOWER), from sums and
    sums of squares, so the inputs merge by addition like every other count.

    Hand check: means .7 and .6, variances .01 each: se = sqrt(.01/100 + .01/50) = .01732.

    >>> round(float(mean_drop_z(70.0, 50.0, 100, 30.0, 18.5, 50)), 3)
    5.774
    """
    s1, q1, n1 = _f(reference_sum), _f(reference_squares), _f(reference_n)
    s2, q2, n2 = _f(window_sum), _f(window_squares), _f(window_n)
    m1 = np.divide(s1, n1, out=np.zeros(np.broadcast(s1, n1, s2, n2).shape), where=n1 > 0)
    m2 = np.divide(s2, n2, out=np.zeros_like(m1), where=n2 > 0)
    v1 = np.divide(q1, n1, out=np.zeros_like(m1), where=n1 > 0) - m1**2
    v2 = np.divide(q2, n2, out=np.zeros_like(m1), where=n2 > 0) - m2**2
    se2 = np.divide(np.maximum(v1, 0), n1, out=np.zeros_like(m1), where=n1 > 1) + np.divide(
        np.maximum(v2, 0), n2, out=np.zeros_like(m1), where=n2 > 1
    )
    ok = (n1 > 1) & (n2 > 1) & (se2 > 0)
    return np.where(ok, (m1 - m2) / np.sqrt(np.where(ok, se2, 1.0)), 0.0)


def normal_evidence(z, sided: str = "two") -> np.ndarray:
    """``-log10 p`` of a z: ``two``-sided, or one-sided ``upper`` (large z) / ``lower``.

    >>> [round(float(normal_evidence(np.array(2.326348), s)), 3) for s in ("upper", "lower")]
    [2.0, 0.004]
    """
    z = _f(z)
    if sided == "two":
        logp = np.log(2.0) + special.log_ndtr(-np.abs(z))
    elif sided == "upper":
        logp = special.log_ndtr(-z)
    elif sided == "lower":
        logp = special.log_ndtr(z)
    else:
        raise ValueError(f"sided must be 'two', 'upper' or 'lower', got {sided!r}")
    return np.clip(-logp / LN10, 0.0, MAX_EVIDENCE) + 0.0


def shares(counts) -> np.ndarray:
    """Counts -> shares along the last axis (an all-zero vector stays all zero).

    >>> shares([1, 3]).tolist()
    [0.25, 0.75]
    """
    a = _f(counts)
    total = a.sum(axis=-1, keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def chi_square_contributions(reference_counts, window_counts) -> np.ndarray:
    """Each column's term of ``chi_square``: which categories moved a categorical drift.

    >>> chi_square_contributions([50, 50], [10, 30]).round(3).tolist()
    [4.167, 3.125]
    """
    r = _f(reference_counts)
    w = _f(window_counts)
    big_r = r.sum(axis=-1, keepdims=True)
    big_w = w.sum(axis=-1, keepdims=True)
    num = (r * big_w - w * big_r) ** 2
    den = big_r * big_w * (r + w)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
