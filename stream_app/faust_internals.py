"""Every use of Faust's and aiokafka's private parts, each with the reason it is needed.

The rest of ``stream_app`` uses their public APIs only. Patches are idempotent and apply to a
class, not an instance: Faust binds some methods once per partition when it builds its message
handlers, so an instance attribute set later would not be seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import faust

FETCH_MAX_WAIT_MS = 50


def hold_partitions(consumer, hold: set, assigned: Iterable) -> None:
    """Stop fetching the partitions in ``hold`` (watermark alignment, ``progress.py``) and
    fetch the other ``assigned`` ones again.

    ``Consumer.pause_partitions`` is no use for this: Faust drops, without yielding them, the
    records of a fetch already under way for a partition that stopped being active (they are
    neither delivered nor fetched again: measured, 190 events of a 300,000-event backlog never
    scored). Faust's own flow control avoids that by marking a partition whose stream buffer is
    full as *buffered*: not fetched, but what was fetched is still delivered. A held partition
    is marked the same way, and ``keep_held`` stops the flow control from fetching it again
    when its buffer drains."""
    keep_held()
    held: set = consumer.__dict__.setdefault("_stopdrift_held", set())
    active = consumer._get_active_partitions()
    for tp in assigned:
        if tp in hold:
            active.discard(tp)
            consumer._buffered_partitions.add(tp)
            held.add(tp)
        elif tp in held:
            held.discard(tp)
            consumer._buffered_partitions.discard(tp)
            if tp not in consumer._paused_partitions:
                active.add(tp)


def keep_held() -> None:
    """Faust's flow control fetches a buffered partition again once its stream buffer drains
    (``on_buffer_drop``): not one held by ``hold_partitions``."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer.on_buffer_drop, "stopdrift_keeps_held", False):
        return
    original = Consumer.on_buffer_drop

    def on_buffer_drop(self, tp) -> None:
        if tp in self.__dict__.get("_stopdrift_held", ()):
            return
        original(self, tp)

    on_buffer_drop.stopdrift_keeps_held = True
    Consumer.on_buffer_drop = on_buffer_drop


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
