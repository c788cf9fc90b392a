"""Turning one ``@work`` call inside a workflow into a stored work with all its jobs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasklift.api.functions import UNSET, defining_file
from tasklift.api.functions import WorkDefinition as WorkFunction
from tasklift.api.joblist import EAGER_UP_TO, JobList, LazyCalls
from tasklift.api.results import Work, WorkRef
from tasklift.errors import SerializationError, SubmissionError, short_repr
from tasklift.keys import canonical_json
from tasklift.records import WorkOptions
from tasklift.serializers import get_serializer
from tasklift.submission import WorkCode, build_submission

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasklift.api.workflow_run import WorkflowRun
    from tasklift.db.dataflow import Ref
    from tasklift.engine.engine import WorkRecord

__all__ = ["function_location", "submit_work"]

logger = logging.getLogger(__name__)

Call = tuple[list[Any], dict[str, Any]]
"""One job's call: positional and keyword arguments."""


def function_location(fn: WorkFunction, source_dir: Path | None) -> tuple[str, str | None]:
    """Return ``("module:qualname", script)`` telling a job runner how to import ``fn``.

    A function in ``__main__``, or in a file of the shipped tree whose module name does not
    match its path there, is imported by its path inside the archive (``script``).
    """
    return _location(fn.func, source_dir)


@functools.lru_cache(maxsize=1024)
def _location(func: Callable[..., Any], source_dir: Path | None) -> tuple[str, str | None]:
    """:func:`function_location`, found once per function and source directory (finding the
    defining file costs more than the rest of a one-job submission)."""
    qualname = func.__qualname__
    if "<locals>" in qualname:
        raise SubmissionError(
            f"@work function {qualname} is defined inside another function; define work "
            "functions at module level so job runners can import them"
        )
    module = func.__module__
    path = defining_file(func)
    if path is not None and source_dir is not None and path.is_relative_to(source_dir):
        relative = path.relative_to(source_dir)
        parts = list(relative.with_suffix("").parts)
        if parts and parts[-1] == "__init__":
            parts = parts[:-1]
        if module == "__main__" or ".".join(parts) != module:
            return f"{module}:{qualname}", relative.as_posix()
        return f"{module}:{qualname}", None
    if module == "__main__":
        raise SubmissionError(
            f"@work function {qualname} is defined in a script outside the shipped source "
            f"directory {source_dir}; set Workflow(source_dir=...) to a directory containing it"
        )
    return f"{module}:{qualname}", None


def _check_json(calls: Sequence[Call]) -> list[str]:
    texts = []
    for i, (args, kwargs) in enumerate(calls):
        try:
            texts.append(canonical_json({"args": args, "kwargs": kwargs} if args else kwargs))
        except (TypeError, ValueError):
            for name, value in [*((f"args[{j}]", v) for j, v in enumerate(args)), *kwargs.items()]:
                try:
                    canonical_json(value)
                except (TypeError, ValueError) as exc:
                    raise SubmissionError(
                        f"argument {name!r} of job #{i} ({type(value).__name__}) is not "
                        f"JSON-serializable: {exc}; pass plain values or use "
                        "@work(serializer='pickle')",
                        key=name,
                    ) from None
            raise
    return texts


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pickle_texts(calls: Sequence[Call]) -> list[str]:
    import pickle

    def default(obj: Any) -> Any:
        try:
            digest = hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest()
        except Exception as exc:
            raise SubmissionError(
                f"argument of type {type(obj).__name__} cannot be pickled: {exc}"
            ) from exc
        return {"__pickle_sha256__": digest}

    return [
        json.dumps(
            {"args": a, "kwargs": k} if a else k,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=default,
        )
        for a, k in calls
    ]


REF = "__tasklift_ref__"


_REF_TYPES = (Work, WorkRef)


def _has_ref(calls: list[tuple[list[Any], dict[str, Any]]]) -> bool:
    for args, kwargs in calls:  # plain loops: this runs over every job of a large work
        for value in kwargs.values():
            if isinstance(value, _REF_TYPES):
                return True
        for value in args:
            if isinstance(value, _REF_TYPES):
                return True
    return False


def _is_ref(value: Any) -> bool:
    return isinstance(value, _REF_TYPES)


def _as_ref(value: Any) -> Any:
    """A bare Work handle means its single result (one job) or all its results."""
    if isinstance(value, Work):
        return WorkRef(value, "job", 0) if len(value.keys) == 1 else WorkRef(value, "all", None)
    return value


def _expand_each(
    fn: WorkFunction, args: Sequence[Any], kwargs: Mapping[str, Any], group: Any
) -> Any:
    """``x=w.each()`` makes one job per job of ``w`` (paired with ``group_kwargs`` if given).

    Returns the group and whether any argument comes from another work.
    """

    # one plain pass collecting only the inputs from other works (usually none)
    fixed = (*args, *kwargs.values(), *fn.pre_kwargs.values())
    values = [v for v in fixed if isinstance(v, _REF_TYPES)]
    if group is not UNSET and isinstance(group, Sequence) and not isinstance(group, str):
        for element in group:
            if isinstance(element, Mapping):
                element = element.values()
            elif not isinstance(element, (list, tuple)):
                continue
            for v in element:
                if isinstance(v, _REF_TYPES):
                    values.append(v)
    lengths = {
        len(_as_ref(v).work.keys) for v in values if _is_ref(v) and _as_ref(v).mode == "each"
    }
    if not lengths:
        return group, bool(values)
    if len(lengths) > 1:
        raise SubmissionError(
            f"work {fn.name!r}: each() inputs have different lengths {sorted(lengths)}; "
            "job i pairs with job i of every input, so they must match"
        )
    n = lengths.pop()
    if group is UNSET:
        return [{} for _ in range(n)], True
    if len(group) != n:
        raise SubmissionError(
            f"work {fn.name!r}: group_kwargs has {len(group)} elements but the each() input "
            f"has {n} jobs; they pair one to one"
        )
    return group, True


def _split_refs(
    fn: WorkFunction, run: WorkflowRun, calls: list[tuple[list[Any], dict[str, Any]]]
) -> tuple[list[Any], list[Any], list[list[Ref]] | None]:
    """Replace inputs from other works by placeholders (payload) and upstream keys (job key)."""
    from tasklift.db.dataflow import Ref

    if not _has_ref(calls):
        return calls, calls, None  # the common case, without copying every call
    payload_calls: list[tuple[list[Any], dict[str, Any]]] = []
    key_calls: list[tuple[list[Any], dict[str, Any]]] = []
    refs: list[list[Ref]] = []
    found = False
    for i, (args, kwargs) in enumerate(calls):
        job_refs: list[Ref] = []
        p_args, k_args = list(args), list(args)
        p_kwargs, k_kwargs = dict(kwargs), dict(kwargs)
        named = [(f"#{j}", v) for j, v in enumerate(args)] + list(kwargs.items())
        for arg, value in named:
            if not _is_ref(value):
                continue
            found = True
            ref = _as_ref(value)
            upstream = ref.work
            if upstream.workflow_id is not None and upstream.workflow_id != run.workflow_id:
                raise SubmissionError(
                    f"work {fn.name!r}: input {arg!r} comes from work {upstream.name!r} of "
                    "another workflow; inputs must come from works of the running workflow"
                )
            idx = i if ref.mode == "each" else ref.index
            upstream_key = (
                upstream.keys[idx]
                if idx is not None
                else hashlib.sha256("".join(upstream.keys).encode()).hexdigest()
            )
            job_refs.append(Ref(arg, upstream.work_id, idx, ref.mode))
            if arg.startswith("#"):
                p_args[int(arg[1:])] = {REF: True}
                k_args[int(arg[1:])] = {REF: upstream_key}
            else:
                p_kwargs[arg] = {REF: True}
                k_kwargs[arg] = {REF: upstream_key}
        payload_calls.append((p_args, p_kwargs))
        key_calls.append((k_args, k_kwargs))
        refs.append(job_refs)
    if not found:
        return calls, calls, None
    if fn.serializer != "json":
        raise SubmissionError(
            f"work {fn.name!r}: inputs from other works need serializer='json' (the engine "
            "fills them in from stored results)"
        )
    return payload_calls, key_calls, refs


def _when(
    fn: WorkFunction, when: Callable[[Any], bool] | None, refs: list[list[Ref]] | None
) -> tuple[bytes | None, str | None]:
    if when is None:
        return None, None
    if not callable(when):
        raise SubmissionError(f"work {fn.name!r}: when= must be a function of an input")
    if not refs or not any(refs):
        raise SubmissionError(
            f"work {fn.name!r}: when= tests an input from another work; pass one "
            "(e.g. x=upstream.each())"
        )
    first = next((r for r in refs[0] if r.mode != "all"), refs[0][0])
    import cloudpickle

    return cloudpickle.dumps(when), first.arg


_SIGNATURES: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = weakref.WeakKeyDictionary()


def _signature(func: Any) -> inspect.Signature | None:
    """``inspect.signature(func)``, computed once per function (W3 calls it per work)."""
    try:
        return _SIGNATURES[func]
    except (KeyError, TypeError):
        pass
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    with contextlib.suppress(TypeError):  # not weakly referenceable: not cached
        _SIGNATURES[func] = signature
    return signature


def _check_signature(fn: WorkFunction, calls: Sequence[tuple[list[Any], dict[str, Any]]]) -> None:
    """Refuse a call that the function cannot take (a job would fail the same way on every
    retry): each distinct shape of call (how many positional, which keywords) is bound once."""
    signature = _signature(fn.func)
    if signature is None:  # a builtin or C function: nothing to check against
        return
    shapes: set[tuple[int, tuple[str, ...]]] = set()
    for i, (args, kwargs) in enumerate(calls):
        shape = (len(args), tuple(kwargs))
        if shape in shapes:
            continue
        shapes.add(shape)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            from_pre = sorted(set(fn.pre_kwargs) & set(str(exc).split("'")))
            hint = f" (pre_kwargs gives {', '.join(from_pre)})" if from_pre else ""
            call: Any = {"args": args, "kwargs": kwargs} if args else kwargs
            raise SubmissionError(
                f"work {fn.name!r}: job #{i} {short_repr(call)} does not fit "
                f"{fn.name}{signature}: {exc}{hint}"
            ) from None


def _prepare_calls(
    run: WorkflowRun, fn: WorkFunction, args: Sequence[Any], kwargs: Mapping[str, Any], group: Any
) -> tuple[Any, Sequence[Call], Sequence[Call], list[list[Ref]] | None]:
    """The group (``each()`` expanded), the calls of the jobs (payload form, and key form with
    upstream keys in place of inputs from other works) and those inputs per job."""
    group, has_refs = _expand_each(fn, args, kwargs, group)
    if not has_refs and isinstance(group, (list, tuple)) and len(group) > EAGER_UP_TO:
        # a large group's calls are made slice by slice as its jobs are stored (an element
        # that is not a dict or list then fails the work when its slice is reached)
        calls: Sequence[Call] = LazyCalls(lambda part: fn.calls(args, kwargs, part), group)
        key_calls, refs = calls, None
    else:
        calls = fn.calls(args, kwargs, group)
        if not calls:
            raise SubmissionError(f"work {fn.name!r}: group_kwargs is empty; nothing to run")
        calls, key_calls, refs = _split_refs(fn, run, calls)
    _check_signature(fn, calls if not isinstance(calls, LazyCalls) else calls[:1])
    return group, calls, key_calls, refs


def _job_list(fn: WorkFunction, calls: Sequence[Call], key_calls: Sequence[Call]) -> JobList:
    """Keys and payloads of the jobs, computed chunk by chunk as a large work is stored."""
    serializer = get_serializer(fn.serializer)

    def payloads(batch: Sequence[Call]) -> list[bytes]:
        try:
            # copied: orjson's bytes keep their whole initial buffer (about 4 KB each here),
            # so a million kept payloads would hold 4 GB; the copy is exact-sized (issue 7)
            dumps = serializer.dumps
            return [
                bytes(memoryview(dumps({"args": a, "kwargs": k} if a else {"kwargs": k})))
                for a, k in batch
            ]
        except SerializationError as exc:
            raise SubmissionError(f"work {fn.name!r}: {exc}") from exc

    return JobList(
        fn.name,
        calls,
        key_calls,
        _check_json if fn.serializer == "json" else _pickle_texts,
        payloads,
        _sha256_hex,
    )


def _options(fn: WorkFunction, run: WorkflowRun, when_arg: str | None) -> WorkOptions:
    """The work's options: the function's, the workflow's where the function sets none."""
    return WorkOptions(
        map_results=fn.map_results,
        retries=fn.retries,
        timeout=fn.timeout,
        resources=fn.resources,
        backend=fn.backend or run.backend,
        init_env=fn.init_env if fn.init_env is not None else run.init_env,
        min_success=fn.min_success,
        serializer=fn.serializer,
        when_arg=when_arg,
    )


def submit_work(
    run: WorkflowRun,
    fn: WorkFunction,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    group: Any,
    return_work: bool,
    when: Callable[[Any], bool] | None = None,
) -> Any:
    """Store one work with all its jobs, then return a handle or wait for the results."""
    group, calls, key_calls, refs = _prepare_calls(run, fn, args, kwargs, group)
    when_bytes, when_arg = _when(fn, when, refs)
    jobs = _job_list(fn, calls, key_calls)
    keys = jobs.keys
    function, script = function_location(fn, run.source_dir)
    options = _options(fn, run, when_arg)
    if fn.backend_object is not None:
        run.engine.add_backend(options.backend, fn.backend_object)
    cache_dir = str(run.engine.settings.cache_dir)
    code = WorkCode(fn.name, function, script, run.archive_sha, run.archive_file, cache_dir)
    submission = build_submission(
        run.workflow_id, code, options, jobs, when=when_bytes, reuse=not run.fresh, refs=refs
    )
    handles: list[Work] = []

    def on_stored(record: WorkRecord) -> None:
        handle = Work(
            engine=run.engine, work_id=record.work_id, name=fn.name, keys=keys, calls=calls,
            base_args=list(args), base_kwargs={**fn.pre_kwargs, **kwargs},
            serializer=fn.serializer, map_results=fn.map_results, min_success=fn.min_success,
            n_reused=record.n_reused, show_progress=run.show_progress,
            subscribed_before_dispatch=True, workflow_id=run.workflow_id,
            elements=group if isinstance(group, Sequence) else None,
        )  # fmt: skip
        handles.append(handle)

    run.engine.submit_work(submission, on_stored=on_stored)
    [handle] = handles
    run.works.append(handle)
    if return_work:
        return handle
    try:
        if group is UNSET:
            return handle.result()
        return handle.results()
    finally:
        handle.close()
