"""Database rows into API models: the columns a model has a field for, copied as they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["columns_for"]


def columns_for(
    model: type[BaseModel], row: Mapping[str, Any], *, without: Iterable[str] = ()
) -> dict[str, Any]:
    """The values in ``row`` of ``model``'s fields (those named in ``without`` aside).

    Fields the row has no column for are left out: the model's default, or its validation error
    for a required field.
    """
    skip = set(without)
    return {name: row[name] for name in model.model_fields if name in row and name not in skip}
