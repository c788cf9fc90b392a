"""The bus interface: publish batches of small messages to a destination, subscribe to one.

Call sequence::

    sub = bus.subscribe("work.42", callback)   # callback(list_of_messages), on a bus thread
    bus.publish("work.42", [msg, msg, ...])     # one batch, after the DB commit
    sub.close(); bus.close()

A missed message costs latency, never a result: subscribers re-read the DB.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Bus", "Callback", "Subscription", "work_destination"]

Callback = Callable[[Sequence[Any]], None]


class Subscription(ABC):
    """A live subscription; ``close()`` stops deliveries."""

    @abstractmethod
    def close(self) -> None:
        """Stop delivering messages to this subscription's callback."""


class Bus(ABC):
    """Carries result notifications from the engine to submitters."""

    @abstractmethod
    def publish(self, destination: str, messages: Sequence[Any]) -> None:
        """Send a batch of messages to ``destination``."""

    @abstractmethod
    def subscribe(self, destination: str, callback: Callback) -> Subscription:
        """Deliver every later batch sent to ``destination`` to ``callback``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def work_destination(work_id: int) -> str:
    """The destination of a work's result notifications."""
    return f"work.{work_id}"
