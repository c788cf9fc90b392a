"""Re-runs reuse finished jobs although tasklift's home or outputs sit in the shipped folder.

Issue 18 item 3: a ``TASKLIFT_HOME`` inside the packed folder got packed (every re-run reused
nothing and archives grew each run), and an output written next to the script changed the
archive silently. Each test runs a user script twice as ``python flow.py``.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tasklift import ArchiveError, Workflow
from tasklift.settings import Settings

FLOW = """
import sys
from pathlib import Path
from tasklift import work, workflow, Workflow

HERE = Path(__file__).resolve().parent

@work
def square(x, marker_dir):
    Path(marker_dir, f"{x}-{__import__('os').getpid()}-{__import__('time').time_ns()}").touch()
    return x * x

@workflow
def main(marker_dir):
    return square(marker_dir=marker_dir, group_kwargs=[{"x": i} for i in range(4)])

if __name__ == "__main__":
    out = sys.argv[2]  # where this run writes its output: next to the script, or elsewhere
    result = Workflow(func=main).run(sys.argv[1])
    target = HERE / out
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{result}\\n")
    print("RESULT", result)
"""


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "flow.py").write_text(textwrap.dedent(FLOW))
    return root


def _run(python: str, project: Path, env: dict[str, str], markers: Path, out: str) -> str:
    proc = subprocess.run(
        [python, str(project / "flow.py"), str(markers), out],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [0, 1, 4, 9]" in proc.stdout
    return proc.stderr


def _archives(home: Path) -> list[Path]:
    return sorted((home / "archives").glob("*.tar.gz"))


def test_home_inside_the_shipped_folder_is_not_packed_and_reruns_reuse(
    tmp_path: Path, script_env: dict[str, str], python: str
) -> None:
    project = _project(tmp_path / "proj")
    home = project / "state"  # the new user's set-up: TASKLIFT_HOME inside the shipped folder
    env = dict(script_env, TASKLIFT_HOME=str(home))
    markers = tmp_path / "markers"
    markers.mkdir()
    out = str(tmp_path / "elsewhere" / "result.txt")  # outputs outside: only the home changes
    _run(python, project, env, markers, out)
    assert len(list(markers.iterdir())) == 4
    assert (home / "tasklift.db").is_file()
    [first] = _archives(home)

    stderr = _run(python, project, env, markers, out)
    assert len(list(markers.iterdir())) == 4, "the re-run ran jobs again instead of reusing them"
    assert _archives(home) == [first]  # same archive: the home's database was not packed
    assert "reuses no finished job" not in stderr


def test_an_output_next_to_the_script_is_named_once_when_reuse_is_lost(
    tmp_path: Path, script_env: dict[str, str], python: str
) -> None:
    project = _project(tmp_path / "proj")
    home = tmp_path / "home"
    markers = tmp_path / "markers"
    markers.mkdir()
    first = _run(python, project, script_env, markers, "result.txt")
    assert "reuses no finished job" not in first  # nothing ran before: nothing to say

    second = _run(python, project, script_env, markers, "result.txt")
    assert len(list(markers.iterdir())) == 8  # the archive changed: every job ran again
    assert second.count("reuses no finished job") == 1, second
    assert "1 file differs: result.txt" in second
    assert "tasklift_out/" in second and "exclude=" in second

    third = _run(python, project, script_env, markers, "result.txt")
    assert len(list(markers.iterdir())) == 8  # unchanged since the second run: all reused
    assert "reuses no finished job" not in third
    assert len(_archives(home)) == 2


def test_outputs_under_tasklift_out_keep_reuse(
    tmp_path: Path, script_env: dict[str, str], python: str
) -> None:
    project = _project(tmp_path / "proj")
    markers = tmp_path / "markers"
    markers.mkdir()
    _run(python, project, script_env, markers, "tasklift_out/result.txt")
    (project / ".tasklift").mkdir()
    (project / ".tasklift" / "notes").write_text("tool state\n")
    stderr = _run(python, project, script_env, markers, "tasklift_out/result.txt")
    assert len(list(markers.iterdir())) == 4
    assert "reuses no finished job" not in stderr
    assert len(_archives(tmp_path / "home")) == 1


def test_workflow_refuses_a_folder_over_the_file_limit(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "frames").mkdir(parents=True)
    for i in range(6):
        (src / "frames" / f"{i}.png").write_bytes(b"x")

    def wf() -> int:
        return 1

    few = settings.with_overrides(archive_max_files=5)
    with pytest.raises(ArchiveError, match=r"(?s)6 files.*6  frames/.*TASKLIFT_ARCHIVE_MAX_FILES"):
        Workflow(func=wf, settings=few, source_dir=src).run()
    assert Workflow(func=wf, settings=settings, source_dir=src).run() == 1
