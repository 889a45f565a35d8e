"""Every bad input to every CLI command: exit code 2, exactly one ``Error:`` line on stderr, no
traceback, and the working folder left exactly as it was.

The table lists (case id, command line); ``{name}`` fields are files made once by ``work``.
A closed stdout (``| head -1``) is tested at the end: files are written, nothing is printed on
stderr, the exit code is 141.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hglv2.cli import main
from tests.fixtures.training import write_tiny_suite

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_HIERARCHY = ROOT / "data/sample/train_label_to_hierarchical.csv"
SAMPLE_CATEGORIES = ROOT / "data/sample/train_label_to_category.csv"

SOLUTION = "id,images,Usage\n0123456789abcdef,fedcba9876543210,Public\n"


def _files(tmp: Path) -> dict[str, str]:
    """The inputs of the cases (bad and good), in ``tmp``."""
    f: dict[str, Path] = {}
    f["adir"] = tmp / "adir"
    f["adir"].mkdir()
    f["afile"] = tmp / "afile.txt"
    f["afile"].write_text("not a folder\n")
    f["foreign"] = tmp / "foreign.parquet"  # a valid Parquet file of something else
    pq.write_table(pa.table({"foo": [1, 2], "bar": ["a", "b"]}), f["foreign"])
    good = tmp / "good.parquet"
    pq.write_table(pa.table({"landmark_id": list(range(100)), "x": [str(i) for i in range(100)]}), good)
    f["truncated"] = tmp / "truncated.parquet"
    f["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    f["nographs"] = tmp / "nographs"  # a graph folder without the graph files
    f["nographs"].mkdir()
    f["resolved"] = tmp / "resolved.parquet"  # columns of a resolved table, no rows
    from hglv2.hierarchy.resolve import RESOLVED_COLUMNS

    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in RESOLVED_COLUMNS}), f["resolved"])
    f["hierarchy"] = SAMPLE_HIERARCHY
    f["categories"] = SAMPLE_CATEGORIES
    f["clusters"] = ROOT / "data/review/clusters.csv"
    f["solution"] = tmp / "solution.csv"
    f["solution"].write_text(SOLUTION)
    f["sub_foo"] = tmp / "sub_foo.csv"
    f["sub_foo"].write_text("foo,bar\n0123456789abcdef,fedcba9876543210\n")
    f["sub_quote"] = tmp / "sub_quote.csv"
    f["sub_quote"].write_text('id,images\n0123456789abcdef,"fedcba9876543210\n')
    rng = np.random.default_rng(0)
    f["huge"] = tmp / "huge.npy"
    np.save(f["huge"], (rng.normal(size=(12, 4)) * 1e20).astype(np.float32))
    f["labels"] = tmp / "labels.npy"
    np.save(f["labels"], np.repeat(np.arange(4), 3))
    f["meta"] = tmp / "meta"
    from tests.fixtures.gldv2_example import write_example

    write_example(f["meta"], seed=3)
    f["suite"] = tmp / "suite.yaml"
    f["suite"].write_text("name: s\nbenchmark: {seeds: [0], losses: {SupAP: {name: SupAP}}}\n")
    return {k: str(v) for k, v in f.items()}


# (id, expected part of the Error line, command line): each must end in exit 2 with one Error
# line, before any output is made
CASES = [
    # outputs that cannot be written: onto a folder, inside a file
    ("evaluate --json onto a folder", "adir is a folder", "evaluate --example --json {adir}"),
    (
        "evaluate --json inside a file",
        "afile.txt is a file, not a folder",
        "evaluate --example --json {afile}/r.json",
    ),
    (
        "download --dest inside a file",
        "afile.txt is a file, not a folder",
        "download --offline --dest {afile}/gldv2",
    ),
    ("download --json onto a folder", "adir is a folder", "download --offline --dest {adir} --json {adir}"),
    (
        "export --out is a file",
        "afile.txt exists and is not a folder",
        "export --metadata {meta} --out {afile}",
    ),
    (
        "export --json inside a file",
        "afile.txt is a file, not a folder",
        "export --metadata {meta} --out {adir}/x --json {afile}/m.json",
    ),
    ("train --out is a file", "afile.txt exists and is not a folder", "train synthetic --out {afile}"),
    ("train --json onto a folder", "adir is a folder", "train synthetic --out {adir}/run --json {adir}"),
    ("benchmark --out is a file", "afile.txt exists and is not a folder", "benchmark --out {afile}"),
    ("synthesize --out inside a file", "afile.txt is a file, not a folder", "synthesize --out {afile}/data"),
    ("synthesize --json onto a folder", "adir is a folder", "synthesize --out {adir}/d --json {adir}"),
    (
        "hierarchy resolve --out onto a folder",
        "adir is a folder",
        "hierarchy resolve --categories {categories} --out {adir}",
    ),
    (
        "hierarchy graph --out-dir is a file",
        "afile.txt exists and is not a folder",
        "hierarchy graph --resolved {resolved} --out-dir {afile}",
    ),
    (
        "hierarchy propose --pending inside a file",
        "afile.txt is a file, not a folder",
        "hierarchy propose --pending {afile}/p.csv",
    ),
    ("hierarchy apply --csv onto a folder", "adir is a folder", "hierarchy apply --csv {adir}"),
    (
        "hierarchy diff --out-csv onto a folder",
        "adir is a folder",
        "hierarchy diff {hierarchy} {hierarchy} --out-csv {adir}",
    ),
    (
        "hierarchy diff --json inside a file",
        "afile.txt is a file, not a folder",
        "hierarchy diff {hierarchy} {hierarchy} --json {afile}/d.json",
    ),
    (
        "download images --dest inside a file",
        "afile.txt is a file, not a folder",
        "download images --split train --shards 0 --dest {afile}/g",
    ),
    (
        "download images --json inside a file",
        "afile.txt is a file, not a folder",
        "download images --split train --shards 0 --dest {adir}/g --json {afile}/j.json",
    ),
    (
        "prepare-images --out inside a file",
        "afile.txt is a file, not a folder",
        "prepare-images --source {adir} --out {afile}/p",
    ),
    (
        "prepare-images --json onto a folder",
        "adir is a folder",
        "prepare-images --source {adir} --json {adir}",
    ),
    # URLs, time-outs, retries
    (
        "download images --base-url not a url",
        "'--base-url': 'notaurl' is not an http(s):// URL",
        "download images --split train --shards 0 --dest {adir}/g --base-url notaurl",
    ),
    (
        "download --base-url not a url",
        "'--base-url': 'not a url' is not an http(s):// URL",
        "download --dest {adir}/g --base-url 'not a url'",
    ),
    (
        "download --base-url file://",
        "'file:///etc' is not an http(s):// URL",
        "download --dest {adir}/g --base-url file:///etc",
    ),
    (
        "hierarchy --api-url not a url",
        "'--api-url': 'not a url' is not an http(s):// URL",
        "hierarchy resolve --categories {categories} --api-url 'not a url'",
    ),
    (
        "hierarchy --sparql-url ftp",
        "'ftp://x.org/q' is not an http(s):// URL",
        "hierarchy graph --resolved {resolved} --sparql-url ftp://x.org/q",
    ),
    (
        "hierarchy --timeout -1",
        "'--timeout': -1.0 is not in the range x>0",
        "hierarchy resolve --categories {categories} --timeout -1",
    ),
    (
        "hierarchy --max-tries 0",
        "'--max-tries': 0 is not in the range 1<=x<=100",
        "hierarchy resolve --categories {categories} --max-tries 0",
    ),
    (
        "download --timeout -1",
        "'--timeout': -1.0 is not in the range",
        "download --dest {adir}/g --timeout -1",
    ),
    # numbers
    ("benchmark --seeds=-1", "--seeds: '-1': -1 is below 0", "benchmark {suite} --out {adir}/b --seeds=-1"),
    (
        "benchmark --seeds 0,0",
        "--seeds: '0,0': 0 is repeated",
        "benchmark {suite} --out {adir}/b --seeds 0,0",
    ),
    ("benchmark --seeds x", "'x' is not an integer", "benchmark {suite} --out {adir}/b --seeds 0,x"),
    (
        "evaluate --recall-at 1e20",
        "--recall-at: '1e20': '1e20' is not an integer",
        "evaluate --example --recall-at 1e20",
    ),
    (
        "evaluate --recall-at 10**20",
        "100000000000000000000 is above 1000000000",
        "evaluate --example --recall-at 100000000000000000000",
    ),
    ("evaluate --recall-at 0", "0 is below 1", "evaluate --example --recall-at 0,1"),
    # files of the wrong kind
    ("synthesize --hierarchy a folder", "adir: is a folder", "synthesize --out {adir}/s --hierarchy {adir}"),
    (
        "synthesize --hierarchy truncated",
        "truncated.parquet: not a readable Parquet file",
        "synthesize --out {adir}/s --hierarchy {truncated}",
    ),
    (
        "synthesize --hierarchy foreign",
        "foreign.parquet: missing column(s) landmark_id, category",
        "synthesize --out {adir}/s --hierarchy {foreign}",
    ),
    (
        "export --hierarchy truncated",
        "truncated.parquet: not a readable Parquet file",
        "export --metadata {meta} --out {adir}/e --hierarchy {truncated}",
    ),
    (
        "export --hierarchy foreign",
        "foreign.parquet: missing column(s) landmark_id",
        "export --metadata {meta} --out {adir}/e --hierarchy {foreign}",
    ),
    (
        "hierarchy graph foreign resolved",
        "foreign.parquet: missing column(s) landmark_id, numbering, category, title",
        "hierarchy graph --resolved {foreign} --out-dir {adir}/g",
    ),
    (
        "hierarchy graph truncated resolved",
        "truncated.parquet: not a readable Parquet file",
        "hierarchy graph --resolved {truncated} --out-dir {adir}/g",
    ),
    (
        "hierarchy propose no resolved",
        "none.parquet: no such file (run `hglv2 hierarchy resolve` first)",
        "hierarchy propose --resolved {adir}/none.parquet --out {adir}/p",
    ),
    (
        "hierarchy propose foreign resolved",
        "foreign.parquet: missing column(s) landmark_id",
        "hierarchy propose --resolved {foreign} --out {adir}/p.parquet",
    ),
    (
        "hierarchy propose without graph",
        "graph_nodes.parquet: no such file (run `hglv2 hierarchy graph` first)",
        "hierarchy propose --resolved {resolved} --clusters {clusters} --graph-dir {nographs} "
        "--out {adir}/p.parquet",
    ),
    (
        "hierarchy propose --images categories",
        "train_label_to_category.csv: missing column(s) id (--images takes",
        "hierarchy propose --resolved {resolved} --images {categories} --out {adir}/p.parquet",
    ),
    (
        "hierarchy review truncated proposals",
        "truncated.parquet: not a readable Parquet file",
        "hierarchy review --proposals {truncated}",
    ),
    (
        "hierarchy apply foreign proposals",
        "foreign.parquet: missing column(s) landmark_id",
        "hierarchy apply --proposals {foreign} --out {adir}/h.parquet",
    ),
    (
        "hierarchy diff truncated",
        "truncated.parquet: not a readable Parquet file",
        "hierarchy diff {truncated} {hierarchy}",
    ),
    (
        "hierarchy diff foreign",
        "foreign.parquet: missing column(s) landmark_id",
        "hierarchy diff {hierarchy} {foreign}",
    ),
    ("hierarchy diff a folder", "adir' is a directory", "hierarchy diff {adir} {hierarchy}"),
    # numbers that overflow, CSVs that are not what they claim
    ("evaluate float32 overflow", "huge.npy: embedding norms up to", "evaluate -e {huge} -l {labels}"),
    (
        "evaluate submission header foo,bar",
        "sub_foo.csv:1: expected the header id,images, got 'foo,bar'",
        "evaluate --solution {solution} --submission {sub_foo}",
    ),
    (
        "evaluate submission unclosed quote",
        "sub_quote.csv: malformed CSV (unexpected end of data)",
        "evaluate --solution {solution} --submission {sub_quote}",
    ),
    # usage errors: one Error line, then the --help hint
    ("usage: unknown option", "No such option '--no-such-option'", "evaluate --no-such-option"),
    ("usage: missing argument", "Missing argument 'B", "hierarchy diff {hierarchy}"),
    ("usage: bad choice", "'nope' is not one of", "evaluate --example --relevance nope"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and mtime.

    Left out: the empty ``.<out>.lock`` files of :func:`hglv2.fileio.folder_transaction`, which
    stay beside an output folder by design (a lock file is never deleted, or two writers could
    lock two different files).
    """
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
        for p in sorted(folder.rglob("*"))
        if not (p.name.startswith(".") and p.name.endswith(".lock") and p.stat().st_size == 0)
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badinput")
    return tmp, _files(tmp)


@pytest.mark.parametrize(("case", "expected", "line"), CASES, ids=[c for c, _, _ in CASES])
def test_bad_input_is_one_error_line(work, cli_runner, monkeypatch, case, expected, line):
    import shlex

    tmp, files = work
    monkeypatch.chdir(tmp)  # default output paths (out/hierarchy/...) land in the checked folder
    args = [a.format(**files) for a in shlex.split(line)]
    before = _snapshot(tmp)
    res = cli_runner.invoke(main, args)
    err = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    assert sum(e.startswith("Error: ") for e in err) == 1, err
    assert err[0].startswith("Error: ") and expected in err[0], err
    # an option value rejected while parsing adds the usage hint: "Try 'hglv2 CMD --help' for help."
    assert all(e.startswith("Try '") and e.endswith("--help' for help.") for e in err[1:]), err
    assert len(err) <= 2, err
    if case.startswith("usage:"):
        assert len(err) == 2, err
    assert _snapshot(tmp) == before, case


def test_non_utf8_argument_is_one_error_line(work, cli_runner, monkeypatch):
    tmp, _ = work
    monkeypatch.chdir(tmp)
    before = _snapshot(tmp)
    bad = os.fsdecode(b"r\xff.json")  # how Python hands a non-UTF-8 argv item to the program
    res = cli_runner.invoke(main, ["evaluate", "--example", "--json", bad])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "Error: argument 4 (b'r\\xff.json') is not valid UTF-8; hglv2 takes UTF-8 paths and values"
    ]
    assert _snapshot(tmp) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(work, cli_runner, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = cli_runner.invoke(main, ["evaluate", "--example", "--json", str(ro / "r.json")])
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 2 and "read-only or permission denied" in res.stderr
    assert list(ro.iterdir()) == []


def test_decisions_row_without_reason_is_refused(tmp_path):
    from hglv2.errors import InputError
    from hglv2.hierarchy.clusters import load_clusters, load_decisions

    table = load_clusters(ROOT / "data/review/clusters.csv")
    cluster = sorted(table.top_of)[0]
    path = tmp_path / "decisions.csv"
    path.write_text(f"supercategory_qid,supercategory,cluster,reason\nQ42,thing,{cluster},because\n")
    assert load_decisions(path, table, [])["Q42"][0] == cluster
    path.write_text(f"supercategory_qid,supercategory,cluster,reason\nQ42,thing,{cluster},\n")
    with pytest.raises(InputError, match=r"decisions.csv:2: empty reason"):
        load_decisions(path, table, [])


# ------------------------------------------------------------------------------------------------
# a closed stdout: files first, then quiet, exit 141


def _piped(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``hglv2 ARGS`` with a stdout whose reader is gone (``| head -1`` once head has exited;
    closing the read end first makes every write fail, not only those past the pipe buffer)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hglv2.cli", *args],
            cwd=cwd,
            env=env,
            stdout=w,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    finally:
        os.close(w)
    return proc.returncode, proc.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--example", "--json", "{out}/e.json"],
        ["hierarchy", "diff", "{h}", "{h}", "--json", "{out}/d.json", "--out-csv", "{out}/d.csv"],
        ["synthesize", "--out", "{out}/syn", "--json", "{out}/s.json", "--quiet", "--train-images", "2"],
    ],
    ids=["evaluate", "hierarchy diff", "synthesize"],
)
def test_closed_stdout_is_quiet_and_keeps_the_files(tmp_path, args):
    args = [a.format(out=tmp_path, h=SAMPLE_HIERARCHY) for a in args]
    rc, err = _piped(args, tmp_path)
    assert rc == 141, err
    assert err == ""
    for a in args:
        if a.startswith(str(tmp_path)) and a.endswith((".json", ".csv")):
            assert Path(a).stat().st_size > 0, a


@pytest.mark.slow
def test_closed_stdout_does_not_stop_a_parallel_benchmark(tmp_path):
    """``hglv2 benchmark | head -1``: the per-run lines meet a closed stdout, the suite still
    finishes and writes its report and --json, then exits 141 quietly."""
    suite = tmp_path / "suite.yaml"
    write_tiny_suite(suite, tmp_path / "data", "piped", checkpoint_every=0)
    out = tmp_path / "b"
    args = ["benchmark", str(suite), "--out", str(out), "--jobs", "2", "--json", str(tmp_path / "b.json")]
    rc, err = _piped(args, tmp_path)
    assert rc == 141, err
    assert err == ""
    for f in (out / "report.md", out / "results.json", tmp_path / "b.json"):
        assert f.stat().st_size > 0, f
