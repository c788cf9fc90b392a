"""Worker frames: the engine builds plain values and Outcome records from them, nothing else."""

from __future__ import annotations

import os
import pickle

import pytest

from tasklift.framing import HEADER, encode_frame, loads_outcomes
from tasklift.records import Outcome


class _RunsCode:
    def __reduce__(self):  # what a hostile job writes to its worker's pipe
        return (os.system, ("true",))


def _body(message: object) -> bytes:
    return encode_frame(message)[HEADER.size :]


def test_outcomes_and_plain_values_round_trip() -> None:
    outcome = Outcome(7, 2, ok=True, result=b"[1]", stdout="hi", started_at=1.0)
    message = ("done", [outcome])
    assert loads_outcomes(_body(message)) == message
    assert loads_outcomes(_body(("started", 7, 2))) == ("started", 7, 2)


@pytest.mark.parametrize("payload", [_RunsCode(), [Outcome(1, 1, ok=True), _RunsCode()], Exception])
def test_any_other_class_is_refused(payload: object) -> None:
    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        loads_outcomes(_body(("done", payload)))
