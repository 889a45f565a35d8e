"""The Wikidata client against a fake Wikidata on 127.0.0.1: retries, Retry-After, maxlag, cache."""

import json
import sqlite3

import pytest
import requests

from hglv2.errors import NetworkError
from hglv2.hierarchy.wikidata import (
    MAX_BATCH,
    CacheMiss,
    ResponseCache,
    WikidataClient,
    fetch_items,
    parse_item,
    request_key,
    user_agent,
)
from pipelines.fake_wikidata import FakeWikidata, World  # noqa: E402
from pipelines.make_sample import build_world  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return build_world(40)[0]


def make_client(server, cache, sleeps=None, **kw):
    sleeps = [] if sleeps is None else sleeps
    return WikidataClient(
        cache,
        api_url=server.api_url,
        sparql_url=server.sparql_url,
        sleep=sleeps.append,
        timeout=kw.pop("timeout", 5.0),
        **kw,
    )


def one_fault(kind, at=0):
    return lambda n, key: kind if n == at else None


IDS = ["Q16970", "Q23413", "Q8502"]


@pytest.mark.parametrize(
    "kind,expected_wait",
    [("429", 7.0), ("maxlag", 5.0), ("503", 1.0), ("truncated", 1.0), ("html", 1.0), ("timeout", 1.0)],
)
def test_each_fault_is_retried(world, tmp_path, kind, expected_wait):
    sleeps = []
    with FakeWikidata(world, one_fault(kind), slow_s=0.6) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"), sleeps, timeout=0.3)
        items = fetch_items(client, IDS)
    assert [items[q].label for q in IDS] == ["church building", "castle", "mountain"]
    assert sleeps == [expected_wait]  # Retry-After when sent (429: 7 s, maxlag: 5 s), else backoff 1 s
    assert len(srv.log) == 2 and srv.answered == [srv.log[1][0]]
    assert client.stats["http"] == 2 and client.stats["fetched"] == 1


def test_backoff_is_exponential_capped_and_gives_up(world, tmp_path):
    sleeps = []
    with FakeWikidata(world, lambda n, key: "503") as srv:
        client = make_client(
            srv,
            ResponseCache(tmp_path / "c.sqlite"),
            sleeps,
            max_tries=8,
            backoff_base=1.0,
            backoff_cap=20.0,
        )
        with pytest.raises(NetworkError, match="wbgetentities ids=Q8502.*failed after 8 tries.*HTTP 503"):
            fetch_items(client, IDS)
    assert sleeps == [1, 2, 4, 8, 16, 20, 20]
    assert len(srv.log) == 8
    assert len(client.cache) == 0  # failures are never cached


def test_retry_after_is_capped(world, tmp_path):
    sleeps = []
    with FakeWikidata(world, one_fault("429")) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"), sleeps, max_wait=3.0)
        fetch_items(client, IDS)
    assert sleeps == [3.0]


def test_user_agent_and_maxlag_sent(world, tmp_path):
    seen = {}
    with FakeWikidata(world) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"), contact="ops@example.org")
        orig = client.session.request

        def spy(method, url, **kw):
            seen.update(kw.get("params") or {})
            return orig(method, url, **kw)

        client.session.request = spy
        fetch_items(client, IDS)
    ua = next(iter(srv.user_agents))
    assert ua == user_agent("ops@example.org")
    assert ua.startswith("hglv2/") and "ops@example.org" in ua and f"requests/{requests.__version__}" in ua
    assert seen["maxlag"] == "5"


def test_non_retryable_errors(world, tmp_path):
    with FakeWikidata(world) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"))
        with pytest.raises(NetworkError, match="badvalue"):
            client.request("api", {"action": "nonsense", "format": "json"})
        with pytest.raises(NetworkError, match="toomanyvalues"):
            client.request(
                "api",
                {"action": "wbgetentities", "format": "json", "ids": "|".join(f"Q{i}" for i in range(1, 60))},
            )
        with pytest.raises(ValueError):
            client.wbgetentities(ids=[f"Q{i}" for i in range(1, MAX_BATCH + 2)])
    assert len(srv.log) == 2  # no retries for definite errors


def test_second_run_makes_no_request_and_offline_replays(world, tmp_path):
    path = tmp_path / "c.sqlite"
    with FakeWikidata(world) as srv:
        first = fetch_items(make_client(srv, ResponseCache(path)), IDS)
        n = len(srv.log)
        again = fetch_items(make_client(srv, ResponseCache(path)), IDS)
        assert len(srv.log) == n == 1
    offline = WikidataClient(ResponseCache(path), offline=True, api_url="http://127.0.0.1:9/none")
    assert fetch_items(offline, IDS) == first == again


def test_offline_miss_names_the_requests(tmp_path):
    client = WikidataClient(ResponseCache(tmp_path / "c.sqlite"), offline=True)
    with pytest.raises(CacheMiss, match=r"1 request\(s\) not in the cache: wbgetentities ids=Q1\|Q2 \(2\)"):
        fetch_items(client, ["Q2", "Q1"])


def test_cache_key_ignores_host_and_maxlag():
    a = request_key("api", {"action": "wbgetentities", "ids": "Q1", "maxlag": "5"})
    b = request_key("api", {"ids": "Q1", "action": "wbgetentities"})
    assert a == b != request_key("sparql", {"ids": "Q1", "action": "wbgetentities"})


def test_jsonl_recording_round_trip(world, tmp_path):
    with FakeWikidata(world) as srv:
        cache = ResponseCache(tmp_path / "c.sqlite")
        items = fetch_items(make_client(srv, cache), IDS)
        assert cache.export_jsonl(tmp_path / "rec.jsonl") == 3  # one record per item
    recs = [json.loads(line) for line in (tmp_path / "rec.jsonl").read_text().splitlines()]
    assert {r["endpoint"] for r in recs} == {"item"}
    assert sorted(r["params"]["id"] for r in recs) == sorted(IDS)
    assert all(r["body"]["entity"]["id"] == r["params"]["id"] for r in recs)  # the API's own JSON
    replay = ResponseCache(tmp_path / "rec.jsonl")
    assert replay.read_only
    assert fetch_items(WikidataClient(replay, offline=True), IDS) == items
    with pytest.raises(NetworkError, match="read-only"):
        replay.put("k", "api", {}, "{}")


def test_sqlite_cache_is_committed_per_response(world, tmp_path):
    path = tmp_path / "c.sqlite"
    with FakeWikidata(world) as srv:
        cache = ResponseCache(path)
        fetch_items(make_client(srv, cache), IDS)
        # another connection (as after a kill) already sees the answer, without close()
        rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert rows == 3  # one record per item


def test_parse_item_ranks_and_redirects(world, tmp_path):
    ent = json.loads(json.dumps(world.entities["Q16970"]))
    ent["claims"]["P31"] = [
        {
            "mainsnak": {
                "snaktype": "value",
                "property": "P31",
                "datatype": "wikibase-item",
                "datavalue": {
                    "type": "wikibase-entityid",
                    "value": {"id": q, "numeric-id": int(q[1:]), "entity-type": "item"},
                },
            },
            "type": "statement",
            "rank": r,
            "id": f"x{i}",
        }
        for i, (q, r) in enumerate([("Q1", "normal"), ("Q2", "preferred"), ("Q3", "deprecated")])
    ] + [
        {
            "mainsnak": {"snaktype": "novalue", "property": "P31"},
            "type": "statement",
            "rank": "preferred",
            "id": "y",
        }
    ]
    info = parse_item(ent)
    assert info.p31 == ("Q2",)  # preferred wins, deprecated skipped, novalue ignored
    assert info.p31_ranks == (("Q1", "normal"), ("Q2", "preferred"), ("Q3", "deprecated"))
    redirected = World({"Q16970": world.entities["Q16970"]}, {"Q7": "Q16970"})
    with FakeWikidata(redirected) as srv:
        got = fetch_items(make_client(srv, ResponseCache(tmp_path / "c.sqlite")), ["Q7", "Q8"])
    assert got["Q7"].qid == "Q16970" and got["Q7"].redirected_from == "Q7" and got["Q8"] is None


def test_p373_fallback_escapes_sparql_literals(tmp_path):
    from pipelines.make_sample import _entity

    from hglv2.hierarchy.resolve import resolve_categories

    name = 'Tower "Big" \\ Old'
    ents = {
        "Q12518": _entity("Q12518", "tower", {}, 1),
        "Q42": _entity("Q42", "the tower", {"P31": [("Q12518", "normal")], "P373": [(name, "normal")]}, 9),
    }
    url = "http://commons.wikimedia.org/wiki/Category:" + name.replace(" ", "_").replace("\\", "%5C")
    with FakeWikidata(World(ents)) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"))
        rows = resolve_categories(
            client, [(5, url), (6, "http://commons.wikimedia.org/wiki/Category:Nowhere")]
        )
    assert [(r["qid"], r["resolution"], r["p31"], r["revision"]) for r in rows] == [
        ("Q42", "p373", "Q12518", 9),
        (None, "missing", None, None),
    ]


def test_mixed_failures_share_one_growing_backoff(world, tmp_path):
    """503, an HTML page, 503, a truncated answer: transport- and body-level failures of one
    request count together, so the waits grow 1, 2, 4, 8 (never restarting at 1)."""
    faults = ["503", "html", "503", "truncated"]
    sleeps = []
    with FakeWikidata(world, lambda n, key: faults[n] if n < len(faults) else None) as srv:
        client = make_client(
            srv, ResponseCache(tmp_path / "c.sqlite"), sleeps, backoff_base=1.0, backoff_cap=60
        )
        items = fetch_items(client, IDS)
    assert items["Q16970"].label == "church building"
    assert sleeps == [1, 2, 4, 8]
    assert len(srv.log) == 5 and client.stats["http"] == 5


def test_html_outage_uses_the_whole_retry_budget_with_growing_waits(world, tmp_path):
    sleeps = []
    with FakeWikidata(world, lambda n, key: "html") as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"), sleeps, max_tries=7, backoff_cap=20)
        with pytest.raises(NetworkError, match="failed after 7 tries"):
            fetch_items(client, IDS)
    assert sleeps == [1, 2, 4, 8, 16, 20] and len(srv.log) == 7


def _category_url(title):
    return "http://commons.wikimedia.org/wiki/" + title.replace(" ", "_")


def test_cache_is_per_title_so_one_new_landmark_fetches_one_title(tmp_path):
    from hglv2.hierarchy.resolve import resolve_categories

    world, landmarks = build_world(60)
    sitelinked = [lm for lm in landmarks if lm["path"] == "sitelink"]
    pairs = [(lm["landmark_id"], _category_url("Category:" + lm["label"])) for lm in sitelinked]
    sent = []
    with FakeWikidata(world) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"))
        orig = client.session.request

        def spy(method, url, **kw):
            sent.append(dict(kw.get("params") or {}))
            return orig(method, url, **kw)

        client.session.request = spy
        first = resolve_categories(client, pairs[:-1])
        assert len([p for p in sent if "titles" in p]) == -(-(len(pairs) - 1) // MAX_BATCH)
        sent.clear()
        again = resolve_categories(client, pairs)
    title_requests = [p for p in sent if "titles" in p]
    assert [p["titles"] for p in title_requests] == ["Category:" + sitelinked[-1]["label"]]
    assert again[:-1] == first and again[-1]["qid"] is not None


def test_titles_are_nfc_normalised(tmp_path):
    from pipelines.make_sample import _entity

    from hglv2.hierarchy.resolve import resolve_categories

    composed = "Category:\u00c9glise Saint-\u00c9tienne"  # as Commons stores it (NFC)
    decomposed = "Category:E\u0301glise Saint-E\u0301tienne"  # the same title, NFD
    ents = {
        "Q16970": _entity("Q16970", "church building", {}, 1),
        "Q77": _entity("Q77", "the church", {"P31": [("Q16970", "normal")]}, 5, commons=composed),
    }
    with FakeWikidata(World(ents)) as srv:
        client = make_client(srv, ResponseCache(tmp_path / "c.sqlite"))
        rows = resolve_categories(client, [(1, _category_url(decomposed)), (2, _category_url(composed))])
    assert [r["qid"] for r in rows] == ["Q77", "Q77"] and rows[0]["title"] == composed
    assert len(srv.log) == 1  # one title lookup: both spellings are one title


def test_a_recorded_batch_answer_is_not_an_item_record(world, tmp_path):
    """Entities are cached one record per id or title; a recorded whole ``wbgetentities`` answer
    is not read as item records, so offline it is a miss (caches are rebuilt until 1.0)."""
    params = {
        "action": "wbgetentities",
        "format": "json",
        "props": "info|claims|labels|sitelinks",
        "languages": "en",
        "sitefilter": "commonswiki",
        "ids": "|".join(IDS),
    }
    rec = {"endpoint": "api", "params": params, "body": world.wbgetentities(params)}
    (tmp_path / "batch.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(CacheMiss, match="wbgetentities ids="):
        fetch_items(WikidataClient(ResponseCache(tmp_path / "batch.jsonl"), offline=True), IDS)
