"""Create the project's topics explicitly (the embedded broker would auto-create unknown topics
with 4 partitions, whatever the user asked for)."""

from __future__ import annotations

import contextlib

from stopdrift_common.errors import ServerUnavailable
from stopdrift_common.settings import Settings


def admin(settings: Settings):
    from kafka.admin import KafkaAdminClient
    from kafka.errors import NoBrokersAvailable

    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            request_timeout_ms=10000,
            client_id="stopdrift-admin",
        )
    except NoBrokersAvailable:
        raise ServerUnavailable(
            f"no Kafka broker at {settings.bootstrap}: start the embedded one with "
            f"`stopdrift broker` (or `make demo`), or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None


def ensure_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create missing topics; return the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(settings)
    try:
        existing = set(client.list_topics())
        wanted = [t for t in settings.topics.all() if t not in existing]
        parts = partitions or settings.partitions
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics([NewTopic(t, parts, 1) for t in wanted])
        return wanted
    finally:
        client.close()
