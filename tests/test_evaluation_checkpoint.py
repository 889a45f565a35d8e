"""hglv2 evaluate --checkpoint: a tiny trained run evaluated from the CLI (splits, Revisited
Oxford/Paris with a pickled ground truth, the landmark table), and unsafe pickles refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.evaluation import ImageList, embed_images, load_trained_model
from hglv2.evaluation.protocols import _revisited_transform
from hglv2.metrics import evaluate
from hglv2.metrics.revisited import gnd_to_json, load_gnd, load_gnd_pickle, revisited_map
from hglv2.train import Trainer
from tests.fixtures.training import tiny_synthetic_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder trained for 2 steps on tiny synthetic data (seconds on CPU)."""
    base = tmp_path_factory.mktemp("ckpt")
    cfg = tiny_synthetic_config(base / "data", steps=2, log_every=1, checkpoint_every=0)
    Trainer(cfg, base / "run", progress=False, resume=False).fit()
    return base


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_checkpoint_splits_match_the_trainer(run, tmp_path):
    res = _cli("evaluate", "--checkpoint", run / "run", "--data", run / "data", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["query"] == "query" and out["gallery"] == "index"
    eval_dir = run / "run" / "eval" / "data"
    q = np.load(eval_dir / "query_embeddings.npy")
    g = np.load(eval_dir / "index_embeddings.npy")
    ql, gl = np.load(eval_dir / "query_labels.npy"), np.load(eval_dir / "index_labels.npy")
    assert q.dtype == np.float32 and ql.shape == (len(q), 3)
    # the same numbers as the trainer's own embedding of the same splits (its datasets, its options)
    from hglv2.evaluation import embed_images
    from hglv2.train import build_dataset

    model, cfg = load_trained_model(run / "run")
    qd = build_dataset(cfg, run / "data", "query", train=False)
    gd = build_dataset(cfg, run / "data", "index", train=False)
    trainer_options = dict(batch_size=64, device=torch.device("cpu"), amp=False, progress=False)
    trainer_options.update(check_finite=False, with_labels=True)
    qe, qlab = embed_images(model, qd, **trainer_options)
    ge, _ = embed_images(model, gd, **trainer_options)
    np.testing.assert_allclose(q, qe, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, ge, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ql, qlab)
    ref = evaluate(qe, qlab, ge, gl)
    assert out["results"]["H-AP"] == pytest.approx(ref["H-AP"], rel=1e-6)
    assert out["results"]["mAP@100_level0"] == pytest.approx(ref["mAP@100_level0"], rel=1e-6)
    # the written embeddings are reusable with -e/-l
    res = _cli(
        "evaluate",
        "-e",
        eval_dir / "query_embeddings.npy",
        "-l",
        eval_dir / "query_labels.npy",
        "--gallery-embeddings",
        eval_dir / "index_embeddings.npy",
        "--gallery-labels",
        eval_dir / "index_labels.npy",
        "--json",
        tmp_path / "e.json",
    )
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "e.json").read_text())["results"]
    assert again["H-AP"] == pytest.approx(out["results"]["H-AP"], rel=1e-9)
    # a checkpoint file inside the run, query against itself, reference convention
    res = _cli(
        "evaluate",
        "--checkpoint",
        run / "run" / "checkpoints" / "last.pt",
        "--data",
        run / "data",
        "--query",
        "index",
        "--out",
        tmp_path / "emb",
        "--hap-convention",
        "reference",
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "emb" / "index_embeddings.npy").is_file()
    assert not (tmp_path / "emb" / "query_embeddings.npy").exists()


def test_checkpoint_errors(run, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "config.yaml").write_text((run / "run" / "config.yaml").read_text())
    (bad / "model.pt").write_bytes(b"not a checkpoint")
    res = _cli("evaluate", "--checkpoint", bad, "--data", run / "data")
    assert (
        res.exit_code == 2 and res.output.startswith("Error: ") and "not a readable checkpoint" in res.output
    )

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Evil()}, bad / "model.pt")
    res = _cli("evaluate", "--checkpoint", bad, "--data", run / "data")
    assert res.exit_code == 2 and "not a readable checkpoint" in res.output
    assert not (tmp_path / "pwned").exists()
    if not torch.cuda.is_available():
        res = _cli("evaluate", "--checkpoint", run / "run", "--data", run / "data", "--embed-device", "cuda")
        assert res.exit_code == 2 and "CUDA is not available" in res.output
    res = _cli("evaluate", "--checkpoint", tmp_path / "nope", "--data", run / "data")
    assert res.exit_code == 2 and "no such run folder or checkpoint file" in res.output
    res = _cli("evaluate", "--checkpoint", run / "run", "--data", run / "data", "--query", "nosuch")
    assert res.exit_code == 2 and "nosuch.parquet: no such split" in res.output


# ---------------------------------------------------------------------------- Revisited Ox/Paris


def make_revisited(folder, name, array_lists: bool = True):
    """A tiny folder in the official layout: jpg/<name>.jpg and gnd_<name>.pkl."""
    rng = np.random.default_rng(len(name))
    (folder / "jpg").mkdir(parents=True)
    imlist = [f"{name}_{k:03d}" for k in range(12)]
    qimlist = [f"{name}_q{k}" for k in range(3)]
    for im in imlist + qimlist:
        arr = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "jpg" / f"{im}.jpg")
    conv = (lambda x: np.array(x, dtype=np.int64)) if array_lists else list
    gnd = [
        {"easy": conv([0, 3]), "hard": conv([5]), "junk": conv([7]), "bbx": [4.0, 2.5, 40.0, 30.0]},
        {"easy": conv([]), "hard": conv([1, 2]), "junk": conv([]), "bbx": np.array([0.0, 0.0, 56.0, 40.0])},
        {"easy": conv([8, 9, 10]), "hard": conv([]), "junk": conv([11]), "bbx": (10, 5, 30, 35)},
    ]
    with open(folder / f"gnd_{name}.pkl", "wb") as fh:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, fh, protocol=2)
    return folder


def test_revisited_protocol(run, tmp_path):
    folder = make_revisited(tmp_path / "roxford5k", "roxford5k")
    res = _cli(
        "evaluate",
        "--checkpoint",
        run / "run",
        "--protocol",
        "roxford5k",
        "--data",
        folder,
        "--imsize",
        32,
        "--json",
        tmp_path / "ox.json",
    )
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ox.json").read_text())["results"]
    # by hand: crop the queries to bbx, resize 32 x 32, rank, Medium / Hard mAP
    gnd = load_gnd(folder / "gnd_roxford5k.pkl")
    model, _ = load_trained_model(run / "run")
    t = _revisited_transform(32)
    q = embed_images(
        model,
        ImageList(folder, [f"jpg/{x}.jpg" for x in gnd["qimlist"]], t, [g["bbx"] for g in gnd["gnd"]]),
        progress=False,
    )
    g = embed_images(model, ImageList(folder, [f"jpg/{x}.jpg" for x in gnd["imlist"]], t), progress=False)
    ref = revisited_map(q @ g.T, gnd["gnd"])
    assert got["mAP_medium"] == pytest.approx(ref["mAP_medium"]) and got["mAP_hard"] == pytest.approx(
        ref["mAP_hard"]
    )
    assert got["n_skipped_hard"] == 1  # query 2 has no hard positive
    whole = embed_images(model, ImageList(folder, [f"jpg/{gnd['qimlist'][0]}.jpg"], t), progress=False)
    assert not np.allclose(whole[0], q[0])  # the crop changes the query


def test_gnd_pickle_structure_and_json(tmp_path):
    folder = make_revisited(tmp_path / "rparis6k", "rparis6k")
    gnd = load_gnd_pickle(folder / "gnd_rparis6k.pkl")
    assert gnd["gnd"][0] == {"easy": [0, 3], "hard": [5], "junk": [7], "bbx": [4.0, 2.5, 40.0, 30.0]}
    assert gnd["gnd"][1]["easy"] == [] and gnd["gnd"][2]["bbx"] == [10.0, 5.0, 30.0, 35.0]
    gnd_to_json(folder / "gnd_rparis6k.pkl", tmp_path / "g.json")
    assert load_gnd(tmp_path / "g.json") == gnd
    for proto in (0, 3, 4, 5):  # every protocol's numpy globals are admitted
        data = {
            "imlist": ["a", "b"],
            "qimlist": ["q"],
            "gnd": [
                {
                    "easy": np.array([1]),
                    "hard": np.array([], dtype=np.int64),
                    "junk": [0],
                    "bbx": np.array([1.0, 2.0, 3.0, 4.0]),
                    "w": np.float64(2.0),
                }
            ],
        }
        (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=proto))
        assert load_gnd_pickle(tmp_path / "p.pkl")["gnd"][0]["easy"] == [1]


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_malicious_gnd_pickles_are_refused(tmp_path, proto):
    marker = tmp_path / "pwned"
    for payload in (_System(f"touch {marker}"), _Eval(), np.array([object()], dtype=object)):
        data = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "junk": payload}]}
        (tmp_path / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(data, protocol=proto))
        with pytest.raises(InputError, match=r"gnd_roxford5k.pkl: not an accepted ground-truth pickle \(.*"):
            load_gnd_pickle(tmp_path / "gnd_roxford5k.pkl")
    assert not marker.exists()
    res = _cli("evaluate", "--checkpoint", tmp_path, "--protocol", "roxford5k", "--data", tmp_path)
    assert (
        res.exit_code == 2 and res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1
    )


def test_gnd_structure_errors(tmp_path):
    for data, msg in (
        ([1, 2], "expected a dict"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": []}, "one entry per query"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3]}]}, r"gnd\[0\].easy has an index outside"),
        ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "bbx": [3, 1, 2, 4]}]}, "bbx must be"),
    ):
        (tmp_path / "g.pkl").write_bytes(pickle.dumps(data))
        with pytest.raises(InputError, match=msg):
            load_gnd_pickle(tmp_path / "g.pkl")


def test_landmark_table(run, tmp_path):
    ox = make_revisited(tmp_path / "roxford5k", "roxford5k", array_lists=False)
    pa = make_revisited(tmp_path / "rparis6k", "rparis6k")
    res = _cli(
        "evaluate",
        "--checkpoint",
        run / "run",
        "--landmark-table",
        "--roxford",
        ox,
        "--rparis",
        pa,
        "--gldv2",
        run / "data",
        "--imsize",
        32,
        "--json",
        tmp_path / "t.json",
    )
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "t.json").read_text())
    row = table["results"]
    assert table["columns"] == [
        "ROxf-M",
        "ROxf-H",
        "RPar-M",
        "RPar-H",
        "GLDv2 mAP@100",
        "H-AP",
        "ASI",
        "NDCG",
    ]
    assert all(0.0 <= v <= 1.0 for v in row.values())
    assert "ROxf-M" in res.output.splitlines()[0]
    splits = json.loads(
        (
            _cli(
                "evaluate",
                "--checkpoint",
                run / "run",
                "--data",
                run / "data",
                "--out",
                tmp_path / "e",
                "--json",
                tmp_path / "s.json",
            ),
            (tmp_path / "s.json").read_text(),
        )[1]
    )["results"]
    assert row["H-AP"] == pytest.approx(splits["H-AP"]) and row["GLDv2 mAP@100"] == pytest.approx(
        splits["mAP@100_level0"]
    )
    res = _cli("evaluate", "--checkpoint", run / "run", "--landmark-table", "--roxford", ox)
    assert res.exit_code == 2 and "--landmark-table needs --rparis, --gldv2" in res.output


def test_checkpoint_on_a_converted_dataset(run, tmp_path):
    from hglv2.convert import convert
    from tests.fixtures.datasets import make_sop

    root = make_sop(tmp_path / "Stanford_Online_Products", images=True)
    convert("sop", root, tmp_path / "sop")
    res = _cli(
        "evaluate",
        "--checkpoint",
        run / "run",
        "--data",
        tmp_path / "sop",
        "--gallery",
        "test",
        "--out",
        tmp_path / "e",
        "--json",
        tmp_path / "s.json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["query"] == "test" and out["gallery"] is None  # the test split against itself
    assert out["results"]["n_queries"] == 3 and out["results"]["n_gallery"] == 2
    assert np.load(tmp_path / "e" / "test_labels.npy").tolist() == [[11319, 1], [11319, 1], [11400, 3]]


@pytest.mark.parametrize("with_copies", [True, False])
def test_dyml_three_test_sets(run, tmp_path, with_copies):
    from hglv2.convert import convert
    from tests.fixtures.datasets import dyml_csv as _dyml_csv

    root = tmp_path / "dyml_vehicle"
    rng = np.random.default_rng(0)
    head = ["fname", "coarse_id", "middle_id", "fine_id"]
    _dyml_csv(root / "train/label.csv", head, [["0.jpg", 1, 4, 30], ["1.jpg", 1, 4, 31]], True)
    (root / "train/imgs").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"train/imgs/{k}.jpg")
    for g in ("fine", "middle", "coarse"):
        q_rows, g_rows = [], []
        for k in range(4):
            arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            (root / f"bmk_{g}/query").mkdir(parents=True, exist_ok=True)
            (root / f"bmk_{g}/gallery").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / f"bmk_{g}/query/{k}.jpg")
            q_rows.append([f"{k}.jpg", k % 2])
            if with_copies:  # the query's own image, under another name, in the gallery
                (root / f"bmk_{g}/gallery/c{k}.jpg").write_bytes(
                    (root / f"bmk_{g}/query/{k}.jpg").read_bytes()
                )
                g_rows.append([f"c{k}.jpg", k % 2])
        for k in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / f"bmk_{g}/gallery/{k}.jpg"
            )
            g_rows.append([f"{k}.jpg", k % 3])
        _dyml_csv(root / f"bmk_{g}/query.csv", ["fname", "labels"], q_rows, True)
        _dyml_csv(root / f"bmk_{g}/gallery.csv", ["fname", "labels"], g_rows, True)
    convert("dyml-vehicle", root, tmp_path / "conv")
    res = _cli(
        "evaluate",
        "--checkpoint",
        run / "run",
        "--data",
        tmp_path / "conv",
        "--out",
        tmp_path / "e",
        "--json",
        tmp_path / "d.json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "d.json").read_text())["results"]
    assert set(out) == {"fine", "middle", "coarse", "mean"}
    for g in ("fine", "middle", "coarse"):
        assert out[g]["queries_with_copy_in_gallery"] == (4 if with_copies else 0)
    q = np.load(tmp_path / "e" / "query_middle_embeddings.npy")
    ge = np.load(tmp_path / "e" / "gallery_middle_embeddings.npy")
    ql, gl = (
        np.load(tmp_path / "e" / "query_middle_labels.npy"),
        np.load(tmp_path / "e" / "gallery_middle_labels.npy"),
    )
    if with_copies:  # each query ranked from its copy (gallery rows 0..3), the copy excluded
        np.testing.assert_allclose(q, ge[:4], rtol=1e-5, atol=1e-6)
        per = evaluate(ge, gl, reduce=False)
        assert out["middle"]["AP_level0"] == pytest.approx(np.nanmean(per["AP_level0"][:4]))
        assert out["middle"]["n_gallery"] == len(ge) - 1
    else:
        assert out["middle"]["AP_level0"] == pytest.approx(evaluate(q, ql, ge, gl)["AP_level0"])
    mean = np.mean([out[g]["R@1_level0"] for g in ("fine", "middle", "coarse")])
    assert out["mean"]["R@1_level0"] == pytest.approx(mean)


def test_checkpoint_recall_at_defaults_to_the_runs_own(tmp_path):
    """Without --recall-at, --checkpoint reports the k values the run evaluated itself with
    (train.recall_at); an explicit --recall-at still wins."""
    cfg = tiny_synthetic_config(tmp_path / "data", steps=1, log_every=1, checkpoint_every=0)
    cfg["train"]["recall_at"] = [1, 3, 7]
    Trainer(cfg, tmp_path / "run", progress=False, resume=False).fit()
    args = ("evaluate", "--checkpoint", tmp_path / "run", "--data", tmp_path / "data", "--json")
    res = _cli(*args, tmp_path / "own.json")
    assert res.exit_code == 0, res.output
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["recall_at"] == [1, 3, 7]
    assert {"R@3_level0", "R@7_level0"} <= set(own["results"]) and "R@10_level0" not in own["results"]
    assert "R@7" in res.output and "R@10" not in res.output
    res = _cli(*args, tmp_path / "given.json", "--recall-at", "2")
    assert res.exit_code == 0, res.output
    given = json.loads((tmp_path / "given.json").read_text())
    assert given["recall_at"] == [2] and "R@2_level0" in given["results"]
    assert "R@3_level0" not in given["results"]
