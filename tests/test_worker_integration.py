"""The worker end to end, as a user runs it: `python -m stopdrift.cli worker` against a
real broker and a real MLflow registry.

One worker (started once for the module, ~10 s) serves three scenarios in order:
(a) good, malformed and mixed messages -> exactly one outcome per event, the worker survives;
(b) a new champion registered while it runs -> later events scored by the new version;
(c) SIGKILL mid-stream and a restart -> every event has an outcome (duplicates allowed).

The module uses its own broker and its own registered model name, so other tests' topics and
champion are untouched.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import pandas as pd
import pytest

from producers import scenarios
from producers.events import pack, to_events
from producers.replay import chunks, load_tables
from stopdrift import servers
from stopdrift_common.schema import MODEL_FEATURES, dumps
from stopdrift_common.settings import PROJECT_ROOT, Settings
from tests.helpers_stream import (
    WAIT,
    Worker,
    metrics,
    producer,
    read_topic,
    register_copy,
    send_all,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-stream-test"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    tables = load_tables(Settings(data_dir=PROJECT_ROOT / "data"))
    return pd.concat(
        [c for _, c in chunks(tables, scenarios.build("none"), "state", 1, None, 5000)]
    )


@pytest.fixture(scope="module")
def stream(champion, tmp_path_factory):
    settings, _ = champion
    base = tmp_path_factory.mktemp("stream")
    broker = servers.broker(servers.free_port(), base / "logs").start()
    s = stream_settings(settings, broker, base, "stream-it")
    register_copy(s, MODEL_NAME)
    worker = Worker(s, base / "logs", MODEL_NAME)
    try:
        worker.start()
        yield s, worker
    finally:
        worker.stop()
        broker.stop()


def scored(settings: Settings) -> list[dict]:
    out = []
    for value in read_topic(settings, settings.topics.scored):
        obj = orjson.loads(value)
        out.extend(obj if isinstance(obj, list) else [obj])
    return out


def wait_for(condition, what: str, worker: Worker):
    deadline = time.monotonic() + WAIT
    while True:
        result = condition()
        if result:
            return result
        assert worker.proc.poll() is None, f"worker died while waiting for {what}\n{worker.log()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{worker.log()}"
        time.sleep(0.5)


def events_with_ids(rows: pd.DataFrame, prefix: str) -> list[dict]:
    events = to_events(rows, 0, time.time())
    for i, e in enumerate(events):
        e["event_id"] = f"{prefix}-{i}"
    return events


def test_a_every_event_gets_one_outcome_and_bad_ones_say_why(stream, rows):
    settings, worker = stream
    good = events_with_ids(rows.iloc[:300], "a")
    messages = [(k, v) for k, v, _ in pack(good[:200], batch=1)]
    messages += [(k, v) for k, v, _ in pack(good[200:], batch=25)]
    template = dict(good[0], event_id="bad")
    text = dumps(template).decode()
    mixed = [dict(good[0], event_id="a-mixed-0"), dict(template, state="ZZ"), "x"]
    mixed.append(dict(good[1], event_id="a-mixed-1"))
    bad = {
        "invalid_json": b'{"state": "AZ", ',
        "wrong_type": dumps(dict(template, stops_per_year="many")),
        "missing_field": dumps({k: v for k, v in template.items() if k != "produced_at"}),
        "unknown_category": dumps(dict(template, state="ZZ")),
        "out_of_range": dumps(dict(template, hit_rate=2.0)),
        "not_finite": text.replace('"stops_per_year":', '"stops_per_year":NaN,"x":').encode(),
        "oversize": b'{"pad": "' + b"x" * 1_100_000 + b'"}',
        "not_utf8": b'{"state": "\xff\xfe"}',
        "empty_array": b"[]",
        "empty_message": b"",
    }
    # Hostile numbers (they once failed every batch they were in): one dead-letter each.
    huge = "1" + "0" * 400
    hostile = [
        ("out_of_range", text.replace('"stops_per_year":', f'"stops_per_year":{huge},"x":')),
        ("wrong_type", text.replace('"seq":', f'"seq":{2**64},"x":')),  # beyond 64 bits
        ("out_of_range", text.replace('"seq":', f'"seq":{2**63 + 1},"x":')),  # past int64
    ]
    messages += [(b"AZ", raw) for raw in bad.values()]
    messages += [(b"AZ", raw.encode()) for _, raw in hostile]
    messages.append((b"AZ", dumps(mixed)))
    send_all(settings, messages)
    n_events = len(good) + len(bad) + len(hostile) + len(mixed)

    def outcomes():
        s = [r for r in scored(settings) if r["event_id"].startswith("a-")]
        d = [orjson.loads(v) for v in read_topic(settings, settings.topics.dlq)]
        return (s, d) if len(s) + len(d) >= n_events else None

    results, letters = wait_for(outcomes, f"{n_events} outcomes", worker)
    time.sleep(1.5)  # anything extra would show up now
    results, letters = outcomes()
    assert len(results) + len(letters) == n_events
    ids = Counter(r["event_id"] for r in results)
    assert set(ids) == {e["event_id"] for e in good} | {"a-mixed-0", "a-mixed-1"}
    assert max(ids.values()) == 1
    codes = Counter(d["code"] for d in letters)
    expected_codes = Counter({**{k: 1 for k in bad}, "unknown_category": 2, "not_object": 1})
    expected_codes.update(code for code, _ in hostile)
    assert codes == expected_codes
    for d in letters:
        assert d["reason"] and d["source_topic"] == settings.topics.raw and d["worker_id"]
        assert ("original_text" in d or "original_base64" in d) or "element" in d
    assert worker.proc.poll() is None

    # The predictions are the registered model's own batch predictions on the same rows.
    from stopdrift_common.registry import load_champion

    model = load_champion(settings).model
    frame = rows.iloc[:300][MODEL_FEATURES].reset_index(drop=True)
    expected = dict(zip([e["event_id"] for e in good], model.predict(frame), strict=True))
    by_id = {r["event_id"]: r for r in results}
    assert all(by_id[i]["predicted"] == p for i, p in expected.items())
    assert {r["model_version"] for r in results} == {"1"}
    text = metrics(worker.metrics_port)
    assert 'stopdrift_dlq_events_total{reason="oversize"} 1.0' in text


def test_b_a_new_champion_is_picked_up_without_a_restart(stream, rows):
    settings, worker = stream
    version = register_copy(settings, MODEL_NAME)
    assert version == "2"
    wait_for(
        lambda: (
            f'stopdrift_model_version_info{{model="{MODEL_NAME}",version="2"}} 1.0'
            in metrics(worker.metrics_port)
        ),
        "the worker to load version 2",
        worker,
    )
    events = events_with_ids(rows.iloc[300:400], "b")
    send_all(settings, [(k, v) for k, v, _ in pack(events, batch=1)])
    results = wait_for(
        lambda: (
            (r := [x for x in scored(settings) if x["event_id"].startswith("b-")])
            and len(r) >= 100
            and r
        ),
        "100 outcomes scored after the swap",
        worker,
    )
    assert {r["model_version"] for r in results} == {"2"}
    assert worker.starts == 1


def test_c_no_event_is_lost_when_the_worker_is_killed(stream, rows):
    settings, worker = stream
    events = events_with_ids(rows.iloc[:3000], "c")
    messages = [(k, v) for k, v, _ in pack(events, batch=1)]

    def produce_slowly():  # about 1,000 events/s, so the kill lands mid-stream
        p = producer(settings)
        for i in range(0, len(messages), 100):
            for k, v in messages[i : i + 100]:
                p.send(settings.topics.raw, key=k, value=v)
            p.flush(10)
            time.sleep(0.1)
        p.close()

    thread = threading.Thread(target=produce_slowly)
    thread.start()
    wait_for(
        lambda: any(r["event_id"].startswith("c-") for r in scored(settings)),
        "the first scored c- event",
        worker,
    )
    worker.kill()
    thread.join()
    worker.start()

    def all_scored():
        ids = Counter(r["event_id"] for r in scored(settings) if r["event_id"].startswith("c-"))
        return ids if len(ids) == len(events) else None

    ids = wait_for(all_scored, "an outcome for every event after the restart", worker)
    assert set(ids) == {e["event_id"] for e in events}
    duplicates = sum(n - 1 for n in ids.values())
    print(f"\n{duplicates} duplicate outcomes after SIGKILL (at-least-once)")
