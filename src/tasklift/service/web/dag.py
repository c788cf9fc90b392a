"""The DAG of a workflow's works: its edges (:func:`workflow_edges`), a layout, and the SVG.

Nodes are works (coloured and labelled by state, each a link to its page). Edges come from
one function, so data-flow edges can join submission-order edges without touching the page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import Connection, select

from tasklift.db import tables
from tasklift.service.web.routing import STATUS_ICONS

__all__ = ["MAX_NODES", "dag_svg", "layout", "workflow_edges"]

logger = logging.getLogger(__name__)

MAX_NODES = 300
"""A DAG shows at most this many works (the first ones submitted)."""

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN, COLUMNS = 168, 60, 44, 26, 10, 5


def workflow_edges(conn: Connection, workflow_id: int) -> list[tuple[int, int]]:
    """The edges between a workflow's works, as ``(from work id, to work id)``.

    A work that takes inputs from other works (data-flow: ``each()``, ``all()``, a job handle)
    gets an edge from each of them; a work without inputs gets an edge from the work submitted
    just before it (the workflow function waited on that one before submitting it).

    Args:
        conn: an open connection.
        workflow_id: the workflow.

    Returns:
        Edges between the workflow's first :data:`MAX_NODES` works, without repeats.
    """
    from tasklift.db.tables import edges as data_edges

    ids = [
        int(i)
        for i in conn.execute(
            select(tables.works.c.id)
            .where(tables.works.c.workflow_id == workflow_id)
            .order_by(tables.works.c.seq)
            .limit(MAX_NODES)
        ).scalars()
    ]
    known = set(ids)
    data = {
        (int(up), int(down))
        for up, down in conn.execute(
            select(data_edges.c.upstream_work_id, data_edges.c.work_id).where(
                data_edges.c.work_id.in_(ids)
            )
        )
        if int(up) in known
    }
    with_inputs = {down for _, down in data}
    order = {(a, b) for a, b in pairwise(ids) if b not in with_inputs}
    return sorted(data | order, key=lambda e: (ids.index(e[1]), ids.index(e[0])))


def layout(nodes: Sequence[int], edges: Sequence[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Place each node in a layer (longest path from a source) and a slot within the layer.

    Args:
        nodes: node ids in their natural order (kept within a layer).
        edges: ``(from, to)`` pairs; edges touching unknown nodes are ignored.

    Returns:
        ``{node: (layer, slot)}``; nodes on a cycle (never expected) go to the last layer.
    """
    known = set(nodes)
    succ: dict[int, list[int]] = {n: [] for n in nodes}
    indeg = dict.fromkeys(nodes, 0)
    for a, b in edges:
        if a in known and b in known and a != b:
            succ[a].append(b)
            indeg[b] += 1
    layer = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if indeg[n] == 0]
    seen = 0
    while ready:
        n = ready.pop(0)
        seen += 1
        for m in succ[n]:
            layer[m] = max(layer[m], layer[n] + 1)
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if seen < len(nodes):
        deepest = max(layer.values(), default=0) + 1
        for n in nodes:
            if indeg[n] > 0:
                layer[n] = deepest
    slots: dict[int, int] = {}
    out: dict[int, tuple[int, int]] = {}
    for n in nodes:
        out[n] = (layer[n], slots.get(layer[n], 0))
        slots[layer[n]] = out[n][1] + 1
    return out


def _positions(
    places: dict[int, tuple[int, int]],
) -> tuple[dict[int, tuple[float, float]], float, float]:
    """Top-left corners: layers run left to right and wrap into rows that snake back."""
    depth: dict[int, int] = {}
    for lay, slot in places.values():
        depth[lay] = max(depth.get(lay, 0), slot + 1)
    n_layers = max(depth, default=0) + 1
    rows = (n_layers + COLUMNS - 1) // COLUMNS
    row_top, row_depth, y = [], [], float(MARGIN)
    for r in range(rows):
        row_top.append(y)
        tallest = max(
            (depth.get(lay, 1) for lay in range(r * COLUMNS, (r + 1) * COLUMNS)), default=1
        )
        row_depth.append(tallest)
        y += tallest * (NODE_H + GAP_Y) + GAP_Y
    cols = min(COLUMNS, n_layers)
    pos: dict[int, tuple[float, float]] = {}
    for node, (lay, slot) in places.items():
        r, c = divmod(lay, COLUMNS)
        if r % 2:
            c = cols - 1 - c
        centred = (row_depth[r] - depth[lay]) * (NODE_H + GAP_Y) / 2  # layers centred
        pos[node] = (
            MARGIN + c * (NODE_W + GAP_X),
            row_top[r] + centred + slot * (NODE_H + GAP_Y),
        )
    width = float(2 * MARGIN + cols * NODE_W + (cols - 1) * GAP_X)
    return pos, width, y - 2 * GAP_Y + MARGIN


def _clip(cx: float, cy: float, dx: float, dy: float, pad: float = 2.0) -> tuple[float, float]:
    """Where the ray from a node's centre along ``(dx, dy)`` leaves the node's box."""
    hw, hh = NODE_W / 2 + pad, NODE_H / 2 + pad
    t = min(hw / abs(dx) if dx else float("inf"), hh / abs(dy) if dy else float("inf"))
    return cx + t * dx, cy + t * dy


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def dag_svg(works: Sequence[dict[str, Any]], edges: Sequence[tuple[int, int]]) -> Markup:
    """The DAG as inline SVG: one link per work, arrows for ``edges``."""
    shown = list(works[:MAX_NODES])
    if not shown:
        return Markup('<p class="muted">No works yet.</p>')
    by_id = {int(w["id"]): w for w in shown}
    pos, width, height = _positions(layout(list(by_id), edges))
    out = [
        f'<svg class="dag" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'height="{height:.0f}" role="group" aria-label="works of this workflow and their order">',
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path class="dag-arrow" '
        'd="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for a, b in edges:
        if a not in pos or b not in pos:
            continue
        (ax, ay), (bx, by) = pos[a], pos[b]
        acx, acy, bcx, bcy = ax + NODE_W / 2, ay + NODE_H / 2, bx + NODE_W / 2, by + NODE_H / 2
        dx, dy = bcx - acx, bcy - acy
        x1, y1 = _clip(acx, acy, dx, dy)
        x2, y2 = _clip(bcx, bcy, -dx, -dy, pad=4.0)
        out.append(
            f'<line class="dag-edge" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" '
            f'y2="{y2:.1f}" marker-end="url(#dag-arrow)"/>'
        )
    for work_id, w in by_id.items():
        x, y = pos[work_id]
        status = str(w["status"])
        counts = f"{w['n_finished']:,}/{w['n_jobs']:,} finished"
        if w["n_failed"]:
            counts += f", {w['n_failed']:,} failed"
        name = f"#{w['seq']} {w['name']}"
        tip = f"work {work_id}: {name}, {status}, {counts}"
        out.append(
            f'<a class="dag-node n-{escape(status)}" href="/works/{work_id}" '
            f'aria-label="{escape(tip)}">'
            f"<title>{escape(tip)}</title>"
            f'<rect class="node" x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" '
            f'height="{NODE_H}" rx="6"/>'
            f'<text class="node-name" x="{x + 10:.0f}" y="{y + 18:.0f}">'
            f"{escape(_short(name, 19))}</text>"
            f'<text class="node-state" x="{x + 10:.0f}" y="{y + 35:.0f}">'
            f"{escape(STATUS_ICONS.get(status, '•'))} {escape(status)}</text>"
            f'<text class="node-counts" x="{x + 10:.0f}" y="{y + 51:.0f}">'
            f"{escape(_short(counts, 26))}</text></a>"
        )
    out.append("</svg>")
    return Markup("".join(out))
