"""hglv2.reencode (prepare-images): bounded re-encoding into tar shards read like the official ones."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from hglv2 import reencode
from hglv2.cli import main
from hglv2.dataset import HGLDv2Dataset, index_tar_shards
from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.schema import LEVEL_COLUMNS, image_relpath


def _smooth(seed: int, w: int, h: int) -> np.ndarray:
    """A smooth colour image (gradients + a blob), so a resize keeps its low frequencies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(0, 255, 3)
    img = np.stack([a * x + 40, b * y + 20, c * (1 - x) * y + 60], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


# (width, height, format) per image: larger than max_side (re-encoded), within it (kept), a PNG
SIZES = [(64, 48, "JPEG"), (20, 10, "JPEG"), (50, 70, "PNG"), (33, 32, "JPEG"), (100, 25, "JPEG")]
MAX_SIDE = 32


def _ids(n: int) -> list[str]:
    return [f"{k:016x}" for k in range(0xF00D000, 0xF00D000 + n)]


def _world(tmp_path: Path, n: int = 12, per_shard: int = 5, corrupt: int | None = 6):
    """Official-shaped tar shards + a split over them; returns (split, shard folder, ids, originals)."""
    ids = _ids(n)
    src = tmp_path / "train"
    src.mkdir()
    originals = {}
    for s in range(0, n, per_shard):
        with tarfile.open(src / f"images_{s // per_shard:03d}.tar", "w") as tf:
            d = tarfile.TarInfo("0/1")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)  # official shards hold folder entries too
            for k in range(s, min(n, s + per_shard)):
                w, h, fmt = SIZES[k % len(SIZES)]
                arr = _smooth(k, w, h)
                data = b"\xff\xd8not a jpeg at all" if k == corrupt else _encode(arr, fmt)
                originals[ids[k]] = (arr, data, fmt)
                info = tarfile.TarInfo(image_relpath(ids[k], ".jpg" if fmt == "JPEG" else ".png"))
                info.size = len(data)
                info.mtime = 1_600_000_000 + k
                tf.addfile(info, io.BytesIO(data))
    lm = [k % 3 for k in range(n)]
    table = pa.table(
        {
            "id": ids,
            "path": [image_relpath(i) for i in ids],
            "level0": pa.array([100 + x for x in lm], pa.int64()),
            "level1": pa.array([x % 2 for x in lm], pa.int64()),
            "level2": pa.array([0] * n, pa.int64()),
        }
    )
    split = tmp_path / "train.parquet"
    write_parquet(table, split)
    return split, src, ids, originals


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(16, 2048))
def test_target_size_bounds_the_longer_side_and_keeps_the_aspect(w, h, m):
    tw, th = reencode.target_size(w, h, m)
    if max(w, h) <= m:
        assert (tw, th) == (w, h)
    else:
        s = m / max(w, h)
        assert max(tw, th) == m and min(tw, th) >= 1
        for new, old in ((tw, w), (th, h)):  # each side rounded to the nearest pixel, at least 1
            assert abs(new - old * s) <= 0.5 + 1e-9 or (new == 1 and old * s < 1)


def test_resize_uses_draft_mode_and_bounds_size():
    big = _encode(_smooth(1, 800, 600))
    data, w, h, sw, sh, reenc = reencode.resize_image(big, reencode.PrepareSettings(max_side=100))
    assert (w, h, sw, sh, reenc) == (100, 75, 800, 600, True)
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (100, 75) and img.format == "JPEG" and not img.info.get("exif")
        assert "progressive" not in img.info
    small = _encode(_smooth(2, 40, 30))  # within max_side: kept byte for byte
    assert reencode.resize_image(small, reencode.PrepareSettings(max_side=100))[0] == small
    with pytest.raises(OSError):
        reencode.resize_image(b"\xff\xd8garbage", reencode.PrepareSettings(max_side=100))


def test_prepared_shards_read_like_the_official_ones(tmp_path):
    split, src, ids, originals = _world(tmp_path)
    out = tmp_path / "train-32"
    res = reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False)
    assert [s["name"] for s in res["shards"]] == ["images_000.tar", "images_001.tar", "images_002.tar"]
    assert res["images"] == len(ids) - 1
    assert [(f["shard"], f["member"]) for f in res["failed"]] == [("images_001.tar", image_relpath(ids[6]))]
    official = HGLDv2Dataset(split, src, on_error="skip")
    prepared = HGLDv2Dataset(split, out, on_error="skip")
    assert prepared.ids == official.ids and np.array_equal(prepared.labels, official.labels)
    for k, image_id in enumerate(ids):
        a, b = official[k], prepared[k]
        if k == 6:
            assert a is None and b is None  # the undecodable image is missing in both
            continue
        assert b["id"] == image_id and b["labels"].tolist() == a["labels"].tolist()
        _, h, w = b["image"].shape
        sw, sh, fmt = *SIZES[k % len(SIZES)][:2], SIZES[k % len(SIZES)][2]
        assert (w, h) == reencode.target_size(sw, sh, MAX_SIDE)
        ref = Image.fromarray(originals[image_id][0]).resize((w, h), Image.Resampling.BICUBIC)
        diff = np.abs(b["image"].numpy().transpose(1, 2, 0) * 255 - np.asarray(ref, dtype=np.float64))
        assert diff.mean() < 6.0, (k, diff.mean())
        if max(sw, sh) <= MAX_SIDE and fmt == "JPEG":  # kept byte for byte
            assert prepared._read_tar(k) == originals[image_id][1]
    # the index agrees with the tar headers, and with the dataset's own scan
    index = pq.read_table(out / "index.parquet").to_pylist()
    scanned = index_tar_shards(sorted(out.glob("*.tar")))
    assert len(index) == len(ids) - 1
    for row in index:
        k, off, size = scanned[row["id"]]
        assert (f"images_{k:03d}.tar", off, size) == (row["shard"], row["offset"], row["size"])
        assert max(row["width"], row["height"]) <= MAX_SIDE
    with tarfile.open(out / "images_000.tar") as tf:
        for m in tf:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.name.endswith(".jpg")


def test_the_prepared_index_is_the_datasets_tar_index(tmp_path, monkeypatch):
    """index.parquet of a prepared folder is a tar index: the dataset reads it instead of
    scanning the tar headers, finds every image where its own scan does, and leaves it as is."""
    split, src, _, _ = _world(tmp_path)
    out = tmp_path / "train-32"
    reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False)
    scanned = HGLDv2Dataset(split, out, on_error="skip")
    before = (out / "index.parquet").read_bytes()

    def no_scan(*a, **k):
        raise AssertionError("tar headers scanned")

    monkeypatch.setattr(tarfile, "open", no_scan)
    ds = HGLDv2Dataset(split, out, on_error="skip", tar_index=out / "index.parquet")
    assert np.array_equal(ds._loc, scanned._loc) and (ds._loc[:, 0] >= 0).sum() == len(ds) - 1
    assert (out / "index.parquet").read_bytes() == before


def test_bytes_are_deterministic_across_jobs_and_reruns(tmp_path):
    _, src, _, _ = _world(tmp_path)
    reencode.prepare_images(src, tmp_path / "a", max_side=MAX_SIDE, jobs=1, progress=False)
    reencode.prepare_images(src, tmp_path / "b", max_side=MAX_SIDE, jobs=2, progress=False)
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")
    res = reencode.prepare_images(src, tmp_path / "a", max_side=MAX_SIDE, jobs=1, progress=False)
    assert res["shards_skipped"] == 3 and res["images_prepared_now"] == 0
    assert _files(tmp_path / "a") == first


def test_interrupted_run_resumes_per_shard(tmp_path, monkeypatch):
    _, src, _, _ = _world(tmp_path)
    out = tmp_path / "out"
    real = reencode.prepare_shard

    def crash_on_second(plan, out_dir, settings):
        if plan.name == "images_001.tar":
            # leave a half-written temporary file behind, as a killed worker would
            (Path(out_dir) / ".images_001.tar.abcd.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(plan, out_dir, settings)

    monkeypatch.setattr(reencode, "prepare_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["images_000.tar"]  # finished shard committed
    stamp = (out / "images_000.tar").stat().st_mtime_ns
    monkeypatch.setattr(reencode, "prepare_shard", real)
    res = reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False)
    assert res["shards_skipped"] == 1 and (out / "images_000.tar").stat().st_mtime_ns == stamp
    assert not list(out.glob(".images_*.tmp"))
    reencode.prepare_images(src, tmp_path / "fresh", max_side=MAX_SIDE, jobs=1, progress=False)
    assert _files(out) == _files(tmp_path / "fresh")
    # a shard whose tar was replaced (size differs from its index) is redone
    (out / "images_002.tar").write_bytes(b"x" * 512)
    res = reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False)
    assert res["shards_skipped"] == 2 and _files(out) == _files(tmp_path / "fresh")


def test_image_folder_source_is_cut_into_shards(tmp_path):
    split, src, ids, originals = _world(tmp_path, corrupt=None)
    folder = tmp_path / "folder"
    for image_id, (_, data, fmt) in originals.items():
        p = folder / image_relpath(image_id, ".jpg" if fmt == "JPEG" else ".png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    out = tmp_path / "out"
    res = reencode.prepare_images(folder, out, max_side=MAX_SIDE, shard_size=4, jobs=1, progress=False)
    assert [s["images"] for s in res["shards"]] == [4, 4, 4]
    ds = HGLDv2Dataset(split, out)
    assert [ds[k]["id"] for k in range(len(ds))] == ids
    assert all(max(ds[k]["image"].shape[1:]) <= MAX_SIDE for k in range(len(ds)))


def test_bad_inputs_are_one_line_errors(tmp_path, cli_runner):
    _, src, _, _ = _world(tmp_path)
    out = tmp_path / "out"
    reencode.prepare_images(src, out, max_side=MAX_SIDE, jobs=1, progress=False, shards=["images_000.tar"])
    with pytest.raises(InputError, match="prepared with"):
        reencode.prepare_images(src, out, max_side=64, jobs=1, progress=False)
    with pytest.raises(InputError, match="no shard 'images_009.tar'"):
        reencode.prepare_images(src, out, max_side=MAX_SIDE, shards=["images_009.tar"], progress=False)
    (tmp_path / "empty").mkdir()
    r = cli_runner.invoke(main, ["prepare-images", "--source", str(tmp_path / "empty"), "--out", str(out)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("Error: ")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images_000.tar").write_bytes(b"this is not a tar file" * 40)
    r = cli_runner.invoke(main, ["prepare-images", "--source", str(bad), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "images_000.tar: not a readable tar file" in r.output
    r = cli_runner.invoke(main, ["prepare-images", "--source", str(src), "--shards", "1-x"])
    assert r.exit_code == 2 and "--shards" in r.output


def test_cli_prepares_the_download_layout(tmp_path, cli_runner):
    split, src, ids, _ = _world(tmp_path, corrupt=None)  # src is DEST/train
    args = ["prepare-images", "--dest", str(tmp_path), "--max-side", "32", "--jobs", "2", "--no-progress"]
    r = cli_runner.invoke(main, [*args, "--shards", "0-1", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "train-32"
    assert sorted(p.name for p in out.glob("*.tar")) == ["images_000.tar", "images_001.tar"]
    r = cli_runner.invoke(main, args)
    assert r.exit_code == 0 and "(2 already done)" in r.output
    ds = HGLDv2Dataset(split, out, levels=LEVEL_COLUMNS[:2])
    assert len(ds) == len(ids) and ds[len(ids) - 1]["labels"].shape == (2,)


WATCHED = textwrap.dedent(
    """
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from hglv2.processes import die_with_parent
    if __name__ == "__main__":
        ex = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=die_with_parent,
                                 initargs=(os.getpid(),))
        print(ex.submit(os.getpid).result(), flush=True)
        ex.submit(time.sleep, 120)
        time.sleep(120)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="checks /proc")
def test_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(WATCHED)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(proc.stdout.readline())
        assert Path(f"/proc/{worker}").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text()
        assert gone, "worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_resize_image_keeps_pillow_blocks_and_the_same_bytes():
    """resize_image raises Pillow's block cache for its process (never lowers it) and writes the
    bytes the same Pillow steps write on Pillow's defaults."""
    old = Image.core.get_blocks_max()
    try:
        Image.core.set_blocks_max(0)
        rng = np.random.default_rng(3)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (64, 48))
            rgb = img.convert("RGB")
        want = io.BytesIO()
        rgb.resize((64, 48), Image.Resampling.BICUBIC).save(
            want, format="JPEG", quality=90, subsampling=2, optimize=True, progressive=False
        )
        got = reencode.resize_image(data, reencode.PrepareSettings(max_side=64))
        assert got[0] == want.getvalue() and got[1:3] == (64, 48)
        assert Image.core.get_blocks_max() == reencode.IMAGE_BLOCKS
        Image.core.set_blocks_max(4 * reencode.IMAGE_BLOCKS)
        assert reencode.resize_image(data, reencode.PrepareSettings(max_side=64))[0] == want.getvalue()
        assert Image.core.get_blocks_max() == 4 * reencode.IMAGE_BLOCKS
    finally:
        Image.core.set_blocks_max(old)
