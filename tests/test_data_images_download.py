"""hglv2.gldv2.shards: image shard download against a server on 127.0.0.1 (md5, resume, 404, disk check)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from hglv2.cli import main
from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError, NetworkError
from hglv2.fileio import write_parquet
from hglv2.gldv2 import download as download_metadata
from hglv2.gldv2.downloads import read_lock
from hglv2.gldv2.shards import (
    IMAGE_SHARDS,
    download_images,
    md5_url,
    parse_md5_file,
    parse_shards,
    shard_url,
)
from hglv2.http import Retries
from hglv2.schema import image_relpath
from tests.fixtures.http_server import FileServer


def _shard(k: int, n: int = 3) -> tuple[bytes, list[str]]:
    """An official-shaped shard: JPEG members a/b/c/<id>.jpg (random bytes make it incompressible)."""
    from PIL import Image

    rng = np.random.default_rng(k)
    ids = [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=n)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in ids:
            img = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img, format="JPEG")
            info = tarfile.TarInfo(image_relpath(i))
            info.size = img.tell()
            tf.addfile(info, io.BytesIO(img.getvalue()))
    return buf.getvalue(), ids


def _site(split: str = "test", shards=range(4), missing=()):
    """URL path -> bytes for the shards and their md5 files (md5sum format)."""
    files, ids = {}, {}
    for k in shards:
        data, ids[k] = _shard(k)
        if k not in missing:
            files[f"/{split}/images_{k:03d}.tar"] = data
        files[f"/md5sum/{split}/md5.images_{k:03d}.txt"] = (
            f"{hashlib.md5(data).hexdigest()}  images_{k:03d}.tar\n".encode()
        )
    return files, ids


def _fast(**kw):
    retries = Retries(timeout=5, max_tries=4, backoff_base=0.0, backoff_cap=0.0, sleep=lambda s: None)
    return dict({"retries": retries, "progress": False, "jobs": 2}, **kw)


def test_urls_and_spec_parsing():
    assert IMAGE_SHARDS == {"train": 500, "index": 100, "test": 20}
    assert shard_url("train", 7, "http://h/x/") == "http://h/x/train/images_007.tar"
    assert md5_url("index", 42, "http://h") == "http://h/md5sum/index/md5.images_042.txt"
    assert parse_shards("0-2,5, 9", "test") == [0, 1, 2, 5, 9]
    assert parse_shards(None, "index") == list(range(100))
    for bad in ("3-1", "x", "0-20", "-1"):
        with pytest.raises(InputError, match="--shards"):
            parse_shards(bad, "test")
    assert parse_md5_file("D41D8CD98F00B204E9800998ECF8427E  images_000.tar\n", "u") == (
        "d41d8cd98f00b204e9800998ecf8427e"
    )
    with pytest.raises(NetworkError, match="not an md5sum file"):
        parse_md5_file("<html>AccessDenied</html>", "u")


def test_download_verifies_records_and_rerun_trusts_the_lock(tmp_path):
    files, ids = _site()
    with FileServer(files) as srv:
        recs = download_images("test", tmp_path, shards=[0, 1, 3], base_url=srv.url, **_fast())
        assert [r.status for r in recs] == ["downloaded"] * 3
        lock = read_lock(tmp_path / "gldv2.lock.json")
        for k in (0, 1, 3):
            data = files[f"/test/images_{k:03d}.tar"]
            assert (tmp_path / "test" / f"images_{k:03d}.tar").read_bytes() == data
            assert lock[f"test/images_{k:03d}.tar"] == {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "md5": hashlib.md5(data).hexdigest(),
            }
        n = len(srv.log)
        again = download_images("test", tmp_path, shards=[0, 1, 3], base_url=srv.url, **_fast())
        assert [r.status for r in again] == ["verified"] * 3 and len(srv.log) == n  # no request at all
        checked = download_images("test", tmp_path, shards=[0], base_url=srv.url, verify=True, **_fast())
        assert checked[0].status == "checked"
        # the metadata download shares the lock file and keeps the image entries
        files["/metadata/test.csv"] = b"id\n0123456789abcdef\n"
        download_metadata(
            ["test.csv"], tmp_path, base_url=srv.url, progress=False, retries=_fast()["retries"]
        )
        assert set(read_lock(tmp_path / "gldv2.lock.json")) == {
            "test.csv",
            "test/images_000.tar",
            "test/images_001.tar",
            "test/images_003.tar",
        }
    # never extracted: the dataset reads the downloaded shards in place
    all_ids = [i for k in (0, 1, 3) for i in ids[k]]
    split = tmp_path / "s.parquet"
    write_parquet(pa.table({"id": all_ids, "path": [image_relpath(i) for i in all_ids]}), split)
    ds = HGLDv2Dataset(split, tmp_path / "test", levels=[])
    assert [ds[k]["id"] for k in range(len(ds))] == all_ids
    assert not list((tmp_path / "test").glob("*/"))


def test_cut_transfer_resumes_with_range(tmp_path):
    files, _ = _site(shards=[2])
    path = "/test/images_002.tar"
    with FileServer(files, plan={path: ["drop", "drop"]}) as srv:
        recs = download_images("test", tmp_path, shards=[2], base_url=srv.url, chunk_size=512, **_fast())
        ranges = srv.gets(path)
    size = len(files[path])
    assert (
        recs[0].status == "downloaded" and (tmp_path / "test" / "images_002.tar").read_bytes() == files[path]
    )
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2}-"  # resumed where the cut left it
    assert len(ranges) == 3 and not list((tmp_path / "test").glob(".*"))


def test_corrupt_tar_fails_its_md5_and_is_not_recorded(tmp_path, cli_runner):
    files, _ = _site(shards=[0, 1])
    with FileServer(files, plan={"/test/images_001.tar": ["corrupt"]}) as srv:
        args = ["download", "images", "--split", "test", "--shards", "0-1", "--dest", str(tmp_path)]
        res = cli_runner.invoke(main, [*args, "--base-url", srv.url, "--no-progress", "--max-tries", "2"])
        assert res.exit_code == 2
        err = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(err) == 1 and "test/images_001.tar" in err[0] and "md5" in err[0]
        assert "Traceback" not in res.output
        lock = read_lock(tmp_path / "gldv2.lock.json")
        assert "test/images_000.tar" in lock and "test/images_001.tar" not in lock
        assert not (tmp_path / "test" / "images_001.tar").exists()
        assert not list((tmp_path / "test").glob(".images_001*"))  # the bad transfer is gone
        # the next run fetches it again (the server is healthy now) and records it
        res = cli_runner.invoke(
            main, [*args, "--base-url", srv.url, "--no-progress", "--json", str(tmp_path / "r.json")]
        )
        assert res.exit_code == 0, res.output
        out = json.loads((tmp_path / "r.json").read_text())
        assert [s["status"] for s in out["shards"]] == ["verified", "downloaded"]


def test_a_corrupt_shard_on_disk_is_replaced(tmp_path):
    files, _ = _site(shards=[0])
    with FileServer(files) as srv:
        download_images("test", tmp_path, shards=[0], base_url=srv.url, **_fast())
        p = tmp_path / "test" / "images_000.tar"
        data = bytearray(p.read_bytes())
        data[100] ^= 1  # same size: only --verify notices
        p.write_bytes(bytes(data))
        assert (
            download_images("test", tmp_path, shards=[0], base_url=srv.url, **_fast())[0].status == "verified"
        )
        rec = download_images("test", tmp_path, shards=[0], base_url=srv.url, verify=True, **_fast())[0]
        assert rec.status == "downloaded" and p.read_bytes() == files["/test/images_000.tar"]
        # a file on disk the lock does not know is hashed against the official md5 and recorded
        (tmp_path / "gldv2.lock.json").unlink()
        assert (
            download_images("test", tmp_path, shards=[0], base_url=srv.url, **_fast())[0].status == "recorded"
        )


def test_missing_shard_is_named_and_others_complete(tmp_path):
    files, _ = _site(shards=[0, 1, 2], missing=[1])
    with FileServer(files) as srv:
        with pytest.raises(NetworkError) as exc:
            download_images("test", tmp_path, shards=[0, 1, 2], base_url=srv.url, **_fast())
        recs = download_images(
            "test", tmp_path, shards=[0, 1, 2], base_url=srv.url, raise_on_error=False, **_fast()
        )
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("1 shard(s) failed: test/images_001.tar:") and "404" in msg
    assert [r.status for r in recs] == ["verified", "failed", "verified"]


def test_free_disk_space_is_checked_before_any_transfer(tmp_path):
    files, _ = _site(shards=[0, 1])
    need = sum(len(files[f"/test/images_{k:03d}.tar"]) for k in (0, 1))
    with FileServer(files) as srv:
        with pytest.raises(InputError, match=f"need {need:,d} bytes of free disk space, only 1,000 bytes"):
            download_images(
                "test", tmp_path, shards=[0, 1], base_url=srv.url, free_bytes=lambda p: 1000, **_fast()
            )
        assert not [r for r in srv.log if r.method == "GET"]
