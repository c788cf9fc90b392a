"""Every ```python block of README.md and docs/*.md runs (issue 18).

A block runs as a script in a fresh folder with a private tasklift home. A block that is a
fragment (it uses names the surrounding text defines, e.g. a ``helpers.py``) gets a setup
below: files written next to it, code put before it (the names it uses) and after it (a call
that runs it and prints ``RESULT <json>``), and the value that must come out. A block that
cannot run here is preceded by ``<!-- not-run: REASON -->``; it must still compile.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tasklift import get_unique_id_for_dict

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")


@dataclass
class Block:
    """One ```python block: where it is, its code, and its not-run reason if marked."""

    document: str
    line: int
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, each with the marker line just before it."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.match(before)
            blocks.append(
                Block(
                    document=str(path.relative_to(REPO)),
                    line=start,
                    code="\n".join(lines[start:end]) + "\n",
                    not_run=marker.group("reason") if marker else None,
                )
            )
            i = end
        i += 1
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in python_blocks(document)]


@dataclass
class Setup:
    """What a fragment needs around it to run, and what it must print."""

    files: dict[str, str] = field(default_factory=dict)
    before: str = ""
    after: str = ""
    check: Any = None
    """Called with the decoded ``RESULT`` value (or with stdout when ``after`` is empty)."""


def _quickstart_check(out: str) -> None:
    # the block prints the dict itself: {key: value} for 50 points, model(x, y) * 2
    result = ast.literal_eval(out.strip().splitlines()[-1])
    assert len(result) == 50
    assert result[get_unique_id_for_dict({"x": 4, "y": 1})] == 82.0


SETUPS: dict[str, Setup] = {
    # README quickstart: "next to it, helpers.py defines model(x, y)"
    "def optimize(n):": Setup(
        files={"helpers.py": "def model(x, y):\n    return x * 10 + y\n"},
        check=_quickstart_check,
    ),
    # README data-flow chain: four stages whose names the text uses
    "def chain(n):": Setup(
        before="""
            from tasklift import Workflow, work, workflow

            @work
            def generate(seed):
                return {"seed": seed, "events": [seed, seed + 1]}

            @work
            def simulate(events):
                return [10 * e for e in events["events"]]

            @work
            def reconstruct(hits):
                return sum(hits)

            @work
            def summarize(parts):
                return {"n": len(parts), "total": sum(parts)}
            """,
        after="""
            if __name__ == "__main__":
                print("RESULT", json.dumps(Workflow(func=chain, service="local").run(4)))
            """,
        check=lambda value: value == {"n": 4, "total": 10 * sum(2 * s + 1 for s in range(4))},
    ),
    # docs/backends.md: resources of a work
    "def train(params):": Setup(
        before="from tasklift import work\n",
        after='print("RESULT", json.dumps(train.resources))\n',
        check=lambda value: value == {"cores": 4, "memory_mb": 8000, "walltime": 3600, "gpus": 1},
    ),
}


def setup_for(block: Block) -> Setup:
    found = [setup for key, setup in SETUPS.items() if key in block.code]
    assert len(found) <= 1, f"{block.id}: more than one setup matches"
    return found[0] if found else Setup()


def test_blocks_are_found_and_every_marker_gives_a_reason():
    documents = {block.document for block in ALL_BLOCKS}
    assert "README.md" in documents and "docs/backends.md" in documents
    for block in ALL_BLOCKS:
        if block.not_run is not None:
            assert len(block.not_run) >= 15, f"{block.id}: say why it cannot run here"
    # a marker not directly before a python block would silently mark nothing
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        for i, line in enumerate(lines):
            if NOT_RUN.match(line.strip()):
                following = next(ln.strip() for ln in lines[i + 1 :] if ln.strip())
                assert following == "```python", f"{document.name}:{i + 1}: marker before no block"
    # every setup is used by some block (a renamed block must not lose its run silently)
    for key in SETUPS:
        assert any(key in b.code for b in ALL_BLOCKS if b.not_run is None), key


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path):
    if block.not_run is not None:
        compile(block.code, block.id, "exec")  # it may not run here, but it must parse
        pytest.skip(f"not-run: {block.not_run}")
    setup = setup_for(block)
    for name, text in setup.files.items():
        (tmp_path / name).write_text(text)
    script = tmp_path / "block.py"
    script.write_text(
        "import json\n"
        + textwrap.dedent(setup.before)
        + "\n# --- the documented block, unchanged ---\n"
        + block.code
        + "# --- end of the documented block ---\n"
        + textwrap.dedent(setup.after)
    )
    env = dict(os.environ)
    env.update(
        TASKLIFT_HOME=str(tmp_path / "home"),
        TASKLIFT_CONFIG_DIR=str(tmp_path / "config"),
        TASKLIFT_QUIET="1",
        TASKLIFT_WORKERS="2",
        PYTHONPATH=str(REPO / "src"),
    )
    for name in ("TASKLIFT_SERVICE", "TASKLIFT_TOKEN", "TASKLIFT_DB_URL"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stderr}"
    if setup.check is None:
        return
    if setup.after:
        [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        value = json.loads(line[len("RESULT ") :])
        assert setup.check(value) is not False, f"{block.id}: unexpected result {value!r}"
    else:
        setup.check(proc.stdout)
