"""Issue 18 on a server: the ``when=`` predicate is part of the server's memo key, and the
JSON serializer keeps tuples, arrays and int keys through the service."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = '''
    import json, os, sys
    import numpy as np
    from tasklift import JobFailure, Workflow, work

    @work(retries=0)
    def generate(seed):
        return {"seed": seed}

    @work(retries=0)
    def seed_of(events):
        return events["seed"]

    @work(retries=0)
    def types_of(a, t, d):
        return [type(a).__name__, type(t).__name__, type(next(iter(d))).__name__], (a * 2, d)

    def wf(cut):
        gen = generate(group_kwargs=[{"seed": s} for s in range(4)], return_work=True)
        extra = {} if cut is None else {"when": lambda g: g["seed"] % 2 == cut}
        sim = seed_of(events=gen.each(), return_work=True, **extra)
        out = [r.state if isinstance(r, JobFailure) else r for r in sim.results(timeout=120)]
        got, (doubled, d) = types_of(a=np.arange(3), t=(1, 2), d={1: "x"})
        return out, got, [type(doubled).__name__, doubled.tolist()], sorted(d)

    if __name__ == "__main__":
        cut = None if sys.argv[1] == "none" else int(sys.argv[1])
        print("RESULT", json.dumps(Workflow(func=wf, service=os.environ["TASKLIFT_SERVICE"])
                                   .run(cut)))
'''


def _run(server, token: str, project: Path, cut: str) -> list:
    proc = subprocess.run([sys.executable, str(project / "cut.py"), cut], env=server.env(token),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_when_and_types_through_the_server(server, tmp_path: Path):
    token = server.token("alice")
    project = tmp_path / "p"
    project.mkdir()
    (project / "cut.py").write_text(textwrap.dedent(SCRIPT))
    first = _run(server, token, project, "none")
    assert first == [[0, 1, 2, 3], ["ndarray", "tuple", "int"], ["ndarray", [0, 2, 4]], [1]]
    assert _run(server, token, project, "0")[0] == [0, "skipped", 2, "skipped"]
    assert _run(server, token, project, "1")[0] == ["skipped", 1, "skipped", 3]
