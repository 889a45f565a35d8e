"""The Wikidata dump route: read once into a facts table, the same resolve, graph and
validate-anchors answers as the API route, byte-identical tables, damaged dumps refused."""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.hierarchy import dump as dump_module
from hglv2.hierarchy import dump_read
from hglv2.hierarchy.clusters import validate_anchors_file
from hglv2.hierarchy.dump import DumpFacts, dump_date, entity_of, open_facts
from hglv2.hierarchy.graph import graph_file
from hglv2.hierarchy.resolve import read_categories, resolve_categories, resolve_file
from hglv2.hierarchy.sources import ApiSource, DumpSource
from hglv2.hierarchy.wikidata import CATEGORY_ITEM, parse_item
from pipelines.fake_wikidata import FakeWikidata, World
from pipelines.make_sample import _claim, _entity, build_world

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ("Q990000001", "Q990000002")  # category items inserted into one P301 link of the world


def dump_text(entities) -> str:
    """Entities in the official JSON dump format: ``[``, one per line followed by ``,``, ``]``."""
    ents = sorted(entities, key=lambda e: int(e["id"][1:]))
    lines = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in ents]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def write_dump(entities, path: Path, members: int = 2) -> None:
    """``path`` (.json, .json.gz: ``members`` gzip members, .json.bz2: ``members`` streams)."""
    data = dump_text(entities).encode()
    cut = [len(data) * k // members for k in range(members + 1)]
    parts = [data[a:b] for a, b in zip(cut, cut[1:], strict=False)]
    if path.suffix == ".gz":
        path.write_bytes(b"".join(gzip.compress(p) for p in parts))
    elif path.suffix == ".bz2":
        path.write_bytes(b"".join(bz2.compress(p) for p in parts))
    else:
        path.write_bytes(data)


def deepen(world: World) -> World:
    """The world with one P301 link of a category item made a 3-hop chain of category items."""
    ents = copy.deepcopy(world.entities)
    src = next(
        e
        for q, e in sorted(ents.items())
        if any(
            c["mainsnak"].get("datavalue", {}).get("value", {}).get("id") == CATEGORY_ITEM
            for c in e["claims"].get("P31", [])
        )
        and e["claims"].get("P301")
        and e["sitelinks"].get("commonswiki")
    )
    target = src["claims"]["P301"][0]["mainsnak"]["datavalue"]["value"]["id"]
    hops = [*CHAIN, target]
    src["claims"]["P301"] = [_claim(src["id"], "P301", hops[0])]
    for qid, nxt in zip(hops, hops[1:], strict=False):
        ents[qid] = _entity(
            qid, f"Category:{qid}", {"P31": [(CATEGORY_ITEM, "normal")], "P301": [(nxt, "normal")]}, 7
        )
    return World(ents, world.redirects)


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dump")
    world, landmarks = build_world(300)
    world = deepen(world)
    cats = tmp / "train_label_to_category.csv"
    cats.write_text(
        "landmark_id,category\n" + "".join(f"{lm['landmark_id']},{lm['category']}\n" for lm in landmarks)
    )
    dump = tmp / "wikidata-20240601-all.json.gz"
    write_dump(world.entities.values(), dump)
    redirects = tmp / "redirects.csv"
    redirects.write_text("from,to\n" + "".join(f"{a},{b}\n" for a, b in sorted(world.redirects.items())))
    return world, cats, dump, redirects


@pytest.fixture
def count_reads(monkeypatch):
    """How many times the dump was read (calls of :func:`dump_read.read_facts`)."""
    reads = []
    real = dump_read.read_facts

    def counted(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dump_read, "read_facts", counted)
    return reads


STAGE_FILES = (
    "resolved.parquet",
    "graph_nodes.parquet",
    "graph_edges.parquet",
    "graph.graphml",
    "cycles.json",
)


def run_stages(source, cats: Path, out: Path) -> dict:
    """resolve, graph and validate-anchors, each with its own opened source as separate commands
    have; returns validate-anchors' result."""
    with source() as s:
        resolve_file(s, cats, out / "resolved.parquet")
    with source() as s:
        graph_file(s, out / "resolved.parquet", out)
    with source() as s:
        return validate_anchors_file(s, ROOT / "data" / "review" / "clusters.csv")


def test_dump_route_equals_api_route_in_one_pass(world_files, tmp_path, count_reads):
    """The stage outputs are byte-identical to the API route's, and the three stages read the
    dump once, on a world with a 3-hop P301 chain."""
    world, cats, dump, redirects = world_files
    with FakeWikidata(world) as srv:
        api = {"api_url": srv.api_url, "sparql_url": srv.sparql_url}
        api_anchors = run_stages(lambda: ApiSource(tmp_path / "c.sqlite", **api), cats, tmp_path / "api")
    facts = tmp_path / "facts.parquet"
    dump_anchors = run_stages(
        lambda: DumpSource(dump, redirects, progress=False, facts=facts), cats, tmp_path / "dump"
    )
    assert count_reads == [str(dump)]  # resolve, graph and validate-anchors: one pass in all
    for name in STAGE_FILES:
        assert (tmp_path / "dump" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert dump_anchors == api_anchors
    paths = set(pq.read_table(tmp_path / "api" / "resolved.parquet").column("resolution").to_pylist())
    assert {"sitelink>p301>redirect", "p373", "missing", "sitelink"} <= paths  # every route exercised
    assert any(p.startswith("sitelink>p301>p301>p301") for p in paths), paths  # the 3-hop chain
    with DumpSource(dump, redirects, progress=False, facts=facts) as source:
        got = source.client().entities(ids=["Q8502", "Q1", CHAIN[1]])
        assert got["Q1"] is None and got[CHAIN[1]]["id"] == CHAIN[1]
        assert source.provenance()["passes"] == 0 and source.provenance()["dump_date"] == "2024-06-01"
    assert DumpFacts(str(dump), facts, 0).entities == len(world.entities)


def test_without_redirects_redirected_targets_are_missing(world_files, tmp_path):
    world, cats, dump, _ = world_files
    with DumpSource(dump, None, progress=False, facts=tmp_path / "f.parquet") as source:
        rows = resolve_categories(source.client(), read_categories(cats))
        assert source.provenance()["references_not_in_dump"] > 0
    assert not any("redirect" in r["resolution"] for r in rows)
    assert any(r["resolution"].endswith("target-missing") for r in rows)


def test_truthy_claims_as_qwikidata_reads_the_api(tmp_path):
    """Preferred wins, deprecated is skipped, novalue/somevalue are kept as statements: the entity
    rebuilt from the facts table parses as the original does."""
    ranks = [("Q1", "deprecated"), ("Q2", "normal"), ("somevalue", "preferred"), ("Q3", "preferred")]
    cases = [ranks, ranks[:2], ranks[:1], [("somevalue", "normal"), ("Q4", "normal")], []]
    ents = []
    for k, claims in enumerate(cases):
        qid = f"Q{100 + k}"
        claim_groups = {
            p: [_claim(qid, p, v, r, i) for i, (v, r) in enumerate(claims)] for p in ("P31", "P279", "P301")
        }
        claim_groups["P373"] = [_claim(qid, "P373", f"Name {r}", r, i) for i, (_, r) in enumerate(claims)]
        ents.append(
            {
                "type": "item",
                "id": qid,
                "lastrevid": 5 + k,
                "labels": {
                    "en": {"language": "en", "value": f"item {k}"},
                    "mul": {"language": "mul", "value": "m"},
                },
                "descriptions": {"fr": {"language": "fr", "value": "x"}},
                "claims": {**claim_groups, "P17": [_claim(qid, "P17", "Q5")]},
                "sitelinks": {
                    "commonswiki": {"site": "commonswiki", "title": f"Category:C{k}", "badges": []}
                },
            }
        )
    ents.append({"type": "property", "id": "P31", "labels": [], "claims": [], "datatype": "wikibase-item"})
    dump = tmp_path / "d.json.bz2"
    write_dump(ents, dump)
    facts = open_facts(dump, progress=False)
    assert facts.entities == len(cases) and facts.path == Path(f"{dump}.facts.parquet")
    got = facts.by_ids(e["id"] for e in ents[:-1])
    for ent in ents[:-1]:
        assert parse_item(got[ent["id"]]) == parse_item(ent)
        assert entity_of(facts._rows([0])[0])["labels"]["mul"]["value"] == "m"
    p373 = facts.by_p373(["Name preferred", "Name normal", "Name deprecated"])
    assert p373 == {"Name preferred": ["Q100"], "Name normal": ["Q101", "Q103"]}


def test_cli_stages_read_the_dump_once(world_files, tmp_path, cli_runner, count_reads):
    world, cats, dump, redirects = world_files
    out = tmp_path / "o"
    facts = out / "dump_facts.parquet"
    args = ["--dump", str(dump), "--redirects", str(redirects), "--dump-facts", str(facts)]
    resolved = out / "resolved.parquet"
    res = cli_runner.invoke(
        main,
        [
            "hierarchy",
            "resolve",
            "--categories",
            str(cats),
            "--out",
            str(resolved),
            *args,
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "r.json").read_text())
    assert info["source"]["dump_date"] == "2024-06-01" and info["source"]["dump"] == dump.name
    assert info["source"]["passes"] == 1
    res = cli_runner.invoke(
        main, ["hierarchy", "graph", "--resolved", str(resolved), "--out-dir", str(out), *args]
    )
    assert res.exit_code == 0, res.output
    clusters = tmp_path / "clusters.csv"
    clusters.write_text("qid,label,cluster,top\nQ8502,mountain,mountain,nature\n")
    res = cli_runner.invoke(main, ["hierarchy", "validate-anchors", "--clusters", str(clusters), *args])
    assert res.exit_code == 0, res.output
    assert count_reads == [str(dump)]
    assert not list(out.glob("*.sqlite"))  # the dump route needs no response cache


# -- damaged dumps ---------------------------------------------------------------------------


def _small_dump(world_files) -> bytes:
    world = world_files[0]
    return dump_text(sorted(world.entities.values(), key=lambda e: int(e["id"][1:]))[:400]).encode()


def _damaged(world_files, tmp_path):
    data = _small_dump(world_files)
    gz = gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :])
    bz = bz2.compress(data[: len(data) // 2]) + bz2.compress(data[len(data) // 2 :])
    flipped_gz, flipped_bz = bytearray(gz), bytearray(bz)
    flipped_gz[len(gz) // 3] ^= 0x55
    flipped_bz[len(bz) // 3] ^= 0x55
    lines = data.split(b"\n")
    html = b"<!DOCTYPE html>\n<html><body>504 Gateway Time-out</body></html>\n"
    return {
        "cut.json.gz": gz[: len(gz) * 6 // 10],
        "cut.json.bz2": bz[: len(bz) * 6 // 10],
        "flipped.json.gz": bytes(flipped_gz),
        "flipped.json.bz2": bytes(flipped_bz),
        "no-bracket.json": data[: data.rindex(b"]")],
        "mid-entity.json.gz": gzip.compress(data[: len(data) * 4 // 10]),
        "not-entity.json": b"\n".join([*lines[:5], b'{"type":"item","labels":{}},', *lines[5:]]),
        "not-json.json": b"\n".join([*lines[:5], b'{"type":"item","id":"Q1","labels":{"en":', *lines[5:]]),
        "page.json.gz": html,
        "page-gzipped.json.gz": gzip.compress(html),
        "page.json.bz2": html,
        "empty.json": b"",
    }


def test_damaged_dumps_one_line_error_nothing_written(world_files, tmp_path, cli_runner):
    cats = world_files[1]
    for name, data in _damaged(world_files, tmp_path).items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        dump = folder / name
        dump.write_bytes(data)
        out = folder / "out"
        res = cli_runner.invoke(
            main,
            ["hierarchy", "resolve", "--categories", str(cats), "--out", str(out / "resolved.parquet")]
            + [
                "--json",
                str(out / "r.json"),
                "--dump",
                str(dump),
                "--dump-facts",
                str(out / "f" / "facts.parquet"),
            ],
        )
        assert res.exit_code == 2, (name, res.output)
        text = res.output.strip()
        assert "\n" not in text and "Traceback" not in text, (name, text)
        assert re.fullmatch(rf"Error: {re.escape(str(dump))}: .+ at byte [0-9]+( of the JSON)?", text), (
            name,
            text,
        )
        assert sorted(p.name for p in folder.rglob("*")) == [name], (name, list(folder.rglob("*")))


def test_damaged_offsets(world_files, tmp_path):
    data = _small_dump(world_files)
    cut = data[: data.rindex(b"]")]
    (tmp_path / "a.json").write_bytes(cut)
    with pytest.raises(dump_read.DumpError, match=rf"without its closing '\]' .* at byte {len(cut)}$"):
        open_facts(tmp_path / "a.json", progress=False)
    bad_at = data.index(b"\n", 2000) + 1
    (tmp_path / "b.json").write_bytes(data[:bad_at] + b"42,\n" + data[bad_at:])
    with pytest.raises(dump_read.DumpError, match=rf"not a Wikidata entity .* at byte {bad_at}$"):
        open_facts(tmp_path / "b.json", progress=False)
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*"))


def test_a_changed_dump_is_read_again(world_files, tmp_path, count_reads):
    data = _small_dump(world_files)
    dump = tmp_path / "latest-all.json"
    dump.write_bytes(data)
    assert open_facts(dump, progress=False).passes == 1
    assert open_facts(dump, progress=False).passes == 0
    dump.write_bytes(data.replace(b'"lastrevid":', b'"lastrevid": ', 1))
    assert open_facts(dump, progress=False).passes == 1
    assert len(count_reads) == 2


def test_inputs_are_checked(tmp_path):
    with pytest.raises(InputError, match="no such dump"):
        open_facts(tmp_path / "none.json.bz2", progress=False)
    (tmp_path / "d.txt").write_text("[]")
    with pytest.raises(InputError, match="ends in .json"):
        open_facts(tmp_path / "d.txt", progress=False)
    latest = tmp_path / "latest-all.json.bz2"
    latest.touch()
    assert re.fullmatch(r"20[0-9]{2}-[0-9]{2}-[0-9]{2}", dump_date(latest))


def test_lookups_across_row_groups(world_files, tmp_path, monkeypatch):
    data = _small_dump(world_files)
    dump = tmp_path / "latest-all.json"
    dump.write_bytes(data)
    whole = open_facts(dump, tmp_path / "one.parquet", progress=False)
    monkeypatch.setattr(dump_module, "ROW_GROUP", 7)
    split = open_facts(dump, tmp_path / "many.parquet", progress=False)
    assert split._file.num_row_groups > 20 and whole._file.num_row_groups == 1
    ids = [json.loads(line.rstrip(b","))["id"] for line in data.split(b"\n")[1:-2:13]]
    assert split.by_ids(ids) == whole.by_ids(ids) and len(whole.by_ids(ids)) == len(ids)


def test_decoding_processes_give_the_same_table(world_files, tmp_path, monkeypatch):
    """With a decoding process the table is the same; a damaged block stops the process too."""
    monkeypatch.setattr(dump_read, "BLOCK_BYTES", 1 << 16)  # several blocks in flight
    data = _small_dump(world_files)
    dump = tmp_path / "latest-all.json.gz"
    dump.write_bytes(gzip.compress(data))
    here = open_facts(dump, tmp_path / "here.parquet", workers=0, progress=False)
    pooled = open_facts(dump, tmp_path / "pooled.parquet", workers=1, progress=False)
    assert pooled._file.read().equals(here._file.read()) and here._file.metadata.num_rows == 400
    bad_at = data.index(b"\n", len(data) // 2) + 1
    bad = tmp_path / "bad.json"
    bad.write_bytes(data[:bad_at] + b'{"id":"Q1",\n' + data[bad_at:])
    with pytest.raises(dump_read.DumpError, match=rf"not a Wikidata entity .* at byte {bad_at}$"):
        open_facts(bad, tmp_path / "bad.parquet", workers=1, progress=False)
    assert not (tmp_path / "bad.parquet").exists()
