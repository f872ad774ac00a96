"""What the worker does with one batch, between Kafka in and Kafka out.

``WorkerRuntime.handle`` decodes and scores the batch (``outcomes.process_batch``), feeds the
drift monitor once, hands every output to the given ``write`` coroutine (``app.py``: produce
batches, one delivery future per partition, gathered once), and only then updates the
metrics. The agent acks the batch after ``handle`` returns, so offsets are committed only for
batches whose outcomes are written.
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

import orjson

from stopdrift_common.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.model_watch import ModelWatch
from stream_app.outcomes import BatchOutcome, InMessage, process_batch

log = logging.getLogger("stopdrift.worker")

# write([(topic, key, value), ...]) returns once the broker has every message (raises if not)
Write = Callable[[list[tuple[str, bytes | None, bytes]]], Awaitable[None]]


def _monitor_class():
    """The drift monitor, when that part of the project is installed (it is optional here)."""
    try:
        from stream_app.monitor import DriftMonitor
    except ImportError:
        return None
    return DriftMonitor


TRIM_AFTER_BYTES = 1_000_000  # a batch this large leaves tens of MB of freed heap behind


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
        self.monitor: Any = None
        self.batches = 0
        self._started = False
        self._table_keys: set[int] = set()  # windows saved in the coordinator's table
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
                await self._use(await self.watch.load_initial())
                self._started = True

    async def poll_model(self) -> None:
        champion = await self.watch.poll()
        if champion is not None:
            await self._use(champion)

    async def _use(self, champion) -> None:
        monitor_class = _monitor_class()
        if monitor_class is not None:
            try:
                if self.monitor is None:
                    self.monitor = await asyncio.to_thread(
                        monitor_class,
                        champion.reference,
                        champion.reference_rows,
                        self.settings,
                        champion.version,
                        self.settings.runs_dir / "reports",
                    )
                else:
                    await asyncio.to_thread(
                        self.monitor.reset,
                        champion.reference,
                        champion.reference_rows,
                        champion.version,
                    )
                self.monitor.run_id = champion.run_id  # reports are logged to its run
            except Exception:  # drift monitoring must not stop scoring
                log.exception("drift monitor could not start; scoring continues without it")
                self.monitor = None
        self.metrics.set_model(champion.name, champion.version)
        _freeze_heap()

    # --- batches ------------------------------------------------------------------------------
    async def handle(self, messages: Sequence[InMessage], write: Write) -> BatchOutcome:
        champion = self.watch.current
        assert champion is not None, "handle() before start()"
        # In a thread: the model (LightGBM, numpy) runs without the GIL, so the event loop keeps
        # taking Faust's next messages meanwhile; batches still run one at a time.
        outcome, outputs, scoring_seconds = await asyncio.get_running_loop().run_in_executor(
            self._scorer, self._outputs, messages, champion, time.time()
        )
        await write(outputs)
        if sum(len(m.value or b"") for m in messages) > TRIM_AFTER_BYTES:
            _release_free_memory()

        written = time.time()
        m = self.metrics
        m.record_outcomes(outcome.n_scored, outcome.dlq_reasons)
        m.batch_size.observe(outcome.n_scored + outcome.n_dlq)
        m.scoring.observe(scoring_seconds)
        if outcome.n_scored:
            m.observe_latencies(written - outcome.produced_at)
        m.last_batch.set(written)
        self.batches += 1
        return outcome

    def _outputs(
        self, messages: Sequence[InMessage], champion: Any, now: float
    ) -> tuple[BatchOutcome, list[tuple[str, bytes | None, bytes]], float]:
        """Score the batch and build every output message (no I/O: runs in a thread)."""
        topics = self.settings.topics
        started = time.perf_counter()
        outcome = process_batch(
            messages,
            champion.model,
            champion.classes,
            champion.name,
            champion.version,
            self.instance,
            now,
        )
        scoring_seconds = time.perf_counter() - started
        outputs = [(topics.scored, k, v) for k, v in outcome.scored]
        outputs += [(topics.dlq, k, v) for k, v in outcome.dlq]
        partials = self._drift_partials(outcome, champion.classes)
        if partials is not None:
            outputs.append((self.settings.partials_topic, None, partials))
        return outcome, outputs, scoring_seconds

    def _drift_partials(self, outcome: BatchOutcome, classes: list[str]) -> bytes | None:
        """The batch's drift counts per window, for the coordinator (``merge_partials``)."""
        if self.monitor is None or not outcome.n_scored:
            return None
        try:
            features = outcome.features.assign(source=[e["source"] for e in outcome.events])
            message = self.monitor.partials_message(
                outcome.seqs, features, outcome.scores.proba, classes, outcome.labels
            )
            return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
        except Exception:  # a drift bug must not stop scoring: log it, keep going
            log.exception("drift monitor failed on a batch; scoring continues")
            return None

    def merge_partials(
        self, values: Sequence[bytes]
    ) -> tuple[list[bytes], dict[str, bytes | None]]:
        """Coordinator side: merge every worker's partials. Returns the drift alerts to send and
        the windows whose counts changed (key -> saved state, None once closed), for the
        coordinator's changelog-backed table."""
        if self.monitor is None:
            return [], {}
        alerts: list[bytes] = []
        touched: set[str] = set()
        for value in values:
            try:
                message = orjson.loads(value)
                touched.update(message.get("windows", {}))
                for alert in self.monitor.update_partials(message):
                    alert["worker_id"] = self.settings.worker_id  # the group that counted it
                    alerts.append(orjson.dumps(alert, default=str))
            except Exception:  # a bad partial must not stop the coordinator
                log.exception("could not merge a drift partial; skipped")
        # Save the windows these partials changed; delete those closed or evicted since.
        changed = {int(k) for k in touched}
        saved = self.monitor.open_windows(changed | self._table_keys)
        self._table_keys = {k for k, state in saved.items() if state is not None}
        return alerts, {
            str(k): None if state is None else orjson.dumps(state)
            for k, state in saved.items()
            if k in changed or state is None
        }

    def restore_windows(self, saved: dict[bytes | str, bytes]) -> None:
        """Coordinator start: reopen the windows the table rebuilt from its changelog."""
        if self.monitor is None or not saved:
            return
        states = {int(k): orjson.loads(v) for k, v in saved.items() if v}
        n = self.monitor.restore_windows(states)
        self._table_keys = set(states)
        log.warning("restored %d open drift windows from the changelog", n)

    def record_lag(
        self, partitions: dict[int, int], highwater: Callable[[int], int | None]
    ) -> None:
        """``partitions``: partition -> last offset processed; ``highwater``: partition -> the
        fetch high-watermark (the next offset to be written), or None when unknown."""
        for partition, offset in partitions.items():
            hw = highwater(partition)
            if hw is not None and hw >= 0:
                self.metrics.lag.labels(str(partition)).set(max(hw - offset - 1, 0))
