"""The jobs of one work as ``(key, payload)`` pairs, computed chunk by chunk as asked for.

A large work is stored in chunks while its first jobs already run (see
:data:`tasklift.engine.storing.STORE_CHUNK`); computing every job's canonical JSON, key and
payload before storing the first one would delay a million-job work's first result by seconds.
Keys are kept (they name the results); payloads are made for the asked range only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from tasklift.keys import occurrence_key

__all__ = ["EAGER_UP_TO", "JobList", "LazyCalls"]

EAGER_UP_TO = 20_000
"""Works up to this many jobs are computed at once (every error raises at the call)."""

Call = tuple[list[Any], dict[str, Any]]
T = TypeVar("T")


class _OnDemand(Sequence[T]):
    """A sequence whose items are made when asked for: one at a position (:meth:`_item`), or
    a slice at once (:meth:`_slice`)."""

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._slice(index)
        return self._item(range(len(self))[index])

    def _item(self, position: int) -> T:
        """The item at ``position`` (0 <= position < len)."""
        raise NotImplementedError

    def _slice(self, index: slice) -> list[T]:
        """The items of ``index``."""
        raise NotImplementedError

    def _contiguous(self, index: slice) -> tuple[int, int]:
        """``(start, stop)`` of a slice without a step."""
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError(f"{type(self).__name__} slices must be contiguous")
        return start, stop


@dataclass(eq=False, repr=False)
class JobList(_OnDemand[tuple[str, bytes]]):
    """``(key, payload)`` of every job of a work, in order; thread-safe.

    Args:
        name: the work's name (for messages).
        calls: ``(args, kwargs)`` per job as the function gets them (the payloads).
        key_calls: ``(args, kwargs)`` per job as they define its key.
        texts: canonical text of each of a batch of ``key_calls`` (hashed into the key).
        payloads: serialized payload of each of a batch of ``calls``.
    """

    name: str
    calls: Sequence[Call]
    key_calls: Sequence[Call]
    texts: Callable[[Sequence[Call]], list[str]]
    payloads: Callable[[Sequence[Call]], list[bytes]]
    hash_text: Callable[[str], str]
    _keys: list[str] = field(default_factory=list, init=False)
    _seen: dict[str, int] = field(default_factory=dict, init=False)
    """Key -> how often it repeated so far."""
    _last: tuple[int, int, Sequence[Call]] | None = field(default=None, init=False)
    """Calls made for keys."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    keys: Sequence[str] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = _Keys(self)
        if len(self.calls) <= EAGER_UP_TO:
            self._ensure(len(self.calls))

    def __len__(self) -> int:
        return len(self.calls)

    def _slice(self, index: slice) -> list[tuple[str, bytes]]:
        start, stop = self._contiguous(index)
        self._ensure(stop)
        last = self._last
        if last is not None and last[:2] == (start, stop):
            calls = last[2]  # the same calls made the keys just now (a lazy group)
        else:
            calls = self.calls[start:stop]
        self._last = None
        return list(zip(self._keys[start:stop], self.payloads(calls), strict=True))

    def _item(self, position: int) -> tuple[str, bytes]:
        self._ensure(position + 1)
        return self._keys[position], self.payloads([self.calls[position]])[0]

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for start in range(0, len(self), 10_000):
            yield from self[start : start + 10_000]

    def key(self, index: int) -> str:
        """The key of job ``index``."""
        position = range(len(self))[index]
        self._ensure(position + 1)
        return self._keys[position]

    def all_keys(self) -> list[str]:
        """Every key (computing the rest)."""
        self._ensure(len(self))
        return self._keys

    def _ensure(self, upto: int) -> None:
        """Compute keys up to ``upto`` (exclusive); a repeat of earlier arguments gets an
        occurrence key (:func:`tasklift.keys.occurrence_key`)."""
        if len(self._keys) >= upto:
            return
        with self._lock:
            start = len(self._keys)
            if start >= upto:
                return
            batch = self.key_calls[start:upto]
            if self.key_calls is self.calls:
                self._last = (start, upto, batch)
            texts = self.texts(batch)
            for text in texts:
                key = self.hash_text(text)
                if key in self._seen:
                    # the same arguments again: its own job, under a key of its own (the first
                    # occurrence keeps the plain key, so reuse of earlier runs is unchanged)
                    self._seen[key] += 1
                    key = occurrence_key(key, self._seen[key])
                else:
                    self._seen[key] = 0
                self._keys.append(key)
            if len(self._keys) == len(self.calls):
                self._seen = {}  # every key is known: the repeat counts are not needed


class _Keys(_OnDemand[str]):
    """A work's job keys by index (computed on first use)."""

    def __init__(self, jobs: JobList) -> None:
        self._jobs = jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def _slice(self, index: slice) -> list[str]:
        return self._jobs.all_keys()[index]

    def _item(self, position: int) -> str:
        return self._jobs.key(position)

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs.all_keys())


class LazyCalls(_OnDemand[Call]):
    """The ``(args, kwargs)`` of each job of a large group, made per slice when asked for
    (by ``make``, e.g. ``WorkFunction.calls`` over that slice of the group)."""

    def __init__(self, make: Callable[[Sequence[Any]], list[Call]], group: Sequence[Any]) -> None:
        self._make = make
        self._group = group

    def __len__(self) -> int:
        return len(self._group)

    def _slice(self, index: slice) -> list[Call]:
        start, stop = self._contiguous(index)
        return self._make(self._group[start:stop])

    def _item(self, position: int) -> Call:
        return self._make([self._group[position]])[0]
