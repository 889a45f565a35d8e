"""Review CSV validation (clear errors, exit 2), propose rules, apply priority, diff against an oracle."""

import shutil
from pathlib import Path

import networkx as nx
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hglv2.cli import main
from hglv2.hierarchy.clusters import load_clusters, nearest_anchors, propose
from hglv2.hierarchy.labels import (
    diff_tables,
    import_published,
    load_hierarchy_table,
    write_hierarchy_table,
)
from hglv2.schema import HIERARCHY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
REVIEW = ROOT / "data" / "review"
NET = ["--cache", str(SAMPLE / "wikidata_cache.jsonl"), "--offline"]


@pytest.fixture(scope="module")
def proposals(tmp_path_factory):
    from click.testing import CliRunner

    work = tmp_path_factory.mktemp("w")
    r = CliRunner()
    for args in (
        [
            "resolve",
            "--categories",
            SAMPLE / "train_label_to_category.csv",
            "--out",
            work / "resolved.parquet",
            *NET,
        ],
        ["graph", "--resolved", work / "resolved.parquet", "--out-dir", work, *NET],
        [
            "propose",
            "--resolved",
            work / "resolved.parquet",
            "--graph-dir",
            work,
            "--clusters",
            REVIEW / "clusters.csv",
            "--images",
            SAMPLE / "train.csv",
            "--out",
            work / "proposals.parquet",
            "--pending",
            work / "pending.csv",
        ],
    ):
        res = r.invoke(main, ["hierarchy", *map(str, args)])
        assert res.exit_code == 0, res.output
    return work / "proposals.parquet"


def apply(runner, proposals, review, out):
    return runner.invoke(
        main,
        [
            "hierarchy",
            "apply",
            "--proposals",
            str(proposals),
            "--clusters",
            str(review / "clusters.csv"),
            "--decisions",
            str(review / "decisions.csv"),
            "--overrides",
            str(review / "landmark_overrides.csv"),
            "--out",
            str(out),
        ],
    )


BAD = [
    (
        "decisions.csv",
        "supercategory_qid,supercategory,cluster,reason\nQ751876,château,spaceport,x\n",
        r"decisions.csv:2: cluster 'spaceport' is not in clusters.csv",
    ),
    (
        "decisions.csv",
        "supercategory_qid,supercategory,cluster,reason\nX751876,château,castle,x\n",
        r"decisions.csv:2: supercategory_qid 'X751876' is not a Wikidata item id",
    ),
    (
        "decisions.csv",
        "supercategory_qid,supercategory,cluster,reason\nQ1,a,castle,x\nQ1,a,palace,y\n",
        r"decisions.csv:3: Q1 -> 'palace' conflicts with row 2",
    ),
    (
        "decisions.csv",
        "supercategory,cluster\nchâteau,castle\n",
        r"decisions.csv:1: missing column\(s\) supercategory_qid",
    ),
    ("decisions.csv", "", r"decisions.csv: empty file"),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n99999999,castle,human-made,x\n",
        r"landmark_overrides.csv:2: unknown landmark_id 99999999",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n6631,castle,natural,x\n",
        r"landmark_overrides.csv:2: cluster 'castle' belongs to top 'human-made', not 'natural'",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n6631,castle,,\n",
        r"landmark_overrides.csv:2: empty reason",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\nabc,castle,,x\n",
        r"landmark_overrides.csv:2: landmark_id 'abc' is not an integer",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n6631,castle,,x\n6631,palace,,y\n",
        r"landmark_overrides.csv:3: landmark 6631 conflicts with row 2",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n6631,,,x\n",
        r"give a cluster, a top or both",
    ),
    (
        "landmark_overrides.csv",
        "landmark_id,cluster,top,reason\n6631,,underwater,x\n",
        r"landmark_overrides.csv:2: top 'underwater' is not one of human-made, natural",
    ),
    (
        "clusters.csv",
        "qid,label,cluster,top\nQ16970,church building,church,human-made\nQ2977,cathedral,church,natural\n",
        r"clusters.csv:3: cluster 'church' has top 'natural' here but 'human-made' at row 2",
    ),
    (
        "clusters.csv",
        "qid,label,cluster,top\nQ16970,church building,church,human-made\nQ16970,church,church,human-made\n",
        r"clusters.csv:3: Q16970 already listed at row 2",
    ),
    ("clusters.csv", 'qid,label,cluster,top\n"Q1,\n', r"clusters.csv: not a valid UTF-8 CSV"),
]


@pytest.mark.parametrize("name,text,message", BAD)
def test_bad_review_files_give_one_line_errors(proposals, tmp_path, cli_runner, name, text, message):
    review = tmp_path / "review"
    shutil.copytree(REVIEW, review)
    (review / name).write_text(text, encoding="utf-8")
    out = tmp_path / "h.parquet"
    res = apply(cli_runner, proposals, review, out)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()  # nothing half-written


def test_warnings_for_stale_and_relabelled_decisions(proposals, tmp_path, cli_runner):
    review = tmp_path / "review"
    shutil.copytree(REVIEW, review)
    with open(review / "decisions.csv", "a", encoding="utf-8") as fh:
        fh.write("Q55555555,gone class,castle,old\nQ16970,kirk,church,relabelled\nQ16970,kirk,church,dup\n")
    res = apply(cli_runner, proposals, review, tmp_path / "h.parquet")
    assert res.exit_code == 0, res.output
    assert "decisions.csv:5: stale decision: supercategory Q55555555 no longer occurs" in res.output
    assert "decisions.csv:6: Q16970 is labelled 'church building' now, not 'kirk'" in res.output
    assert "decisions.csv:7: duplicate of row 6" in res.output


def test_apply_priorities_and_provenance(proposals, tmp_path, cli_runner):
    out = tmp_path / "h.parquet"
    assert apply(cli_runner, proposals, REVIEW, out).exit_code == 0
    t = load_hierarchy_table(out)
    props = pd.read_parquet(proposals)
    assert (
        list(t.columns) == list(HIERARCHY_COLUMNS)
        and t["landmark_id"].tolist() == props["landmark_id"].tolist()
    )
    by = t.set_index("landmark_id")
    assert by.loc[6631, "provenance"] == "override" and by.loc[6631, "hierarchical_label"] == "church"
    assert by.loc[1418, "provenance"] == "override" and pd.isna(by.loc[1418, "hierarchical_label"])
    assert by.loc[1418, "natural_or_human_made"] == "human-made"
    chateaux = t[t["supercategory_qid"] == "Q751876"]
    assert (
        len(chateaux)
        and set(chateaux["provenance"]) == {"decision"}
        and set(chateaux["hierarchical_label"]) == {"castle"}
    )
    rule = props[props["status"] == "rule"]["landmark_id"]
    assert set(by.loc[rule, "provenance"]) <= {"rule", "decision", "override"}
    # levels agree with the cluster list everywhere
    top_of = load_clusters(REVIEW / "clusters.csv").top_of
    both = t.dropna(subset=["hierarchical_label", "natural_or_human_made"])
    pairs = zip(both["hierarchical_label"], both["natural_or_human_made"], strict=True)
    assert all(top_of[c] == top for c, top in pairs)
    # the CSV form round-trips and the Parquet bytes are deterministic
    write_hierarchy_table(t, tmp_path / "h.csv")
    pd.testing.assert_frame_equal(load_hierarchy_table(tmp_path / "h.csv"), t)
    write_hierarchy_table(t, tmp_path / "h2.parquet")
    assert (tmp_path / "h2.parquet").read_bytes() == out.read_bytes()


def test_propose_rules_on_a_small_graph():
    g = nx.DiGraph(
        [
            ("Qa", "Q16970"),
            ("Qb", "Q16560"),
            ("Qb", "Q33506"),
            ("Qc", "Q22698"),
            ("Qc", "Q23397"),
            ("Qd", "Qe"),
            ("Qe", "Qd"),
            ("Q2977", "Q16970"),
        ]
    )
    g = nx.relabel_nodes(g, {"Qa": "Q101", "Qb": "Q102", "Qc": "Q103", "Qd": "Q104", "Qe": "Q105"})
    for n in g:
        g.nodes[n]["label"] = n
    table = load_clusters(REVIEW / "clusters.csv")
    resolved = pd.DataFrame(
        {
            "landmark_id": [1, 2, 3, 4, 5, 6, 7],
            "qid": ["Q1", "Q2", "Q3", "Q4", "Q5", None, "Q7"],
            "p31": ["Q101", "Q102", "Q103", "Q104", "Q16970|Q2977|Q104", None, None],
            "category": "c",
            "label": "l",
            "resolution": "sitelink",
            "revision": 7,
        }
    )
    props, pending = propose(resolved, g, {}, table, {("train", 1): 5, ("train", 4): 100, ("index", 6): 999})
    p = props.set_index("landmark_id")
    assert (p.loc[1, "cluster"], p.loc[1, "status"], p.loc[1, "anchor_distance"]) == ("church", "rule", 1)
    assert p.loc[2, "reason"] == "tie" and p.loc[2, "top"] == "human-made" and pd.isna(p.loc[2, "cluster"])
    assert p.loc[3, "reason"] == "conflicting-tops" and pd.isna(p.loc[3, "top"])
    assert p.loc[4, "reason"] == "no-anchor"
    assert p.loc[5, "supercategory_qid"] == "Q2977"  # church building is an ancestor of cathedral
    assert p.loc[6, "reason"] == "unresolved:sitelink" and p.loc[7, "reason"] == "no-class"
    assert pending["key"].tolist()[0] == "Q104"  # most images first
    tie = pending.set_index("key").loc["Q102"]
    assert tie["candidates"] == "museum (human-made)|palace (human-made)"
    assert "Q102 Q102 > Q16560" in tie["paths"]


def test_nearest_anchor_is_bfs_distance():
    g = nx.DiGraph([("A", "B"), ("B", "C"), ("A", "D"), ("D", "F"), ("F", "E"), ("E", "C")])
    anchors = {"C": object(), "E": object()}
    h = nearest_anchors(
        nx.relabel_nodes(g, {k: f"Q{i}" for i, k in enumerate("ABCDEF", 1)}),
        "Q1",
        {"Q3": anchors["C"], "Q5": anchors["E"]},
    )
    assert h.distance == 2 and h.anchors == ("Q3",) and h.paths == (("Q1", "Q2", "Q3"),)


# ---- diff against a brute-force oracle

values = st.sampled_from([None, "church", "Church", "castle", "lake"])


@given(
    st.lists(
        st.tuples(st.integers(0, 30), values, values), min_size=0, max_size=25, unique_by=lambda t: t[0]
    ),
    st.lists(
        st.tuples(st.integers(0, 30), values, values), min_size=0, max_size=25, unique_by=lambda t: t[0]
    ),
)
def test_diff_matches_oracle(rows_a, rows_b):
    def table(rows, prov):
        df = pd.DataFrame({c: pd.Series([None] * len(rows), dtype="string") for c in HIERARCHY_COLUMNS})
        # ids 16..30 are index landmarks 0..14: the same integers in two numberings, other places
        df["landmark_id"] = pd.Series([r[0] - 16 if r[0] >= 16 else r[0] for r in rows], dtype="int64")
        df["numbering"] = pd.Series(["index" if r[0] >= 16 else "train" for r in rows], dtype="string")
        df["hierarchical_label"] = pd.Series([r[1] for r in rows], dtype="string")
        df["natural_or_human_made"] = pd.Series([r[2] for r in rows], dtype="string")
        df["provenance"] = prov
        return df

    res = diff_tables(table(rows_a, "rule"), table(rows_b, "published"))
    a = {r[0]: r for r in rows_a}
    b = {r[0]: r for r in rows_b}
    common = sorted(a.keys() & b.keys())
    assert res["landmarks"]["common"] == len(common)
    assert res["landmarks"]["only_in_a"] == len(a.keys() - b.keys())
    n_dis = 0
    for i, lev in ((1, "hierarchical_label"), (2, "natural_or_human_made")):
        both = [k for k in common if a[k][i] is not None and b[k][i] is not None]
        agree = [k for k in both if a[k][i].casefold() == b[k][i].casefold()]
        s = res["levels"][lev]
        assert (s["both"], s["agree"]) == (len(both), len(agree))
        assert s["only_a"] == sum(1 for k in common if a[k][i] is not None and b[k][i] is None)
        n_dis += len(both) - len(agree)
    assert len(res["disagreements"]) == n_dis
    conf = res["confusion"]
    assert int(conf.to_numpy().sum()) == len(common)
    for k in common:
        ra, cb = (a[k][1] or "(none)").casefold(), (b[k][1] or "(none)").casefold()
        assert conf.loc[ra, cb] >= 1


def test_diff_against_published_and_seed(proposals, tmp_path, cli_runner):
    out = tmp_path / "h.parquet"
    assert apply(cli_runner, proposals, REVIEW, out).exit_code == 0
    res = cli_runner.invoke(
        main,
        [
            "hierarchy",
            "diff",
            str(out),
            str(SAMPLE / "train_label_to_hierarchical.csv"),
            "--out-csv",
            str(tmp_path / "d.csv"),
            "--seed-decisions",
            str(tmp_path / "s.csv"),
            "--json",
            str(tmp_path / "d.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "hierarchical_label" in res.output and "castle -> palace" in res.output  # châteaux
    dis = pd.read_csv(tmp_path / "d.csv")
    pub = import_published(SAMPLE / "train_label_to_hierarchical.csv").set_index("landmark_id")
    ours = load_hierarchy_table(out).set_index("landmark_id")
    for r in dis.itertuples():
        assert ours.loc[r.landmark_id, r.level] == r.value_a and pub.loc[r.landmark_id, r.level] == r.value_b
    seed = pd.read_csv(tmp_path / "s.csv")
    assert list(seed.columns) == ["supercategory_qid", "supercategory", "cluster", "reason"] and len(seed)
    # oracle: B unanimous over the class's landmarks it labels, A disagreeing somewhere
    joined = ours.merge(pub, left_index=True, right_index=True, suffixes=("", "_b")).dropna(
        subset=["supercategory_qid", "hierarchical_label_b"]
    )
    expected = []
    for qid, grp in joined.groupby("supercategory_qid"):
        bs = set(grp["hierarchical_label_b"])
        if len(bs) == 1 and any(x != next(iter(bs)) for x in grp["hierarchical_label"].fillna("")):
            expected.append((qid, next(iter(bs))))
    assert sorted(zip(seed["supercategory_qid"], seed["cluster"], strict=True)) == sorted(expected)
    assert "Q16970" not in set(seed["supercategory_qid"])  # church building: most of B agrees with A


def test_validate_anchors_catches_wrong_qids_and_offline_misses(tmp_path, cli_runner):
    ok = cli_runner.invoke(
        main, ["hierarchy", "validate-anchors", "--clusters", str(REVIEW / "clusters.csv"), *NET]
    )
    assert ok.exit_code == 0 and "39 anchors match" in ok.output
    # a recording that answers for these anchors, with one QID given the wrong label
    from hglv2.hierarchy.clusters import validate_anchors
    from hglv2.hierarchy.wikidata import ResponseCache, WikidataClient

    client = WikidataClient(ResponseCache(SAMPLE / "wikidata_cache.jsonl"), offline=True)
    table = load_clusters(REVIEW / "clusters.csv")
    assert validate_anchors(client, table) == []
    text = (REVIEW / "clusters.csv").read_text(encoding="utf-8").replace("Q23413,castle,", "Q23413,palace,")
    (tmp_path / "clusters.csv").write_text(text, encoding="utf-8")
    res = cli_runner.invoke(
        main, ["hierarchy", "validate-anchors", "--clusters", str(tmp_path / "clusters.csv"), *NET]
    )
    assert res.exit_code == 2
    assert "clusters.csv:12: Q23413 label differs: written 'palace', Wikidata 'castle'" in res.output
    assert "Error: " in res.output and "1 of 39 anchor(s) do not match Wikidata" in res.output
    # a new anchor that the recording never saw: offline names the missing request
    (tmp_path / "clusters.csv").write_text(text + "Q1,universe,universe,natural\n", encoding="utf-8")
    res = cli_runner.invoke(
        main, ["hierarchy", "validate-anchors", "--clusters", str(tmp_path / "clusters.csv"), *NET]
    )
    assert (
        res.exit_code == 2
        and "Error: offline and 1 request(s) not in the cache: wbgetentities ids=Q1 (1)" in res.output
    )


def test_overrides_name_their_numbering(tmp_path, cli_runner):
    """Both numberings in one run: an override with numbering=index changes the index landmark only,
    never the train landmark with the same integer id; rows without a numbering mean train."""
    work = tmp_path / "w"
    for args in (
        ["resolve", "--categories", SAMPLE / "train_label_to_category.csv", "--categories",
         SAMPLE / "index_label_to_category.csv", "--out", work / "resolved.parquet", *NET],
        ["graph", "--resolved", work / "resolved.parquet", "--out-dir", work, *NET],
        ["propose", "--resolved", work / "resolved.parquet", "--graph-dir", work, "--clusters",
         REVIEW / "clusters.csv", "--out", work / "proposals.parquet", "--pending", work / "pending.csv"],
    ):  # fmt: skip
        res = cli_runner.invoke(main, ["hierarchy", *map(str, args)])
        assert res.exit_code == 0, res.output
    props = pd.read_parquet(work / "proposals.parquet")
    keys = set(zip(props["numbering"], props["landmark_id"], strict=True))
    both = sorted({lid for n, lid in keys if n == "index"} & {lid for n, lid in keys if n == "train"})
    assert both, "the sample has landmark ids in both numberings"
    lid = both[0]
    review = tmp_path / "review"
    shutil.copytree(REVIEW, review)
    (review / "landmark_overrides.csv").write_text(
        "landmark_id,cluster,top,reason,numbering\n"
        f"{lid},waterfall,natural,test index,index\n"
        "6631,church,human-made,row without numbering,\n",
        encoding="utf-8",
    )
    out = tmp_path / "h.parquet"
    res = apply(cli_runner, work / "proposals.parquet", review, out)
    assert res.exit_code == 0, res.output
    t = load_hierarchy_table(out).set_index(["numbering", "landmark_id"])
    assert t.loc[("index", lid), "hierarchical_label"] == "waterfall"
    assert t.loc[("index", lid), "provenance"] == "override"
    assert t.loc[("train", lid), "provenance"] != "override"
    assert t.loc[("train", 6631), "provenance"] == "override"
    assert "index numbering" in res.output and "train numbering" in res.output
    for text, message in (
        (f"landmark_id,cluster,top,reason,numbering\n{lid},lake,natural,x,test\n", "numbering 'test' is not"),
        (
            "landmark_id,cluster,top,reason,numbering\n99999,lake,natural,x,index\n",
            "landmark_overrides.csv:2: unknown landmark_id 99999 in the index numbering",
        ),
    ):
        (review / "landmark_overrides.csv").write_text(text, encoding="utf-8")
        res = apply(cli_runner, work / "proposals.parquet", review, tmp_path / "bad.parquet")
        assert res.exit_code == 2 and message in res.output, res.output
