"""The README's commands and paths agree with the shipped configs and the code (issue 12, item 12)."""

from __future__ import annotations

import re
from pathlib import Path

from hglv2.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_export_path_is_the_h_gldv2_config_data_root():
    """Following the README (download, export), ``hglv2 train h-gldv2`` finds the export and the images."""
    exports = re.findall(r"^hglv2 export --metadata (\S+) --out (\S+)", README, re.M)
    assert exports, "the README shows the export command"
    cfg = load_config("h-gldv2")["data"]
    for _metadata, out in exports:
        assert out == cfg["root"], f"README exports to {out}, h-gldv2 reads {cfg['root']}"
    dests = set(re.findall(r"^hglv2 download images .*--dest (\S+)", README, re.M))
    dests |= {m for m, _ in exports}
    assert len(dests) == 1, dests
    dest = dests.pop()
    # image shards land in <dest>/<split>/images_NNN.tar (hglv2 download images --split train|index|test)
    assert cfg["image_root"] == {"train": f"{dest}/train", "index": f"{dest}/index", "query": f"{dest}/test"}
    for path in re.findall(r'HGLDv2Dataset\("([^"]+)\.parquet"', README):
        assert Path(path).parent.as_posix() == cfg["root"]


def test_readme_names_the_benchmark_run_folders():
    """Run folders are ``<out>/runs/<loss>/seed<k>/`` (``hglv2.benchmark``), as the README says."""
    assert "`<out>/runs/<loss>/seed<k>/`" in README
    assert "`runs/benchmark/synthetic/runs/SupAP/seed0/`" in README
    assert not re.search(r"trains in `runs/<loss>", README)
