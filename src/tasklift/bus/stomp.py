"""The ``stomp`` bus: result batches through a STOMP broker (RabbitMQ, ActiveMQ, Artemis).

URL format: ``stomp://user:pass@host:61613/prefix`` (TLS: ``stomp+ssl://``, default port 61614);
query options ``heartbeat`` (seconds, default 10), ``vhost`` (default ``/``), and for TLS ``ca``,
``cert``, ``key`` (file paths) and ``verify`` (``0`` to skip certificate checks).

Supports: one frame per batch (orjson; split only above ``max_frame_bytes``), per-destination
topics ``/topic/<prefix>.<destination>``, subscriptions confirmed by a RECEIPT before
``subscribe`` returns, heartbeats, reconnect with backoff that re-subscribes and then tells
subscribers to re-read (a :class:`~tasklift.bus.base.MissedMessages` event, ``on_reconnect``
hooks), large results by reference. No persistence (topics drop what nobody listens to; the DB
is the source of truth); duplicates possible (receivers drop by job id). Credentials never reach
a log, an error or a ``repr``.

This module owns the bus: subscriptions (one broker binding per topic), the buffer of frames
kept while the broker is away, and the reconnect supervisor. The frame format, the URL and the
passcode filter are in :mod:`tasklift.bus.stomp_codec`; opening and closing one connection is in
:mod:`tasklift.bus.stomp_connection`.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tasklift.bus.base import Bus, Callback, MissedMessages, Subscription, deliver
from tasklift.bus.registry import mask_bus_url
from tasklift.bus.stomp_codec import (
    INLINE_LIMIT,
    decode_batch,
    encode_batch,
    hide_secret,
    is_name,
    parse_stomp_url,
)
from tasklift.bus.stomp_connection import SEND_ERRORS, Listener, open_connection, shutdown
from tasklift.errors import BusError

__all__ = ["StompBus"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- bus
class _StompSubscription(Subscription):
    def __init__(self, bus: StompBus, binding: _Binding, callback: Callback) -> None:
        self._bus = bus
        self.binding = binding
        self.callback = callback
        self.closed = False

    @property
    def confirmed(self) -> bool:
        """True once the broker confirmed the binding (a RECEIPT) on the current connection."""
        return self.binding.confirmed.is_set()

    def close(self) -> None:
        self._bus._unsubscribe(self)


@dataclass(eq=False)
class _Binding:
    """One broker subscription per topic, fanned out to the local subscriptions."""

    topic: str
    sub_id: str
    subs: list[_StompSubscription] = field(default_factory=list)
    confirmed: threading.Event = field(default_factory=threading.Event)


class StompBus(Bus):
    """Publishes and subscribes to result batches on a STOMP broker; survives broker restarts.

    Subscription callbacks run on stomp.py's receiver thread: keep them short (take a lock,
    append, notify). After a reconnect every subscription is bound again, buffered frames are
    sent, each subscription receives ``[MissedMessages(...)]`` (unless
    ``missed_on_reconnect=False``), then the ``on_reconnect`` hooks run on the bus's reconnect
    thread (re-read the DB there).

    Attributes:
        url: the URL with its password masked (safe to log).
        on_reconnect: callables run after each successful reconnect.
        stats: counters ``frames_sent``, ``frames_buffered``, ``frames_dropped``, ``reconnects``.
    """

    def __init__(
        self,
        *,
        url: str,
        inline_limit: int = INLINE_LIMIT,
        max_frame_bytes: int = 512 * 1024,
        connect_timeout: float = 10.0,
        receipt_timeout: float = 5.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        max_pending: int = 1000,
        missed_on_reconnect: bool = True,
    ) -> None:
        """Connect (fail fast) and start the reconnect thread.

        Args:
            url: ``stomp://user:pass@host:61613/prefix`` or ``stomp+ssl://...``.
            inline_limit: results over this many bytes go by reference.
            max_frame_bytes: a batch whose JSON exceeds this is split over several frames.
            connect_timeout: seconds to wait for the broker's CONNECTED frame.
            receipt_timeout: seconds ``subscribe`` waits for the broker's RECEIPT.
            reconnect_initial: first delay between reconnect attempts (doubles, with jitter).
            reconnect_max: longest delay between reconnect attempts.
            max_pending: frames kept while the broker is away (oldest dropped beyond).
            missed_on_reconnect: deliver a batch ``[MissedMessages(...)]`` to every
                subscription after a reconnect.

        Raises:
            ConfigError: a malformed URL.
            BusError: the broker cannot be reached or refused the login.
        """
        self._cfg = parse_stomp_url(url)
        self.url = mask_bus_url(url)
        hide_secret(self._cfg.password)
        self.inline_limit, self.max_frame_bytes = inline_limit, max_frame_bytes
        self.connect_timeout, self.receipt_timeout = connect_timeout, receipt_timeout
        self.reconnect_initial, self.reconnect_max = reconnect_initial, reconnect_max
        self.missed_on_reconnect = missed_on_reconnect
        self.on_reconnect: list[Callable[[], None]] = []
        self.stats = dict.fromkeys(
            ("frames_sent", "frames_buffered", "frames_dropped", "reconnects"), 0
        )
        self._lock = threading.RLock()
        self._bindings: dict[str, _Binding] = {}
        self._by_id: dict[str, _Binding] = {}
        self._receipts: dict[str, threading.Event] = {}
        self._pending: deque[tuple[str, bytes]] = deque()
        self._max_pending = max(max_pending, 1)
        self._ids = itertools.count(1)
        self._gens = itertools.count(1)
        self._gen = 0
        self._conn: Any = None
        self._listener: Listener | None = None
        self._closed = False
        self._lost = threading.Event()
        self._install(*self._connect())
        self._supervisor = threading.Thread(
            target=self._supervise, name="tasklift-stomp-reconnect", daemon=True
        )
        self._supervisor.start()

    @classmethod
    def from_url(cls, url: str) -> StompBus:
        """Build a bus from its URL (what the registry calls)."""
        return cls(url=url)

    def __repr__(self) -> str:
        return f"StompBus({self.url!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        """True while the bus holds a live broker connection."""
        with self._lock:
            return self._conn is not None and not self._lost.is_set() and self._conn.is_connected()

    def topic(self, destination: str) -> str:
        """The STOMP destination of a bus destination: ``/topic/<prefix>.<destination>``.

        Raises:
            BusError: ``destination`` is not words joined by dots.
        """
        if not is_name(destination):
            raise BusError(f"bad bus destination {destination!r}: use words joined by dots")
        return f"/topic/{self._cfg.prefix}.{destination}"

    # ------------------------------------------------------------------ publish
    def publish(self, destination: str, messages: Sequence[Any]) -> None:
        """Send a batch as one frame (split only above ``max_frame_bytes``).

        Never raises for a lost broker: frames wait in a bounded buffer and go out after the
        reconnect (the DB holds the results; subscribers re-read after reconnecting).

        Raises:
            BusError: a bad destination, or a message that is neither a ``ResultRecord`` nor
                JSON-native.
        """
        if not messages:
            return
        topic = self.topic(destination)
        try:
            bodies = encode_batch(
                messages, inline_limit=self.inline_limit, max_frame_bytes=self.max_frame_bytes
            )
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise BusError(f"cannot encode a message for {destination}: {exc}") from exc
        for body in bodies:
            self._send(topic, body)

    def _send(self, topic: str, body: bytes) -> None:
        with self._lock:
            if self._closed:
                logger.debug("bus closed; dropping a frame for %s", topic)
                return
            conn = self._conn
            if conn is None or self._pending or self._lost.is_set():
                self._buffer(topic, body)  # keeps order behind older buffered frames
                return
        if not self._send_now(conn, topic, body):
            with self._lock:
                self._buffer(topic, body)
            self._lost.set()

    def _send_now(self, conn: Any, topic: str, body: bytes) -> bool:
        """Send one frame on ``conn`` and count it; False if it failed (the caller keeps it)."""
        try:
            conn.send(topic, body, content_type="application/json")
        except SEND_ERRORS as exc:
            logger.warning("sending to %s failed (%s); kept until the reconnect", topic, exc)
            return False
        with self._lock:
            self.stats["frames_sent"] += 1
        return True

    def _buffer(self, topic: str, body: bytes) -> None:
        """Keep a frame for after the reconnect (call with the lock held)."""
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.stats["frames_dropped"] += 1
            if self.stats["frames_dropped"] == 1 or self.stats["frames_dropped"] % 1000 == 0:
                logger.warning(
                    "bus buffer full: %d frames dropped so far (subscribers re-read the DB)",
                    self.stats["frames_dropped"],
                )
        self._pending.append((topic, body))
        self.stats["frames_buffered"] += 1

    # ------------------------------------------------------------------ subscribe
    def subscribe(self, destination: str, callback: Callback) -> Subscription:
        """Subscribe, and wait for the broker's RECEIPT.

        Nothing published after this returns is lost (a topic drops what was sent before its
        binding existed). While the broker is away, the subscription is bound on reconnect;
        ``Subscription.confirmed`` says whether the binding is confirmed now.

        Raises:
            BusError: a bad destination, or the bus is closed.
        """
        topic = self.topic(destination)
        with self._lock:
            if self._closed:
                raise BusError("the bus is closed")
            binding = self._bindings.get(topic)
            new = binding is None
            if binding is None:
                binding = _Binding(topic, f"tl-{next(self._ids)}")
                self._bindings[topic] = self._by_id[binding.sub_id] = binding
            sub = _StompSubscription(self, binding, callback)
            binding.subs.append(sub)
            conn = None if self._lost.is_set() else self._conn
        if conn is None:
            return sub
        if new:
            self._bind(conn, binding)
        if threading.current_thread() is conn.transport.io_thread:
            return sub  # inside a callback: the RECEIPT cannot arrive while we wait
        if not binding.confirmed.wait(self.receipt_timeout):
            logger.warning("no RECEIPT for %s within %.1fs", topic, self.receipt_timeout)
        return sub

    def _bind(self, conn: Any, binding: _Binding) -> None:
        receipt = f"{binding.sub_id}-{self._gen}"
        binding.confirmed.clear()
        with self._lock:
            self._receipts[receipt] = binding.confirmed
        try:
            conn.subscribe(binding.topic, id=binding.sub_id, ack="auto", receipt=receipt)
        except SEND_ERRORS as exc:
            logger.warning("subscribe to %s failed (%s); bound after reconnect", binding.topic, exc)
            self._lost.set()

    def _unsubscribe(self, sub: _StompSubscription) -> None:
        with self._lock:
            if sub.closed:
                return
            sub.closed = True
            binding = sub.binding
            if sub in binding.subs:
                binding.subs.remove(sub)
            if binding.subs or self._bindings.get(binding.topic) is not binding:
                return
            del self._bindings[binding.topic], self._by_id[binding.sub_id]
            conn = None if self._lost.is_set() else self._conn
        if conn is not None:
            try:
                conn.unsubscribe(id=binding.sub_id)
            except SEND_ERRORS as exc:
                logger.debug("unsubscribe from %s failed: %s", binding.topic, exc)

    # ------------------------------------------------------------------ receiver thread
    def _on_receipt(self, receipt_id: str) -> None:
        with self._lock:
            event = self._receipts.pop(receipt_id, None)
        if event is not None:
            event.set()

    def _on_message(self, frame: Any) -> None:
        with self._lock:
            binding = self._by_id.get(frame.headers.get("subscription", ""))
            subs = list(binding.subs) if binding is not None else []
        if not subs:
            return
        try:
            messages = decode_batch(frame.body)
        except ValueError as exc:
            where = frame.headers.get("destination")
            logger.warning("dropping an undecodable frame on %s: %s", where, exc)
            return
        _deliver(subs, messages)

    def _on_disconnected(self, gen: int) -> None:
        with self._lock:
            if self._closed or gen != self._gen or self._conn is None:
                return  # our own close, or a connection already replaced
        logger.warning("lost the STOMP connection to %s; reconnecting", self.url)
        self._lost.set()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> tuple[Any, Listener, int]:
        """Open one connection (see :func:`open_connection`), tagged with a new generation."""
        gen = next(self._gens)
        listener = Listener(self._on_receipt, self._on_message, partial(self._on_disconnected, gen))
        return open_connection(self._cfg, self.url, listener, self.connect_timeout), listener, gen

    def _install(self, conn: Any, listener: Listener, gen: int) -> list[_Binding]:
        """Make ``conn`` current and return the bindings it still has to bind.

        Both happen under one lock, so a concurrent ``subscribe`` binds its own new destination
        and no SUBSCRIBE goes out twice (RabbitMQ closes a connection that repeats an id).
        """
        with self._lock:
            self._conn, self._listener, self._gen = conn, listener, gen
            bindings = list(self._bindings.values())
        logger.info("connected to STOMP broker %s", self.url)
        if not conn.is_connected():  # lost before it was installed: no event will say so
            self._lost.set()
        return bindings

    def _supervise(self) -> None:
        """The reconnect thread: waits for a lost connection, reconnects with backoff."""
        while True:
            self._lost.wait()
            with self._lock:
                if self._closed:
                    return
                old, old_listener = self._conn, self._listener
                self._conn = self._listener = None
                self._receipts.clear()
                for binding in self._bindings.values():
                    binding.confirmed.clear()
            if old is not None:
                shutdown(old, old_listener, graceful=False)
            delay = self.reconnect_initial
            while True:
                self._lost.clear()
                try:
                    conn, listener, gen = self._connect()
                except BusError as exc:
                    logger.info("%s; retrying in %.1fs", exc, delay)
                    self._lost.wait(delay * (1 + 0.2 * random.random()))  # close() sets it
                    with self._lock:
                        if self._closed:
                            return
                    delay = min(delay * 2, self.reconnect_max)
                    continue
                with self._lock:
                    closed = self._closed
                if closed:
                    shutdown(conn, listener, graceful=True)
                    return
                self._after_reconnect(conn, self._install(conn, listener, gen))
                break

    def _after_reconnect(self, conn: Any, bindings: list[_Binding]) -> None:
        """Bind every subscription again, flush buffered frames, then tell subscribers."""
        for binding in bindings:
            self._bind(conn, binding)
        for binding in bindings:
            if not binding.confirmed.wait(self.receipt_timeout):
                logger.warning("no RECEIPT for %s after reconnect", binding.topic)
        while not self._lost.is_set():
            with self._lock:
                if not self._pending:
                    break
                topic, body = self._pending.popleft()
            if not self._send_now(conn, topic, body):
                with self._lock:
                    self._pending.appendleft((topic, body))
                self._lost.set()
        with self._lock:
            self.stats["reconnects"] += 1
        logger.info("reconnected to %s; %d destinations bound again", self.url, len(bindings))
        if self.missed_on_reconnect:
            missed = [MissedMessages(f"reconnected to {self.url}")]
            for binding in bindings:
                _deliver(list(binding.subs), missed)
        for hook in list(self.on_reconnect):
            try:
                hook()
            except Exception:  # a broken hook must not stop the others or the bus
                logger.exception("on_reconnect hook %r raised", hook)

    def close(self) -> None:
        """Disconnect, end every subscription and the reconnect thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, listener = self._conn, self._listener
            self._conn = self._listener = None
            for binding in self._bindings.values():
                for sub in binding.subs:
                    sub.closed = True
            self._bindings.clear()
            self._by_id.clear()
            unsent = len(self._pending)
            self._pending.clear()
        self._lost.set()
        if unsent:
            logger.info("bus closed with %d unsent frames (the results are in the DB)", unsent)
        if conn is not None:
            shutdown(conn, listener, graceful=True)
        if self._supervisor is not threading.current_thread():
            self._supervisor.join(self.connect_timeout + 5.0)


def _deliver(subs: list[_StompSubscription], messages: list[Any]) -> None:
    """Deliver a batch to the subscriptions of one binding that are still open."""
    if subs:
        deliver((sub.callback for sub in subs if not sub.closed), messages, subs[0].binding.topic)
