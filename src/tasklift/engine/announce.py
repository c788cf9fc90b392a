"""Telling waiting submitters about ended jobs, after the database committed them: in-process
listeners first (the service's waiting requests, an embedded client), then the bus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tasklift.bus.base import Bus, work_destination
from tasklift.bus.embedded import EmbeddedBus
from tasklift.records import ResultRecord

__all__ = ["Announcer"]


class Announcer:
    """Publishes result records on the local bus and the configured bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.local_bus: Bus = bus if isinstance(bus, EmbeddedBus) else EmbeddedBus()
        """In-process listeners get every batch published on ``bus`` here too, at once and
        without a broker round trip."""

    def announce(self, destination: str, messages: Sequence[Any]) -> None:
        """Publish ``messages`` (call after the DB commit)."""
        if self.local_bus is not self.bus:
            self.local_bus.publish(destination, messages)
        self.bus.publish(destination, messages)

    def work_ended_jobs(self, work_id: int, records: Sequence[ResultRecord]) -> None:
        """Publish ended jobs of one work."""
        self.announce(work_destination(work_id), records)

    def per_work(self, records: Iterable[tuple[int, ResultRecord]]) -> None:
        """Publish ``(work_id, record)`` pairs, one batch per work."""
        batches: dict[int, list[ResultRecord]] = {}
        for work_id, record in records:
            batches.setdefault(work_id, []).append(record)
        for work_id, batch in batches.items():
            self.work_ended_jobs(work_id, batch)
