"""The layers of the house stay apart: a lower layer never imports a higher one, and no two
modules import each other in a circle.

Read from the source with ``ast`` (no import runs), so function-local imports and imports under
``TYPE_CHECKING`` count like any other. The layers, lowest first, are those of the README's
architecture section; a module imports from its own layer or below.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "bottom",
        (
            "tasklift.errors",
            "tasklift.states",
            "tasklift.settings",
            "tasklift.records",
            "tasklift.keys",
            "tasklift.serializers",
            "tasklift.archive",
            "tasklift.submission",
            "tasklift._context",
            "tasklift.credentials",
        ),
    ),
    (
        "storage, bus, runner core",
        (
            "tasklift.db",
            "tasklift.bus",
            "tasklift.runner.execute",
            "tasklift.runner.loader",
            "tasklift.runner.protocol",
            "tasklift.runner.batch",
            "tasklift.runner.capture",
            "tasklift.runner.remote",  # the HTTP-reporting runner (Dask runs it in a task)
            "tasklift.runner",  # the package itself (its __init__)
        ),
    ),
    ("backend interface", ("tasklift.backends.base",)),
    ("engine", ("tasklift.engine",)),
    ("backends, service parts, job API", ("tasklift.backends", "tasklift.service")),
    ("composition roots", ("tasklift.embedded", "tasklift.service.app")),
    ("client API", ("tasklift.api", "tasklift")),
    (
        "entry points",
        (
            "tasklift.cli",
            "tasklift.runner.worker",
            "tasklift.runner.__main__",
        ),
    ),
]


def module_files() -> dict[str, Path]:
    """Every module of the package (migrations excluded: Alembic loads them by path)."""
    found = {}
    for path in (SRC / "tasklift").rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    """The layer of a module: the longest prefix named in :data:`LAYERS` decides."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # the root package names only itself: every submodule must be placed
            inside = module.startswith(prefix + ".") and prefix != "tasklift"
            if (module == prefix or inside) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def import_graph() -> dict[str, set[str]]:
    """module -> the tasklift modules it imports anywhere in its text."""
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    name = ".".join(base) + (f".{node.module}" if node.module else "")
                else:
                    name = node.module or ""
                subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in files]
                # ``from tasklift.x import sub`` imports the submodule, not all of tasklift.x
                targets = subs if len(subs) == len(node.names) else [name, *subs]
            else:
                continue
            for target in targets:
                if target == "tasklift" or target.startswith("tasklift."):
                    resolved = resolve(target)
                    if resolved and resolved != module:
                        graph[module].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_has_a_layer() -> None:
    for module in module_files():
        layer_of(module)


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_violation_and_a_cycle() -> None:
    """The checks above can fail: a made-up graph with an upward import and a circle."""
    graph = {"tasklift.db.x": {"tasklift.api.y"}, "tasklift.api.y": {"tasklift.db.x"}}
    assert cycles(graph) == [["tasklift.api.y", "tasklift.db.x"]]
    assert layer_of("tasklift.api.y") > layer_of("tasklift.db.x")
    assert layer_of("tasklift.service.app") > layer_of("tasklift.service.job_api")
    assert layer_of("tasklift.runner.worker") > layer_of("tasklift.runner.execute")
