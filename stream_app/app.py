"""The Faust app, top-down: settings -> app -> topics -> agent -> timers.

The agent is thin: it takes micro-batches of raw messages and hands them to ``WorkerRuntime``
(decode, score in one call, drift, outputs). Settings here are the ones measured to work with the
embedded Tansu broker (docs: /work/shared/NOTES.md): short group timeouts, an in-memory store,
raw bytes in (we decode with orjson ourselves), outputs through ``app.producer.send`` with one
gather per batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faust

from stopdrift_common.settings import Settings
from stream_app.outcomes import InMessage
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
        producer_linger=0.01,
        producer_max_request_size=2 * 1024 * 1024,
        topic_partitions=settings.partitions,
        web_bind=settings.worker_web_host,  # never 0.0.0.0 by default
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
    )


def create_app(settings: Settings, runtime: WorkerRuntime) -> faust.App:
    app = faust.App(settings.worker_id, **faust_settings(settings))

    raw = app.topic(settings.topics.raw, key_serializer="raw", value_serializer="raw")

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
            await runtime.handle(messages, send)
            runtime.record_lag(last_offsets, highwater)
            # take_events acks the whole batch when this iteration ends: after the outputs.

    async def send(topic: str, key: bytes | None, value: bytes):
        return await app.producer.send(topic, key, value, None, None, None)

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
