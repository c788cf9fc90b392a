"""The bus interface: publish batches of small messages to a destination, subscribe to one.

Call sequence::

    sub = bus.subscribe("work.42", callback)   # callback(list_of_messages), on a bus thread
    bus.publish("work.42", [msg, msg, ...])     # one batch, after the DB commit
    sub.close(); bus.close()

A missed message costs latency, never a result: subscribers re-read the DB. A bus that knows
it may have lost messages (the ``stomp`` bus after a reconnect) says so with a
:class:`MissedMessages` event in the batches it delivers.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Bus",
    "Callback",
    "MissedMessages",
    "Subscription",
    "deliver",
    "work_destination",
]

logger = logging.getLogger(__name__)

Callback = Callable[[Sequence[Any]], None]


@dataclass(frozen=True)
class MissedMessages:
    """A bus event, in a delivered batch: messages before it may have been lost; re-read the DB.

    Attributes:
        reason: why (for logs), e.g. ``"reconnected to stomp://..."``.
    """

    reason: str


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
        """Deliver every later batch sent to ``destination`` to ``callback``.

        A batch holds the published messages and, from a bus that can lose them, a
        :class:`MissedMessages` event where some may have been lost.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def deliver(callbacks: Iterable[Callback], messages: Sequence[Any], destination: str) -> None:
    """Call each callback with ``messages``; one that raises is logged and stays subscribed."""
    for callback in callbacks:
        try:
            callback(messages)
        except Exception:  # one broken subscriber must not stop the others
            logger.exception("subscriber of %s raised; it keeps its subscription", destination)


def work_destination(work_id: int) -> str:
    """The destination of a work's result notifications."""
    return f"work.{work_id}"
