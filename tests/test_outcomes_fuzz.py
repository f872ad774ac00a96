"""Hostile input is any byte string: N messages in, exactly N messages' outcomes out, nothing
raises, every output is valid JSON. Property-based (Hypothesis), through the code the worker
runs for a batch (``WorkerRuntime._outputs``: decode, validate, score, encode, drift partials).
Outputs are bounded whatever a message and its key hold: every output under the broker's limit,
each dead letter under a fixed size, and a message's dead letters within a small multiple of it.
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
from stream_app.outcomes import (
    DLQ_ELEMENT_LIMIT,
    DLQ_RAW_LIMIT,
    MAX_KEY_BYTES,
    MAX_OUTPUT_BYTES,
    InMessage,
    cut_key,
)
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


def expected_outcomes(raw: bytes, key: bytes | None = b"k") -> int:
    """Events a message holds, by an independent reading: an array of 1..1000 is that many,
    anything else is one event (or one dead letter); a key too long rejects the message whole."""
    if not raw or len(raw) > MAX_MESSAGE_BYTES or len(key or b"") > MAX_KEY_BYTES:
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


def array_of(piece: bytes, n: int) -> bytes:
    return b"[" + b",".join([piece] * n) + b"]"


# Elements that grow when re-encoded (9e15 is written 9000000000000000.0), escape-heavy strings,
# nesting deeper than orjson writes (kept as repr), integers beyond 64 bits (the lenient
# decoder), a lone surrogate, bad and valid events, one that fails scoring.
PIECES = [
    b"9e15",
    b"-9E15",
    array_of(b"9e15", 4),
    b'"' + b'\\"' * 40 + b'"',
    b'"' + b"\\u0000" * 20 + b'"',
    b"[" * 300 + b"]" * 300,
    b'{"a":' * 40 + b"1" + b"}" * 40,
    b"1" + b"0" * 400,
    b'"\\ud800"',
    orjson.dumps({**VALID, "state": "ZZ"}),
    orjson.dumps({**VALID, "stops_per_year": [9e15] * 20}).replace(b"9000000000000000.0", b"9e15"),
    orjson.dumps(VALID),
    orjson.dumps({**VALID, "stops_per_year": 1e308}),
]
pieces = st.sampled_from(PIECES)
big_messages = st.one_of(
    st.lists(pieces, min_size=1, max_size=1100).map(lambda ps: b"[" + b",".join(ps) + b"]"),
    st.builds(array_of, pieces, st.integers(1, 1100)),
    st.builds(lambda p, n: array_of(array_of(p, n), 1), pieces, st.integers(1, 250_000)),
    st.builds(lambda n: orjson.dumps({**VALID, "event_id": "x" * n}), st.integers(0, 1_000_000)),
    st.builds(
        lambda n, m: orjson.dumps([VALID] * m + [{**VALID, "event_id": "x" * n}]),
        st.integers(0, 1_000_000),
        st.integers(0, 30),
    ),
    st.binary(max_size=200),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 1_100_000)),
)
keys = st.one_of(
    st.none(),
    st.binary(max_size=8),
    st.integers(0, 1_100_000).map(lambda n: b"k" * n),
    st.integers(MAX_KEY_BYTES - 2, MAX_KEY_BYTES + 2).map(lambda n: b"\xff" * n),
)
# A dead letter beyond its event's share of the message (4 bytes per byte of it): its key, cut,
# and its record (reason, where from, sizes, sha256s: about 400 bytes, plus the worker's id).
RECORD_BYTES = 450


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.tuples(keys, big_messages), min_size=1, max_size=3))
def test_dead_letters_are_bounded_whatever_the_message_and_its_key_hold(batch_of):
    rt = runtime()
    batch = [InMessage(v, k, "stops.raw", 0, 100 + i) for i, (k, v) in enumerate(batch_of)]
    outcome, outputs, _ = rt._outputs(batch, CHAMPION, 1.0)
    record = RECORD_BYTES + len(rt.instance)

    letters = iter(outcome.dlq)
    for (key, raw), (scored, dead) in zip(batch_of, outcome.per_message, strict=True):
        assert scored + dead == expected_outcomes(raw, key)
        mine = [next(letters) for _ in range(dead)]
        kept_key = cut_key(key)
        assert all(k == kept_key for k, _ in mine)
        total = sum(len(k or b"") + len(v) for k, v in mine)
        assert total <= 4 * len(raw) + dead * (len(kept_key or b"") + record)
        for _, value in mine:
            letter = orjson.loads(value)
            limit = DLQ_ELEMENT_LIMIT if "index" in letter else 2 * DLQ_RAW_LIMIT
            assert len(value) <= limit + record
    for _, key, value in outputs:  # nothing the broker would refuse
        assert len(key or b"") <= MAX_KEY_BYTES
        assert len(key or b"") + len(value) <= MAX_OUTPUT_BYTES
        assert orjson.loads(value) is not None


def test_a_poisonous_value_costs_one_event_and_the_rest_is_scored():
    rt = runtime()
    huge = {**VALID, "event_id": "huge", "stops_per_year": 1e308}
    raws = [orjson.dumps({**VALID, "event_id": f"e{i}", "seq": i}) for i in range(20)]
    raws.insert(7, orjson.dumps(huge))
    batch = [InMessage(raw, b"k", "stops.raw", 0, i) for i, raw in enumerate(raws)]
    outcome, _, _ = rt._outputs(batch, CHAMPION, 1.0)
    assert outcome.n_scored == 20 and outcome.n_dlq == 1
    assert dict(outcome.dlq_reasons) == {"scoring_failed": 1}
