"""Loopback ports: is one taken, and a free one."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts connections on ``host:port`` (0.0.0.0: on loopback)."""
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((LOOPBACK if host == "0.0.0.0" else host, port)) == 0


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
