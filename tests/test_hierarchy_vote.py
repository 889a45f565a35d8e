"""Image-model votes: prompts, per-image decisions, majorities, the review loop, the cross-numbering
check, and the open_clip stage end to end on a tiny model (CPU, random weights, no network)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from hglv2.errors import InputError
from hglv2.hierarchy import consistency as hc
from hglv2.hierarchy import vote as hv
from hglv2.schema import HIERARCHY_COLUMNS

TOP_OF = {"church": "human-made", "bridge": "human-made", "lake": "natural", "mountain": "natural"}


def _table(rows):
    """A hierarchy table from (numbering, landmark_id, supercategory, cluster, top, provenance)."""
    df = pd.DataFrame(
        [
            {
                **dict.fromkeys(HIERARCHY_COLUMNS),
                "numbering": n,
                "landmark_id": lid,
                "supercategory": sup,
                "hierarchical_label": c,
                "natural_or_human_made": t,
                "provenance": p,
            }
            for n, lid, sup, c, t, p in rows
        ],
        columns=list(HIERARCHY_COLUMNS),
    )
    return df.astype({c: "string" for c in HIERARCHY_COLUMNS if c != "landmark_id"})


def _prompts():
    table = _table(
        [
            ("train", 1, "cathedral", "church", "human-made", "rule"),
            ("train", 2, "cathedral", "church", "human-made", "rule"),
            ("train", 3, "cathedral", "bridge", "human-made", "decision"),
            ("train", 4, "tarn", "lake", "natural", "rule"),
            ("train", 5, "fountain", None, None, None),
        ]
    )
    return hv.build_prompts(table, {"mountain": "mountain", "lake": "lake", "tarn": "bridge"}, TOP_OF)


def test_prompts_are_the_clustered_supercategory_names_and_anchor_labels():
    p = _prompts()
    assert p.names == ("cathedral", "lake", "mountain", "tarn")
    assert p.clusters == ("church", "lake", "mountain")
    # "cathedral": 2 church vs 1 bridge -> church; "tarn" from the table wins over the anchor label
    assert [p.clusters[c] for c in p.cluster_of] == ["church", "lake", "mountain", "lake"]
    assert p.texts()[0] == "A picture of a cathedral"


def test_argmax_knn_and_the_known_top_restriction():
    p = _prompts()
    text = np.eye(4)
    img = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.0, 0.2, 0.9], [0.1, 0.5, 0.0, 0.0]])
    assert [p.clusters[c] for c in hv.predict_images(img, text, p)] == ["church", "lake", "lake"]
    # a known human-made top keeps only church prompts
    got = hv.predict_images(img, text, p, tops=[None, "human-made", None])
    assert [p.clusters[c] for c in got] == ["church", "church", "lake"]
    # kNN: exp(100 s) weights; two lake prompts close behind one mountain prompt outweigh it
    img2 = np.array([[0.0, 0.99, 1.0, 0.99]])
    assert p.clusters[hv.predict_images(img2, text, p, method="knn")[0]] == "lake"
    assert p.clusters[hv.predict_images(img2, text, p)[0]] == "mountain"


def _votes(accept_above=None):
    p = _prompts()
    rows = pd.DataFrame(
        {
            "numbering": ["train"] * 5 + ["index"] * 2,
            "landmark_id": [5, 5, 5, 5, 6, 5, 5],
            "image": range(7),
        }
    )
    preds = np.array([0, 0, 0, 1, 2, 0, 1])  # church church church lake | mountain | church lake
    return hv.votes_table(rows, preds, p, accept_above)


def test_majority_vote_share_runner_up_margin_and_auto_accept():
    v = _votes(accept_above=0.7)
    r = v.set_index(["numbering", "landmark_id"])
    assert list(zip(v["numbering"], v["landmark_id"], strict=True)) == [
        ("train", 5),
        ("train", 6),
        ("index", 5),
    ]
    assert r.loc[("train", 5), "cluster"] == "church" and r.loc[("train", 5), "share"] == 0.75
    assert r.loc[("train", 5), "runner_up"] == "lake" and r.loc[("train", 5), "margin"] == 0.5
    assert r.loc[("train", 5), "status"] == "accepted"
    assert r.loc[("train", 6), "status"] == "accepted" and pd.isna(r.loc[("train", 6), "runner_up"])
    # a tie: first name wins, margin 0, never accepted automatically
    assert r.loc[("index", 5), "cluster"] == "church" and r.loc[("index", 5), "margin"] == 0
    assert r.loc[("index", 5), "status"] == "pending"
    assert (_votes()["status"] == "pending").all()
    s = hv.vote_summary(v, open_landmarks=3)
    assert s["status"] == {"accepted": 2, "pending": 1} and s["images"] == 7


def test_accepted_votes_fill_open_landmarks_and_rejected_ones_do_not(tmp_path):
    v = _votes()
    table = _table([("train", 5, "x", None, None, None), ("train", 6, "y", None, None, None),
                    ("index", 5, "z", None, None, None)])  # fmt: skip
    path = tmp_path / "vote_decisions.csv"
    path.write_text(
        "numbering,landmark_id,cluster,decision,reason\n"
        "train,5,church,accept,photos show a church\n"
        "train,6,mountain,reject,it is a hill park\n"
        "train,99,lake,accept,gone\n"
    )
    warnings: list[str] = []
    decisions = hv.load_vote_decisions(path, v, warnings)
    assert warnings == [f"{path}:4: stale: landmark 99 (train) has no vote"]
    out, changed = hv.apply_votes(table, hv.accepted_votes(v, decisions))
    assert changed == 1
    got = out.set_index(["numbering", "landmark_id"])
    assert tuple(got.loc[("train", 5), ["hierarchical_label", "natural_or_human_made", "provenance"]]) == (
        "church",
        "human-made",
        "vote",
    )
    assert pd.isna(got.loc[("train", 6), "hierarchical_label"])
    # auto-accepted votes count unless rejected
    auto = _votes(accept_above=0.7)
    out, changed = hv.apply_votes(table, hv.accepted_votes(auto, decisions))
    assert changed == 1 and pd.isna(
        out.set_index(["numbering", "landmark_id"]).loc[("train", 6), "hierarchical_label"]
    )
    # a label already known is never changed
    known = _table([("train", 5, "x", "bridge", "human-made", "rule")])
    assert hv.apply_votes(known, hv.accepted_votes(auto, {}))[1] == 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("train,5,lake,accept,x", "cluster 'lake' is not the vote's ('church')"),
        ("train,5,church,maybe,x", "decision 'maybe' is not one of accept, reject"),
        ("train,5,church,accept,", "empty reason"),
        ("west,5,church,accept,x", "numbering 'west'"),
        ("train,five,church,accept,x", "landmark_id 'five' is not an integer"),
    ],
)
def test_bad_vote_decisions_name_file_and_row(tmp_path, line, message):
    path = tmp_path / "d.csv"
    path.write_text("numbering,landmark_id,cluster,decision,reason\n" + line + "\n")
    with pytest.raises(InputError, match=re.escape(f"d.csv:2: {message}")):
        hv.load_vote_decisions(path, _votes(), [])


def test_numberings_are_compared_through_the_queries_and_aligned_both_ways(tmp_path):
    (tmp_path / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n"
        + "".join(f"{q:016x},{t},Private\n" for q, t in [(1, 5), (2, 6), (3, 7), (4, 8), (5, 8), (6, "")])
    )
    (tmp_path / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n" + "".join(f"{q:016x},{1000 + q:016x},Private\n" for q in range(1, 7))
    )
    (tmp_path / "index_image_to_landmark.csv").write_text(
        "id,landmark_id\n"
        + "".join(
            f"{1000 + q:016x},{lid}\n" for q, lid in [(1, 50), (2, 60), (3, 70), (4, 80), (5, 81), (6, 90)]
        )
    )
    links = hc.query_links(hc.link_files(tmp_path))
    pairs = hc.place_pairs(links)
    assert pairs.values.tolist() == [[5, 50, 1], [6, 60, 1], [7, 70, 1], [8, 80, 1], [8, 81, 1]]
    table = _table(
        [
            ("train", 5, "a", "church", "human-made", "rule"),
            ("train", 6, "b", "lake", "natural", "rule"),
            ("train", 7, "c", "bridge", "human-made", "vote"),
            ("train", 8, "d", None, None, None),
            ("index", 50, "a", "church", "human-made", "rule"),
            ("index", 60, "b", "bridge", "human-made", "rule"),
            ("index", 70, "c", "church", "human-made", "decision"),
            ("index", 80, "d", "lake", "natural", "rule"),
            ("index", 81, "d", "mountain", "natural", "rule"),
        ]
    )
    cmp = hc.compare_numberings(table, pairs)
    assert cmp["status"].tolist() == [
        "agree",
        "top differs",
        "cluster differs",
        "one side unlabelled",
        "one side unlabelled",
    ]
    s = hc.consistency_summary(cmp)
    assert s["status"]["top differs"] == 1 and len(s["disagreements"]) == 2
    out, counts = hc.align(table, cmp, "index-to-query")
    assert counts == {"changed": 2, "ambiguous": 0, "unchanged": 1}
    assert hc.compare_numberings(out, pairs)["status"].tolist()[:3] == ["agree"] * 3
    assert (out["provenance"] == "aligned").sum() == 2
    out, counts = hc.align(table, cmp, "query-to-index")
    assert counts == {"changed": 2, "ambiguous": 1, "unchanged": 1}  # train 8 links to lake and mountain
    with pytest.raises(InputError, match="--align 'sideways'"):
        hc.align(table, cmp, "sideways")


# --------------------------------------------------------------------------------------------
# the open_clip stage on a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("open_clip")
    from tests.fixtures.vote import tiny_model

    return tiny_model(tmp_path_factory.mktemp("model"))


def _run(world, tmp_path, weights, accept_above=None):
    from hglv2.evaluation.zeroshot import ModelSettings, vote_features
    from tests.fixtures.vote import TINY_NAME

    plan = hv.plan_vote(world["proposals"], world["clusters"], world["metadata"])
    settings = ModelSettings(model=TINY_NAME, weights=str(weights), batch_size=4, progress=False)
    f = vote_features(plan.prompts.texts(), plan.image_ids, world["images"], tmp_path / "cache", settings)
    out = tmp_path / "votes.parquet"
    summary = hv.finish_vote(
        plan, f.ids, f.images, f.text, out, tmp_path / "review.csv", accept_above=accept_above
    )
    return {**summary, "embedding": f.counts}, out


def test_tiny_model_votes_are_deterministic_and_resume_from_the_shard_cache(tiny, tmp_path):
    from tests.fixtures.vote import vote_world

    _, weights = tiny
    world = vote_world(tmp_path / "w")
    s1, out = _run(world, tmp_path, weights)
    v1 = out.read_bytes()
    votes = hv.read_votes(out)
    assert set(zip(votes["numbering"], votes["landmark_id"], strict=True)) == {
        ("train", 12),
        ("train", 13),
        ("index", 14),
    }
    assert (
        (votes["images"] == 3).all()
        and s1["embedding"]["shards"] == 2
        and s1["embedding"]["shards_cached"] == 0
    )
    # landmark 13 has a known human-made top: its vote stays under it
    assert votes.set_index("landmark_id").loc[13, "top"] == "human-made"
    review = pd.read_csv(tmp_path / "review.csv")
    assert len(review) == 3 and review["decision"].isna().all()
    s2, out = _run(world, tmp_path, weights)
    assert out.read_bytes() == v1 and s2["embedding"]["shards_cached"] == 2
    # a fresh cache gives the same bytes too
    (tmp_path / "again").mkdir()
    _, out3 = _run(world, tmp_path / "again", weights)
    assert out3.read_bytes() == v1
    s4, _ = _run(world, tmp_path, weights, accept_above=0.0)
    assert s4["status"]["accepted"] == sum(1 for m in hv.read_votes(out)["margin"] if m > 0)


def test_missing_weights_stop_with_one_line_and_never_download(tiny, monkeypatch, tmp_path):
    from hglv2.evaluation import zeroshot

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError) as err:
        zeroshot.load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "--weights FILE" in msg and "--download" in msg and "\n" not in msg
    with pytest.raises(InputError, match="no such weights file"):
        zeroshot.load_clip("ViT-B-32", weights=tmp_path / "nope.pt")


def test_sample_images_draw_every_listed_image_deterministically(tmp_path):
    import tarfile

    from pipelines.sample_images import render_sample
    from tests.fixtures.gldv2_example import write_example

    files = write_example(tmp_path / "meta", n_landmarks=8, n_index_landmarks=4, max_images=2)
    counts = render_sample(tmp_path / "meta", tmp_path / "a", size=32)
    render_sample(tmp_path / "meta", tmp_path / "b", size=32)
    for folder in ("train", "index", "test"):
        a, b = (sorted((tmp_path / x / folder).glob("*.tar")) for x in ("a", "b"))
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with tarfile.open(tmp_path / "a" / "train" / "images_000.tar") as tf:
        names = {m.name.rsplit("/", 1)[1][:-4] for m in tf}
    train_ids = set(pd.read_csv(files["train.csv"], dtype=str)["id"])
    assert names == train_ids and counts["train"] == len(train_ids)
    truth = pd.read_csv(tmp_path / "a" / "truth.csv")
    assert truth["cluster"].notna().all() and set(truth["source"]) <= {"published", "hidden"}


# --------------------------------------------------------------------------------------------
# the commands: vote -> review rows -> apply (accept / reject) -> export; weights; consistency


def _images(w):
    return [x for p in w["images"] for x in ("--images", p)]


def _cli(runner, *args):
    from hglv2.cli import main

    return runner.invoke(main, ["hierarchy", *map(str, args)], catch_exceptions=False)


def test_vote_apply_export_on_the_command_line(tiny, tmp_path, cli_runner):
    import pyarrow.parquet as pq

    from hglv2.cli import main
    from tests.fixtures.vote import vote_world

    config, weights = tiny
    w = vote_world(tmp_path / "w")
    vote_args = [
        "vote", "--proposals", w["proposals"], "--clusters", w["clusters"], "--metadata", w["metadata"],
        *_images(w), "--out", tmp_path / "votes.parquet", "--review-csv", tmp_path / "review.csv",
        "--cache-dir", tmp_path / "cache", "--model-config", config, "--weights", weights,
        "--batch-size", 4, "--json", tmp_path / "vote.json",
    ]  # fmt: skip
    r = _cli(cli_runner, *vote_args)
    assert r.exit_code == 0, r.output
    assert "vote: 3 of 3 landmarks without a cluster voted (train 2, index 1 open)" in r.output
    assert "pending review: 3" in r.output
    first = (tmp_path / "votes.parquet").read_bytes()
    assert _cli(cli_runner, *vote_args).exit_code == 0 and (tmp_path / "votes.parquet").read_bytes() == first
    votes = hv.read_votes(tmp_path / "votes.parquet").set_index(["numbering", "landmark_id"])
    decisions = tmp_path / "vote_decisions.csv"
    decisions.write_text(
        "numbering,landmark_id,cluster,decision,reason\n"
        f"train,12,{votes.loc[('train', 12), 'cluster']},accept,the photos agree\n"
        f"train,13,{votes.loc[('train', 13), 'cluster']},reject,not what the photos show\n"
    )
    apply_args = [
        "apply", "--proposals", w["proposals"], "--clusters", w["clusters"], "--decisions", w["decisions"],
        "--overrides", w["overrides"], "--votes", tmp_path / "votes.parquet", "--vote-decisions", decisions,
        "--out", tmp_path / "hierarchy.parquet", "--json", tmp_path / "apply.json",
    ]  # fmt: skip
    r = _cli(cli_runner, *apply_args)
    assert r.exit_code == 0, r.output
    assert "votes: 3 (0 moot: labelled by a review), accepted 1 (0 automatically), rejected 1" in r.output
    assert "pending 1; 1 label(s) set by votes" in r.output
    export = ["export", "--metadata", w["metadata"], "--hierarchy", tmp_path / "hierarchy.parquet"]
    r = cli_runner.invoke(main, [*map(str, export), "--out", str(tmp_path / "splits")])
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "splits" / "train_full.parquet").to_pandas()
    by = t.groupby("landmark_id")["hierarchical_label"].first()
    assert by[12] == votes.loc[("train", 12), "cluster"]  # accepted: exported
    assert pd.isna(by[13])  # rejected: still unknown
    # auto-accept: every vote with a strict majority
    r = _cli(cli_runner, *vote_args, "--accept-above", "0.0")
    assert r.exit_code == 0 and "accepted automatically (share >= 0): " in r.output


def test_vote_without_weights_is_one_error_line(tiny, tmp_path, cli_runner, monkeypatch):
    from tests.fixtures.vote import vote_world

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    w = vote_world(tmp_path / "w")
    args = [
        "vote", "--proposals", w["proposals"], "--clusters", w["clusters"], "--metadata", w["metadata"],
        *_images(w), "--out", tmp_path / "votes.parquet", "--model", "ViT-B-32",
        "--pretrained", "laion2b_s34b_b79k",
    ]  # fmt: skip
    r = _cli(cli_runner, *args)
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: no weights for ViT-B-32 laion2b_s34b_b79k")
    assert "--weights FILE" in lines[0] and "--download" in lines[0]
    assert not (tmp_path / "votes.parquet").exists()


def test_diff_align_and_report_show_the_two_numberings(tiny, tmp_path, cli_runner):
    from tests.fixtures.vote import vote_world

    config, weights = tiny
    w = vote_world(tmp_path / "w")
    review = ["--proposals", w["proposals"], "--clusters", w["clusters"], "--decisions", w["decisions"]]
    review += ["--overrides", w["overrides"]]
    r = _cli(cli_runner, "apply", *review, "--out", tmp_path / "h.parquet")
    assert r.exit_code == 0, r.output
    published = tmp_path / "train_label_to_hierarchical.csv"
    published.write_text(
        "landmark_id,category,supercategory,hierarchical_label,natural_or_human_made\n"
        "10,c,church building,church,human-made\n11,c,lake,mountain,natural\n"
    )
    r = _cli(
        cli_runner,
        "diff",
        tmp_path / "h.parquet",
        published,
        "--metadata",
        w["metadata"],
        "--json",
        tmp_path / "d.json",
    )
    assert r.exit_code == 0, r.output
    assert (
        "cross-numbering: 1 places with a train and an index id (1 queries): 0 agree, 1 cluster differs"
        in r.output
    )
    assert "  train 10 church (human-made) <> index 10 bridge (human-made): cluster differs" in r.output
    # the authors' rule: the index side takes the query's (train) labels
    r = _cli(
        cli_runner,
        "apply",
        *review,
        "--out",
        tmp_path / "a.parquet",
        "--align",
        "index-to-query",
        "--metadata",
        w["metadata"],
    )
    assert (
        r.exit_code == 0
        and "align index-to-query: 1 landmark(s) changed, 0 unchanged, 0 ambiguous" in r.output
    )
    from hglv2.hierarchy.labels import load_hierarchy_table

    t = load_hierarchy_table(tmp_path / "a.parquet").set_index(["numbering", "landmark_id"])
    assert tuple(t.loc[("index", 10), ["hierarchical_label", "provenance"]]) == ("church", "aligned")
    # the export manifest lists the disagreement too
    from hglv2.cli import main

    export = [
        "export",
        "--metadata",
        w["metadata"],
        "--hierarchy",
        tmp_path / "h.parquet",
        "--out",
        tmp_path / "s",
    ]
    assert cli_runner.invoke(main, [*map(str, export)]).exit_code == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())["numberings"]
    assert m["status"]["cluster differs"] == 1 and m["pairs"] == 1
    assert [(d["train_landmark_id"], d["index_landmark_id"]) for d in m["disagreements"]] == [(10, 10)]
    r = _cli(cli_runner, "apply", *review, "--out", tmp_path / "x.parquet", "--align", "index-to-query")
    assert r.exit_code == 2 and "Error: --align needs --metadata DIR" in r.output
    # the review page, with thumbnails from the shards
    vote = ["vote", "--proposals", w["proposals"], "--clusters", w["clusters"], "--metadata", w["metadata"]]
    vote += [*_images(w), "--out", tmp_path / "v.parquet", "--cache-dir", tmp_path / "c"]
    vote += ["--review-csv", tmp_path / "v.csv", "--model-config", config, "--weights", weights]
    assert _cli(cli_runner, *vote).exit_code == 0
    page = tmp_path / "review.html"
    report = ["report", "--hierarchy", tmp_path / "h.parquet", "--proposals", w["proposals"]]
    report += ["--votes", tmp_path / "v.parquet", "--published", published, "--metadata", w["metadata"]]
    r = _cli(cli_runner, *report, *_images(w), "--out", page, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "review page: 6 landmarks, 18 images, 6 to review, 18 thumbnails" in r.output
    text = page.read_text(encoding="utf-8")
    assert (
        text.count("data:image/jpeg;base64,") >= 12
        and "train 10: church (human-made) / index 10: bridge" in text
    )


def test_without_open_clip_the_vote_names_its_extra(monkeypatch):
    import sys

    from hglv2.evaluation import zeroshot

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(InputError, match=re.escape("the vote needs open_clip: pip install 'hglv2[vote]'")):
        zeroshot.load_clip("ViT-B-32", random_seed=0)
