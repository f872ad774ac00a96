"""The batch side of stopdrift: profile the OPP tables (``analyze``) and train, evaluate and
register the race-group classifier that the stream monitors (``train``)."""

from __future__ import annotations

__all__ = ["analyze", "features", "evaluation", "registration", "model_card", "train"]
