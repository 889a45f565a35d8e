"""Outputs are transactions (issue 12, items 2-4): a command leaves its complete output or what was
there before, never a mix, never temporaries, and never writes into a folder it does not own.

Kills are real: a child process runs the CLI with one internal step patched to ``os._exit`` at the
chosen instant (between the renames of the swap, after it, while writing the files).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hglv2 import fileio
from hglv2.cli import main
from hglv2.errors import InputError
from hglv2.fileio import (
    OWNER_FILE,
    atomic_open,
    commit_together,
    folder_lock,
    folder_transaction,
    recover_folder,
    remove_stale_temps,
    sha256_file,
    write_json,
)
from tests.fixtures.gldv2_example import write_example

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# Runs the CLI (argv[2:]) in a child with one step patched to die with os._exit(9) (argv[1]).
KILLER = r"""
import os, sys, shutil
import hglv2.fileio as fio
mode = sys.argv[1]
if mode == "after-exchange":  # the swap happened, the old folder is not deleted yet
    real_rmtree = shutil.rmtree
    def rmtree(path, *a, **k):
        if ".staging-" in os.fspath(path):
            os._exit(9)
        return real_rmtree(path, *a, **k)
    fio.shutil.rmtree = rmtree
elif mode == "between-renames":  # the fallback swap: out set aside, staging not renamed yet
    fio._exchange = lambda a, b: False
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in os.fspath(dst):
            os._exit(9)
    fio.os.rename = rename
elif mode == "while-writing":  # one split written into the staging folder, then killed
    import hglv2.splits as sp
    real_write = sp.write_parquet
    def write_parquet(*a, **k):
        real_write(*a, **k)
        os._exit(9)
    sp.write_parquet = write_parquet
elif mode == "hold":  # keep the lock on --out until the file named by $HGLV2_TEST_RELEASE exists
    import time
    import hglv2.splits as sp
    real_export_into = sp.export_into
    def export_into(*a, **k):
        open(os.environ["HGLV2_TEST_HELD"], "w").close()
        while not os.path.exists(os.environ["HGLV2_TEST_RELEASE"]):
            time.sleep(0.05)
        return real_export_into(*a, **k)
    sp.export_into = export_into
from hglv2.cli import main
main(sys.argv[2:], prog_name="hglv2")
"""


def _export_args(meta: Path, out: Path, *splits: str) -> list[str]:
    return [
        "export",
        "--metadata",
        str(meta),
        "--out",
        str(out),
        *[a for s in splits for a in ("--split", s)],
    ]


def _killed_export(mode: str, meta: Path, out: Path, *splits: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", KILLER, mode, *_export_args(meta, out, *splits)]
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=120)


def _consistent(folder: Path) -> dict:
    """The folder holds exactly what its manifest lists, with the listed sha256, and no temporaries."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {s["file"] for s in manifest["splits"].values()}
    assert {p.name for p in folder.iterdir()} == listed | {"manifest.json", "README.md", OWNER_FILE}
    for s in manifest["splits"].values():
        assert sha256_file(folder / s["file"]) == s["sha256"], s["file"]
        assert (folder / s["file"]).stat().st_size == s["bytes"]
    card = (folder / "README.md").read_text()
    for name in manifest["splits"]:
        assert f"split: {name}\n" in card
    return manifest


def _leftovers(out: Path) -> list[str]:
    """Names beside ``out`` that belong to its transactions, except the lock file."""
    return sorted(
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith(f".{out.name}.") and p.name != f".{out.name}.lock"
    )


def _exchange_supported(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir()
    b.mkdir()
    (a / "f").touch()
    ok = fileio._exchange(a, b)
    shutil.rmtree(a)
    shutil.rmtree(b)
    return ok


@pytest.fixture
def meta(tmp_path):
    write_example(tmp_path / "meta", seed=3)
    return tmp_path / "meta"


@pytest.fixture
def meta2(tmp_path):
    """Other metadata: every split file of its export differs from that of ``meta``."""
    write_example(tmp_path / "meta2", seed=4)
    return tmp_path / "meta2"


# ------------------------------------------------------------------------------------ export kills


def test_export_killed_after_the_swap_leaves_the_new_folder_and_the_next_run_cleans_up(tmp_path, meta, meta2):
    if not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported on this file system")
    out = tmp_path / "out"
    main(_export_args(meta, out), standalone_mode=False)
    old = _consistent(out)
    res = _killed_export("after-exchange", meta2, out, "train")
    assert res.returncode == 9, res.stderr
    new = _consistent(out)  # the new export, complete
    assert sorted(new["splits"]) == ["train"] != sorted(old["splits"])
    assert len(_leftovers(out)) == 1 and ".staging-" in _leftovers(out)[0]  # the old folder, set aside
    main(_export_args(meta, out, "index"), standalone_mode=False)
    assert sorted(_consistent(out)["splits"]) == ["index"]
    assert _leftovers(out) == []


def test_export_killed_between_the_two_renames_gets_the_old_folder_back(tmp_path, meta, meta2):
    out = tmp_path / "out"
    main(_export_args(meta, out), standalone_mode=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _killed_export("between-renames", meta2, out)
    assert res.returncode == 9, res.stderr
    assert not out.exists()  # the documented instant between the two renames of the fallback swap
    assert any(".old-" in n for n in _leftovers(out)) and any(".staging-" in n for n in _leftovers(out))
    with folder_lock(out):
        recover_folder(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the complete old export
    _consistent(out)
    assert _leftovers(out) == []
    # a second kill, then a normal run: it recovers first and commits the new export
    assert _killed_export("between-renames", meta, out, "train").returncode == 9
    main(_export_args(meta, out, "query"), standalone_mode=False)
    assert sorted(_consistent(out)["splits"]) == ["query"]
    assert _leftovers(out) == []


def test_export_killed_while_writing_leaves_the_old_folder_untouched(tmp_path, meta, meta2):
    out = tmp_path / "out"
    main(_export_args(meta, out, "train", "index"), standalone_mode=False)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    res = _killed_export("while-writing", meta2, out)
    assert res.returncode == 9, res.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    _consistent(out)
    [staging] = _leftovers(out)  # the killed run's partial staging folder (with its .tmp files)
    assert ".staging-" in staging
    main(_export_args(meta, out), standalone_mode=False)  # the next run removes it
    assert _leftovers(out) == []
    assert sorted(_consistent(out)["splits"]) == ["index", "query", "train", "train_full"]


def test_reexport_with_fewer_splits_leaves_no_stale_files(tmp_path, meta):
    out = tmp_path / "out"
    main(_export_args(meta, out), standalone_mode=False)
    # a temporary left by a writer of an earlier version (no pid in its name) inside the folder
    (out / ".train.parquet.abc123.tmp").write_bytes(b"x" * 1000)
    main(_export_args(meta, out, "train_full"), standalone_mode=False)
    assert sorted(_consistent(out)["splits"]) == ["train_full"]
    assert sorted(p.name for p in out.iterdir()) == [
        OWNER_FILE,
        "README.md",
        "manifest.json",
        "train_full.parquet",
    ]


def test_export_is_still_byte_identical_on_rerun(tmp_path, meta):
    out = tmp_path / "out"
    main(_export_args(meta, out), standalone_mode=False)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    main(_export_args(meta, out), standalone_mode=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


# ------------------------------------------------------------------------------------- one writer


def test_second_writer_gets_an_error_and_changes_nothing(tmp_path, meta, cli_runner):
    out = tmp_path / "out"
    main(_export_args(meta, out, "train"), standalone_mode=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    held, release = tmp_path / "held", tmp_path / "release"
    env = {**ENV, "HGLV2_TEST_HELD": str(held), "HGLV2_TEST_RELEASE": str(release)}
    first = subprocess.Popen(
        [sys.executable, "-c", KILLER, "hold", *_export_args(meta, out, "index")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):
            if held.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert held.exists(), first.communicate()[1]
        # a second process, through the real console entry point
        second = subprocess.run(
            [sys.executable, "-m", "hglv2.cli", *_export_args(meta, out, "query")],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"Error: {out} is being written by another hglv2 process"
        ]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing changed yet
        release.touch()
        assert first.wait(timeout=120) == 0, first.communicate()[1]
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert sorted(_consistent(out)["splits"]) == ["index"]  # the first writer's export, whole


def test_lock_is_exclusive_in_process_too(tmp_path, meta, cli_runner):
    out = tmp_path / "out"
    with folder_lock(out):
        res = cli_runner.invoke(main, _export_args(meta, out))
        assert res.exit_code == 2
        assert res.stderr.strip() == f"Error: {out} is being written by another hglv2 process"
        with pytest.raises(InputError, match="is being written by another hglv2 process"):
            with folder_transaction(out, "synthetic"):
                pass
    assert not out.exists()
    with folder_transaction(out, "export") as staging:  # released with the block
        (staging / "a.txt").write_text("a")
    assert sorted(p.name for p in out.iterdir()) == [OWNER_FILE, "a.txt"]


# ----------------------------------------------------------------------------------- temporaries


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".r.json.{dead}-abc_12.tmp"
    live = tmp_path / f".r.json.{alive}-zz9.tmp"
    other = tmp_path / f".other.json.{dead}-q1.tmp"
    legacy = tmp_path / ".r.json.k2j3h4.tmp"  # no pid: cannot tell whether its writer lives
    for p in (stale, live, other, legacy):
        p.write_bytes(b"partial")
    write_json(tmp_path / "r.json", {"a": 1})
    assert not stale.exists() and live.exists() and other.exists() and legacy.exists()
    assert remove_stale_temps(tmp_path) == [other]
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    # a failed write leaves no temporary of its own
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "r.json") as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["r.json", live.name, legacy.name])


# -------------------------------------------------------------------------- stage outputs together


def test_commit_together_renames_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(RuntimeError):
        with commit_together():
            with atomic_open(a) as fh:
                fh.write("new a")
            assert a.read_text() == "old a"  # held back until the group ends
            raise RuntimeError("the stage fails after its first output")
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.json"]
    with commit_together():
        with atomic_open(a) as fh:
            fh.write("new a")
        with commit_together():  # nested: the outer group commits
            write_json(b, [1])
        assert b.read_text() == "old b"
        with atomic_open(a) as fh:  # written twice: the last one wins, one temporary
            fh.write("newer a")
    assert (a.read_text(), json.loads(b.read_text())) == ("newer a", [1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.json"]
    # a target that is a folder stops the group before any rename
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match="c: is a folder, not a file"):
        with commit_together():
            write_json(a, "x")
            write_json(tmp_path / "c", "y")
    assert a.read_text() == "newer a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.json", "c"]


def test_an_output_folder_that_cannot_exist_is_an_error(tmp_path, meta, cli_runner):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    res = cli_runner.invoke(main, _export_args(meta, out))
    assert res.exit_code == 2
    # the CLI checks --out when it parses the command line (hglv2.cli._options)...
    assert res.stderr.strip().splitlines()[0] == (
        f"Error: Invalid value for '--out': {tmp_path / 'afile'} is a file, not a folder"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "meta"]
    # ... and the library stops there too when called directly
    from hglv2.fileio import folder_lock

    with pytest.raises(InputError, match=r"out: cannot write a folder here \(File exists\)"):
        with folder_lock(out):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "meta"]


def _apply_args(out: Path, decisions: Path, csv_out: Path) -> list[str]:
    review = ROOT / "data" / "review"
    return [
        "hierarchy",
        "apply",
        "--proposals",
        str(out / "proposals.parquet"),
        "--clusters",
        str(review / "clusters.csv"),
        "--decisions",
        str(decisions),
        "--overrides",
        str(review / "landmark_overrides.csv"),
        "--out",
        str(out / "hierarchy.parquet"),
        "--csv",
        str(csv_out),
    ]


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    """The hierarchy pipeline run once on the embedded sample, up to the hierarchy table."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    tmp = tmp_path_factory.mktemp("pipeline")
    review = tmp / "review"
    shutil.copytree(ROOT / "data" / "review", review)
    args = [
        "make",
        "--no-print-directory",
        "-f",
        str(ROOT / "pipelines" / "hierarchy.mk"),
        f"PY={sys.executable}",
        f"OUT={tmp / 'out'}",
        f"REVIEW={review}",
        f"DATA={ROOT / 'data' / 'sample'}",
        "table",
    ]
    subprocess.run(args, check=True, env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    return tmp, review, args


def _state(out: Path) -> dict[str, tuple[bytes, int]]:
    return {
        n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns)
        for n in ("hierarchy.parquet", "hierarchy.csv")
    }


def test_failing_apply_stage_under_make_keeps_both_outputs(pipeline_out):
    tmp, review, args = pipeline_out
    out = tmp / "out"
    before = _state(out)
    good = (review / "decisions.csv").read_text()
    try:
        with open(review / "decisions.csv", "a", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(["Q1", "no such supercategory", "", "bad row"])
        res = subprocess.run(args, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode != 0 and "Error: " in res.stderr
        assert "Deleting file" not in res.stderr
        assert _state(out) == before  # both targets still there, untouched
        # make still sees the stage as out of date (its outputs are older than the edited input)
        dry = subprocess.run([*args, "-n"], env=ENV, cwd=ROOT, capture_output=True, text=True).stdout
        assert " hierarchy apply " in dry
    finally:
        (review / "decisions.csv").write_text(good)
    subprocess.run(args, check=True, env=ENV, cwd=ROOT, capture_output=True, timeout=300)
    after = _state(out)
    assert {n: v[0] for n, v in after.items()} == {n: v[0] for n, v in before.items()}
    assert all(after[n][1] > before[n][1] for n in after)  # rewritten together


def test_apply_whose_second_output_fails_touches_neither(pipeline_out, cli_runner):
    tmp, review, _ = pipeline_out
    out = tmp / "out"
    before = _state(out)
    blocker = tmp / "blocker"
    blocker.write_text("a file, so the CSV's folder cannot be created")
    res = cli_runner.invoke(main, _apply_args(out, review / "decisions.csv", blocker / "sub" / "h.csv"))
    assert res.exit_code != 0
    assert _state(out) == before
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


# ------------------------------------------------------------------------------ folder ownership


def test_commands_write_only_into_folders_they_own(tmp_path, meta, cli_runner):
    export_dir, synth_dir, foreign = tmp_path / "export", tmp_path / "synth", tmp_path / "mine"
    main(_export_args(meta, export_dir, "train"), standalone_mode=False)
    exported = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    tiny = ["--max-clusters", "1", "--landmarks-per-cluster", "2", "--train-images", "1", "--quiet"]
    res = cli_runner.invoke(main, ["synthesize", "--out", str(synth_dir), "--hierarchy", "builtin", *tiny])
    assert res.exit_code == 0, res.output
    assert json.loads((synth_dir / OWNER_FILE).read_text()) == {"kind": "synthetic"}
    synthesized = {p.name: p.read_bytes() for p in synth_dir.iterdir() if p.is_file()}
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")

    res = cli_runner.invoke(main, ["synthesize", "--out", str(export_dir), "--hierarchy", "builtin", *tiny])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"Error: {export_dir}: holds the output of hglv2 export, not synthetic; refusing to overwrite it "
        "(choose another folder)"
    ]
    res = cli_runner.invoke(main, _export_args(meta, synth_dir))
    assert res.exit_code == 2 and "holds the output of hglv2 synthetic, not export" in res.stderr
    res = cli_runner.invoke(main, _export_args(meta, foreign))
    assert res.exit_code == 2
    assert f"Error: {foreign}: is not empty and was not written by hglv2 export" in res.stderr
    assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == exported
    assert {p.name: p.read_bytes() for p in synth_dir.iterdir() if p.is_file()} == synthesized
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
    ] == []

    # the same kind may replace its own folder; an empty folder may be written
    res = cli_runner.invoke(
        main, ["synthesize", "--out", str(synth_dir), "--hierarchy", "builtin", *tiny, "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    (tmp_path / "empty").mkdir()
    main(_export_args(meta, tmp_path / "empty", "index"), standalone_mode=False)
    _consistent(tmp_path / "empty")


def test_folders_without_an_owner_marker_are_foreign(tmp_path, meta):
    out = tmp_path / "out"
    main(_export_args(meta, out, "train"), standalone_mode=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / OWNER_FILE).unlink()  # the files of an export, but no marker: not ours to replace
    assert fileio.folder_owner(out) is None
    for kind in ("export", "synthetic"):
        with pytest.raises(InputError, match=f"is not empty and was not written by hglv2 {kind}"):
            with folder_transaction(out, kind):
                pass
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        k: v for k, v in before.items() if k != OWNER_FILE
    }
    (out / OWNER_FILE).write_text('{"kind": "export"}')
    main(_export_args(meta, out, "index"), standalone_mode=False)
    assert sorted(_consistent(out)["splits"]) == ["index"]
    (out / OWNER_FILE).write_text("not json")
    with pytest.raises(InputError, match=f"{OWNER_FILE}: not a valid hglv2 owner marker"):
        fileio.check_owner(out, "export")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        with folder_transaction(tmp_path / "file", "export"):
            pass


def test_train_synthetic_refuses_an_export_folder_as_data_root(tmp_path, meta):
    out = tmp_path / "export"
    main(_export_args(meta, out, "train", "query"), standalone_mode=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "hglv2.cli",
            "train",
            "synthetic",
            "--set",
            f"data.root={out}",
            "--set",
            "train.steps=1",
            "--out",
            str(tmp_path / "runs"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"Error: {out}: holds the output of hglv2 export, not synthetic; refusing to overwrite it "
        "(choose another folder)"
    )
    assert "Traceback" not in res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_train_and_benchmark_never_write_into_another_commands_folder(tmp_path, meta, cli_runner):
    export_dir = tmp_path / "export"
    main(_export_args(meta, export_dir, "train"), standalone_mode=False)
    exported = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    for args in (
        ["train", "synthetic", "--out", str(export_dir), "--quiet"],
        ["benchmark", "--out", str(export_dir), "--quiet"],
    ):
        res = cli_runner.invoke(main, args)
        assert res.exit_code == 2, res.output
        kind = args[0]
        assert res.stderr.strip().splitlines() == [
            f"Error: {export_dir}: holds the output of hglv2 export, not {kind}; refusing to overwrite it "
            "(choose another folder)"
        ]
        assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == exported
    # a folder claimed by a run is not exported into, nor a foreign one without an owner marker
    run = fileio.claim_folder(tmp_path / "run", "train")
    assert fileio.folder_owner(run) == "train" and fileio.claim_folder(run, "train") == run
    res = cli_runner.invoke(main, _export_args(meta, run))
    assert res.exit_code == 2 and "holds the output of hglv2 train, not export" in res.stderr
    unmarked = tmp_path / "old_run"
    unmarked.mkdir()
    (unmarked / "config.yaml").write_text("name: x\n")
    (unmarked / "log.jsonl").write_text("")
    assert fileio.folder_owner(unmarked) is None
    res = cli_runner.invoke(main, _export_args(meta, unmarked))
    assert res.exit_code == 2 and "is not empty and was not written by hglv2 export" in res.stderr


def test_log_records_with_undefined_metrics_are_strict_json(tmp_path):
    """An eval record whose metric is NaN (e.g. no query has a relevant item at some level) is
    written as null: every line of log.jsonl parses as strict JSON and nothing else changes."""
    from types import SimpleNamespace

    from hglv2.train.trainer import Trainer

    run = SimpleNamespace(history=[], rank=0, log_path=tmp_path / "log.jsonl")
    rec = {"step": 3, "eval": {"H-AP": float("nan"), "AP_level1": 0.5, "per_level": [1.0, float("inf")]}}
    Trainer._log(run, rec)
    line = (tmp_path / "log.jsonl").read_text("utf-8")

    def strict(token):
        raise ValueError(f"non-standard JSON constant {token}")

    assert json.loads(line, parse_constant=strict) == {
        "step": 3,
        "eval": {"H-AP": None, "AP_level1": 0.5, "per_level": [1.0, None]},
    }
    assert run.history == [rec]  # the in-memory history keeps the floats
    assert fileio.finite_or_none((1, float("-inf"), {"a": 2.0})) == [1, None, {"a": 2.0}]
