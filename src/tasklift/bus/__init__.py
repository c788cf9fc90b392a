"""Buses: how results travel back to waiting submitters (the DB stays the source of truth)."""

from tasklift.bus.base import Bus, MissedMessages, Subscription
from tasklift.bus.embedded import EmbeddedBus

__all__ = ["Bus", "EmbeddedBus", "MissedMessages", "Subscription"]
