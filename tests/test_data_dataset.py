"""HGLDv2Dataset over folder and tar layouts, DataLoader workers, and the batch samplers."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from hglv2.dataset import HGLDv2Dataset, collate_skip_none
from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.samplers import HierarchicalBatchSampler, MPerClassBatchSampler
from hglv2.schema import SPLIT_COLUMNS, image_relpath


def _jpeg(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _split(tmp_path, n=12, n_classes=4):
    ids = [f"{k:016x}" for k in range(0xABC000, 0xABC000 + n)]
    lm = [k % n_classes for k in range(n)]
    table = pa.table(
        {
            "id": ids,
            "landmark_id": pa.array(lm, pa.int64()),
            "path": [image_relpath(i) for i in ids],
            "category": [None] * n,
            "supercategory": [None] * n,
            "hierarchical_label": [f"h{x % 2}" for x in lm],
            "natural_or_human_made": ["human-made"] * n,
            "level0": pa.array(lm, pa.int64()),
            "level1": pa.array([x % 2 for x in lm], pa.int64()),
            "level2": pa.array([0] * n, pa.int64()),
            "hierarchy_complete": [True] * n,
        }
    )
    assert tuple(table.column_names) == SPLIT_COLUMNS
    path = tmp_path / "train.parquet"
    write_parquet(table, path)
    return path, ids, lm


def _folder(tmp_path, ids):
    root = tmp_path / "images"
    for k, i in enumerate(ids):
        p = root / image_relpath(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_jpeg(k))
    return root


def _tars(tmp_path, ids, per_shard=5):
    root = tmp_path / "shards"
    root.mkdir()
    for s in range(0, len(ids), per_shard):
        with tarfile.open(root / f"images_{s // per_shard:03d}.tar", "w") as tf:
            for k, i in enumerate(ids[s : s + per_shard], start=s):
                data = _jpeg(k)
                info = tarfile.TarInfo(image_relpath(i))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


def _resize(img):
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_dataset_items_and_dataloader_workers(tmp_path, layout):
    split, ids, lm = _split(tmp_path)
    root = _folder(tmp_path, ids) if layout == "folder" else _tars(tmp_path, ids)
    ds = HGLDv2Dataset(split, root)
    assert len(ds) == 12 and ds.labels.shape == (12, 3) and ds.labels.dtype == np.int64
    item = ds[3]
    assert item["id"] == ids[3]
    assert item["labels"].dtype == torch.long and item["labels"].tolist() == [lm[3], lm[3] % 2, 0]
    assert item["image"].shape == (3, 10, 12) and item["image"].dtype == torch.float32
    # the decoded pixels are those of the JPEG written for this id
    expected = np.asarray(Image.open(io.BytesIO(_jpeg(3))).convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), expected, atol=1e-6)

    ds = HGLDv2Dataset(split, root, levels=("level0", 1), transform=_resize)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 8, 8) and batch["labels"].shape[1] == 2
        seen += batch["id"]
        for i, lab in zip(batch["id"], batch["labels"].tolist(), strict=True):
            assert lab == [lm[ids.index(i)], lm[ids.index(i)] % 2]
    assert seen == ids


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_missing_and_corrupt_images(tmp_path, layout):
    split, ids, _ = _split(tmp_path)
    if layout == "folder":
        root = _folder(tmp_path, ids)
        (root / image_relpath(ids[2])).unlink()
        (root / image_relpath(ids[5])).write_bytes(b"not a jpeg at all")
    else:
        root = _tars(tmp_path, ids[:2] + ids[3:])  # ids[2] absent
        with tarfile.open(root / "images_099.tar", "w") as tf:  # a corrupt duplicate is ignored
            info = tarfile.TarInfo("x/" + ids[5] + ".jpg")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"abcd"))
        bad_root = tmp_path / "bad"
        bad_root.mkdir()
        with tarfile.open(bad_root / "images_000.tar", "w") as tf:
            info = tarfile.TarInfo(ids[5] + ".jpg")
            info.size = 4
            tf.addfile(info, io.BytesIO(b"abcd"))
        with pytest.raises(InputError, match=f"{ids[5]} is unreadable"):
            HGLDv2Dataset(split, bad_root)[5]
    ds = HGLDv2Dataset(split, root)
    with pytest.raises(InputError, match=f"image {ids[2]} is missing"):
        ds[2]
    if layout == "folder":
        with pytest.raises(InputError, match=f"image {ids[5]} is unreadable"):
            ds[5]
    skip = HGLDv2Dataset(split, root, on_error="skip", transform=_resize)
    assert skip[2] is None and skip.skipped == 1
    loader = DataLoader(skip, batch_size=6, num_workers=2, collate_fn=collate_skip_none)
    batches = list(loader)
    n_bad = 2 if layout == "folder" else 1
    assert sum(b["n_skipped"] for b in batches) == n_bad
    assert sum(len(b["id"]) for b in batches) == 12 - n_bad


def test_dataset_rejects_bad_splits(tmp_path):
    split, ids, _ = _split(tmp_path)
    root = _folder(tmp_path, ids)
    with pytest.raises(InputError, match="no such split"):
        HGLDv2Dataset(tmp_path / "nope.parquet", root)
    (tmp_path / "x.parquet").write_text("id,path\n")
    with pytest.raises(InputError, match="not a Parquet"):
        HGLDv2Dataset(tmp_path / "x.parquet", root)
    with pytest.raises(InputError, match="level 'level7'"):
        HGLDv2Dataset(split, root, levels=("level7",))
    with pytest.raises(InputError, match="no such image folder"):
        HGLDv2Dataset(split, tmp_path / "missing")
    evil = pa.table(
        {"id": ["0000000000000001"], "path": ["../../etc/passwd"], "level0": pa.array([1], pa.int64())}
    )
    write_parquet(evil, tmp_path / "evil.parquet")
    with pytest.raises(InputError, match="unsafe path"):
        HGLDv2Dataset(tmp_path / "evil.parquet", root, levels=("level0",))


# ------------------------------------------------------------------------------------ samplers


def _labels(counts, n_clusters=3):
    lab = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    return np.stack([lab, lab % n_clusters], axis=1)


@given(
    counts=st.lists(st.integers(1, 12), min_size=4, max_size=30),
    m=st.sampled_from([1, 2, 3, 4]),
    p=st.integers(2, 4),
    epoch=st.integers(0, 3),
)
def test_m_per_class_properties(counts, m, p, epoch):
    labels = _labels(counts)[:, 0]
    if len(counts) < p:
        return
    s = MPerClassBatchSampler(labels, m=m, batch_size=m * p, seed=7, top_up=True)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s)
    covered = set()
    for b in batches:
        assert len(b) == m * p
        per_class = Counter(labels[b].tolist())
        assert len(per_class) == p and set(per_class.values()) == {m}
        covered.update(b)
    # top_up: every image appears (small classes are topped up, never dropped)
    assert covered == set(range(len(labels)))
    # deterministic per (seed, epoch); a new epoch reshuffles
    s2 = MPerClassBatchSampler(labels, m=m, batch_size=m * p, seed=7, top_up=True)
    s2.set_epoch(epoch)
    assert list(s2) == batches


def test_m_per_class_top_up_covers_every_image_when_balanced():
    labels = _labels([8] * 10)[:, 0]
    s = MPerClassBatchSampler(labels, m=4, batch_size=16, top_up=True)
    b = list(s)
    assert sorted(np.concatenate(b).tolist()) == list(range(80))
    s.set_epoch(1)
    assert list(s) != b


def test_m_per_class_dominant_class():
    labels = _labels([200, 3, 2, 1, 4])[:, 0]
    batches = list(MPerClassBatchSampler(labels, m=2, batch_size=6, seed=5, top_up=True))
    assert set(np.concatenate(batches).tolist()) == set(range(len(labels)))
    assert all(sorted(Counter(labels[b].tolist()).values()) == [2, 2, 2] for b in batches)


def test_m_per_class_ddp_partitions_the_epoch():
    labels = _labels([5, 9, 3, 7, 6, 2, 8, 4])[:, 0]
    full = MPerClassBatchSampler(labels, m=2, batch_size=4, seed=3)
    glob = full.global_batches()
    shards = [
        list(MPerClassBatchSampler(labels, m=2, batch_size=4, seed=3, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert len({len(x) for x in shards}) == 1
    assert all(
        len(x) == MPerClassBatchSampler(labels, 2, 4, seed=3, num_replicas=3, rank=0).__len__()
        for x in shards
    )
    union = [b for x in shards for b in x]
    assert all(b in union for b in glob)  # every global batch goes to some replica


def test_m_per_class_rejects_bad_arguments():
    labels = np.arange(3)
    with pytest.raises(ValueError, match="multiple"):
        MPerClassBatchSampler(labels, m=3, batch_size=4)
    with pytest.raises(ValueError, match="only 3 classes"):
        MPerClassBatchSampler(labels, m=1, batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        MPerClassBatchSampler(labels, m=1, batch_size=2, num_replicas=2, rank=2)


@given(
    counts=st.lists(st.integers(1, 10), min_size=6, max_size=40),
    n_clusters=st.integers(2, 5),
    m=st.sampled_from([1, 2]),
    per_slot=st.integers(1, 3),
    epoch=st.integers(0, 2),
)
def test_hierarchical_sampler_properties(counts, n_clusters, m, per_slot, epoch):
    labels = _labels(counts, n_clusters)
    if len(set(labels[:, 1].tolist())) < 2:
        return
    bs = 2 * m * per_slot
    s = HierarchicalBatchSampler(labels, m=m, batch_size=bs, clusters_per_batch=2, seed=1, top_up=True)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s)
    seen_classes, covered = set(), set()
    for b in batches:
        covered.update(b)
        assert len(b) == bs
        clusters = Counter(labels[b, 1].tolist())
        assert len(clusters) == 2 and set(clusters.values()) == {bs // 2}
        per_class = Counter(labels[b, 0].tolist())
        assert all(v % m == 0 for v in per_class.values())
        seen_classes.update(per_class)
    assert seen_classes == set(range(len(counts)))
    assert covered == set(range(len(labels)))
    s2 = HierarchicalBatchSampler(labels, m=m, batch_size=bs, clusters_per_batch=2, seed=1, top_up=True)
    s2.set_epoch(epoch)
    assert list(s2) == batches


def test_hierarchical_sampler_excludes_unknown_clusters_and_scales():
    rng = np.random.default_rng(0)
    n_classes, n_clusters = 30_000, 300
    sizes = rng.integers(1, 8, size=n_classes)
    cls = np.repeat(np.arange(n_classes), sizes)
    clu = (cls * 7919) % n_clusters
    clu[cls % 97 == 0] = -1
    labels = np.stack([cls, clu], axis=1)
    s = HierarchicalBatchSampler(labels, m=2, batch_size=64, clusters_per_batch=4, num_replicas=2, rank=1)
    assert s.n_excluded == int((clu == -1).sum())
    batches = list(s)
    assert len(batches) == len(s) > 100
    for b in batches[:50]:
        assert (labels[b, 1] >= 0).all() and len(set(labels[b, 1].tolist())) == 4


def test_tar_index_cache_is_reused_and_refreshed(tmp_path, monkeypatch):
    split, ids, _ = _split(tmp_path)
    root = _tars(tmp_path, ids)
    cache = tmp_path / "tar_index.parquet"
    first = HGLDv2Dataset(split, root, tar_index=cache)
    assert cache.is_file()
    expected = first[4]

    def no_scan(*a, **k):
        raise AssertionError("tar headers scanned again")

    monkeypatch.setattr(tarfile, "open", no_scan)
    again = HGLDv2Dataset(split, root, tar_index=cache)
    assert torch.equal(again[4]["image"], expected["image"]) and again[4]["id"] == ids[4]
    monkeypatch.undo()
    # a shard changed size: the cache is stale and rebuilt
    with tarfile.open(root / "images_000.tar", "a") as tf:
        info = tarfile.TarInfo("extra/0000000000000abc.jpg")
        data = _jpeg(99)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    HGLDv2Dataset(split, root, tar_index=cache)
    import pyarrow.parquet as pq

    assert "0000000000000abc" in pq.read_table(cache)["id"].to_pylist()


def _tar(path, ids, seeds):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i, k in zip(ids, seeds, strict=True):
            data = _jpeg(k)
            info = tarfile.TarInfo(image_relpath(i))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_index_cache_tells_same_named_shards_of_two_folders_apart(tmp_path):
    split, ids, _ = _split(tmp_path)
    _tar(tmp_path / "train" / "images_000.tar", ids[:4], range(4))
    _tar(tmp_path / "index" / "images_000.tar", ids[4:], range(4, 12))  # longer than train's shard
    cache = tmp_path / "tar_index.parquet"
    train = HGLDv2Dataset(split, tmp_path / "train", tar_index=cache, on_error="skip")
    assert train[0]["id"] == ids[0] and train[5] is None
    index = HGLDv2Dataset(split, tmp_path / "index", tar_index=cache, on_error="skip")
    assert index[0] is None
    fresh = HGLDv2Dataset(split, tmp_path / "index", on_error="skip")
    assert torch.equal(index[5]["image"], fresh[5]["image"])
    # one dataset over both folders' shards: a reread cache keeps each member in its own shard
    both = [tmp_path / "train" / "images_000.tar", tmp_path / "index" / "images_000.tar"]
    cache2 = tmp_path / "both.parquet"
    first = HGLDv2Dataset(split, both, tar_index=cache2)
    again = HGLDv2Dataset(split, both, tar_index=cache2)
    for k in (0, 3, 4, 11):
        assert torch.equal(again[k]["image"], first[k]["image"]), k
