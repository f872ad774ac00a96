"""Window counts: independent of batch sizes, mergeable, JSON round trip."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from benchmarks.drift_benchmark import fake_champion
from stopdrift_common.data import load_source
from stopdrift_common.schema import CLASSES, MODEL_FEATURES
from stopdrift_common.settings import PROJECT_ROOT
from stream_app.windows import Layout, SeqWindows, WindowPartial


@pytest.fixture(scope="module")
def champion():
    reference, rows = fake_champion(seed=0)
    return reference, rows, Layout.from_reference(reference, rows)


@pytest.fixture(scope="module")
def stream():
    """1,300 events: state rows and city rows mixed, with their (fake) probabilities."""
    state = load_source(PROJECT_ROOT / "data", "state").sample(700, random_state=1)
    city = load_source(PROJECT_ROOT / "data", "city").sample(600, random_state=2)
    df = pd.concat([state, city], ignore_index=True)[[*MODEL_FEATURES, "source", "subject_race"]]
    proba = np.random.default_rng(3).dirichlet([1, 1, 1], len(df))
    return df, proba


def windows_for(stream, layout, batch_sizes):
    df, proba = stream
    w = SeqWindows(window_events=250)
    closed, pos, i = [], 0, 0
    while pos < len(df):
        size = batch_sizes[i % len(batch_sizes)]
        closed += w.add(
            np.arange(pos, min(pos + size, len(df))),
            df.iloc[pos : pos + size],
            proba[pos : pos + size],
            CLASSES,
            df["subject_race"].iloc[pos : pos + size],
            layout,
        )
        pos, i = pos + size, i + 1
    return closed, w


def test_windows_identical_whatever_the_batch_split(champion, stream):
    _, _, layout = champion
    one, w1 = windows_for(stream, layout, [1300])
    many, w2 = windows_for(stream, layout, [1, 7, 499, 33, 250, 2])
    assert [(c.start_event, c.end_event) for c in one] == [
        (i * 250, i * 250 + 250) for i in range(5)
    ]
    assert [(c.start_event, c.end_event) for c in many] == [
        (c.start_event, c.end_event) for c in one
    ]
    for a, b in zip(one, many, strict=True):
        assert a.partial.equals(b.partial)
    assert w1.open[5].n == w2.open[5].n == 50 and w1.open[5].equals(w2.open[5])


def test_merge_of_two_partials_equals_partial_of_concatenation(champion, stream):
    _, _, layout = champion
    df, proba = stream
    labels = df["subject_race"]
    a = WindowPartial.from_batch(df.iloc[:400], proba[:400], CLASSES, labels.iloc[:400], layout)
    b = WindowPartial.from_batch(df.iloc[400:], proba[400:], CLASSES, labels.iloc[400:], layout)
    whole = WindowPartial.from_batch(df, proba, CLASSES, labels, layout)
    assert a.merge(b).equals(whole)
    assert whole.n == 1300 and whole.labelled == 1300
    # city rows bring states the state table never had: counted as unseen, not lost
    assert whole.cat_counts["state"].sum() == 1300
    # the reference is the state table: every city event is an unseen source
    assert whole.cat_counts["source"][-1] == 600


def test_partial_survives_json(champion, stream):
    _, _, layout = champion
    df, proba = stream
    p = WindowPartial.from_batch(df, proba, CLASSES, None, layout)
    back = WindowPartial.from_dict(orjson.loads(orjson.dumps(p.to_dict())))
    assert back.equals(p)


def test_counts_of_a_tiny_batch(champion):
    _, _, layout = champion
    df = pd.DataFrame(
        {
            "state": ["AZ", "ZZ", None],
            "search_rate": [0.1, None, 2.0],  # 2.0 is out of the valid range [0, 1]
            "hit_rate": [None, None, None],
            "inferred_threshold": [None, None, None],
            "stops_per_year": [10.0, 20.0, 30.0],
            "source": ["state", "city", "state"],
        }
    )
    proba = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    labels = pd.Series(["white", None, "black"])
    p = WindowPartial.from_batch(df, proba, CLASSES, labels, layout)
    assert p.num_missing["search_rate"] == 1 and p.num_out_of_range["search_rate"] == 1
    assert p.num_missing["hit_rate"] == 3 and p.num_bins["hit_rate"].sum() == 0
    assert p.cat_counts["state"][-1] == 1 and p.cat_missing["state"] == 1
    assert p.cat_counts["source"][-1] == 1  # the reference (state table) has no "city"
    assert p.pred_counts.tolist() == [1, 1, 1]
    assert p.sum_max_proba == pytest.approx(1.8)
    assert (p.labelled, p.correct) == (2, 1)


def test_proba_columns_are_matched_by_class_name(champion):
    _, rows, layout = champion
    df = rows.iloc[:50]
    proba = rows[[f"proba_{c}" for c in CLASSES]].to_numpy()[:50]
    a = WindowPartial.from_batch(df, proba, CLASSES, None, layout)
    b = WindowPartial.from_batch(df, proba[:, ::-1], CLASSES[::-1], None, layout)
    assert a.equals(b)


def test_seq_windows_count_a_batch_like_one_partial_per_window(champion, stream):
    """The grouped counting of a batch spanning many windows gives, window by window, exactly
    the counts of ``from_batch`` on that window's rows (missing, unseen and out-of-range values
    and unlabelled events included)."""
    from stream_app.windows import SeqWindows

    _, _, layout = champion
    df, proba = stream
    df = df.copy()
    df.loc[::7, "state"] = None
    df.loc[::11, "state"] = "ZZ"  # unseen
    df.loc[::5, "hit_rate"] = np.nan
    df.loc[::13, "stops_per_year"] = -3.0  # out of range
    labels = df["subject_race"].where(np.arange(len(df)) % 3 > 0, None)
    seqs = np.random.default_rng(4).permutation(len(df) * 4)[: len(df)]
    times = np.linspace(1.0, 2.0, len(df))
    w = SeqWindows(window_events=250)
    parts = w.partials(seqs, df, proba, CLASSES, labels, layout, times)
    assert len(parts) > 10
    for k, (pos, part) in parts.items():
        assert pos.tolist() == np.flatnonzero(seqs // 250 == k).tolist()
        want = WindowPartial.from_batch(
            df.iloc[pos], proba[pos], CLASSES, labels.iloc[pos], layout, times[pos]
        )
        assert part.to_dict() == want.to_dict()
