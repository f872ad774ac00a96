"""Create the project's topics explicitly (the embedded broker would auto-create unknown topics
with 4 partitions, whatever the user asked for)."""

from __future__ import annotations

import contextlib
import socket

from stopdrift_common.errors import ServerUnavailable
from stopdrift_common.settings import Settings


def broker_unavailable(settings: Settings) -> ServerUnavailable:
    return ServerUnavailable(
        f"no Kafka broker at {settings.bootstrap}: start the embedded one with "
        f"`stopdrift broker` (or `make demo`), or set KAFKA_BOOTSTRAP_SERVERS"
    )


def require_broker(settings: Settings, timeout: float = 2.0) -> None:
    """Fail fast when no bootstrap address accepts a TCP connection (kafka-python 3 would wait
    30 s and then raise KafkaTimeoutError; it has no NoBrokersAvailable any more)."""
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout).close()
            return
    raise broker_unavailable(settings)


def admin(settings: Settings):
    from kafka import errors
    from kafka.admin import KafkaAdminClient

    require_broker(settings)
    unreachable = tuple(
        e
        for e in (getattr(errors, "NoBrokersAvailable", None), errors.KafkaTimeoutError)
        if e is not None
    )
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            request_timeout_ms=10000,
            client_id="stopdrift-admin",
        )
    except unreachable:
        raise broker_unavailable(settings) from None


def ensure_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create missing topics; return the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(settings)
    try:
        existing = set(client.list_topics())
        partitions_of = {t: partitions or settings.partitions for t in settings.topics.all()}
        partitions_of[settings.partials_topic] = 1
        wanted = [t for t in partitions_of if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics([NewTopic(t, partitions_of[t], 1) for t in wanted])
        return wanted
    finally:
        client.close()


def discard_drift_state(settings: Settings) -> None:
    """Delete the worker group's drift state on the broker (its partials and the changelog of
    its open windows) and recreate the partials topic. After the broker lost its log, that
    state speaks of offsets and windows of a log that is gone (and the broker may have
    auto-created those topics, with the wrong partition count, from late writes)."""
    client = admin(settings)
    try:
        stale = {settings.partials_topic, settings.windows_changelog_topic}
        present = stale & set(client.list_topics())
        if present:
            client.delete_topics(sorted(present))
    finally:
        client.close()
    ensure_topics(settings)
