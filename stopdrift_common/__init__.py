"""The contracts every layer shares: settings, the event schema, the data tables, the model
registry (model + reference through MLflow), the topics and the user-facing errors."""

from __future__ import annotations

__all__ = ["errors", "settings", "schema", "data", "registry", "topics"]
