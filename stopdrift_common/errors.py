"""One exception type for problems a user can fix; the CLI prints it as one line and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class ServerUnavailable(UserError):
    """A server the command needs (broker, MLflow, Prometheus) is not reachable."""


# Exit codes of a worker that stops on purpose, uncommitted (a supervisor restarts it).
EXIT_WRITE_FAILED = 3  # outputs could not be written: the broker stayed away, or a bug
EXIT_BROKER_LOST = 4  # the broker lost its log: the group's drift state on it is stale
