"""``MapResult``: a work's results by job key (or by ``group_kwargs`` element), in
submission order, with the failures and skipped jobs beside them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tasklift.errors import JobFailure, SubmissionError, short_repr
from tasklift.keys import job_key

__all__ = ["MapResult"]


class MapResult(Mapping[str, Any]):
    """Read-only mapping job key -> result, in submission order (successful jobs only).

    Iterating gives the job keys (of the merged kwargs). Looking up also accepts a
    ``group_kwargs`` element itself (``res[p]``) or its own id (``res[get_unique_id_for_dict(p)]``,
    which differs from the job key when the call adds kwargs): both find that element's job.

    Attributes:
        failures: :class:`~tasklift.errors.JobFailure` of every job that did not succeed.
        skipped: :class:`~tasklift.errors.JobFailure` of every job skipped by ``when=``.
        metrics: counts and timings of the work.
    """

    def __init__(
        self,
        values: dict[str, Any],
        failures: list[JobFailure],
        metrics: dict[str, Any],
        base_args: Sequence[Any],
        base_kwargs: Mapping[str, Any],
        *,
        keys: Sequence[str] | None = None,
        elements: Sequence[Any] | None = None,
        skipped: Sequence[JobFailure] = (),
    ) -> None:
        self._values = values
        self.failures = failures
        self.skipped = list(skipped)
        self.metrics = metrics
        self._base_args = list(base_args)
        self._base_kwargs = dict(base_kwargs)
        self._failed = {f.key: f for f in failures}
        self._skipped = {f.key: f for f in self.skipped}
        self._keys = keys
        self._elements = elements
        self._by_element_id: dict[str, str] | None = None

    def __getitem__(self, key: str | Mapping[str, Any]) -> Any:
        if isinstance(key, str):
            if key in self._values:
                return self._values[key]
            full = self._element_ids().get(key)
            if full is None:
                raise KeyError(key)
            return self._values[full]
        if isinstance(key, Mapping):
            return self._values[self.key_of(key)]
        raise KeyError(key)

    def _element_ids(self) -> dict[str, str]:
        """``{id of a group_kwargs element: its job key}`` (made at the first miss)."""
        if self._by_element_id is None:
            ids: dict[str, str] = {}
            if self._keys is not None and self._elements is not None:
                for key, element in zip(self._keys, self._elements, strict=False):
                    try:
                        own = (
                            job_key([], element)
                            if isinstance(element, Mapping)
                            else job_key(list(element), {})
                        )
                    except (SubmissionError, TypeError):
                        continue
                    ids.setdefault(own, key)
            self._by_element_id = ids
        return self._by_element_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MapResult({len(self._values)} results, {len(self.failures)} failures)"

    def key_of(self, args: Mapping[str, Any] | Sequence[Any]) -> str:
        """The job key of a ``group_kwargs`` element (merged over the call's kwargs)."""
        if isinstance(args, Mapping):
            return job_key(self._base_args, {**self._base_kwargs, **args})
        return job_key(list(args), self._base_kwargs)

    def get_result(
        self,
        args: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        key: str | None = None,
    ) -> Any:
        """Return the result of the job for ``args`` (a ``group_kwargs`` element) or ``key``.

        Raises:
            KeyError: no such job, or the job failed (the message gives its error).
        """
        looked_for = ""
        if key is None:
            if args is None:
                raise TypeError("get_result needs args= or key=")
            key = self.key_of(args)
            merged: Any = (
                {**self._base_kwargs, **args}
                if isinstance(args, Mapping)
                else {"args": list(args), "kwargs": self._base_kwargs}
            )
            looked_for = f" (looked for {short_repr(merged)})"
        elif key not in self._values and key not in self._failed and key not in self._skipped:
            key = self._element_ids().get(key, key)  # the id of an element as given
        if key in self._values:
            return self._values[key]
        failure = self._failed.get(key)
        if failure is not None:
            raise KeyError(f"job {key[:12]}{looked_for} did not succeed: {failure}")
        skipped = self._skipped.get(key)
        if skipped is not None:
            raise KeyError(f"job {key[:12]}{looked_for} was skipped: {skipped.message}")
        raise KeyError(f"no job with key {key[:12]} in this work{looked_for}")
