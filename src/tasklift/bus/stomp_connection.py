"""One STOMP connection of the ``stomp`` bus: open it (wait for CONNECTED), hear it, shut it.

Owns everything that talks to the stomp.py library's connection objects; the bus
(:mod:`tasklift.bus.stomp`) decides when to open and close them and what to do with the frames.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import stomp
from stomp.exception import StompException

from tasklift.bus.stomp_codec import StompUrl
from tasklift.errors import BusError

__all__ = ["SEND_ERRORS", "Listener", "open_connection", "shutdown"]

logger = logging.getLogger(__name__)

SEND_ERRORS = (StompException, OSError)
"""What a frame sent on a connection that just broke raises."""


class Listener(stomp.ConnectionListener):  # type: ignore[misc]
    """Hears one connection: says when it is connected or ended, forwards frames to callbacks."""

    def __init__(
        self,
        on_receipt: Callable[[str], None],
        on_message: Callable[[Any], None],
        on_disconnected: Callable[[], None],
    ) -> None:
        self._on_receipt, self._on_message = on_receipt, on_message
        self._on_disconnected = on_disconnected
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.error: str | None = None

    def on_connected(self, frame: Any) -> None:
        """The broker accepted the login."""
        self.connected.set()

    def on_error(self, frame: Any) -> None:
        """An ERROR frame: kept in ``error``; the broker closes the connection next."""
        self.error = str(frame.headers.get("message", "broker error"))
        logger.warning("STOMP broker error: %s", self.error)
        self.connected.set()  # wakes a waiting connect; the broker closes the connection

    def on_receipt(self, frame: Any) -> None:
        """A RECEIPT (a SUBSCRIBE was bound)."""
        self._on_receipt(frame.headers.get("receipt-id", ""))

    def on_message(self, frame: Any) -> None:
        """A MESSAGE frame: a batch for one of the bindings."""
        self._on_message(frame)

    def on_disconnected(self) -> None:
        """The connection ended (any cause)."""
        self.ended.set()
        self._on_disconnected()


def open_connection(cfg: StompUrl, shown_url: str, listener: Listener, timeout: float) -> Any:
    """Open one connection and wait for CONNECTED.

    Raises:
        BusError: refused, closed, or no CONNECTED within ``timeout`` (``shown_url`` in the
            message, never the password).
    """
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
    conn.set_listener("tasklift", listener)
    try:
        conn.connect(username=cfg.user, passcode=cfg.password, wait=False)
        conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (StompException, OSError, AttributeError) as exc:
        shutdown(conn, listener, graceful=False)
        detail = str(exc) or "refused or closed by the broker"
        raise BusError(f"cannot connect to {shown_url}: {detail}") from None
    if not listener.connected.wait(timeout) or listener.error:
        shutdown(conn, listener, graceful=False)
        why = listener.error or f"no CONNECTED frame within {timeout:g}s"
        raise BusError(f"cannot connect to {shown_url}: {why}")
    return conn


def shutdown(conn: Any, listener: Listener | None, *, graceful: bool) -> None:
    """Close one connection and wait (bounded) for its receiver thread to end."""
    if graceful and conn.is_connected():
        try:
            conn.disconnect()  # with a receipt: the broker's RECEIPT closes the socket
        except SEND_ERRORS as exc:
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
