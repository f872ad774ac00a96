"""``stopdrift produce``: replay the OPP tables as events on ``stops.raw`` (kafka-python).

Rows flow as chunks: table(s) -> scenario order (seeded shuffle per loop) -> scenario
transformation -> events (NaN -> null, envelope) -> messages (one event, or JSON arrays of
``--batch`` events) -> producer. Rate control waits once per chunk (a chunk is ~50 ms of events),
never per event. Every send has a callback: failures (after kafka-python's retries) are counted
and reported, and the command exits 1 if any event was not written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

from producers import scenarios
from producers.events import check_batch, count_events, pack, to_events
from stopdrift_common.data import load_source
from stopdrift_common.errors import UserError
from stopdrift_common.schema import SOURCES
from stopdrift_common.settings import Settings
from stopdrift_common.topics import admin, broker_unavailable, ensure_topics

FAST_CHUNK_EVENTS = 5000  # rows per chunk when --rate 0
CHUNK_SECONDS = 0.05  # at a fixed rate, one chunk holds this many seconds of events


def load_tables(settings: Settings) -> dict[str, pd.DataFrame]:
    """Both tables (they are small), each with its CSV row number in ``_row``."""
    tables = {}
    for source in SOURCES:
        table = load_source(settings.data_dir, source)
        tables[source] = table.assign(_row=range(len(table)))
    return tables


def chunks(
    tables: dict[str, pd.DataFrame],
    scenario: scenarios.Scenario,
    source: str,
    loops: int,
    limit: int | None,
    chunk_events: int,
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first event number, transformed rows) for the whole replay."""
    position = 0
    for loop in range(loops):
        rows = scenario.rows(tables, source, loop).assign(_loop=loop)
        for i in range(0, len(rows), chunk_events):
            chunk = rows.iloc[i : i + chunk_events]
            if limit is not None and position + len(chunk) > limit:
                chunk = chunk.iloc[: limit - position]
            if chunk.empty:
                return
            yield position, scenario.apply(chunk, position)
            position += len(chunk)


@dataclass
class Delivery:
    """Counts acknowledged and failed events from the send callbacks (producer I/O thread)."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None
    reset: str | None = None  # set when a partition's offsets went back: the broker lost them
    _last: dict[int, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def callbacks(self, n_events: int):
        def ok(metadata) -> None:
            with self._lock:
                self.sent += n_events
                p, offset = getattr(metadata, "partition", None), getattr(metadata, "offset", -1)
                if p is not None and offset >= 0:
                    last = self._last.get(p, -1)
                    if offset < last and self.reset is None:
                        self.reset = f"partition {p} went back from offset {last} to {offset}"
                    self._last[p] = max(last, offset)

        def failed(exc: BaseException) -> None:
            with self._lock:
                self.failed += n_events
                self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

        return ok, failed


def make_producer(settings: Settings):
    from kafka import KafkaProducer, errors

    unreachable = tuple(
        e
        for e in (getattr(errors, "NoBrokersAvailable", None), errors.KafkaTimeoutError)
        if e is not None
    )
    try:
        return KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id="stopdrift-producer",
            acks=1,
            linger_ms=5,
            batch_size=256 * 1024,
            max_request_size=2 * 1024 * 1024,
            retries=5,
            retry_backoff_ms=200,
            request_timeout_ms=15000,
        )
    except unreachable:
        raise broker_unavailable(settings) from None


def _ensure_topic(settings: Settings, topic: str) -> None:
    ensure_topics(settings)
    if topic in settings.topics.all():
        return
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(settings)
    try:
        if topic not in set(client.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics([NewTopic(topic, settings.partitions, 1)])
    finally:
        client.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    batch = check_batch(args.batch)
    scenario = scenarios.build(
        args.scenario,
        seed=settings.seed,
        feature=args.feature,
        at=args.at,
        factor=getattr(args, "factor", 3.0),
        span=getattr(args, "span", 2000),
        share=getattr(args, "share", 0.5),
    )
    topic = args.topic or settings.topics.raw
    tables = load_tables(settings)
    total = count_events(len(scenario.rows(tables, args.source, 0)), args.loop, args.limit)
    at = getattr(scenario, "at", 0)
    if at >= total > 0:  # a drift scenario that would never start: say so rather than send
        raise UserError(
            f"--at {at} is never reached: this run sends {total} events (--source "
            f"{args.source}, --loop {args.loop}); raise --loop or lower --at"
        )
    _ensure_topic(settings, topic)
    producer = make_producer(settings)

    rate = float(args.rate)
    if rate > 0:
        chunk_events = max(1, int(rate * CHUNK_SECONDS))
        if batch > 1:
            chunk_events = max(chunk_events, batch)
    else:
        chunk_events = max(FAST_CHUNK_EVENTS, 10 * batch)

    from tqdm import tqdm

    delivery = Delivery()
    bar = tqdm(total=total, unit="ev", disable=args.no_progress, file=sys.stderr, smoothing=0.1)
    start = time.monotonic()
    produced = 0
    try:
        for position, rows in chunks(
            tables, scenario, args.source, args.loop, args.limit, chunk_events
        ):
            if rate > 0:
                # Token bucket with one refill per chunk: wait until this chunk is due.
                due = start + position / rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            events = to_events(rows, first_seq=position, produced_at=time.time())
            for key, value, n in pack(events, batch):
                ok, failed = delivery.callbacks(n)
                try:
                    future = producer.send(topic, key=key, value=value)
                except Exception as exc:  # e.g. buffer exhausted after max_block_ms
                    failed(exc)
                    continue
                future.add_callback(ok)
                future.add_errback(failed)
            produced += len(events)
            bar.update(len(events))
            if delivery.reset:
                raise UserError(
                    f"the broker lost {topic} ({delivery.reset}): it restarted without its "
                    f"data; stopping after {produced} events (the last ones went to the new, "
                    f"empty log)"
                )
        producer.flush(timeout=60)
    finally:
        bar.close()
        producer.close(timeout=10)
    elapsed = time.monotonic() - start
    unconfirmed = produced - delivery.sent - delivery.failed
    print(
        f"produced {produced} events to {topic} ({args.scenario} scenario, source {args.source}, "
        f"batch {batch}): sent {delivery.sent}, failed {delivery.failed + unconfirmed}, "
        f"{elapsed:.1f} s, {delivery.sent / max(elapsed, 1e-9):,.0f} events/s"
    )
    if delivery.failed or unconfirmed:
        print(
            f"stopdrift produce: {delivery.failed + unconfirmed} events were not written "
            f"(first error: {delivery.first_error or 'no acknowledgement before close'})",
            file=sys.stderr,
        )
        return 1
    return 0
