"""The ``stomp`` bus: result batches through a STOMP broker (RabbitMQ, ActiveMQ, Artemis).

URL format: ``stomp://user:pass@host:61613/prefix`` (TLS: ``stomp+ssl://``, default port 61614);
query options ``heartbeat`` (seconds, default 10), ``vhost`` (default ``/``), and for TLS ``ca``,
``cert``, ``key`` (file paths) and ``verify`` (``0`` to skip certificate checks).

Supports: one frame per batch (orjson; split only above ``max_frame_bytes``), per-destination
topics ``/topic/<prefix>.<destination>``, subscriptions confirmed by a RECEIPT before
``subscribe`` returns, heartbeats, reconnect with backoff that re-subscribes and then tells
subscribers to re-read (``STALE`` marker, ``on_reconnect`` hooks), large results by reference.
No persistence (topics drop what nobody listens to; the DB is the source of truth); duplicates
possible (receivers drop by job id). Credentials never reach a log, an error or a ``repr``.
"""

from __future__ import annotations

import base64
import itertools
import logging
import random
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import stomp
from stomp.exception import StompException

from tasklift.bus.base import Bus, Callback, Subscription
from tasklift.bus.registry import mask_bus_url
from tasklift.errors import BusError, ConfigError
from tasklift.records import ResultRecord

__all__ = [
    "INLINE_LIMIT",
    "REFERENCE_IDX",
    "STALE",
    "StompBus",
    "StompUrl",
    "decode_batch",
    "encode_batch",
    "is_reference",
    "parse_stomp_url",
]

logger = logging.getLogger(__name__)

INLINE_LIMIT = 16 * 1024
"""Results larger than this many bytes travel by reference (the receiver re-reads the DB)."""

REFERENCE_IDX = -1
"""``idx`` of a decoded record that says "re-read the DB" (``AsyncResult._add``: idx < 0)."""

STALE = ResultRecord(job_id=0, idx=REFERENCE_IDX, state="stale", result=None)
"""Delivered to every subscription after a reconnect: messages may have been missed."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_FIELDS = ("job_id", "idx", "state", "error_type", "error_message", "traceback", "attempts")


class _RedactPasscodes(logging.Filter):
    """Hides STOMP passcodes in stomp.py's own DEBUG lines (its redaction misses ``passcode:x``)."""

    _pattern = re.compile(r"(passcode:).*?(?=\\n|\n|'|\"|$)")

    def __init__(self) -> None:
        super().__init__("stomp.py")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "passcode" in text or any(secret in text for secret in self.secrets):
            text = self._pattern.sub(r"\1********", text)
            for secret in self.secrets:
                text = text.replace(secret, "********")
            record.msg, record.args = text, None
        return True


_REDACTOR = _RedactPasscodes()
logging.getLogger("stomp.py").addFilter(_REDACTOR)


def is_reference(record: Any) -> bool:
    """True for a record that carries no usable result: re-read the DB (references, ``STALE``)."""
    return isinstance(record, ResultRecord) and record.idx < 0


# ---------------------------------------------------------------------------------- URL
@dataclass(frozen=True)
class StompUrl:
    """A parsed ``stomp://`` / ``stomp+ssl://`` URL."""

    host: str
    port: int
    prefix: str = "tasklift"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    vhost: str = "/"
    heartbeat: float = 10.0
    ca_certs: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def parse_stomp_url(url: str) -> StompUrl:
    """Parse a STOMP bus URL (see the module docstring for the format).

    Raises:
        ConfigError: wrong scheme, bad port, or a prefix that is not dot-separated words.
    """
    masked = mask_bus_url(url)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("stomp", "stomp+ssl"):
        raise ConfigError(f"not a STOMP bus URL: {masked} (use stomp:// or stomp+ssl://)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad port in bus URL {masked}") from None
    prefix = unquote(parts.path.strip("/")) or "tasklift"
    if not _NAME.match(prefix):
        raise ConfigError(
            f"bad destination prefix {prefix!r} in {masked}: use letters, digits, '_', '-' "
            "and dots (e.g. stomp://host:61613/tasklift.prod)"
        )
    query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        heartbeat = float(query.get("heartbeat", 10.0))
    except ValueError:
        raise ConfigError(f"heartbeat must be a number of seconds in {masked}") from None
    return StompUrl(
        host=parts.hostname or "127.0.0.1",
        port=port or (61614 if scheme == "stomp+ssl" else 61613),
        prefix=prefix,
        user=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ssl=scheme == "stomp+ssl",
        vhost=query.get("vhost", "/"),
        heartbeat=max(heartbeat, 0.0),
        ca_certs=query.get("ca"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        verify=query.get("verify", "1").lower() not in ("0", "false", "no"),
    )


# ---------------------------------------------------------------------------------- codec
def _encode_item(message: Any, inline_limit: int) -> bytes:
    if not isinstance(message, ResultRecord):
        return orjson.dumps({"value": message})
    item: dict[str, Any] = {name: getattr(message, name) for name in _FIELDS}
    item["done_seq"] = message.done_seq
    result = message.result
    big_error = len(message.traceback or "") + len(message.error_message or "") > inline_limit
    if (result is not None and len(result) > inline_limit) or big_error:
        item.update(result=None, result_ref=True, traceback=None, error_message=None)
    else:
        item["result"] = None if result is None else base64.b64encode(result).decode("ascii")
    return orjson.dumps(item)


def encode_batch(
    messages: Iterable[Any], *, inline_limit: int = INLINE_LIMIT, max_frame_bytes: int = 512 * 1024
) -> list[bytes]:
    """Encode a batch as JSON frame bodies: one body unless it exceeds ``max_frame_bytes``.

    A :class:`ResultRecord` whose result is over ``inline_limit`` bytes (or whose error text is)
    goes by reference: ``result`` null and ``"result_ref": true``. Other messages must be
    JSON-native (orjson) and are wrapped as ``{"value": ...}``.
    """
    bodies: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for message in messages:
        item = _encode_item(message, inline_limit)
        if chunk and size + len(item) > max_frame_bytes:
            bodies.append(b'{"v":1,"m":[' + b",".join(chunk) + b"]}")
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        bodies.append(b'{"v":1,"m":[' + b",".join(chunk) + b"]}")
    return bodies


def _decode_item(item: dict[str, Any]) -> Any:
    if "value" in item:
        return item["value"]
    if item.get("result_ref"):
        # idx < 0: AsyncResult re-reads; done_seq 0 keeps its gap-free cursor below this record
        return ResultRecord(
            job_id=int(item["job_id"]),
            idx=REFERENCE_IDX,
            state=str(item["state"]),
            result=None,
            error_type=item.get("error_type"),
            attempts=int(item.get("attempts") or 0),
        )
    result = item.get("result")
    return ResultRecord(
        job_id=int(item["job_id"]),
        idx=int(item["idx"]),
        state=str(item["state"]),
        result=None if result is None else base64.b64decode(result, validate=True),
        error_type=item.get("error_type"),
        error_message=item.get("error_message"),
        traceback=item.get("traceback"),
        attempts=int(item.get("attempts") or 0),
        done_seq=int(item.get("done_seq") or 0),
    )


def decode_batch(body: bytes | str) -> list[Any]:
    """Decode a frame body made by :func:`encode_batch` (references: see :data:`REFERENCE_IDX`).

    Raises:
        ValueError: the body is not a tasklift batch (``orjson.JSONDecodeError`` is one).
    """
    data = orjson.loads(body)
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("m"), list):
        raise ValueError("not a tasklift v1 batch")
    try:
        return [_decode_item(item) for item in data["m"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed batch item: {exc!r}") from exc


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


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Forwards one connection's events to the bus, tagged with the connection's generation."""

    def __init__(self, bus: StompBus, gen: int) -> None:
        self.bus, self.gen = bus, gen
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.error: str | None = None

    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        self.error = str(frame.headers.get("message", "broker error"))
        logger.warning("STOMP broker error: %s", self.error)
        self.connected.set()  # wakes a waiting connect; the broker closes the connection

    def on_receipt(self, frame: Any) -> None:
        self.bus._on_receipt(frame.headers.get("receipt-id", ""))

    def on_message(self, frame: Any) -> None:
        self.bus._on_message(frame)

    def on_disconnected(self) -> None:
        self.ended.set()
        self.bus._on_disconnected(self.gen)


class StompBus(Bus):
    """Publishes and subscribes to result batches on a STOMP broker; survives broker restarts.

    Subscription callbacks run on stomp.py's receiver thread: keep them short (take a lock,
    append, notify). After a reconnect every subscription is bound again, buffered frames are
    sent, each subscription receives ``[STALE]`` (unless ``stale_on_reconnect=False``), then the
    ``on_reconnect`` hooks run on the bus's reconnect thread (re-read the DB there).

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
        stale_on_reconnect: bool = True,
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
            stale_on_reconnect: deliver ``[STALE]`` to every subscription after a reconnect.

        Raises:
            ConfigError: a malformed URL.
            BusError: the broker cannot be reached or refused the login.
        """
        self._cfg = parse_stomp_url(url)
        self.url = mask_bus_url(url)
        if self._cfg.password and len(self._cfg.password) >= 3:
            _REDACTOR.secrets.add(self._cfg.password)
        self.inline_limit, self.max_frame_bytes = inline_limit, max_frame_bytes
        self.connect_timeout, self.receipt_timeout = connect_timeout, receipt_timeout
        self.reconnect_initial, self.reconnect_max = reconnect_initial, reconnect_max
        self.stale_on_reconnect = stale_on_reconnect
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
        self._listener: _Listener | None = None
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
        if not _NAME.match(destination):
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
        try:
            conn.send(topic, body, content_type="application/json")
        except (StompException, OSError) as exc:
            logger.warning("publish to %s failed (%s); buffered until reconnect", topic, exc)
            with self._lock:
                self._buffer(topic, body)
            self._lost.set()
            return
        with self._lock:
            self.stats["frames_sent"] += 1

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
        except (StompException, OSError) as exc:
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
            except (StompException, OSError) as exc:
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
    def _connect(self) -> tuple[Any, _Listener, int]:
        """Open one connection and wait for CONNECTED; BusError (credentials masked) if not."""
        cfg, gen = self._cfg, next(self._gens)
        hb = int(cfg.heartbeat * 1000)
        conn = stomp.Connection12(
            [(cfg.host, cfg.port)],
            heartbeats=(hb, hb),
            reconnect_attempts_max=1,
            reconnect_sleep_initial=0.0,
            vhost=cfg.vhost,
            auto_decode=False,
            heart_beat_receive_scale=2.0,
        )
        if cfg.ssl:
            conn.set_ssl(
                for_hosts=[(cfg.host, cfg.port)],
                ca_certs=cfg.ca_certs,
                cert_file=cfg.cert_file,
                key_file=cfg.key_file,
                verify=cfg.verify,
            )
        listener = _Listener(self, gen)
        conn.set_listener("tasklift", listener)
        try:
            conn.connect(username=cfg.user, passcode=cfg.password, wait=False)
            conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (StompException, OSError, AttributeError) as exc:
            _shutdown(conn, listener, graceful=False)
            detail = str(exc) or "refused or closed by the broker"
            raise BusError(f"cannot connect to {self.url}: {detail}") from None
        if not listener.connected.wait(self.connect_timeout) or listener.error:
            _shutdown(conn, listener, graceful=False)
            why = listener.error or f"no CONNECTED frame within {self.connect_timeout:g}s"
            raise BusError(f"cannot connect to {self.url}: {why}")
        return conn, listener, gen

    def _install(self, conn: Any, listener: _Listener, gen: int) -> list[_Binding]:
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
                _shutdown(old, old_listener, graceful=False)
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
                    _shutdown(conn, listener, graceful=True)
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
            try:
                conn.send(topic, body, content_type="application/json")
            except (StompException, OSError):
                with self._lock:
                    self._pending.appendleft((topic, body))
                self._lost.set()
            else:
                with self._lock:
                    self.stats["frames_sent"] += 1
        with self._lock:
            self.stats["reconnects"] += 1
        logger.info("reconnected to %s; %d destinations bound again", self.url, len(bindings))
        if self.stale_on_reconnect:
            for binding in bindings:
                _deliver(list(binding.subs), [STALE])
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
            _shutdown(conn, listener, graceful=True)
        if self._supervisor is not threading.current_thread():
            self._supervisor.join(self.connect_timeout + 5.0)


def _deliver(subs: list[_StompSubscription], messages: list[Any]) -> None:
    for sub in subs:
        if sub.closed:
            continue
        try:
            sub.callback(messages)
        except Exception:  # one broken subscriber must not stop the others
            logger.exception(
                "subscriber of %s raised; it keeps its subscription", sub.binding.topic
            )


def _shutdown(conn: Any, listener: _Listener | None, *, graceful: bool) -> None:
    """Close one connection and wait (bounded) for its receiver thread to end."""
    if graceful and conn.is_connected():
        try:
            conn.disconnect()  # with a receipt: the broker's RECEIPT closes the socket
        except (StompException, OSError) as exc:
            logger.debug("DISCONNECT failed: %s", exc)
        if listener is not None:
            listener.ended.wait(2.0)
    transport = conn.transport
    if transport.socket is not None:
        transport.disconnect_socket()
    transport.running = False
    for thread in (transport.io_thread, getattr(conn, "heartbeat_thread", None)):
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
