"""The argv that starts a job runner through ``init_env``, and the ``container=`` shortcut.

``init_env`` is a command prefix, optionally preceded by set-up commands separated by ``;`` (as
in iDDS): ``"source setup.sh; apptainer exec --bind $PWD base.sif"`` runs
``source setup.sh`` and then ``exec apptainer exec --bind $PWD base.sif python -m tasklift.runner
...`` in one ``bash``. A ``;`` inside quotes or ``$(...)`` does not split. A trailing ``;`` makes
every part a set-up command (no prefix).

``container="docker://python:3.11"`` is a shortcut for the prefix
``<apptainer or singularity> exec --bind "$PWD" docker://python:3.11``; which of the two runs is
found on the node when the job runner starts, with a clear error when neither is on the PATH.
"""

from __future__ import annotations

import os
import re
import shlex

from tasklift.errors import ConfigError

__all__ = [
    "SECRET_ENV",
    "check_container",
    "container_init_env",
    "job_environment",
    "runner_command",
    "split_init_env",
]

CONTAINER_SCHEMES = frozenset(
    {"docker", "docker-daemon", "library", "oras", "shub", "http", "https", "file"}
)
"""Image URI schemes apptainer and singularity accept (a plain path names a SIF or sandbox)."""

_IMAGE = re.compile(r"~?[A-Za-z0-9._:/@+=,%-]+")
_RUNTIME_VAR = "TASKLIFT_CONTAINER_RUNTIME"


def split_init_env(init_env: str | None) -> tuple[list[str], str]:
    """Split ``init_env`` into ``(set-up commands, prefix)`` at top-level ``;``.

    A ``;`` inside single or double quotes, after a backslash, or inside ``(...)`` /
    ``$(...)`` does not split. Empty set-up commands are dropped; the prefix may be empty.
    """
    if not init_env or not init_env.strip():
        return [], ""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    escaped = False
    for char in init_env:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == ";" and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts[:-1] if part], parts[-1]


def runner_command(python: str, init_env: str | None, args: list[str]) -> list[str]:
    """Return the argv of ``python -m tasklift.runner <args>``, through ``init_env`` if given.

    Without ``init_env`` the runner starts directly (no shell). With it, one ``bash -c`` runs
    the set-up commands, then ``exec``\\ s the prefix with the runner command appended.
    """
    runner = [python, "-m", "tasklift.runner", *args]
    setup, prefix = split_init_env(init_env)
    if not setup and not prefix:
        return runner
    launch = f"exec {prefix} {shlex.join(runner)}" if prefix else f"exec {shlex.join(runner)}"
    return ["/bin/bash", "-c", "; ".join([*setup, launch])]


def check_container(image: object) -> str:
    """Return ``image`` when it is a usable container image reference, else raise.

    Raises:
        ConfigError: not a string, empty, with whitespace or shell characters, or with an
            image scheme apptainer does not know.
    """
    if not isinstance(image, str):
        raise ConfigError(
            f"container must be an image reference string such as 'docker://python:3.11' "
            f"or a path to a .sif file, got {type(image).__name__}"
        )
    if not image.strip():
        raise ConfigError("container is empty: give an image such as 'docker://python:3.11'")
    if not _IMAGE.fullmatch(image):
        bad = sorted({c for c in image if not re.fullmatch(r"[A-Za-z0-9._:/@+=,%~-]", c)})
        shown = " ".join(repr(c) for c in bad) or "'~' not at the start"
        raise ConfigError(
            f"container={image!r} has characters an image reference cannot have ({shown}); "
            "give one image such as 'docker://python:3.11' or '/path/to/base.sif', and put "
            "set-up commands in init_env"
        )
    if "://" in image:
        scheme = image.split("://", 1)[0]
        if scheme not in CONTAINER_SCHEMES:
            raise ConfigError(
                f"container={image!r}: unknown image scheme {scheme!r}; known: "
                f"{', '.join(sorted(CONTAINER_SCHEMES))} (or a plain path to a .sif file)"
            )
        if not image.split("://", 1)[1].strip("/"):
            raise ConfigError(f"container={image!r} names no image after {scheme}://")
    return image


def container_init_env(container: str | None, init_env: str | None = None) -> str | None:
    """Return the ``init_env`` that runs job runners in ``container`` (``None``: unchanged).

    With both, every part of ``init_env`` runs first as a set-up command, then the container
    prefix. The prefix finds ``apptainer`` (else ``singularity``) on the node's PATH when the
    job runner starts; when neither exists the runner's start fails with exit status 127 and
    a message saying so on standard error.

    Raises:
        ConfigError: ``container`` is not a usable image reference (see ``check_container``).
    """
    if container is None:
        return init_env
    image = check_container(container)
    find = (
        f'{_RUNTIME_VAR}="$(command -v apptainer || command -v singularity)" || '
        f'(echo "tasklift: container={image} needs apptainer or singularity on the PATH of '
        f'$(hostname), and neither was found" >&2 && exit 127) || exit 127'
    )
    prefix = f'"${_RUNTIME_VAR}" exec --bind "$PWD" {image}'
    setup = [init_env.strip().rstrip(";").strip()] if init_env and init_env.strip() else []
    return "; ".join([*[s for s in setup if s], find, prefix])


SECRET_ENV = (
    "TASKLIFT_TOKEN",
    "TASKLIFT_SECRET_KEY",
    "TASKLIFT_DB_URL",
    "TASKLIFT_BUS",
    "TASKLIFT_OIDC_JWKS",
)
"""Variables of the engine's environment that job runners never inherit: API token, the key
that signs job tokens, database and broker URLs (with their passwords)."""


def job_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a job runner starts with: ``base`` (default: this process's) without
    the engine's secrets (:data:`SECRET_ENV`)."""
    env = dict(os.environ if base is None else base)
    for name in SECRET_ENV:
        env.pop(name, None)
    return env
