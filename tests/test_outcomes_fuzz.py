"""Hostile input is any byte string: N messages in, exactly N messages' outcomes out, nothing
raises, every output is valid JSON. Property-based (Hypothesis), through the code the worker
runs for a batch (``WorkerRuntime._outputs``: decode, validate, score, encode, drift partials).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopdrift_common.schema import (
    CLASSES,
    EVENT_FIELDS,
    MAX_ARRAY_EVENTS,
    MAX_MESSAGE_BYTES,
    make_event,
)
from stopdrift_common.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.outcomes import InMessage
from stream_app.runtime import WorkerRuntime


class Model:
    """Scores like a classifier, and fails like a real one on values it cannot take."""

    def predict_proba(self, frame):
        x = frame["stops_per_year"].to_numpy(dtype=float)
        if np.any(np.abs(x) > 1e300):
            raise OverflowError("too large")
        return np.tile([0.2, 0.3, 0.5], (len(frame), 1))


def runtime() -> WorkerRuntime:
    watch = SimpleNamespace(current=None)
    return WorkerRuntime(Settings(), WorkerMetrics(), watch)  # type: ignore[arg-type]


CHAMPION = SimpleNamespace(model=Model(), classes=CLASSES, name="m", version="1")
VALID = make_event(
    {"state": "AZ", "stops_per_year": 10.0, "subject_race": "white"},
    source="state", row=0, loop=0, seq=5, produced_at=1.0,
)  # fmt: skip

# Any JSON value, including what Python's json writes but JSON forbids (NaN, Infinity) and
# integers of any size; text of any Unicode, lone surrogates included.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
# A valid event with some fields replaced by anything: reaches validation and scoring.
mutated = st.dictionaries(st.sampled_from(EVENT_FIELDS), values, max_size=4).map(
    lambda changes: {**VALID, **changes}
)
events = st.one_of(mutated, values)


def encoded(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


messages = st.one_of(
    st.binary(max_size=200),
    events.map(encoded),
    st.lists(events, min_size=0, max_size=6).map(encoded),
    st.just(b"[" * 100_000),  # deep nesting
    st.just(b'{"a":' * 50_000),
)


def expected_outcomes(raw: bytes) -> int:
    """Events a message holds, by an independent reading: an array of 1..1000 is that many,
    anything else is one event (or one dead letter)."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES:
        return 1
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return 1
    if isinstance(obj, list) and 1 <= len(obj) <= MAX_ARRAY_EVENTS:
        return len(obj)
    return 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=8))
def test_any_bytes_give_one_outcome_per_event_and_valid_json(raws):
    rt = runtime()
    batch = [InMessage(raw, b"k", "stops.raw", i % 3, 100 + i) for i, raw in enumerate(raws)]
    outcome, outputs, _ = rt._outputs(batch, CHAMPION, 1.0)

    assert len(outcome.per_message) == len(raws)
    for raw, (scored, dead) in zip(raws, outcome.per_message, strict=True):
        assert scored + dead == expected_outcomes(raw)
    assert sum(d for _, d in outcome.per_message) == len(outcome.dlq)
    for topic, _, value in outputs:  # every output message is valid JSON
        assert orjson.loads(value) is not None
        if topic == rt.settings.topics.scored:
            results = orjson.loads(value)
            for r in results if isinstance(results, list) else [results]:
                assert math.isfinite(r["seq"]) and r["model_version"] == "1"
    partial_events = sum(
        len(orjson.loads(v)["events"]["seq"])
        for t, _, v in outputs
        if t == rt.settings.partials_topic
    )
    assert partial_events == outcome.n_scored


def test_a_poisonous_value_costs_one_event_and_the_rest_is_scored():
    rt = runtime()
    huge = {**VALID, "event_id": "huge", "stops_per_year": 1e308}
    raws = [orjson.dumps({**VALID, "event_id": f"e{i}", "seq": i}) for i in range(20)]
    raws.insert(7, orjson.dumps(huge))
    batch = [InMessage(raw, b"k", "stops.raw", 0, i) for i, raw in enumerate(raws)]
    outcome, _, _ = rt._outputs(batch, CHAMPION, 1.0)
    assert outcome.n_scored == 20 and outcome.n_dlq == 1
    assert dict(outcome.dlq_reasons) == {"scoring_failed": 1}
