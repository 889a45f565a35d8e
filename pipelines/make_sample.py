"""Generate the embedded sample ``data/sample/`` deterministically.

The landmarks are fictional; the Wikidata classes above them use real QIDs with their real English
labels (plus a few classes marked "(sample class)" with QIDs far above the real range, used to
build P279 cycles, ties and a redirect). The world exercises the shapes the resolve stage meets on
the real Wikidata: category items (P31 Q4167836) with P301, a category item without P301, P301
pointing at a redirected item, titles with no sitelink found through P373 with SPARQL, titles found
nowhere, invalid URLs, several P31 statements, preferred and deprecated ranks, ``somevalue`` snaks,
P279 cycles and a self-loop.

Outputs (small, committed): ``train_label_to_category.csv``, ``train.csv``, ``train_clean.csv``,
``train_label_to_hierarchical.csv`` (published format, for the import/diff demo) and
``wikidata_cache.jsonl`` (the recorded answers, recorded by running the resolve, graph and
validate-anchors stages against :mod:`fake_wikidata` serving this world).

    python -m pipelines.make_sample [--out data/sample] [--clusters data/review/clusters.csv]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import tempfile
from pathlib import Path
from urllib.parse import quote

from hglv2.fileio import atomic_open  # noqa: E402
from pipelines.fake_wikidata import FakeWikidata, World  # noqa: E402

SEED = 20240601
CATEGORY_ITEM = "Q4167836"

# real classes: qid -> (English label, P279 parents)
REAL_CLASSES: dict[str, tuple[str, list[str]]] = {
    "Q35120": ("entity", []),
    "Q488383": ("object", ["Q35120"]),
    "Q223557": ("physical object", ["Q488383"]),
    "Q811979": ("architectural structure", ["Q223557"]),
    "Q41176": ("building", ["Q811979"]),
    "Q24398318": ("religious building", ["Q41176"]),
    "Q1370598": ("place of worship", ["Q24398318"]),
    "Q16970": ("church building", ["Q24398318", "Q1370598"]),
    "Q2977": ("cathedral", ["Q16970"]),
    "Q108325": ("chapel", ["Q16970"]),
    "Q44613": ("monastery", ["Q24398318"]),
    "Q160742": ("abbey", ["Q44613"]),
    "Q32815": ("mosque", ["Q1370598"]),
    "Q34627": ("synagogue", ["Q1370598"]),
    "Q44539": ("temple", ["Q1370598"]),
    "Q842402": ("Hindu temple", ["Q44539"]),
    "Q5393308": ("Buddhist temple", ["Q44539"]),
    "Q57821": ("fortification", ["Q811979"]),
    "Q23413": ("castle", ["Q57821", "Q41176"]),
    "Q3947": ("house", ["Q41176"]),
    "Q879050": ("manor house", ["Q3947"]),
    "Q751876": ("château", ["Q879050"]),
    "Q16560": ("palace", ["Q41176"]),
    "Q33506": ("museum", ["Q41176"]),
    "Q4989906": ("monument", ["Q811979"]),
    "Q5003624": ("memorial", ["Q4989906"]),
    "Q860861": ("sculpture", ["Q223557"]),
    "Q179700": ("statue", ["Q860861"]),
    "Q12280": ("bridge", ["Q811979"]),
    "Q12518": ("tower", ["Q811979"]),
    "Q39715": ("lighthouse", ["Q12518"]),
    "Q1440300": ("observation tower", ["Q12518"]),
    "Q11303": ("skyscraper", ["Q41176"]),
    "Q1076486": ("sports venue", ["Q811979"]),
    "Q483110": ("stadium", ["Q1076486"]),
    "Q55488": ("railway station", ["Q811979"]),
    "Q12323": ("dam", ["Q811979"]),
    "Q109607": ("ruins", ["Q811979"]),
    "Q2221906": ("geographic location", ["Q35120"]),
    "Q39614": ("cemetery", ["Q2221906"]),
    "Q22698": ("park", ["Q2221906"]),
    "Q1107656": ("garden", ["Q2221906"]),
    "Q570116": ("tourist attraction", ["Q2221906"]),
    "Q839954": ("archaeological site", ["Q2221906"]),
    "Q618123": ("geographical feature", ["Q2221906"]),
    "Q271669": ("landform", ["Q618123"]),
    "Q8502": ("mountain", ["Q271669"]),
    "Q8072": ("volcano", ["Q8502"]),
    "Q54050": ("hill", ["Q271669"]),
    "Q46831": ("mountain range", ["Q271669"]),
    "Q23442": ("island", ["Q271669"]),
    "Q40080": ("beach", ["Q271669"]),
    "Q35509": ("cave", ["Q271669"]),
    "Q15324": ("body of water", ["Q618123"]),
    "Q23397": ("lake", ["Q15324"]),
    "Q131681": ("reservoir", ["Q23397"]),
    "Q4022": ("river", ["Q15324"]),
    "Q34038": ("waterfall", ["Q618123"]),
    "Q4421": ("forest", ["Q618123"]),
    "Q8514": ("desert", ["Q271669"]),
    CATEGORY_ITEM: ("Wikimedia category", ["Q35120"]),
}
# sample classes (fictional QIDs): qid -> (label, parents)
SAMPLE_CLASSES: dict[str, tuple[str, list[str]]] = {
    "Q990000101": ("pilgrimage church (sample class)", ["Q16970"]),
    "Q990000102": ("lakeside park (sample class)", ["Q22698", "Q23397"]),
    "Q990000103": ("palace museum (sample class)", ["Q16560", "Q33506"]),
    "Q990000104": ("clock tower (sample class)", ["Q990000301"]),  # parent is a redirect
    "Q990000201": ("cycle class A (sample class)", ["Q990000202"]),
    "Q990000202": ("cycle class B (sample class)", ["Q990000203"]),
    "Q990000203": ("cycle class C (sample class)", ["Q990000201", "Q41176"]),
    "Q990000204": ("cycle class D (sample class)", ["Q990000205", "Q12518"]),
    "Q990000205": ("cycle class E (sample class)", ["Q990000204"]),
    "Q990000206": ("self-loop bridge (sample class)", ["Q990000206", "Q12280"]),
}
CLASS_REDIRECTS = {"Q990000301": "Q12518"}

# landmark kinds: (P31 statements as (qid, rank), name template, weight)
KINDS: list[tuple[list[tuple[str, str]], str, int]] = [
    ([("Q16970", "normal")], "Church of Saint {n}", 30),
    ([("Q2977", "normal"), ("Q16970", "normal")], "{n} Cathedral", 10),
    ([("Q108325", "normal")], "{n} Chapel", 8),
    ([("Q990000101", "normal")], "Pilgrimage Church of {n}", 6),
    ([("Q160742", "normal")], "{n} Abbey", 6),
    ([("Q44613", "normal")], "{n} Monastery", 6),
    ([("Q32815", "normal")], "{n} Mosque", 6),
    ([("Q34627", "normal")], "{n} Synagogue", 3),
    ([("Q842402", "normal")], "{n} Mandir", 4),
    ([("Q5393308", "normal")], "{n} Temple", 5),
    ([("Q23413", "normal")], "{n} Castle", 14),
    ([("Q751876", "normal")], "Château de {n}", 6),
    ([("Q16560", "normal")], "{n} Palace", 6),
    ([("Q33506", "normal")], "{n} Museum", 10),
    ([("Q990000103", "normal")], "{n} Palace Museum", 3),
    ([("Q4989906", "normal")], "{n} Monument", 6),
    ([("Q5003624", "normal")], "{n} Memorial", 4),
    ([("Q179700", "normal")], "Statue of {n}", 4),
    ([("Q12280", "normal")], "{n} Bridge", 10),
    ([("Q990000206", "normal")], "{n} Viaduct", 2),
    ([("Q12518", "normal")], "{n} Tower", 5),
    ([("Q990000104", "normal")], "{n} Clock Tower", 3),
    ([("Q39715", "normal")], "{n} Lighthouse", 5),
    ([("Q11303", "normal")], "{n} Building", 4),
    ([("Q483110", "normal")], "{n} Stadium", 4),
    ([("Q55488", "normal")], "{n} Station", 5),
    ([("Q39614", "normal")], "{n} Cemetery", 4),
    ([("Q22698", "normal")], "{n} Park", 6),
    ([("Q990000102", "normal")], "{n} Lakeside Park", 2),
    ([("Q1107656", "normal")], "{n} Gardens", 4),
    ([("Q8502", "normal")], "Mount {n}", 12),
    ([("Q8072", "normal")], "{n} Volcano", 4),
    ([("Q54050", "normal")], "{n} Hill", 4),
    ([("Q23397", "normal")], "Lake {n}", 10),
    ([("Q131681", "normal")], "{n} Reservoir", 3),
    ([("Q4022", "normal")], "{n} River", 5),
    ([("Q34038", "normal")], "{n} Falls", 5),
    ([("Q23442", "normal")], "{n} Island", 4),
    ([("Q35509", "normal")], "{n} Cave", 3),
    ([("Q570116", "normal")], "{n} Viewpoint", 4),
    ([("Q839954", "normal")], "{n} Archaeological Site", 3),
    ([("Q109607", "normal")], "Ruins of {n}", 3),
    ([("Q12323", "normal")], "{n} Dam", 2),
    ([("Q990000201", "normal")], "{n} Hall", 2),
    ([("Q990000204", "normal")], "{n} Spire", 2),
    # several P31 / ranks
    ([("Q16970", "normal"), ("Q8502", "deprecated")], "Mountain Church of {n}", 3),
    ([("Q33506", "normal"), ("Q23413", "preferred")], "{n} Castle Museum", 3),
    ([("Q2977", "normal"), ("Q16970", "normal"), ("Q570116", "normal")], "{n} Minster", 3),
    ([("Q16970", "normal"), ("Q33506", "normal")], "{n} Church Museum", 2),
    ([("somevalue", "normal"), ("Q12280", "normal")], "{n} Footbridge", 2),
    ([], "{n} Place", 2),
]
# resolution paths and their weights
PATHS = [
    ("sitelink", 52),
    ("category", 26),
    ("category-redirect", 4),
    ("category-no-p301", 2),
    ("p373", 7),
    ("p373-category", 2),
    ("missing", 5),
    ("invalid", 2),
]

SYLLABLES = [
    "al",
    "bar",
    "cor",
    "dal",
    "el",
    "fen",
    "gar",
    "hal",
    "is",
    "jor",
    "kel",
    "lor",
    "mar",
    "nor",
    "or",
    "pel",
    "quin",
    "ros",
    "sel",
    "tor",
    "ul",
    "var",
    "wen",
    "yr",
    "zel",
    "an",
    "bri",
    "ce",
    "do",
    "eth",
    "fir",
    "gla",
    "hen",
    "ith",
    "ka",
    "lu",
    "mo",
    "ne",
    "pa",
    "ri",
]
# classes the published-format table labels differently throughout (diff seeds decisions from them)
PUBLISHED_SYSTEMATIC = {"Q751876": ("palace", "human-made"), "Q839954": ("monument", "human-made")}
CLUSTER_OF_CLASS_FOR_PUBLISHED = {
    "church": "monastery",
    "castle": "palace",
    "mountain": "hill",
    "lake": "river",
    "museum": "palace",
    "bridge": "tower",
}


def _claim(owner: str, prop: str, value: str, rank: str = "normal", n: int = 0) -> dict:
    if value == "somevalue":
        snak = {
            "snaktype": "somevalue",
            "property": prop,
            "hash": f"{prop}{n:038d}"[:40],
            "datatype": "wikibase-item",
        }
    elif prop != "P373" and value.startswith("Q"):
        digest = hashlib.sha1(f"{prop}{value}".encode()).hexdigest()
        snak = {
            "snaktype": "value",
            "property": prop,
            "hash": digest,
            "datavalue": {
                "value": {"entity-type": "item", "numeric-id": int(value[1:]), "id": value},
                "type": "wikibase-entityid",
            },
            "datatype": "wikibase-item",
        }
    else:
        snak = {
            "snaktype": "value",
            "property": prop,
            "hash": f"{n:040d}",
            "datavalue": {"value": value, "type": "string"},
            "datatype": "string",
        }
    return {
        "mainsnak": snak,
        "type": "statement",
        "id": f"{owner}$0000{n:04d}-{prop[1:]:0>4}-4000-8000-{int(owner[1:]) % 10**12:012d}",
        "rank": rank,
    }


def _entity(
    qid: str,
    label: str,
    claims: dict[str, list[tuple[str, str]]],
    rev: int,
    commons: str | None = None,
    other_labels: bool = True,
) -> dict:
    labels = {"en": {"language": "en", "value": label}}
    if other_labels:
        labels["de"] = {"language": "de", "value": label}
    ent = {
        "type": "item",
        "id": qid,
        "pageid": int(qid[1:]) % 10**8 + 1000,
        "ns": 0,
        "title": qid,
        "lastrevid": rev,
        "modified": "2024-05-01T12:00:00Z",
        "labels": labels,
        "claims": {
            p: [_claim(qid, p, v, r, i) for i, (v, r) in enumerate(vals)]
            for p, vals in claims.items()
            if vals
        },
        "sitelinks": {},
    }
    if commons:
        ent["sitelinks"]["commonswiki"] = {"site": "commonswiki", "title": commons, "badges": []}
        ent["sitelinks"]["enwiki"] = {"site": "enwiki", "title": label, "badges": []}
    return ent


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        n = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if n not in used:
            used.add(n)
            return n


def _url(title: str, rng: random.Random) -> str:
    """A Commons URL for ``title`` in one of the spellings found in GLDv2."""
    style = rng.random()
    raw = title.replace(" ", "_")
    if style < 0.15:
        raw = quote(raw, safe=":_(),'")  # percent-encoded
    elif style < 0.22:
        raw = "Category:" + raw[len("Category:")].lower() + raw[len("Category:") + 1 :]  # lower first
    scheme = "https" if style > 0.9 else "http"
    return f"{scheme}://commons.wikimedia.org/wiki/{raw}"


def _make_landmark(
    rng: random.Random,
    entities: dict[str, dict],
    redirects: dict[str, str],
    used: set[str],
    lid: int,
    qid_numbers: tuple[int, int, int],
    kind: int | None = None,
    path: str | None = None,
) -> dict:
    """One fictional landmark: its entities in the world and its GLDv2 row (the draws, in order:
    kind, name, path, revision, country, URL, image count)."""
    kinds_w = [w for *_, w in KINDS]
    paths, paths_w = zip(*PATHS, strict=True)
    k = rng.choices(range(len(KINDS)), kinds_w)[0]
    p31, template, _ = KINDS[k if kind is None else kind]
    label = template.format(n=_name(rng, used))
    drawn = rng.choices(paths, paths_w)[0]
    path = drawn if path is None else path
    title = f"Category:{label}"
    qid, cat_qid, old_qid = (f"Q{n}" for n in qid_numbers)
    rev = 2_000_000_000 + rng.randint(0, 99_999_999)
    claims = {"P31": list(p31), "P17": [("Q" + str(rng.choice([142, 183, 38, 29, 145])), "normal")]}
    if path == "sitelink":
        entities[qid] = _entity(qid, label, claims, rev, commons=title)
    elif path in ("category", "category-redirect", "p373-category"):
        target = old_qid if path == "category-redirect" else qid
        if path == "category-redirect":
            redirects[old_qid] = qid
        entities[qid] = _entity(qid, label, {**claims, "P373": [(label, "normal")]}, rev, commons=label)
        cat_claims = {"P31": [(CATEGORY_ITEM, "normal")], "P301": [(target, "normal")]}
        if path == "p373-category":
            cat_claims["P373"] = [(label, "normal")]
            del entities[qid]["claims"]["P373"]
            entities[cat_qid] = _entity(cat_qid, f"Category:{label}", cat_claims, rev + 1)
        else:
            entities[cat_qid] = _entity(cat_qid, f"Category:{label}", cat_claims, rev + 1, commons=title)
    elif path == "category-no-p301":
        entities[cat_qid] = _entity(
            cat_qid, f"Category:{label}", {"P31": [(CATEGORY_ITEM, "normal")]}, rev + 1, commons=title
        )
    elif path == "p373":
        entities[qid] = _entity(qid, label, {**claims, "P373": [(label, "normal")]}, rev)
    # an invalid category: a Wikipedia page or a Commons file page (never a category)
    url = (
        _url(title, rng)
        if path != "invalid"
        else rng.choice(
            [
                f"http://commons.wikimedia.org/wiki/File:{label.replace(' ', '_')}.jpg",
                f"http://en.wikipedia.org/wiki/{label.replace(' ', '_')}",
            ]
        )
    )
    n_images = min(40, 1 + int(rng.expovariate(1 / 5)))
    return {
        "landmark_id": lid,
        "category": url,
        "label": label,
        "path": path,
        "kind": k if kind is None else kind,
        "p31": [q for q, r in p31 if r != "deprecated"],
        "n_images": n_images,
    }


#: index landmarks in the embedded sample
SAMPLE_INDEX_LANDMARKS = 60
#: the share of index landmarks that are places of the train set too (same category, another id)
SHARED_PLACES = 0.3
#: the share of index landmark ids drawn from the train ids (same integer, another place)
REUSED_IDS = 0.4
_MOUNT_KIND = next(i for i, k in enumerate(KINDS) if k[1] == "Mount {n}")
_CHURCH_KIND = 0


def build_world(n_landmarks: int = 300, seed: int = SEED, n_index: int = 0):
    """Return ``(World, landmarks)``; landmarks are dicts with landmark_id, category, label, path,
    p31, n_images and ``numbering``.

    The first ``n_landmarks`` are train landmarks (ids ``1000 + 37 i + r``). With ``n_index``, the
    index numbering follows: its ids are drawn from the same range (they overlap the train ids and
    mean other places, as in the GLDv2 release); about :data:`SHARED_PLACES` of them are places of
    the train set under another id (same category; ``train_landmark_id`` names it), the others are
    new places. Index landmark 0 takes the id of the first train landmark with a sitelink, and a kind
    of another cluster (mountain vs church), so one id means two places with different clusters.
    """
    rng = random.Random(seed)
    entities: dict[str, dict] = {}
    redirects = dict(CLASS_REDIRECTS)
    for qid, (label, parents) in {**REAL_CLASSES, **SAMPLE_CLASSES}.items():
        entities[qid] = _entity(
            qid, label, {"P279": [(p, "normal") for p in parents]}, rev=1_000_000 + int(qid[1:]) % 997
        )
    used: set[str] = set()
    landmarks = []
    for i in range(n_landmarks):
        lid = 1000 + 37 * i + rng.randint(0, 30)
        lm = _make_landmark(
            rng, entities, redirects, used, lid, (991000000 + i, 992000000 + i, 993000000 + i)
        )
        lm["numbering"] = "train"
        landmarks.append(lm)
    irng = random.Random(seed + 11)
    train = list(landmarks)
    index_ids: set[int] = set()
    for j in range(n_index):
        lid = 1000 + 37 * j + irng.randint(0, 30)
        if train and irng.random() < REUSED_IDS:  # the same integer as a train landmark, another place
            lid = irng.choice([t["landmark_id"] for t in train])
        while lid in index_ids or (j > 0 and train and lid == landmarks[n_landmarks]["landmark_id"]):
            lid += 1  # index ids are unique within their numbering
        if j == 0 and train:
            t0 = next((t for t in train if t["path"] == "sitelink"), train[0])
            kind = _CHURCH_KIND if "Q8502" in t0["p31"] else _MOUNT_KIND
            lm = _make_landmark(
                irng,
                entities,
                redirects,
                used,
                t0["landmark_id"],
                (994000000, 995000000, 996000000),
                kind,
                "sitelink",
            )
        elif train and irng.random() < SHARED_PLACES:
            t = irng.choice([t for t in train if t["path"] not in ("missing", "invalid")])
            lm = {**t, "landmark_id": lid, "train_landmark_id": t["landmark_id"]}
            lm["n_images"] = 1 + irng.randint(0, 6)
        else:
            lm = _make_landmark(
                irng, entities, redirects, used, lid, (994000000 + j, 995000000 + j, 996000000 + j)
            )
        lm["numbering"] = "index"
        index_ids.add(lm["landmark_id"])
        landmarks.append(lm)
    return World(entities, redirects), landmarks


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_open(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_sample(
    out: Path, clusters: Path, n_landmarks: int = 300, n_index: int = SAMPLE_INDEX_LANDMARKS
) -> None:
    from hglv2.hierarchy.clusters import load_clusters

    world, everything = build_world(n_landmarks, n_index=n_index)
    landmarks = [lm for lm in everything if lm["numbering"] == "train"]
    index_landmarks = [lm for lm in everything if lm["numbering"] == "index"]
    out.mkdir(parents=True, exist_ok=True)
    table = load_clusters(clusters)
    published = _Published(table)
    clash = {index_landmarks[0]["landmark_id"]} if index_landmarks else set()
    rng = random.Random(SEED + 1)
    images, train_rows = _write_train(out, landmarks, rng)
    _write_csv(out / "train_label_to_hierarchical.csv", HIER_HEADER, published.rows(landmarks, rng, clash))
    # the index and test sets (their own random stream: the train files above do not change)
    ids = _NewIds(random.Random(SEED + 2), {row[0] for row in train_rows})
    by_lid, index_rows = _write_index(out, index_landmarks, ids, published, clash)
    test_rows = _write_test(out, index_landmarks, by_lid, ids)
    n = _record_cache(out, world, table)
    print(
        f"wrote {len(landmarks)} train and {len(index_landmarks)} index landmarks, "
        f"{sum(map(len, images.values()))} train, {len(index_rows)} index and {len(test_rows)} test images, "
        f"{n} recorded answers to {out}"
    )


HIER_HEADER = ["landmark_id", "category", "supercategory", "hierarchical_label", "natural_or_human_made"]


def _write_train(
    out: Path, landmarks: list[dict], rng: random.Random
) -> tuple[dict[int, list[str]], list[list]]:
    """train_label_to_category.csv, train.csv and train_clean.csv: ``(images by landmark, train rows)``."""
    _write_csv(
        out / "train_label_to_category.csv",
        ["landmark_id", "category"],
        [[lm["landmark_id"], lm["category"]] for lm in landmarks],
    )
    images: dict[int, list[str]] = {}
    train_rows = []
    for lm in landmarks:
        for _ in range(lm["n_images"]):
            iid = f"{rng.getrandbits(64):016x}"
            images.setdefault(lm["landmark_id"], []).append(iid)
            url = f"https://upload.wikimedia.org/sample/{iid[0]}/{iid[:2]}/{iid}.jpg"
            train_rows.append([iid, url, lm["landmark_id"]])
    _write_csv(out / "train.csv", ["id", "url", "landmark_id"], train_rows)
    clean_rows = []
    for lid, ids in images.items():
        keep = [i for i in ids if rng.random() < 0.8]
        if len(keep) >= 2:
            clean_rows.append([lid, " ".join(keep)])
    _write_csv(out / "train_clean.csv", ["landmark_id", "images"], clean_rows)
    return images, train_rows


class _Published:
    """The imitation of the published ``*_label_to_hierarchical.csv``: the nearest anchor's cluster
    (or a systematic choice), with some landmarks left out and some clusters swapped."""

    def __init__(self, table) -> None:
        self.cluster_of = {a.qid: (a.label, a.cluster, a.top) for a in table.anchors}
        self.parents = {q: p for q, (_, p) in {**REAL_CLASSES, **SAMPLE_CLASSES}.items()}
        self.parents["Q990000104"] = ["Q12518"]
        self.labels = {q: lab for q, (lab, _) in {**REAL_CLASSES, **SAMPLE_CLASSES}.items()}

    def nearest(self, cls: str):
        frontier, seen = [cls], {cls}
        while frontier:
            hits = sorted({self.cluster_of[c][1:] for c in frontier if c in self.cluster_of})
            if hits:
                return hits[0] if len(hits) == 1 else None
            frontier = [p for c in frontier for p in self.parents.get(c, []) if p not in seen]
            seen.update(frontier)
        return None

    def rows(self, lms: list[dict], r: random.Random, always: set[int] = frozenset()) -> list[list]:
        rows = []
        for lm in lms:
            if not lm["p31"] or (r.random() > 0.6 and lm["landmark_id"] not in always):
                continue
            cls = lm["p31"][0] if lm["p31"][0] != "somevalue" else lm["p31"][-1]
            hit = PUBLISHED_SYSTEMATIC.get(cls) or self.nearest(cls)
            if hit is None:
                continue
            cluster, top = hit
            if r.random() < 0.12 and cluster in CLUSTER_OF_CLASS_FOR_PUBLISHED:
                cluster = CLUSTER_OF_CLASS_FOR_PUBLISHED[cluster]
            rows.append([lm["landmark_id"], lm["category"], self.labels[cls], cluster, top])
        return rows


class _NewIds:
    """Image ids from ``rng`` that are not in ``used`` (nor given before)."""

    def __init__(self, rng: random.Random, used: set[str]) -> None:
        self.rng, self.used = rng, used

    def __call__(self) -> str:
        while True:
            iid = f"{self.rng.getrandbits(64):016x}"
            if iid not in self.used:
                self.used.add(iid)
                return iid


def _write_index(
    out: Path, index_landmarks: list[dict], new_id: _NewIds, published: _Published, clash: set[int]
) -> tuple[dict[int, list[str]], list[list]]:
    """index.csv, index_image_to_landmark.csv, index_label_to_category.csv and
    index_label_to_hierarchical.csv: ``(index images by landmark, index rows)``."""
    irng = new_id.rng
    by_lid: dict[int, list[str]] = {}
    for lm in index_landmarks:
        by_lid[lm["landmark_id"]] = [new_id() for _ in range(max(1, min(8, lm["n_images"])))]
    index_rows = [[i, lid] for lid, ids in by_lid.items() for i in ids]
    irng.shuffle(index_rows)
    _write_csv(out / "index.csv", ["id"], [[i] for i, _ in index_rows])
    _write_csv(out / "index_image_to_landmark.csv", ["id", "landmark_id"], index_rows)
    by_id = sorted(index_landmarks, key=lambda x: x["landmark_id"])
    _write_csv(
        out / "index_label_to_category.csv",
        ["landmark_id", "category"],
        [[lm["landmark_id"], lm["category"]] for lm in by_id],
    )
    _write_csv(out / "index_label_to_hierarchical.csv", HIER_HEADER, published.rows(by_id, irng, clash))
    return by_lid, index_rows


def _write_test(
    out: Path, index_landmarks: list[dict], by_lid: dict[int, list[str]], new_id: _NewIds
) -> list[str]:
    """test.csv and the two solution files (landmark and non-landmark queries): the test ids."""
    irng = new_id.rng
    test_rows, retrieval, recognition = [], [], []
    for lm in index_landmarks:
        if irng.random() > 0.7:
            continue
        for _ in range(irng.randint(1, 2)):
            qid = new_id()
            usage = irng.choice(["Public", "Private"])
            gt = list(by_lid[lm["landmark_id"]])
            irng.shuffle(gt)
            test_rows.append(qid)
            retrieval.append([qid, " ".join(gt), usage])
            recognition.append([qid, lm.get("train_landmark_id", ""), usage])
    for _ in range(max(2, len(index_landmarks) // 4)):  # non-landmark test images
        qid = new_id()
        test_rows.append(qid)
        retrieval.append([qid, "None", "Ignored"])
        recognition.append([qid, "", irng.choice(["Public", "Private"])])
    order = list(range(len(test_rows)))
    irng.shuffle(order)
    _write_csv(out / "test.csv", ["id"], [[test_rows[k]] for k in order])
    _write_csv(out / "retrieval_solution_v2.1.csv", ["id", "images", "Usage"], [retrieval[k] for k in order])
    _write_csv(
        out / "recognition_solution_v2.1.csv", ["id", "landmarks", "Usage"], [recognition[k] for k in order]
    )
    return test_rows


def _record_cache(out: Path, world: World, table) -> int:
    """Run resolve, graph and validate-anchors against the fake Wikidata serving ``world`` and
    write the answers as ``wikidata_cache.jsonl``; returns their count."""
    from hglv2.hierarchy.clusters import validate_anchors
    from hglv2.hierarchy.graph import fetch_graph
    from hglv2.hierarchy.resolve import read_categories, resolve_numbered
    from hglv2.hierarchy.wikidata import ResponseCache, WikidataClient

    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "cache.sqlite")
        with FakeWikidata(world) as server:
            client = WikidataClient(cache, api_url=server.api_url, sparql_url=server.sparql_url)
            resolved = resolve_numbered(
                client,
                {n: read_categories(out / f"{n}_label_to_category.csv") for n in ("train", "index")},
            )
            fetch_graph(client, resolved)
            validate_anchors(client, table)
        n = cache.export_jsonl(out / "wikidata_cache.jsonl")
        cache.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/sample", type=Path)
    ap.add_argument("--clusters", default="data/review/clusters.csv", type=Path)
    ap.add_argument("--landmarks", default=300, type=int)
    ap.add_argument("--index-landmarks", default=SAMPLE_INDEX_LANDMARKS, type=int)
    args = ap.parse_args()
    write_sample(args.out, args.clusters, args.landmarks, args.index_landmarks)


if __name__ == "__main__":
    main()
