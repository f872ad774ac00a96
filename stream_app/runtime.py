"""What a worker does with one batch of ``stops.raw``, between Kafka in and Kafka out.

``WorkerRuntime.handle`` scores the batch in the scoring thread (``outcomes.process_batch``: it
never raises; a batch whose processing fails anyway is split in halves until the messages it
fails on are dead-lettered), hands every output (scored results, dead letters, the drift
partial for the coordinator) to ``write``, and only then updates the metrics. The agent acks
the batch after ``handle`` returns, so offsets are committed only for events whose outcome is
written. ``write`` raising is a transport problem (the broker is away): the agent retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

from stopdrift_common.schema import Reject
from stopdrift_common.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.model_watch import ModelWatch
from stream_app.outcomes import (
    BatchOutcome,
    InMessage,
    cut_key,
    dead_letter,
    process_batch,
    reason_code,
)

log = logging.getLogger("stopdrift.worker")

# write([(topic, key, value), ...]) returns once the broker has every message (raises if not)
Write = Callable[[list[tuple[str, bytes | None, bytes]]], Awaitable[None]]
Output = tuple[str, bytes | None, bytes]

TRIM_AFTER_BYTES = 1_000_000  # a batch this large leaves tens of MB of freed heap behind
PARTIAL_EVENTS = 2000  # events per drift partial message (keeps each well under 1 MB)


def _release_free_memory() -> None:
    """Give the heap freed by a large batch back to the system (glibc keeps it otherwise: the
    worker's resident memory stayed at its largest batch's high-water mark). A few ms."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _freeze_heap() -> None:
    """Move every object alive now (the libraries, the model, the reference) out of the
    garbage collector's sight. The worker allocates many short-lived objects per event, and
    each full collection walked the whole heap of PyCaret, MLflow and Faust objects: about 20%
    of the per-batch time. Unfrozen first, so a replaced model can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class WorkerRuntime:
    def __init__(self, settings: Settings, metrics: WorkerMetrics, watch: ModelWatch) -> None:
        self.settings = settings
        self.metrics = metrics
        self.watch = watch
        self.instance = f"{settings.worker_id}@{socket.gethostname()}:{os.getpid()}"
        self.batches = 0
        self._started = False
        self._start_lock = asyncio.Lock()
        # One scoring thread, always the same: every thread that allocates gets its own malloc
        # arena (and keeps its freed memory), so rotating over the default executor's threads
        # would multiply that.
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")

    # --- model --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the first champion (both agents call this; the first call does the work)."""
        async with self._start_lock:
            if not self._started:
                self._use(await self.watch.load_initial())
                self._started = True

    async def poll_model(self) -> None:
        champion = await self.watch.poll()
        rejected = self.watch.rejected
        self.metrics.champion_rejected.set(
            float(rejected) if rejected and rejected.isdigit() else 0
        )
        if champion is not None:
            self._use(champion)

    def _use(self, champion: Any) -> None:
        self.metrics.set_model(champion.name, champion.version)
        _freeze_heap()

    # --- batches ------------------------------------------------------------------------------
    async def handle(self, messages: Sequence[InMessage], write: Write) -> BatchOutcome:
        champion = self.watch.current
        assert champion is not None, "handle() before start()"
        # In a thread: the model (LightGBM, numpy) runs without the GIL, so the event loop keeps
        # taking Faust's next messages meanwhile; batches still run one at a time.
        outcome, outputs, seconds = await asyncio.get_running_loop().run_in_executor(
            self._scorer, self._outputs, messages, champion, time.time()
        )
        await write(outputs)
        if sum(len(m.value or b"") for m in messages) > TRIM_AFTER_BYTES:
            _release_free_memory()

        written = time.time()
        m = self.metrics
        m.record_outcomes(outcome.n_scored, outcome.dlq_reasons)
        m.batch_size.observe(outcome.n_scored + outcome.n_dlq)
        m.scoring.observe(seconds)
        if outcome.n_scored:
            m.observe_latencies(written - outcome.produced_at)
        m.last_batch.set(written)
        self.batches += 1
        return outcome

    def _outputs(
        self, messages: Sequence[InMessage], champion: Any, now: float
    ) -> tuple[BatchOutcome, list[Output], float]:
        """Score the batch and build every output message (no I/O: runs in a thread)."""
        started = time.perf_counter()
        outcome = self._process(list(messages), champion, now)
        seconds = time.perf_counter() - started
        topics = self.settings.topics
        outputs: list[Output] = [(topics.scored, k, v) for k, v in outcome.scored]
        outputs += [(topics.dlq, k, v) for k, v in outcome.dlq]
        for partial in self.partials(outcome, champion.version):
            outputs.append((self.settings.partials_topic, None, partial))
        return outcome, outputs, seconds

    def _process(self, messages: list[InMessage], champion: Any, now: float) -> BatchOutcome:
        """``process_batch``, bisected over messages if it raises (it should not: a bug must
        cost the messages it fails on, not the stream)."""
        try:
            return process_batch(
                messages,
                champion.model,
                champion.classes,
                champion.name,
                champion.version,
                self.instance,
                now,
            )
        except Exception as exc:
            if len(messages) > 1:
                mid = len(messages) // 2
                first = self._process(messages[:mid], champion, now)
                return _concat(first, self._process(messages[mid:], champion, now))
            log.exception("processing a message failed: dead-lettered")
            return _failed(
                messages[0], f"processing_failed:{type(exc).__name__}", self.instance, now
            )

    def record_lag(
        self, partitions: dict[int, int], highwater: Callable[[int], int | None]
    ) -> None:
        """``partitions``: partition -> last offset processed; ``highwater``: partition -> the
        fetch high-watermark (the next offset to be written), or None when unknown."""
        for partition, offset in partitions.items():
            hw = highwater(partition)
            if hw is not None and hw >= 0:
                self.metrics.lag.labels(str(partition)).set(max(hw - offset - 1, 0))

    def partials(self, outcome: BatchOutcome, model_version: str) -> list[bytes]:
        """The batch's drift columns as ``drift.partials`` messages of at most
        ``PARTIAL_EVENTS`` events each, tagged with the model version that scored them and an
        id (worker, partition and position range)."""
        events, rejects = outcome.drift.get("events", {}), outcome.drift.get("rejects", {})
        n_events, n_rejects = len(events.get("seq", [])), len(rejects.get("seq", []))
        out = []
        for start in range(0, max(n_events, n_rejects), PARTIAL_EVENTS):
            part_events = {c: v[start : start + PARTIAL_EVENTS] for c, v in events.items()}
            part_rejects = {c: v[start : start + PARTIAL_EVENTS] for c, v in rejects.items()}
            positions: dict[int, list[int]] = {}
            for p, pos in zip(
                part_events.get("partition", []) + part_rejects.get("partition", []),
                part_events.get("position", []) + part_rejects.get("position", []),
                strict=True,
            ):
                positions.setdefault(p, []).append(pos)
            ranges = ",".join(f"{p}:{min(v)}-{max(v)}" for p, v in sorted(positions.items()))
            message = {
                "id": f"{self.instance}/{ranges}",
                "worker": self.instance,
                "model_version": str(model_version),
                "events": part_events,
                "rejects": part_rejects,
            }
            out.append(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY))
        return out


def _concat(a: BatchOutcome, b: BatchOutcome) -> BatchOutcome:
    drift: dict[str, Any] = {}
    for part in ("events", "rejects"):
        x, y = a.drift.get(part, {}), b.drift.get(part, {})
        drift[part] = {c: list(x.get(c, [])) + list(y.get(c, [])) for c in {*x, *y}}
    return BatchOutcome(
        scored=a.scored + b.scored,
        dlq=a.dlq + b.dlq,
        per_message=a.per_message + b.per_message,
        dlq_reasons=a.dlq_reasons + b.dlq_reasons,
        produced_at=np.concatenate([a.produced_at, b.produced_at]),
        drift=drift,
    )


def _failed(message: InMessage, reason: str, worker_id: str, now: float) -> BatchOutcome:
    out = BatchOutcome()
    out.dlq.append((cut_key(message.key), dead_letter(Reject(reason), message, worker_id, now)))
    out.dlq_reasons[reason_code(reason)] += 1
    out.per_message.append((0, 1))
    return out
