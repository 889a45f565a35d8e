"""The whole hierarchy pipeline against a fake Wikidata on 127.0.0.1, and offline on the sample."""

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hglv2.cli import main
from hglv2.hierarchy.clusters import load_clusters, propose
from hglv2.hierarchy.graph import fetch_graph, find_cycles
from hglv2.hierarchy.resolve import resolve_categories
from hglv2.hierarchy.sources import ApiSource
from hglv2.hierarchy.wikidata import ResponseCache, WikidataClient

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
REVIEW = ROOT / "data" / "review"
from pipelines.fake_wikidata import FAULTS, FakeWikidata, World  # noqa: E402
from pipelines.make_sample import SAMPLE_INDEX_LANDMARKS, build_world  # noqa: E402

OUTPUTS = (
    "resolved.parquet",
    "graph_nodes.parquet",
    "graph_edges.parquet",
    "graph.graphml",
    "cycles.json",
    "proposals.parquet",
    "pending.csv",
    "hierarchy.parquet",
)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """Backoff waits become no-ops in CLI runs (the waits asked for are checked in the client tests)."""
    orig = ApiSource.open_client

    def open_client(self):
        client = orig(self)
        client.sleep = lambda s: None
        return client

    monkeypatch.setattr(ApiSource, "open_client", open_client)


@pytest.fixture(scope="module")
def world():
    return build_world(300, n_index=SAMPLE_INDEX_LANDMARKS)  # the world of data/sample


def invoke(runner, *args):
    res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


CATEGORIES = (SAMPLE / "train_label_to_category.csv", SAMPLE / "index_label_to_category.csv")


def apply_args(proposals: Path, review: Path, out: Path) -> list:
    """``hierarchy apply`` with the review files of the folder ``review``."""
    return [
        "hierarchy",
        "apply",
        "--proposals",
        proposals,
        *("--clusters", review / "clusters.csv", "--decisions", review / "decisions.csv"),
        *("--overrides", review / "landmark_overrides.csv", "--out", out),
    ]


def run_pipeline(runner, work: Path, net: list, categories=CATEGORIES, review: Path = REVIEW) -> dict:
    """resolve (both numberings by default, as `make hierarchy` runs it), graph, propose, apply."""
    work.mkdir(parents=True, exist_ok=True)
    cats = [a for c in categories for a in ("--categories", c)]
    invoke(runner, "hierarchy", "resolve", *cats, "--out", work / "resolved.parquet", *net)
    invoke(runner, "hierarchy", "graph", "--resolved", work / "resolved.parquet", "--out-dir", work, *net)
    invoke(
        runner,
        "hierarchy",
        "propose",
        "--resolved",
        work / "resolved.parquet",
        "--graph-dir",
        work,
        "--clusters",
        review / "clusters.csv",
        "--images",
        SAMPLE / "train.csv",
        "--images",
        SAMPLE / "index_image_to_landmark.csv",
        "--out",
        work / "proposals.parquet",
        "--pending",
        work / "pending.csv",
    )
    invoke(
        runner,
        *apply_args(work / "proposals.parquet", review, work / "hierarchy.parquet"),
    )
    return {name: (work / name).read_bytes() for name in OUTPUTS}


def online(srv, cache):
    return ["--cache", cache, "--api-url", srv.api_url, "--sparql-url", srv.sparql_url, "--timeout", "0.3"]


def test_faults_leave_the_output_unchanged_and_reruns_make_no_requests(world, tmp_path, cli_runner):
    with FakeWikidata(world[0]) as srv:
        clean = run_pipeline(cli_runner, tmp_path / "clean", online(srv, tmp_path / "clean.sqlite"))
        clean_keys = srv.answered
    assert len(clean_keys) == len(set(clean_keys))

    def fault_for(n, key):  # every third request fails, cycling through all fault kinds
        return FAULTS[(n // 3) % len(FAULTS)] if n % 3 == 0 else None

    with FakeWikidata(world[0], fault_for, slow_s=0.5) as srv:
        faulty = run_pipeline(cli_runner, tmp_path / "faulty", online(srv, tmp_path / "faulty.sqlite"))
        n_faults = sum(1 for k, ok in srv.log if not ok)
        assert sorted(srv.answered) == sorted(clean_keys)  # every answered request once, none twice
        assert n_faults >= len(FAULTS)
        n = len(srv.log)
        again = run_pipeline(cli_runner, tmp_path / "again", online(srv, tmp_path / "faulty.sqlite"))
        assert len(srv.log) == n  # second run: zero requests
    assert faulty == clean
    assert again == clean


def test_recorded_sample_replays_offline_to_the_same_output(world, tmp_path, cli_runner):
    """The committed recording is what make_sample.py's world answers (and it is complete)."""
    offline = run_pipeline(
        cli_runner, tmp_path / "off", ["--cache", SAMPLE / "wikidata_cache.jsonl", "--offline"]
    )
    with FakeWikidata(world[0]) as srv:
        live = run_pipeline(cli_runner, tmp_path / "live", online(srv, tmp_path / "c.sqlite"))
    assert offline == live
    res = cli_runner.invoke(
        main,
        [
            "hierarchy",
            "resolve",
            "--categories",
            SAMPLE / "train_label_to_category.csv",
            "--out",
            tmp_path / "x.parquet",
            "--offline",
            "--cache",
            tmp_path / "none.sqlite",
        ],
    )
    assert res.exit_code == 2 and "no such cache" in res.output


def test_killed_run_restarts_without_repeating_requests(world, tmp_path, cli_runner):
    with FakeWikidata(world[0]) as srv:
        clean = run_pipeline(cli_runner, tmp_path / "clean", online(srv, tmp_path / "clean.sqlite"))
        clean_keys = sorted(srv.answered)
    cache = tmp_path / "killed.sqlite"
    with FakeWikidata(world[0]) as srv:
        proc = {}

        def kill_at_third(n):
            if n == 3:
                os.kill(proc["p"].pid, signal.SIGKILL)
                return True
            return False

        srv.on_request = kill_at_third
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc["p"] = p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hglv2.cli",
                "hierarchy",
                "resolve",
                *[a for c in CATEGORIES for a in ("--categories", str(c))],
                "--out",
                str(tmp_path / "k" / "resolved.parquet"),
                *map(str, online(srv, cache)),
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert p.wait(timeout=60) == -signal.SIGKILL
        first = srv.answered
        assert len(first) == 3 and not (tmp_path / "k" / "resolved.parquet").exists()
        srv.on_request = None
        log_start = len(srv.log)
        restarted = run_pipeline(cli_runner, tmp_path / "k", online(srv, cache))
        second = [k for k, ok in srv.log[log_start:] if ok]
    assert restarted == clean
    assert not set(first) & set(second)  # no answered request was made twice
    assert sorted(first + second) == clean_keys


def test_editing_a_decision_changes_exactly_the_affected_landmarks(tmp_path, cli_runner):
    review = tmp_path / "review"
    shutil.copytree(REVIEW, review)
    net = ["--cache", SAMPLE / "wikidata_cache.jsonl", "--offline"]
    run_pipeline(cli_runner, tmp_path / "w", net, review=review)
    before = pd.read_parquet(tmp_path / "w" / "hierarchy.parquet")
    dec = pd.read_csv(review / "decisions.csv", dtype=str)
    dec.loc[dec["supercategory_qid"] == "Q751876", "cluster"] = "palace"  # château: castle -> palace
    extra = pd.DataFrame(
        [{"supercategory_qid": "Q23397", "supercategory": "lake", "cluster": "river", "reason": "test"}]
    )
    pd.concat([dec, extra]).to_csv(review / "decisions.csv", index=False)
    invoke(
        cli_runner,
        *apply_args(tmp_path / "w" / "proposals.parquet", review, tmp_path / "w" / "after.parquet"),
    )
    after = pd.read_parquet(tmp_path / "w" / "after.parquet")
    assert set(before["numbering"]) == {"train", "index"}  # both numberings, one vocabulary

    def keys(df):
        return set(zip(df["numbering"], df["landmark_id"], strict=True))

    ov = pd.read_csv(review / "landmark_overrides.csv", dtype=str, keep_default_na=False)
    nums = ov["numbering"] if "numbering" in ov else ["train"] * len(ov)
    overridden = {(n or "train", int(x)) for n, x in zip(nums, ov["landmark_id"], strict=True)}
    changed = keys(before[(before.fillna("-") != after.fillna("-")).any(axis=1)])
    expected = keys(before[before["supercategory_qid"].isin(["Q751876", "Q23397"])]) - overridden
    assert changed == expected and len(expected) > 5
    sel = pd.Series([k in expected for k in zip(after["numbering"], after["landmark_id"], strict=True)])
    assert set(after.loc[sel, "provenance"]) == {"decision"}
    assert set(after.loc[after["supercategory_qid"] == "Q23397", "hierarchical_label"]) == {"river"}


@pytest.mark.timeout(60)
def test_p279_cycles_do_not_hang(tmp_path):
    base, _ = build_world(5)
    ents = dict(base.entities)
    # a long ring of classes, every one of them a landmark's class, plus a self-loop
    ring = [f"Q98000{i:04d}" for i in range(80)]
    from pipelines.make_sample import _entity

    for i, q in enumerate(ring):
        ents[q] = _entity(q, f"ring {i}", {"P279": [(ring[(i + 1) % len(ring)], "normal"), (q, "normal")]}, 1)
    ents["Q97000001"] = _entity(
        "Q97000001",
        "ring landmark",
        {"P31": [(q, "normal") for q in ring[:60]]},
        1,
        commons="Category:Ring landmark",
    )
    with FakeWikidata(World(ents)) as srv:
        client = WikidataClient(
            ResponseCache(tmp_path / "c.sqlite"),
            api_url=srv.api_url,
            sparql_url=srv.sparql_url,
            sleep=lambda s: None,
        )
        rows = resolve_categories(client, [(1, "http://commons.wikimedia.org/wiki/Category:Ring_landmark")])
        graph = fetch_graph(client, rows, depth=500)
    g = graph.to_networkx()
    cycles = find_cycles(g)
    assert sorted(ring) in [sorted(c) for c in cycles] and sum(len(c) == 1 for c in cycles) == len(ring)
    props, pending = propose(pd.DataFrame(rows), g, graph.aliases, load_clusters(REVIEW / "clusters.csv"))
    assert props["reason"].tolist() == ["no-anchor"] and len(pending) == 1


def test_requests_per_1000_titles(tmp_path):
    world, landmarks = build_world(1000, seed=7)
    with FakeWikidata(world) as srv:
        client = WikidataClient(
            ResponseCache(tmp_path / "c.sqlite"),
            api_url=srv.api_url,
            sparql_url=srv.sparql_url,
            sleep=lambda s: None,
        )
        rows = resolve_categories(client, [(lm["landmark_id"], lm["category"]) for lm in landmarks])
    titles = sum(1 for r in rows if r["title"])
    follow = {
        r["landmark_id"] for r in rows if "p301" in r["resolution"] or r["resolution"].startswith("p373")
    }
    fallback = sum(1 for r in rows if r["resolution"].startswith(("p373", "missing")))
    bound = math.ceil(titles / 50) + math.ceil(fallback / 100) + math.ceil(len(follow) / 50) + 1
    assert len(srv.log) == client.stats["http"] <= bound
    # the title lookups alone: ceil(titles / 50) calls
    assert sum(1 for r in rows if r["qid"]) > 800


def test_make_reruns_only_what_changed(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    review = tmp_path / "review"
    shutil.copytree(REVIEW, review)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [
        "make",
        "--no-print-directory",
        "-f",
        str(ROOT / "pipelines" / "hierarchy.mk"),
        f"PY={sys.executable}",
        f"OUT={tmp_path / 'out'}",
        f"REVIEW={review}",
        f"DATA={SAMPLE}",
        "table",
    ]
    subprocess.run(args, check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    assert (tmp_path / "out" / "hierarchy.csv").exists()
    with open(review / "decisions.csv", "a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(["Q23397", "lake", "river", "test"])
    dry = subprocess.run([*args, "-n"], check=True, env=env, cwd=ROOT, capture_output=True, text=True).stdout
    ran = [line.split(" hierarchy ")[1].split()[0] for line in dry.splitlines() if " hierarchy " in line]
    assert ran == ["apply"]
