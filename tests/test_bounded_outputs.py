"""One message can no longer crash-loop or flood a worker (issue 17, item 1): through the
production path (``process_batch``), every dead letter stays under a fixed size, the dead
letters of one message stay within a small multiple of its size, the key is cut, and an output
the broker would refuse becomes dead letters instead.

The reproductions (each failed before the fix): a 950 kB array element of numbers like
``9e15`` made a 3.6 MB dead letter (refused by the producer: the worker exited, re-read the
batch and exited again); a 200 kB key on an array of 1,000 bad elements made 200 MB of dead
letters.
"""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
import pandas as pd
import pytest

from stopdrift_common.schema import (
    CLASSES,
    MAX_MESSAGE_BYTES,
    MODEL_FEATURES,
    NUMERIC_FEATURES,
    make_event,
)
from stream_app.outcomes import (
    DLQ_ELEMENT_LIMIT,
    DLQ_RAW_LIMIT,
    MAX_KEY_BYTES,
    MAX_OUTPUT_BYTES,
    BatchOutcome,
    InMessage,
    process_batch,
)

WORKER = "worker-1@stopdrift-host:12345"
# Each dead letter of an array element: its cut encoding plus a few hundred bytes of record.
ELEMENT_LETTER_MAX = DLQ_ELEMENT_LIMIT + 600
LETTER_MAX = 2 * DLQ_RAW_LIMIT + 800  # any dead letter: the cut original, escaped, + record


@pytest.fixture(scope="module")
def model():
    """A small real sklearn pipeline shaped like the PyCaret one (impute, one-hot, logistic)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((60, len(NUMERIC_FEATURES))), columns=NUMERIC_FEATURES)
    frame["state"] = rng.choice(["AZ", "CA", "TX"], 60)
    labels = np.array(CLASSES * 20)
    prep = ColumnTransformer(
        [
            ("num", SimpleImputer(), NUMERIC_FEATURES),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["state"]),
        ]
    )
    return Pipeline([("prep", prep), ("clf", LogisticRegression())]).fit(
        frame[MODEL_FEATURES], labels
    )


def event(i: int, **changes) -> dict:
    e = make_event(
        {"state": "AZ", "stops_per_year": 10.0, "hit_rate": 0.3}, source="state", row=i,
        loop=0, seq=i, produced_at=1.0,
    )  # fmt: skip
    return {**e, **changes}


def run(model, *messages: tuple[bytes | None, bytes]) -> BatchOutcome:
    batch = [InMessage(v, k, "stops.raw", 0, 100 + i) for i, (k, v) in enumerate(messages)]
    return process_batch(batch, model, CLASSES, "stopdrift-race-classifier", "3", WORKER, 2.0)


def sizes(outputs: list[tuple[bytes | None, bytes]]) -> list[int]:
    return [len(k or b"") + len(v) for k, v in outputs]


def test_a_950kB_element_of_9e15_numbers_gives_one_small_dead_letter(model):
    # One element of 190,000 numbers: 950 kB in, 3.6 MB re-encoded (9000000000000000.0).
    raw = b"[[" + b",".join([b"9e15"] * 190_000) + b"]]"
    assert 900_000 < len(raw) < MAX_MESSAGE_BYTES
    out = run(model, (b"AZ", raw))
    assert out.per_message == [(0, 1)] and dict(out.dlq_reasons) == {"not_object": 1}
    key, value = out.dlq[0]
    letter = orjson.loads(value)
    assert key == b"AZ" and len(value) <= ELEMENT_LETTER_MAX
    encoded = orjson.dumps([9e15] * 190_000)
    assert letter["index"] == 0 and letter["element_truncated"] is True
    assert letter["element_size"] == len(encoded) > 3_400_000
    assert letter["element_sha256"] == hashlib.sha256(encoded).hexdigest()
    assert encoded.decode().startswith(letter["element_text"])
    assert len(letter["element_text"]) > DLQ_ELEMENT_LIMIT - 20  # as much as the cap allows


def test_a_950kB_array_of_1000_bad_elements_gives_1000_dead_letters_each_under_the_cap(model):
    # 1,000 events whose stops_per_year is an array of 9e15: 950 bytes in, 2.7 kB re-encoded each
    elements = [event(i, stops_per_year=[9e15] * 135) for i in range(1000)]
    raw = orjson.dumps(elements).replace(b"9000000000000000.0", b"9e15")
    assert 900_000 < len(raw) < MAX_MESSAGE_BYTES
    out = run(model, (b"AZ", raw))
    assert out.per_message == [(0, 1000)]
    assert dict(out.dlq_reasons) == {"wrong_type": 1000}
    assert max(sizes(out.dlq)) <= ELEMENT_LETTER_MAX
    letters = [orjson.loads(v) for _, v in out.dlq]
    assert [d["index"] for d in letters] == list(range(1000))
    assert {d["reason"] for d in letters} == {"wrong_type:stops_per_year"}
    assert sum(sizes(out.dlq)) <= 4 * len(raw)
    print(f"\n950 kB array of bad elements: {sum(sizes(out.dlq)):,} bytes of dead letters")


def test_a_1MB_key_makes_one_bounded_dead_letter_with_the_key_cut(model):
    key = b"k" * 1_000_000
    bad = orjson.dumps([event(i, state="ZZ") for i in range(1000)])  # 1,000 bad elements
    out = run(model, (key, bad), (b"AZ", orjson.dumps(event(5))))
    assert out.per_message == [(0, 1), (1, 0)]
    assert dict(out.dlq_reasons) == {"key_too_long": 1}
    (dlq_key, value), (scored_key, _) = out.dlq[0], out.scored[0]
    assert dlq_key == key[:MAX_KEY_BYTES] and scored_key == b"AZ"
    letter = orjson.loads(value)
    assert letter["reason"] == "key_too_long" and letter["key_truncated"] is True
    assert letter["key_size"] == len(key)
    assert letter["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert letter["original_size"] == len(bad) and letter["original_truncated"] is True
    assert letter["original_sha256"] == hashlib.sha256(bad).hexdigest()
    assert len(value) <= LETTER_MAX
    assert out.drift["rejects"]["field"] == ["message"]  # the drift monitor sees it


def test_a_key_of_the_limit_is_kept_and_one_byte_more_is_a_reject(model):
    ok, long = b"A" * MAX_KEY_BYTES, b"A" * (MAX_KEY_BYTES + 1)
    raw = orjson.dumps([event(1), event(2, state="ZZ")])
    out = run(model, (ok, raw), (long, raw))
    assert out.per_message == [(1, 1), (0, 1)]
    assert [k for k, _ in out.scored + out.dlq] == [ok, ok, long[:MAX_KEY_BYTES]]
    assert "key_size" not in orjson.loads(out.dlq[0][1])


def test_an_output_the_broker_would_refuse_becomes_that_events_dead_letter(model):
    huge_id = "x" * 950_000  # valid (under 1 MB in), but its result is over MAX_OUTPUT_BYTES
    single = orjson.dumps(event(0, event_id=huge_id))
    array = orjson.dumps([event(1), event(2, event_id=huge_id[:920_000]), event(3)])
    assert len(array) < MAX_MESSAGE_BYTES
    out = run(model, (b"AZ", single), (b"AZ", array))
    assert out.per_message == [(0, 1), (2, 1)]
    assert dict(out.dlq_reasons) == {"output_too_large": 2}
    assert max(sizes(out.scored + out.dlq)) <= MAX_OUTPUT_BYTES
    assert max(sizes(out.dlq)) <= LETTER_MAX
    results = orjson.loads(out.scored[0][1])
    assert [r["event_id"] for r in results] == ["state-0-1", "state-0-3"]
    whole, element = (orjson.loads(v) for _, v in out.dlq)
    assert whole["original_size"] == len(single) and "index" not in whole
    assert element["index"] == 1 and element["element_truncated"] is True
    # the drift columns agree: two events scored, two rejects with their seq
    assert out.drift["events"]["seq"] == [1, 3] and sorted(out.drift["rejects"]["seq"]) == [0, 2]
    assert len(out.produced_at) == 2


def test_results_that_fit_are_kept_and_only_the_largest_are_dropped(model):
    # 100 events of 9 kB ids: over 900 kB of results together, so the largest few go
    elements = [event(i, event_id=f"{i:03d}" + "y" * (9_000 + (i == 7) * 500)) for i in range(100)]
    raw = orjson.dumps(elements)
    assert len(raw) < MAX_MESSAGE_BYTES
    out = run(model, (b"AZ", raw))
    scored, dead = out.per_message[0]
    assert scored + dead == 100 and 0 < dead < 5
    assert len(out.scored[0][1]) + 2 <= MAX_OUTPUT_BYTES
    letters = [orjson.loads(v) for _, v in out.dlq]
    assert letters[0]["index"] == 7  # the largest first
    assert {d["reason"] for d in letters} == {"output_too_large"}


@pytest.mark.integration
def test_a_real_worker_survives_the_messages_that_crash_looped_it(champion, tmp_path):
    """The worker as a user runs it, on a real broker: the 950 kB element of 9e15 numbers (its
    3.6 MB dead letter was refused by the producer: exit, re-read, exit...), a 200 kB key on
    1,000 bad elements and an event whose result would pass 900 kB, then good events. Every
    event gets its outcome, every output is small, the worker stays up."""
    import time

    from stopdrift import servers
    from tests.helpers_stream import (
        WAIT,
        Worker,
        read_topic,
        register_copy,
        send_all,
        stream_settings,
    )

    settings, _ = champion
    broker = servers.broker(servers.free_port(), tmp_path / "logs").start()
    worker = None
    try:
        s = stream_settings(settings, broker, tmp_path, "bounded-it")
        register_copy(s, "stopdrift-bounded-test")
        worker = Worker(s, tmp_path / "logs", "stopdrift-bounded-test")
        worker.start()
        started = time.monotonic()
        hostile = [
            (b"AZ", b"[[" + b",".join([b"9e15"] * 190_000) + b"]]"),
            (b"k" * 200_000, orjson.dumps([event(i, state="ZZ") for i in range(1000)])),
            (b"AZ", orjson.dumps(event(0, event_id="x" * 950_000))),
        ]
        good = [(b"AZ", orjson.dumps(event(i, event_id=f"good-{i}"))) for i in range(5)]
        send_all(s, hostile + good)
        while True:
            letters = read_topic(s, s.topics.dlq)
            results = [orjson.loads(v) for v in read_topic(s, s.topics.scored)]
            if len(letters) >= 3 and len(results) >= 5:
                break
            assert worker.alive(), "the worker exited\n" + worker.log()
            assert time.monotonic() < started + WAIT, "no outcomes\n" + worker.log()
            time.sleep(0.5)
        time.sleep(1.0)  # anything more (a re-read after an exit) would show up now
        letters = read_topic(s, s.topics.dlq)
        reasons = sorted(orjson.loads(v)["reason"] for v in letters)
        assert reasons == ["key_too_long", "not_object", "output_too_large"]
        assert max(len(v) for v in letters) <= LETTER_MAX
        assert max(len(v) for v in read_topic(s, s.topics.scored)) <= MAX_OUTPUT_BYTES
        assert sorted(r["event_id"] for r in results) == [f"good-{i}" for i in range(5)]
        assert worker.alive() and worker.starts == 1
        print(f"\nhostile messages to outcomes: {time.monotonic() - started:.1f} s")
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
