"""Job state is written in one place: no module of ``src`` but ``db/jobs.py`` updates
``jobs.state`` (read from the source with ``ast``). That :func:`tasklift.db.jobs.transition`
enforces :data:`tasklift.states.ALLOWED` is tested on both databases in
tests/service/test_state_moves.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tasklift"
OWNER = SRC / "db" / "jobs.py"
_RAW_UPDATE = re.compile(r"UPDATE\s+jobs\s+SET\b[^;]*\bstate\s*=", re.IGNORECASE | re.DOTALL)


def _names_jobs(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == "jobs")
        or (isinstance(n, ast.Attribute) and n.attr == "jobs")
        or (isinstance(n, ast.Constant) and n.value == "jobs")
        for n in ast.walk(node)
    )


def state_writes_in(source: str) -> list[int]:
    """Lines that update ``jobs.state``: SQL text (or an f-string) ``UPDATE jobs SET ...
    state =``, or a Core ``.values(state=...)`` on an update that names the jobs table."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _RAW_UPDATE.search(node.value):
                found.append(node.lineno)
        elif isinstance(node, ast.JoinedStr):  # an f-string: its fixed parts, "?" between
            parts = [v.value if isinstance(v, ast.Constant) else "?" for v in node.values]
            if _RAW_UPDATE.search("".join(map(str, parts))):
                found.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "values"
            and any(k.arg == "state" for k in node.keywords)
            and _names_jobs(node.func.value)
            and "update" in ast.unparse(node.func.value)
        ):
            found.append(node.lineno)
    return found


def test_no_job_state_write_outside_db_jobs() -> None:
    wrong = [
        f"{path.relative_to(SRC)}:{line}"
        for path in sorted(SRC.rglob("*.py"))
        if path != OWNER and "migrations" not in path.parts
        for line in state_writes_in(path.read_text())
    ]
    assert not wrong, "jobs.state written outside db/jobs.py transition():\n" + "\n".join(wrong)


def test_the_checker_sees_raw_and_core_writes() -> None:
    core = "conn.execute(update(tables.jobs).where(x).values(state='pending', attempts=0))"
    chained = "conn.execute(q.jobs.update().where(x).values(state=JobState.PENDING.value))"
    raw = "SQL = ('UPDATE jobs SET attempts = 1, '\n 'state = ? WHERE id = ?')"
    assert state_writes_in(core) == [1]
    assert state_writes_in(chained) == [1]
    assert state_writes_in(raw) == [1]
    assert state_writes_in("update(works).values(status='running')") == []
    assert state_writes_in("insert(tables.attempts).values(state='failed')") == []
    assert state_writes_in("f'UPDATE jobs SET {sets}, state = {new} WHERE id = ?'") == [1]
    assert "def transition(" in OWNER.read_text()
