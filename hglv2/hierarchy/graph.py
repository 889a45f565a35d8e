"""The class graph: P279 (subclass of) ancestors of the landmarks' P31 classes, as a networkx DiGraph.

Edges point from a class to its parent (``child -> parent``), so ``nx.descendants(G, c)`` are the
ancestors of ``c``. The graph is fetched breadth-first: depth 0 holds the truthy P31 classes of the
resolved landmarks; each level's unseen classes are fetched 50 per ``wbgetentities`` call and their
truthy P279 values form the next level, up to ``depth`` (parents of the last level are kept as
unexpanded nodes). Redirected classes are merged into their targets. Wikidata's P279 graph has
cycles; BFS with a seen-set cannot loop, and :func:`find_cycles` reports them (strongly connected
components with more than one class, and self-loops).

Files written by :func:`write_graph` (deterministic): ``graph_nodes.parquet`` (qid, label, depth,
revision, expanded, redirect_to), ``graph_edges.parquet`` (child, child_label, parent,
parent_label), ``graph.graphml`` (the same graph, labels as node attributes) and ``cycles.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import pyarrow as pa

from hglv2.fileio import atomic_path, commit_together, read_parquet_checked, write_json, write_parquet
from hglv2.hierarchy.wikidata import WikidataClient, fetch_items, follow_redirects, is_qid, qid_number

if TYPE_CHECKING:
    from hglv2.hierarchy.sources import WikidataSource

DEFAULT_DEPTH = 12


@dataclass
class ClassGraph:
    """Classes (``nodes``: qid -> attributes), P279 ``edges`` (child, parent) and ``aliases``."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)

    def canonical(self, qid: str) -> str:
        return follow_redirects(self.aliases, qid)

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for qid in sorted(self.nodes, key=qid_number):
            a = self.nodes[qid]
            g.add_node(
                qid,
                label=a.get("label") or "",
                depth=int(a.get("depth", -1)),
                revision=int(a.get("revision") or -1),
                expanded=bool(a.get("expanded")),
            )
        for child, parent in sorted(self.edges, key=lambda e: (qid_number(e[0]), qid_number(e[1]))):
            g.add_edge(child, parent)
        return g


def classes_of(resolved: Iterable[dict[str, Any]]) -> list[str]:
    """Sorted unique truthy P31 classes of resolved landmark rows (``p31`` is ``|``-joined)."""
    out = set()
    for row in resolved:
        p31 = row.get("p31")
        if isinstance(p31, str) and p31:
            out.update(q for q in p31.split("|") if is_qid(q))
    return sorted(out, key=qid_number)


def fetch_graph(
    client: WikidataClient, resolved: Sequence[dict[str, Any]], depth: int = DEFAULT_DEPTH
) -> ClassGraph:
    """Breadth-first P279 ancestors of the landmarks' P31 classes, up to ``depth`` levels up."""
    graph = ClassGraph()
    frontier = classes_of(resolved)
    seen = set(frontier)
    for d in range(depth + 1):
        if not frontier:
            break
        for qid in frontier:
            graph.nodes.setdefault(qid, {"label": None, "depth": d, "revision": None, "expanded": False})
        items = fetch_items(client, frontier, props="info|claims|labels")
        nxt: set[str] = set()
        for qid in frontier:
            info = items[qid]
            if info is None:
                graph.nodes[qid]["missing"] = True
                continue
            target = info.qid
            if target != qid:
                graph.aliases[qid] = target
                del graph.nodes[qid]
                if target in graph.nodes and graph.nodes[target]["expanded"]:
                    continue
                seen.add(target)
            node = graph.nodes.setdefault(target, {"depth": d})
            node.update(label=info.label, revision=info.revision, expanded=True)
            node["depth"] = min(node.get("depth", d), d)
            for parent in info.p279:
                graph.edges.add((target, parent))
                if parent not in seen:
                    seen.add(parent)
                    nxt.add(parent)
        frontier = sorted(nxt, key=qid_number)
    for qid in frontier:  # beyond the depth limit: kept, not expanded
        graph.nodes.setdefault(qid, {"label": None, "depth": depth + 1, "revision": None, "expanded": False})
    graph.edges = {(graph.canonical(c), graph.canonical(p)) for c, p in graph.edges}
    for qid in [q for q in graph.nodes if q in graph.aliases]:
        del graph.nodes[qid]
    for c, p in graph.edges:
        for q in (c, p):
            graph.nodes.setdefault(
                q, {"label": None, "depth": depth + 1, "revision": None, "expanded": False}
            )
    return graph


def find_cycles(g: nx.DiGraph) -> list[list[str]]:
    """Cycles as sorted lists of classes: SCCs of size > 1 and self-loops, sorted. Never hangs."""
    out = [sorted(c, key=qid_number) for c in nx.strongly_connected_components(g) if len(c) > 1]
    out += [[n] for n, _ in nx.selfloop_edges(g)]
    return sorted(out, key=lambda c: [qid_number(q) for q in c])


def write_graph(graph: ClassGraph, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the node/edge Parquet files, GraphML and cycles.json; return a summary dict."""
    out_dir = Path(out_dir)
    g = graph.to_networkx()
    labels = nx.get_node_attributes(g, "label")
    nodes = sorted(g.nodes, key=qid_number)
    alias_rows = sorted(graph.aliases, key=qid_number)
    node_table = pa.table(
        {
            "qid": pa.array(nodes + alias_rows, pa.string()),
            "label": pa.array([labels[q] or None for q in nodes] + [None] * len(alias_rows), pa.string()),
            "depth": pa.array([g.nodes[q]["depth"] for q in nodes] + [None] * len(alias_rows), pa.int32()),
            "revision": pa.array(
                [g.nodes[q]["revision"] if g.nodes[q]["revision"] >= 0 else None for q in nodes]
                + [None] * len(alias_rows),
                pa.int64(),
            ),
            "expanded": pa.array(
                [g.nodes[q]["expanded"] for q in nodes] + [False] * len(alias_rows), pa.bool_()
            ),
            "redirect_to": pa.array(
                [None] * len(nodes) + [graph.canonical(q) for q in alias_rows], pa.string()
            ),
        }
    )
    edges = list(g.edges)
    edge_table = pa.table(
        {
            "child": pa.array([c for c, _ in edges], pa.string()),
            "child_label": pa.array([labels[c] or None for c, _ in edges], pa.string()),
            "parent": pa.array([p for _, p in edges], pa.string()),
            "parent_label": pa.array([labels[p] or None for _, p in edges], pa.string()),
        }
    )
    cycles = find_cycles(g)
    summary = {
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "redirects": len(graph.aliases),
        "unexpanded": sum(1 for q in nodes if not g.nodes[q]["expanded"]),
        "cycles": [[{"qid": q, "label": labels[q] or None} for q in c] for c in cycles],
    }
    with commit_together():  # the four files of the stage: all new or all old
        write_parquet(node_table, out_dir / "graph_nodes.parquet")
        write_parquet(edge_table, out_dir / "graph_edges.parquet")
        with atomic_path(out_dir / "graph.graphml") as tmp:
            nx.write_graphml(g, tmp, encoding="utf-8", prettyprint=True)
        write_json(out_dir / "cycles.json", summary["cycles"])
    return summary


def graph_file(
    source: WikidataSource,
    resolved: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    depth: int = DEFAULT_DEPTH,
) -> dict[str, Any]:
    """The graph stage: the class graph of the resolved table ``resolved`` (Parquet), from ``source``
    (:mod:`hglv2.hierarchy.sources`), written to ``out_dir``. Returns :func:`write_graph`'s summary
    with the client's request counts (``requests``) and the source's provenance (``source``, a dump)."""
    from hglv2.hierarchy.resolve import RESOLVED_COLUMNS

    rows = read_parquet_checked(resolved, RESOLVED_COLUMNS, "run `hglv2 hierarchy resolve` first").to_pylist()
    client = source.client()
    summary = write_graph(fetch_graph(client, rows, depth), out_dir)
    summary["requests"] = dict(sorted(client.stats.items()))
    return source.with_provenance(summary)


def load_graph(out_dir: str | os.PathLike[str]) -> tuple[nx.DiGraph, dict[str, str]]:
    """Read what :func:`write_graph` wrote: (DiGraph child -> parent with ``label``, aliases)."""
    out_dir = Path(out_dir)
    hint = "run `hglv2 hierarchy graph` first"
    nodes = read_parquet_checked(
        out_dir / "graph_nodes.parquet", ("qid", "label", "depth", "redirect_to"), hint
    )
    edges = read_parquet_checked(out_dir / "graph_edges.parquet", ("child", "parent"), hint)
    nodes, edges = nodes.to_pylist(), edges.to_pylist()
    g = nx.DiGraph()
    aliases = {}
    for row in nodes:
        if row["redirect_to"]:
            aliases[row["qid"]] = row["redirect_to"]
        else:
            g.add_node(row["qid"], label=row["label"], depth=row["depth"])
    for row in edges:
        g.add_edge(row["child"], row["parent"])
    return g, aliases
