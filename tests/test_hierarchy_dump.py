"""The Wikidata dump route gives the same resolve and graph tables as the API route on the same world."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from hglv2.cli import main  # noqa: E402
from hglv2.errors import InputError  # noqa: E402
from hglv2.hierarchy.dump import (  # noqa: E402
    build_index,
    client_for_graph,
    client_for_resolve,
    dump_date,
    read_redirects,
)
from hglv2.hierarchy.graph import fetch_graph, write_graph  # noqa: E402
from hglv2.hierarchy.resolve import read_categories, resolve_categories  # noqa: E402
from hglv2.hierarchy.wikidata import ResponseCache, WikidataClient  # noqa: E402
from pipelines.fake_wikidata import FakeWikidata  # noqa: E402
from pipelines.make_sample import build_world  # noqa: E402


def write_dump(world, path: Path) -> None:
    """The world in the official JSON dump format: a JSON array, one entity per line (no redirects)."""
    opener = gzip.open if path.suffix == ".gz" else open
    ents = sorted(world.entities.values(), key=lambda e: int(e["id"][1:]))
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("[\n")
        fh.write(",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in ents))
        fh.write("\n]\n")


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dump")
    world, landmarks = build_world(300)
    cats = tmp / "train_label_to_category.csv"
    cats.write_text(
        "landmark_id,category\n" + "".join(f"{lm['landmark_id']},{lm['category']}\n" for lm in landmarks)
    )
    dump = tmp / "wikidata-20240601-all.json.gz"
    write_dump(world, dump)
    redirects = tmp / "redirects.csv"
    redirects.write_text("from,to\n" + "".join(f"{a},{b}\n" for a, b in sorted(world.redirects.items())))
    return world, cats, dump, redirects


def test_dump_route_equals_api_route(world_files, tmp_path):
    world, cats, dump, redirects = world_files
    with FakeWikidata(world) as srv:
        api = WikidataClient(
            ResponseCache(tmp_path / "c.sqlite"), api_url=srv.api_url, sparql_url=srv.sparql_url
        )
        api_rows = resolve_categories(api, read_categories(cats))
        write_graph(fetch_graph(api, api_rows), tmp_path / "api")
    dclient = client_for_resolve(dump, read_categories(cats), redirects, progress=False)
    dump_rows = resolve_categories(dclient, read_categories(cats))
    assert dump_rows == api_rows
    paths = {r["resolution"] for r in api_rows}
    assert {"sitelink>p301>redirect", "p373", "missing", "sitelink"} <= paths  # every route exercised
    assert dclient.index.passes == 2 and dclient.index.date == "2024-06-01"
    gclient = client_for_graph(dump, dump_rows, redirects, progress=False)
    write_graph(fetch_graph(gclient, dump_rows), tmp_path / "dump")
    for name in ("graph_nodes.parquet", "graph_edges.parquet", "graph.graphml", "cycles.json"):
        assert (tmp_path / "dump" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    # the dump route kept a small part of the dump, and parsed only screened lines
    assert len(dclient.index.entities) < len(world.entities)


def test_without_redirects_redirected_targets_are_missing(world_files):
    world, cats, dump, _ = world_files
    client = client_for_resolve(dump, read_categories(cats), None, progress=False)
    rows = resolve_categories(client, read_categories(cats))
    assert not any("redirect" in r["resolution"] for r in rows)
    assert any(r["resolution"].endswith("target-missing") for r in rows)
    assert client.index.provenance()["references_not_in_dump"] > 0


def test_cli_resolve_and_graph_from_a_dump(world_files, tmp_path, cli_runner):
    world, cats, dump, redirects = world_files
    out = tmp_path / "o"
    args = ["--dump", str(dump), "--redirects", str(redirects)]
    res = cli_runner.invoke(
        main,
        ["hierarchy", "resolve", "--categories", str(cats), "--out", str(out / "resolved.parquet"), *args]
        + ["--json", str(tmp_path / "r.json")],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "r.json").read_text())
    assert info["source"]["dump_date"] == "2024-06-01" and info["source"]["dump"] == dump.name
    res = cli_runner.invoke(
        main,
        ["hierarchy", "graph", "--resolved", str(out / "resolved.parquet"), "--out-dir", str(out), *args],
    )
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*.sqlite"))  # the dump route needs no response cache
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"type":"item","id":"Q1","sitelinks":{"commonswiki":{"title":\n]\n')
    res = cli_runner.invoke(
        main,
        ["hierarchy", "resolve", "--categories", str(cats), "--out", str(tmp_path / "x.parquet")]
        + ["--dump", str(bad)],
    )
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "not JSON" in res.output
    assert not (tmp_path / "x.parquet").exists()


def test_inputs_are_checked(tmp_path):
    with pytest.raises(InputError, match="no such dump"):
        build_index(tmp_path / "none.json.bz2", titles=["Category:X"], progress=False)
    (tmp_path / "d.txt").write_text("[]")
    with pytest.raises(InputError, match="ends in .json"):
        build_index(tmp_path / "d.txt", progress=False)
    r = tmp_path / "r.csv"
    r.write_text("from,to\nQ1,Q2\nQ3\tQ4\n")
    assert read_redirects(r) == {"Q1": "Q2", "Q3": "Q4"}
    r.write_text("Q1,Q2\nQ1,x\n")
    with pytest.raises(InputError, match="r.csv:2"):
        read_redirects(r)
    latest = tmp_path / "latest-all.json.bz2"
    latest.touch()
    assert re.fullmatch(r"20[0-9]{2}-[0-9]{2}-[0-9]{2}", dump_date(latest))
