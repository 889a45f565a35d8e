"""The review page: self-contained HTML, counts equal to the tables', a working "needs review" filter,
checked in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hglv2.hierarchy import report as hr
from hglv2.schema import HIERARCHY_COLUMNS

CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _jpeg(seed: int) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, "JPEG")
    return buf.getvalue()


def _inputs() -> hr.ReportInputs:
    rows = [  # numbering, id, supercategory, cluster, top, provenance
        ("train", 1, "church building", "church", "human-made", "rule"),
        ("train", 2, "cathedral", "church", "human-made", "decision"),
        ("train", 3, "pier", "bridge", "human-made", "vote"),
        ("train", 4, "fountain", None, None, None),
        ("train", 5, "tarn", "lake", "natural", "override"),
        ("index", 1, "lake", "lake", "natural", "rule"),
        ("index", 7, "<b>odd & name</b>", None, "natural", "rule"),
    ]
    t = pd.DataFrame([dict.fromkeys(HIERARCHY_COLUMNS) for _ in rows])
    for i, (n, lid, sup, c, top, p) in enumerate(rows):
        t.loc[i, ["numbering", "landmark_id", "supercategory", "hierarchical_label", "natural_or_human_made",
                  "provenance"]] = [n, lid, sup, c, top, p]  # fmt: skip
    t["qid"] = [f"Q{100 + i}" for i in range(len(t) - 1)] + [None]
    t["category"] = [f"http://commons.wikimedia.org/wiki/Category:L{i}" for i in range(len(t))]
    t = t.astype({c: "string" for c in HIERARCHY_COLUMNS if c != "landmark_id"}).astype(
        {"landmark_id": "int64"}
    )
    votes = pd.DataFrame(
        {
            "numbering": ["train", "train"],
            "landmark_id": [3, 4],
            "cluster": ["bridge", "church"],
            "top": ["human-made", "human-made"],
            "share": [0.9, 0.5],
            "images": [10, 4],
            "runner_up": ["church", "lake"],
            "runner_up_share": [0.1, 0.5],
            "margin": [0.8, 0.0],
            "status": ["accepted", "pending"],
        }
    )
    dis = pd.DataFrame(
        {
            "numbering": ["train"],
            "landmark_id": [2],
            "level": ["hierarchical_label"],
            "value_a": ["church"],
            "value_b": ["monastery"],
        }  # fmt: skip
    )
    numberings = pd.DataFrame(
        {
            "train_landmark_id": [5],
            "index_landmark_id": [1],
            "queries": [2],
            "train_cluster": ["lake"],
            "index_cluster": ["mountain"],
            "train_top": ["natural"],
            "index_top": ["natural"],
            "status": ["cluster differs"],
        }
    )
    counts = {
        ("train", 1): 12,
        ("train", 2): 3,
        ("train", 3): 10,
        ("train", 4): 4,
        ("train", 5): 1,
        ("index", 1): 6,
    }
    thumbs = {("train", 1): [_jpeg(1), _jpeg(2)], ("index", 1): [_jpeg(3), b"not an image"]}
    return hr.ReportInputs(t, votes, dis, numberings, counts, thumbs, title="test review")


def test_page_is_self_contained_and_flags_what_needs_review(tmp_path):
    inp = _inputs()
    page = hr.build_report(inp)
    assert page == hr.build_report(_inputs())  # deterministic
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", page)
    assert all(
        src.startswith("data:image/jpeg;base64,") for src in re.findall(r'<img[^>]+src="([^"]+)"', page)
    )
    assert len(re.findall(r"<img ", page)) == 3 + 2  # 3 landmark thumbnails, 2 in cluster rows (church, lake)
    assert "&lt;b&gt;odd &amp; name&lt;/b&gt;" in page and "<b>odd" not in page
    rows = hr.landmark_rows(inp).set_index(["numbering", "landmark_id"])
    # no cluster, a pending vote, a published disagreement, a numbering disagreement
    assert sorted(rows.index[rows["needs_review"]]) == [
        ("index", 1),
        ("index", 7),
        ("train", 2),
        ("train", 4),
        ("train", 5),
    ]
    assert "vote bridge 90% of 10 images, runner-up church 10% (accepted)" in page
    assert "https://www.wikidata.org/wiki/Q100" in page and ">nan<" not in page and "Q108" not in page
    out = tmp_path / "r.html"
    hr.write_report(out, page)
    assert out.read_text(encoding="utf-8") == page


def _driver():
    if shutil.which("chromium") is None or not CHROMEDRIVER.exists():
        pytest.skip(
            "Chromium is not installed (apt-get install chromium chromium-driver; `make install` does it)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


def _text(driver, css: str) -> str:
    return driver.find_element("css selector", css).get_attribute("textContent").strip()


@pytest.mark.timeout(120)
def test_page_in_a_headless_browser(tmp_path):
    inp = _inputs()
    path = tmp_path / "review.html"
    hr.write_report(path, hr.build_report(inp))
    counts = hr.report_counts(hr.landmark_rows(inp))
    driver = _driver()
    try:
        driver.get(path.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        assert int(_text(driver, "#total-landmarks")) == counts["total"]["landmarks"] == 7
        assert int(_text(driver, "#total-images")) == counts["total"]["images"] == 36
        assert int(_text(driver, "#total-review")) == counts["total"]["review"] == 5
        assert int(_text(driver, "#total-numbering")) == 1 and int(_text(driver, "#total-published")) == 1
        assert int(_text(driver, "#shown")) == 7
        for el in driver.find_elements("css selector", "details.cluster"):
            top = el.find_element("xpath", "ancestor::details[contains(@class,'top')]").get_attribute(
                "data-name"
            )
            want = counts["clusters"][f"{top}/{el.get_attribute('data-name')}"]
            assert (
                int(el.find_element("css selector", ".c-lm").get_attribute("textContent"))
                == want["landmarks"]
            )
            assert (
                int(el.find_element("css selector", ".c-img").get_attribute("textContent")) == want["images"]
            )
        for el in driver.find_elements("css selector", "details.top"):
            want = counts["tops"][el.get_attribute("data-name")]
            assert (
                int(el.find_element("css selector", ".c-lm").get_attribute("textContent"))
                == want["landmarks"]
            )
        driver.find_element("css selector", "#only-review").click()
        shown = [
            e.get_attribute("data-key")
            for e in driver.find_elements("css selector", ".lm")
            if e.is_displayed()
        ]
        assert sorted(shown) == ["index:1", "index:7", "train:2", "train:4", "train:5"]
        assert int(_text(driver, "#shown")) == 5
        assert not any(
            e.is_displayed()
            for e in driver.find_elements("css selector", "details.cluster[data-name=bridge]")
        )
        driver.find_element("css selector", "#only-review").click()
        assert int(_text(driver, "#shown")) == 7
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
