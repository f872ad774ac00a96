"""Code that producers, the stream app and training all need: settings, the event schema,
the data tables, the reference statistics, the model registry contract and the local servers."""

from __future__ import annotations

__all__ = ["errors", "settings", "schema", "data", "reference", "registry", "services", "cli"]
