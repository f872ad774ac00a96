"""Vectorised scoring of events (None for missing values) gives the pipeline's own batch
predictions on the same rows; a batch's outcomes account for every event."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from producers import scenarios
from producers.events import pack, to_events
from producers.replay import chunks, load_tables
from stopdrift_common.schema import CATEGORICAL_FEATURES, MODEL_FEATURES, NUMERIC_FEATURES
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stream_app.outcomes import InMessage, process_batch
from stream_app.scoring import features_frame, score

CLASSES = ["black", "hispanic", "white"]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    tables = load_tables(Settings(data_dir=PROJECT_ROOT / "data"))
    parts = chunks(tables, scenarios.build("natural"), "both", 1, None, 5000)
    return pd.concat([c for _, c in parts]).iloc[::10]  # states and cities, many NaNs


@pytest.fixture(scope="module")
def pipeline(rows):
    """A small sklearn pipeline shaped like the PyCaret one: impute means, one-hot the state."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer(
        [
            ("num", Pipeline([("i", SimpleImputer()), ("s", StandardScaler())]), NUMERIC_FEATURES),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL_FEATURES),
        ]
    )
    model = Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=500))])
    train = rows[rows["source"] == "state"]
    return model.fit(train[MODEL_FEATURES], train["subject_race"])


def test_scoring_events_with_nulls_equals_the_pipelines_batch_predictions(rows, pipeline):
    events = to_events(rows, 0, 1.0)
    assert any(e["search_rate"] is None for e in events)
    scores = score(pipeline, list(pipeline.classes_), features_frame(events))
    expected = pipeline.predict_proba(rows[MODEL_FEATURES])
    np.testing.assert_allclose(scores.proba, expected)
    assert scores.predicted == list(pipeline.predict(rows[MODEL_FEATURES]))


def test_a_batch_of_mixed_messages_gives_one_outcome_per_event_in_order(rows, pipeline):
    events = to_events(rows.iloc[:60], 0, 1.0)
    messages = [InMessage(v, k, "stops.raw", 0, i) for i, (k, v, _) in enumerate(pack(events, 1))]
    arrays = list(pack(events, batch=25))
    messages += [InMessage(v, k, "stops.raw", 1, i) for i, (k, v, _) in enumerate(arrays)]
    bad = orjson.dumps([events[0], {"state": "ZZ"}, events[1]])
    messages += [
        InMessage(bad, b"AZ", "stops.raw", 2, 0),
        InMessage(b"\xff", None, "stops.raw", 2, 1),
    ]
    out = process_batch(messages, pipeline, list(pipeline.classes_), "m", "7", "w", now=2.0)
    assert out.n_scored == 60 + 60 + 2 and out.n_dlq == 2
    assert dict(out.dlq_reasons) == {"missing_field": 1, "not_utf8": 1}
    assert len(out.scored) == 60 + len(arrays) + 1
    singles = [orjson.loads(v) for _, v in out.scored[:60]]
    assert [s["event_id"] for s in singles] == [e["event_id"] for e in events]
    assert {s["model_version"] for s in singles} == {"7"}
    mixed = orjson.loads(out.scored[-1][1])
    assert [r["event_id"] for r in mixed] == [events[0]["event_id"], events[1]["event_id"]]
    letters = [orjson.loads(v) for _, v in out.dlq]
    assert letters[0]["index"] == 1 and letters[0]["element"] == {"state": "ZZ"}
    assert letters[1]["original_base64"] == "/w==" and letters[1]["offset"] == 1
    expected = pipeline.predict(pd.DataFrame(events)[MODEL_FEATURES])
    assert [s["predicted"] for s in singles] == list(expected)


def test_a_row_the_model_cannot_score_is_found_by_bisection_and_dead_lettered(rows, pipeline):
    calls = []

    class Picky:
        def predict_proba(self, frame):
            calls.append(len(frame))
            if (frame["stops_per_year"] > 1e9).any():
                raise ValueError("too big")
            return pipeline.predict_proba(frame)

    events = to_events(rows.iloc[:64], 0, 1.0)
    events[37]["stops_per_year"] = 1e10
    messages = [InMessage(v, k, "t", 0, i) for i, (k, v, _) in enumerate(pack(events, 1))]
    out = process_batch(messages, Picky(), list(pipeline.classes_), "m", "1", "w", now=1.0)
    assert out.n_scored == 63 and dict(out.dlq_reasons) == {"scoring_failed": 1}
    assert [s == (1, 0) for s in out.per_message].count(False) == 1
    assert out.per_message[37] == (0, 1)
    assert len(calls) <= 2 * 6 + 1  # halves down to the bad row, not one call per row
    assert len(out.drift["events"]["seq"]) == 63 and out.drift["rejects"]["seq"] == [37]


@pytest.mark.integration
def test_the_registered_champion_scores_events_like_its_batch_predictions(champion, rows):
    from stopdrift_common.registry import load_champion

    settings, _ = champion
    loaded = load_champion(settings)
    events = to_events(rows, 0, 1.0)
    scores = score(loaded.model, loaded.classes, features_frame(events))
    expected = loaded.model.predict_proba(rows[MODEL_FEATURES].reset_index(drop=True))
    np.testing.assert_allclose(scores.proba, expected)
    assert set(scores.predicted) <= set(CLASSES)
