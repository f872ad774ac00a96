"""Create the project's topics explicitly (the embedded broker would auto-create unknown topics
with 4 partitions, whatever the user asked for)."""

from __future__ import annotations

import contextlib
import re
import socket

from stopdrift_common.errors import ServerUnavailable
from stopdrift_common.settings import WINDOWS_TABLE, Settings


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


def cluster_id(settings: Settings) -> str:
    """The broker cluster's id. The embedded broker gets a new one at every start (its topics
    are in memory: each start is a new cluster); Apache Kafka keeps its own."""
    client = admin(settings)
    try:
        return str(client.describe_cluster()["cluster_id"])
    finally:
        client.close()


def windows_table(cluster: str) -> str:
    """The name of the coordinator's open-windows table on cluster ``cluster``: a broker that
    restarted empty gets a fresh changelog, never the name of one it deleted or lost (the
    embedded broker reports a stale end offset for a recreated topic, and Faust's recovery
    would wait forever for records that are not there).

    >>> windows_table("stopdrift-1a2b3c4d")
    'drift-windows-stopdrift-1a2b3c4d'
    """
    return f"{WINDOWS_TABLE}-{re.sub(r'[^A-Za-z0-9._-]', '_', cluster)}"


def discard_drift_state(settings: Settings) -> None:
    """Delete the worker group's drift partials on the broker and recreate the topic. After
    the broker lost its log, partials written late by a worker of the old log speak of events
    that are gone (and the broker auto-creates the topic from such writes, with 4
    partitions)."""
    client = admin(settings)
    try:
        if settings.partials_topic in set(client.list_topics()):
            client.delete_topics([settings.partials_topic])
    finally:
        client.close()
    ensure_topics(settings)
