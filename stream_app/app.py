"""The Faust app, top-down: settings -> app -> topics -> agents -> timers.

Two agents: ``score`` (every worker, on its share of ``stops.raw``) scores micro-batches and
sends each batch's drift counts to ``drift.partials``; ``drift`` (the one worker owning that
single partition) merges them into windows and sends alerts to ``drift.alerts``.

The agent is thin: it takes micro-batches of raw messages and hands them to ``WorkerRuntime``
(decode, score in one call, drift, outputs). Settings here are the ones measured to work with the
embedded Tansu broker (docs: /work/shared/NOTES.md): short group timeouts, an in-memory store,
raw bytes in (we decode with orjson ourselves), outputs through ``app.producer.send`` with one
gather per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import faust

from stopdrift_common.settings import Settings
from stream_app.outcomes import InMessage, split_by_size
from stream_app.runtime import WorkerRuntime

log = logging.getLogger("stopdrift.worker")


def faust_settings(settings: Settings) -> dict:
    brokers = [f"kafka://{address.strip()}" for address in settings.bootstrap.split(",")]
    return dict(
        broker=brokers,
        store="memory://",  # Tansu's ListOffsets LATEST is wrong: RocksDB recovery breaks on it
        datadir=str(Path(settings.runs_dir) / "faust" / settings.worker_id),
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",  # a new group starts from the beginning
        broker_session_timeout=6,  # a group join takes about half the session timeout
        broker_heartbeat_interval=2,
        broker_rebalance_timeout=12,
        broker_max_poll_records=5000,
        stream_buffer_maxsize=16384,
        producer_linger=0.0,  # outputs go out as whole batches (BatchWriter): no need to wait
        producer_max_request_size=2 * 1024 * 1024,
        producer_max_batch_size=1024 * 1024,  # BatchWriter fills one batch per partition
        topic_partitions=settings.partitions,
        web_bind=settings.worker_web_host,  # never 0.0.0.0 by default
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
    )


FETCH_MAX_WAIT_MS = 50
HANDLE_ATTEMPTS = 8  # about 2.5 minutes of retries
MAX_HANDLE_BYTES = 6_000_000  # about 15,000 events per scoring call (8 MB: +50 MB resident)


def limit_fetch_wait(ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Faust hard-codes the consumer's ``fetch_max_wait_ms=1500``, and Tansu holds a fetch for
    that long even when data is waiting: measured produced->scored p50 546 ms / p99 937 ms at
    1,000 events/s. Lower it on every consumer Faust creates in this process (before start)."""
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "stopdrift_fetch_wait", None) == ms:
        return
    base = getattr(original, "stopdrift_original", original)

    def create(self, transport):
        consumer = base(self, transport)
        consumer._fetch_max_wait_ms = ms  # read by AIOKafkaConsumer.start()
        return consumer

    create.stopdrift_fetch_wait = ms
    create.stopdrift_original = base
    driver.AIOKafkaConsumerThread._create_worker_consumer = create


class BatchWriter:
    """Writes a batch's outputs as produce batches: one aiokafka ``BatchBuilder`` per
    (topic, partition), one delivery future each, gathered once.

    Sending each output with ``app.producer.send`` costs a future and an accumulator append per
    message (~30 us); with 2,000 outputs a batch that was the largest cost after Faust itself.
    Keys are partitioned like the default partitioner (murmur2), so an event's output lands in
    the same partition as any other output with the same key."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def write(self, outputs: list[tuple[str, bytes | None, bytes]]) -> None:
        if not outputs:
            return
        producer = self.app.producer._producer  # the aiokafka producer Faust started
        by_tp: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        for topic in {t for t, _, _ in outputs}:
            await producer.partitions_for(topic)  # metadata, once per topic
        partitions: dict[tuple[str, bytes | None], int] = {}  # keys repeat (a state each)
        for topic, key, value in outputs:
            if key is None:  # a random partition per message, as the producer does
                partition = producer._partition(topic, None, None, None, key, value)
            elif (partition := partitions.get((topic, key))) is None:
                partition = producer._partition(topic, None, None, None, key, value)
                partitions[(topic, key)] = partition
            by_tp.setdefault((topic, partition), []).append((key, value))
        futures = []
        for (topic, partition), messages in by_tp.items():
            batch = producer.create_batch()
            for key, value in messages:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    if batch.record_count():
                        futures.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        # larger than a whole batch: let the producer size its own request
                        futures.append(await producer.send(topic, value, key, partition))
                        batch = producer.create_batch()
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)


def create_app(settings: Settings, runtime: WorkerRuntime) -> faust.App:
    limit_fetch_wait()
    app = faust.App(settings.worker_id, **faust_settings(settings))

    raw = app.topic(settings.topics.raw, key_serializer="raw", value_serializer="raw")
    writer = BatchWriter(app)

    @app.agent(raw, name="score")
    async def score(stream):
        # Wait for a champion before taking messages: they stay unacked (and are re-read after a
        # restart) until their outcome is written.
        await runtime.start()
        async for events in stream.take_events(
            settings.batch_max_events, within=settings.batch_within_seconds
        ):
            messages = []
            last_offsets: dict[int, int] = {}
            for event in events:
                m = event.message
                messages.append(InMessage(m.value, m.key, m.topic, m.partition, m.offset))
                last_offsets[m.partition] = m.offset
            for group in split_by_size(messages, MAX_HANDLE_BYTES):
                await handle_or_exit(group)
            runtime.record_lag(last_offsets, highwater)
            # take_events acks the whole batch when this iteration ends: after the outputs.

    async def handle_or_exit(messages: list[InMessage]) -> None:
        """Retry a batch whose outputs could not be written (broker away); if it keeps failing,
        exit at once. An exception must not leave the loop: ``take_events`` would then ack the
        batch in its ``finally`` and its offsets could be committed without outcomes."""
        for attempt in range(1, HANDLE_ATTEMPTS + 1):
            try:
                await runtime.handle(messages, writer.write)
                return
            except Exception as exc:
                wait = min(2.0**attempt, 30.0)
                log.error(
                    "batch of %d messages failed (attempt %d/%d: %r); retrying in %.0f s",
                    len(messages),
                    attempt,
                    HANDLE_ATTEMPTS,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
        log.critical("giving up on the batch: exiting without committing its offsets")
        os._exit(3)  # a supervisor restarts the worker; the batch is read again

    partials = app.topic(
        settings.partials_topic, key_serializer="raw", value_serializer="raw", partitions=1
    )

    # The counts of windows still open live in a changelog-backed table too: a restarted (or
    # newly assigned) coordinator rebuilds them from Kafka instead of losing them.
    # (One partition, so the producer's partitioner can place changelog writes: take_events has
    # no "current event" for the table to read a partition from.)
    open_windows = app.Table(
        "drift-open-windows", partitions=1, key_type=bytes, value_type=bytes, use_partitioner=True
    )

    @app.agent(partials, name="drift")
    async def drift(stream):
        # One partition: exactly one worker of the group merges every worker's drift counts.
        await runtime.start()
        restored = False
        async for events in stream.take_events(500, within=settings.batch_within_seconds):
            if not restored:  # the first batch comes after the table's recovery
                runtime.restore_windows(dict(open_windows.items()))
                restored = True
            alerts, changed = runtime.merge_partials([e.message.value for e in events])
            for key, state in changed.items():
                if state is None:
                    open_windows.pop(key.encode(), None)
                else:
                    open_windows[key.encode()] = state
            await writer.write([(settings.topics.alerts, None, a) for a in alerts])

    def highwater(partition: int) -> int | None:
        try:
            return app.consumer.highwater(faust.types.TP(settings.topics.raw, partition))
        except Exception:  # not assigned any more (rebalance) or not fetched yet
            return None

    if settings.model_poll_seconds > 0:

        @app.timer(interval=settings.model_poll_seconds, name="poll_champion")
        async def poll_champion() -> None:
            await runtime.poll_model()

    return app
