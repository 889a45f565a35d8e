"""hglv2.http and hglv2.gldv2.downloads against a flaky HTTP server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
import requests

from hglv2 import __version__
from hglv2.errors import InputError, NetworkError
from hglv2.fileio import sha256_file
from hglv2.gldv2.downloads import LOCK_NAME, download, read_lock
from hglv2.http import (
    Retries,
    backoff_delay,
    check_url,
    make_session,
    request_with_retries,
    retry_after_seconds,
    user_agent,
)
from tests.fixtures.http_server import FileServer


def _fast(**kw):
    sleeps: list[float] = []
    kw.setdefault("timeout", 5)
    kw.setdefault("max_tries", 5)
    kw.setdefault("backoff_base", 1.0)
    kw.setdefault("backoff_cap", 4.0)
    return sleeps, dict(kw, sleep=sleeps.append)


def test_user_agent_policy():
    ua = user_agent("ops@example.org")
    assert ua.startswith(f"hglv2/{__version__} (")
    assert "ops@example.org)" in ua and ua.endswith(f"requests/{requests.__version__}")
    for bad in ("", "  ", "a (b)", "x\ny"):
        with pytest.raises(InputError):
            user_agent(bad)
    assert make_session("ops@example.org").headers["User-Agent"] == ua


def test_backoff_schedule_and_retry_after():
    assert [backoff_delay(k, 0.5, 3.0) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    # HTTP date 30 s after "now"
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=0.0) == pytest.approx(30.0)


def test_check_url():
    check_url("http://h/a/b.csv", ["http://h/a"])
    check_url("http://H/a/b.csv", ["http://h/a/"])
    for bad in ("http://h/a/../etc/passwd", "http://h/ab.csv", "http://other/a/b.csv", "https://h/a/b"):
        with pytest.raises(InputError, match="outside"):
            check_url(bad, ["http://h/a"])


def test_retries_503_then_succeeds_and_sends_user_agent():
    with FileServer({"/f": b"hello"}, {"/f": ["503", "503"]}) as srv:
        sleeps, kw = _fast()
        resp = request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert resp.content == b"hello"
        assert sleeps == [1.0, 2.0]
        assert len(srv.log) == 3 and all(r.user_agent.startswith("hglv2/") for r in srv.log)


def test_retry_after_is_honoured_and_capped():
    with FileServer({"/f": b"x"}, {"/f": ["429", "429"]}) as srv:
        sleeps, kw = _fast(retry_after_cap=5.0)
        request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [5.0, 5.0]
        sleeps, kw = _fast()
        srv.plan["/f"] = ["429"]
        request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [7.0]


def test_truncated_body_is_retried():
    with FileServer({"/f": b"0123456789" * 100}, {"/f": ["drop", "drop"]}) as srv:
        sleeps, kw = _fast()
        resp = request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert resp.content == b"0123456789" * 100 and len(sleeps) == 2


def test_gives_up_with_network_error():
    with FileServer({"/f": b"x"}, {"/f": ["503"] * 10}) as srv:
        sleeps, kw = _fast(max_tries=3)
        with pytest.raises(NetworkError, match="failed after 3 tries.*HTTP 503"):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [1.0, 2.0] and len(srv.log) == 3


def test_404_fails_at_once():
    with FileServer({}) as srv:
        sleeps, kw = _fast()
        with pytest.raises(NetworkError, match="404"):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/nope", **kw)
        assert sleeps == [] and len(srv.log) == 1


def test_connection_refused_is_retried_then_fails():
    with FileServer({}) as srv:
        url = srv.url
    sleeps, kw = _fast(max_tries=2, timeout=1)
    with pytest.raises(NetworkError, match="ConnectionError"):
        request_with_retries(make_session("t@example.org"), "GET", url + "/f", **kw)
    assert sleeps == [1.0]


def test_allowed_bases_refuses_before_sending():
    with FileServer({"/f": b"x"}) as srv:
        sleeps, kw = _fast(allowed_bases=[srv.url + "/meta"])
        with pytest.raises(InputError):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert srv.log == []


# ------------------------------------------------------------------------------ gldv2.download


TRAIN = b"id,url,landmark_id\n" + b"".join(
    f"{k:016x},http://x/{k}.jpg,{k % 7}\n".encode() for k in range(4000)
)
TEST = b"id\n" + b"".join(f"{k:016x}\n".encode() for k in range(100))
SOL = b"id,images,Usage\n0000000000000001,None,Public\n"


def _server_files():
    return {
        "/gl/metadata/train.csv": TRAIN,
        "/gl/metadata/test.csv": TEST,
        "/gl/ground_truth/retrieval_solution_v2.1.csv": SOL,
    }


def _dl(srv, dest, names=("train.csv", "test.csv", "retrieval_solution_v2.1.csv"), max_tries=6):
    sleeps: list[float] = []
    recs = download(
        list(names),
        dest,
        base_url=srv.url + "/gl",
        contact="tests@example.org",
        retries=Retries(timeout=5, max_tries=max_tries, sleep=sleeps.append),
        progress=False,
        chunk_size=4096,
    )
    return recs, sleeps


def test_download_survives_drops_and_503_then_verifies(tmp_path):
    plan = {
        "/gl/metadata/train.csv": ["503", "drop", "drop", "503", "drop"],
        "/gl/ground_truth/retrieval_solution_v2.1.csv": ["429"],
    }
    with FileServer(_server_files(), plan) as srv:
        recs, sleeps = _dl(srv, tmp_path)
        assert [r.status for r in recs] == ["downloaded"] * 3
        assert (tmp_path / "train.csv").read_bytes() == TRAIN
        assert (tmp_path / "test.csv").read_bytes() == TEST
        assert (tmp_path / "retrieval_solution_v2.1.csv").read_bytes() == SOL
        # resumed with Range after each cut (the 503 in between is retried with the same range)
        ranges = srv.gets("/gl/metadata/train.csv")
        assert ranges[:2] == [None, None] and len(ranges) == 6
        starts = [int(r.split("=")[1].rstrip("-")) for r in ranges[2:]]
        assert starts == sorted(starts) and starts[0] > 0 and starts[1] == starts[2]
        assert 7.0 in sleeps  # the Retry-After of the 429
        lock = read_lock(tmp_path / LOCK_NAME)
        assert lock["train.csv"] == {"size": len(TRAIN), "sha256": sha256_file(tmp_path / "train.csv")}
        assert not list(tmp_path.glob(".*part*"))
        n_requests = len(srv.log)
        # second run: everything verified from disk, nothing fetched
        recs, _ = _dl(srv, tmp_path)
        assert [r.status for r in recs] == ["verified"] * 3 and len(srv.log) == n_requests
        # a corrupted local copy is fetched again and checked against the lock
        (tmp_path / "test.csv").write_bytes(TEST[:-5] + b"zzzz\n")
        recs, _ = _dl(srv, tmp_path, names=["test.csv"])
        assert recs[0].status == "downloaded" and (tmp_path / "test.csv").read_bytes() == TEST
        # the server copy changed: refused, lock untouched
        srv.files["/gl/metadata/test.csv"] = TEST + b"0000000000000fff\n"
        (tmp_path / "test.csv").unlink()
        with pytest.raises(NetworkError, match="does not match the lock"):
            _dl(srv, tmp_path, names=["test.csv"])
        assert not (tmp_path / "test.csv").exists()
        assert read_lock(tmp_path / LOCK_NAME)["test.csv"]["size"] == len(TEST)


def test_download_resumes_a_previous_partial_file(tmp_path):
    with FileServer(_server_files()) as srv:
        part = tmp_path / ".train.csv.part"
        part.write_bytes(TRAIN[:1000])
        url = srv.url + "/gl/metadata/train.csv"
        (tmp_path / ".train.csv.part.json").write_text(json.dumps({"etag": None, "url": url}))
        _dl(srv, tmp_path, names=["train.csv"])
        assert srv.log[0].range == "bytes=1000-"
        assert (tmp_path / "train.csv").read_bytes() == TRAIN


def test_download_restarts_when_the_server_ignores_range(tmp_path):
    plan = {"/gl/metadata/train.csv": ["drop", "ignore-range"]}
    with FileServer(_server_files(), plan) as srv:
        _dl(srv, tmp_path, names=["train.csv"])
        assert (tmp_path / "train.csv").read_bytes() == TRAIN
        assert [r.range is not None for r in srv.log] == [False, True]


def test_download_gives_up_after_max_tries(tmp_path):
    with FileServer(_server_files(), {"/gl/metadata/test.csv": ["drop"] * 50}) as srv:
        with pytest.raises(NetworkError):
            _dl(srv, tmp_path, names=["test.csv"], max_tries=3)
    assert not (tmp_path / "test.csv").exists()


def test_offline_mode(tmp_path):
    with pytest.raises(InputError, match="not on disk"):
        download(["test.csv"], tmp_path, offline=True, progress=False)
    (tmp_path / "test.csv").write_bytes(TEST)
    recs = download(["test.csv"], tmp_path, offline=True, progress=False)
    assert recs[0].status == "unverified" and not (tmp_path / LOCK_NAME).exists()
    with FileServer(_server_files()) as srv:
        recs, _ = _dl(srv, tmp_path, names=["test.csv"])  # on disk, no lock entry: recorded
        assert recs[0].status == "recorded" and srv.log == []
    assert download(["test.csv"], tmp_path, offline=True, progress=False)[0].status == "verified"
    (tmp_path / "test.csv").write_bytes(TEST + b"x")
    with pytest.raises(InputError, match="does not match"):
        download(["test.csv"], tmp_path, offline=True, progress=False)
    with pytest.raises(InputError, match="not a GLDv2 metadata file"):
        download(["../../etc/passwd"], tmp_path, offline=True, progress=False)


_LOCK_WRITER = """
import sys
from hglv2.gldv2.downloads import update_lock
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    update_lock(path, f"{prefix}{i:03d}", {"size": i, "sha256": prefix * 8})
"""


def test_concurrent_lock_file_writers_keep_each_others_entries(tmp_path):
    """A metadata download and an image download in one folder update gldv2.lock.json at once:
    every entry either writes survives (each update re-reads the file under a flock)."""
    import subprocess
    import sys

    from hglv2.gldv2.shards import _Shared

    lock = tmp_path / LOCK_NAME
    procs = [
        subprocess.Popen([sys.executable, "-c", _LOCK_WRITER, str(lock), prefix, "60"])
        for prefix in ("train_label_to_category.csv.", "train/images_")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = read_lock(lock)
    assert len(files) == 120 and files["train/images_059"] == {"size": 59, "sha256": "train/images_" * 8}
    # the image downloader's in-memory copy does not overwrite what another writer added meanwhile
    shared = _Shared(lock, bar=None)
    from hglv2.gldv2.downloads import update_lock

    update_lock(lock, "index_label_to_category.csv", {"size": 1, "sha256": "x"})
    shared.record("index/images_000.tar", 2, "y", "z")
    shared.forget("train/images_000")
    files = read_lock(lock)
    assert "index_label_to_category.csv" in files and "index/images_000.tar" in files
    assert "train/images_000" not in files and len(files) == 121
