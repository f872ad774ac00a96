"""The Faust app, top-down: settings -> app -> topics -> table -> agents -> timers.

Two agents: ``score`` (every worker, on its share of ``stops.raw``) scores micro-batches and
sends each batch's drift columns to ``drift.partials.<group>``; ``drift`` (the one worker owning
that single partition) merges them into windows, tests the windows that close and sends alerts
to ``drift.alerts``. A timer closes idle windows; another polls the registry for a new champion.

The agents are thin: the work lives in ``WorkerRuntime`` (scoring) and ``Coordinator`` (drift).
Settings here are the ones measured to work with the embedded Tansu broker (docs/NOTES in the
README's pitfalls): short group timeouts, an in-memory store, raw bytes in (decoded with orjson
by the runtime), outputs as whole produce batches with one gather per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import faust
import orjson

from stopdrift_common.errors import EXIT_BROKER_LOST, EXIT_WRITE_FAILED
from stopdrift_common.settings import Settings
from stream_app.coordinator import Coordinator
from stream_app.faust_internals import BatchWriter, hold_partitions, limit_fetch_wait
from stream_app.outcomes import BatchOutcome, InMessage, split_by_size
from stream_app.progress import PartitionProgress, latest_seqs
from stream_app.runtime import WorkerRuntime

log = logging.getLogger("stopdrift.worker")

WRITE_ATTEMPTS = 8  # about 2.5 minutes of retries while the broker is away, then exit
MAX_HANDLE_BYTES = 6_000_000  # about 15,000 events per scoring call (8 MB: +50 MB resident)
TICK_SECONDS = 1.0
# Messages Faust buffers per input topic. They still arrive after their partition is paused
# (alignment), so this bounds the overshoot: kept small beside max_open_windows' seqs.
STREAM_BUFFER = 4096
MAX_POLL_RECORDS = 5000
MAX_FETCH_BYTES = 256 * 1024
# Messages of a partition that can still arrive after it is held: one poll's worth fetched, and
# what the stream buffer holds.
LOOKAHEAD = STREAM_BUFFER + MAX_POLL_RECORDS
RESET_EXIT_SECONDS = 10.0  # long enough for Prometheus to scrape the reset before the exit


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
        broker_max_poll_records=MAX_POLL_RECORDS,
        # Bytes one fetch takes from a partition (Faust's default: 1 MB, about 2,600 events).
        # A partition holding few keys advances many seqs per event, so one fetch of it could
        # carry it a hundred windows past the others before alignment can hold it.
        consumer_max_fetch_size=MAX_FETCH_BYTES,
        stream_buffer_maxsize=STREAM_BUFFER,
        producer_linger=0.0,  # outputs go out as whole batches (BatchWriter): no need to wait
        producer_max_request_size=2 * 1024 * 1024,
        producer_max_batch_size=1024 * 1024,  # BatchWriter fills one batch per partition
        topic_partitions=settings.partitions,
        web_bind=settings.worker_web_host,  # never 0.0.0.0 by default
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
    )


def alignment_skew(settings: Settings) -> int:
    """Seqs a partition may reach past the slowest one (counting what it has fetched or
    buffered already, ``PartitionProgress.lookahead``) before it is paused: a quarter of what
    the open windows hold, the rest for what a density estimate misses, partials in flight and
    other workers (measured: at half, a backlog with half its events in one partition still
    reached the cap).

    >>> alignment_skew(Settings())  # 1,024 windows of 500 seqs
    128000
    """
    # Never below one window: the partition that holds the lowest open window's missing events
    # must not be held itself.
    return max(settings.max_open_windows * settings.window_events // 4, settings.window_events)


def transport_error(exc: BaseException) -> bool:
    """True for a failure that may pass when retried (the broker away, a leader moving); a
    deterministic one (a message too large, a bug) is not retried."""
    from aiokafka.errors import KafkaError

    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in (
            "KafkaConnectionError",
            "KafkaTimeoutError",
            "NodeNotReadyError",
            "UnknownError",  # the embedded broker's answer while a topic is being recreated
        )
    return isinstance(exc, OSError | asyncio.TimeoutError | ConnectionError)


def create_app(
    settings: Settings, runtime: WorkerRuntime, coordinator: Coordinator, windows_table: str
) -> faust.App:
    limit_fetch_wait()
    app = faust.App(settings.worker_id, **faust_settings(settings))

    raw = app.topic(settings.topics.raw, key_serializer="raw", value_serializer="raw")
    partials = app.topic(
        settings.partials_topic, key_serializer="raw", value_serializer="raw", partitions=1
    )
    writer = BatchWriter(app)
    coordinator.flush = app.producer.flush
    progress = PartitionProgress(
        alignment_skew(settings),
        LOOKAHEAD + settings.batch_max_events,
        settings.window_events,
        density=2.0 * settings.partitions,  # a partition holding half the average share of keys
    )

    # Window states of the drift coordinator, backed by a changelog topic: the worker that
    # owns the partials partition (after a restart or a rebalance) rebuilds them from Kafka.
    # One partition, written with the partitioner: take_events has no "current event" for the
    # table to take a partition from.
    windows = app.Table(
        windows_table, partitions=1, key_type=str, value_type=bytes, use_partitioner=True
    )

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
            for partition, offset in last_offsets.items():
                await check_log(partition)  # before any output: a lost log is not scored
                read_up_to[partition] = max(read_up_to.get(partition, -1), offset)
            for group in split_by_size(messages, MAX_HANDLE_BYTES):
                outcome = await handle_or_exit(group)
                read = {m.partition: m.offset + 1 for m in group}  # offsets rise in a partition
                ends = {p: hw for p in read if (hw := highwater(p)) is not None}
                progress.written(read, ends, latest_seqs(outcome.drift))
            runtime.record_lag(last_offsets, highwater)
            align()
            # take_events acks the whole batch when this iteration ends: after the outputs.

    def progress_message(report: dict[str, list[int]]) -> tuple[str, None, bytes]:
        value = orjson.dumps({"worker": runtime.instance, "progress": report})
        return (settings.partials_topic, None, value)

    async def handle_or_exit(messages: list[InMessage]) -> BatchOutcome:
        """Retry a batch whose outputs could not be written while the broker is away; exit
        (without committing) if it stays away or the failure is not a transport one. An
        exception must not leave the loop: ``take_events`` would ack the batch in its
        ``finally`` and commit offsets without outcomes.

        The batch's progress (next offset, log end) goes after its partials, in the same write:
        the coordinator learns that these offsets are counted only once they are."""
        read = {m.partition: m.offset + 1 for m in messages}
        report = {str(p): [r, hw] for p, r in read.items() if (hw := highwater(p)) is not None}

        async def write(outputs: list[tuple[str, bytes | None, bytes]]) -> None:
            await writer.write([*outputs, progress_message(report)] if report else outputs)

        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return await runtime.handle(messages, write)
            except Exception as exc:
                runtime.metrics.write_retries.inc()
                for partition in {m.partition for m in messages}:
                    await check_log(partition)  # the broker came back empty: say so, exit
                if not transport_error(exc):
                    log.critical("writing a batch failed for good (%r): exiting uncommitted", exc)
                    os._exit(EXIT_WRITE_FAILED)
                wait = min(2.0**attempt, 30.0)
                log.error(
                    "writing a batch of %d messages failed (attempt %d/%d: %r); retrying in %.0f s",
                    len(messages),
                    attempt,
                    WRITE_ATTEMPTS,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
        log.critical("the broker stayed away: exiting without committing the batch")
        os._exit(EXIT_WRITE_FAILED)  # a supervisor restarts the worker; the batch is read again

    def own_raw_partitions() -> list[faust.types.TP]:
        return [tp for tp in app.assignor.assigned_actives() if tp.topic == settings.topics.raw]

    def align() -> None:
        """Pause the partitions that ran too far ahead; resume the others (see progress.py).
        The coordinator's horizon counts too when this worker coordinates."""
        horizon = coordinator.horizon if coordinator.active else None
        pause = progress.to_pause(horizon)
        own = own_raw_partitions()
        hold = {tp for tp in own if tp.partition in pause}
        hold_partitions(app.consumer, hold, own)
        runtime.metrics.paused_partitions.set(len(hold))

    @app.timer(interval=TICK_SECONDS, name="report_progress")
    async def report_progress() -> None:
        """Log ends move while a partition is idle or paused: report them, so the coordinator
        knows which partitions still have data waiting (and a partition nobody reads yet)."""
        if lost.is_set():
            return
        ends = {tp.partition: highwater(tp.partition) for tp in own_raw_partitions()}
        progress.seen({p: e for p, e in ends.items() if e is not None})
        report = progress.changed_report()
        if report:
            try:
                await writer.write([progress_message(report)])
            except Exception as exc:  # the next tick tries again
                log.warning("writing a progress report failed: %r", exc)
                progress.resend()
        align()

    read_up_to: dict[int, int] = {}  # per partition of stops.raw: the highest offset read
    lost = asyncio.Event()  # the broker lost its log: this worker only waits to exit

    async def check_log(partition: int) -> None:
        """A partition's log end never falls below an offset already read, unless the broker
        lost its log (the embedded broker keeps topics in memory: a restart empties them).
        Scoring on would count new events as old ones and commit nothing (Faust commits only
        higher offsets): say so, keep the batch unacked, exit for a fresh start."""
        read = read_up_to.get(partition)
        end = highwater(partition)
        if read is None or end is None or end < 0 or end > read:
            return
        runtime.metrics.broker_reset.set(1)
        # Nothing more goes to the new, empty broker: no table records (a changelog written
        # now would be recovered by the next worker), no windows, no alerts.
        lost.set()
        coordinator.active = False
        log.critical(
            "the broker lost %s (partition %d ends at offset %d, but offset %d was read): it "
            "restarted without its data; exiting in %.0f s without committing",
            settings.topics.raw,
            partition,
            end,
            read,
            RESET_EXIT_SECONDS,
        )
        await asyncio.sleep(RESET_EXIT_SECONDS)  # late writes flushed; /metrics scraped
        os._exit(EXIT_BROKER_LOST)

    @app.timer(interval=2.0, name="watch_broker")
    async def watch_broker() -> None:
        for partition in list(read_up_to):
            await check_log(partition)

    @app.agent(partials, name="drift")
    async def drift(stream):
        async for events in stream.take_events(500, within=settings.batch_within_seconds):
            if not coordinator.active:
                continue
            try:
                await coordinator.merge([e.message.value for e in events], writer.write, windows)
            except Exception:  # a bug: restart rather than ack partials that were not merged
                log.critical("the drift coordinator failed: exiting uncommitted", exc_info=True)
                os._exit(EXIT_WRITE_FAILED)

    @app.on_rebalance_complete.connect
    async def reassigned(sender, **kwargs) -> None:
        await read_uncommitted_from_start()
        # After the table's recovery: restore the windows if this worker coordinates now.
        owns = faust.types.TP(settings.partials_topic, 0) in app.assignor.assigned_actives()
        if not lost.is_set():
            await coordinator.assigned(owns, dict(windows.items()) if owns else {})

    async def read_uncommitted_from_start() -> None:
        """A partition nobody committed yet is read from its first message. The reset policy
        (earliest) should do that, but on the embedded broker a partition taken over from a
        worker that died before its first commit was seen to start at its end (2 runs in 6):
        events never scored, partials never merged. Faust seeks the committed ones after
        this (``perform_seek``)."""
        inputs = [
            tp
            for tp in app.assignor.assigned_actives()
            if tp.topic in (settings.topics.raw, settings.partials_topic)
        ]
        if not inputs:
            return
        committed = await app.consumer.seek_to_committed()
        start = {tp: committed[tp] for tp in inputs if committed.get(tp) is not None}
        uncommitted = [tp for tp in inputs if committed.get(tp) is None]
        if uncommitted:
            for tp, offset in (await app.consumer.earliest_offsets(*uncommitted)).items():
                await app.consumer.seek(tp, offset)
                start[tp] = offset
        # Where reading starts: with the log ends, the progress reports say which partitions
        # still have data waiting before a single event of them is read.
        raw_start = {tp.partition: o for tp, o in start.items() if tp.topic == settings.topics.raw}
        progress.started(raw_start)

    @app.on_partitions_revoked.connect
    async def revoked(sender, revoked, **kwargs) -> None:
        coordinator.active = False  # until the next assignment says otherwise
        gone = [tp.partition for tp in revoked if tp.topic == settings.topics.raw]
        progress.forget(gone)
        runtime.metrics.forget_partitions(gone)

    @app.timer(interval=TICK_SECONDS, name="drift_tick")
    async def drift_tick() -> None:
        if coordinator.active:
            await coordinator.tick(writer.write, windows)

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
