"""A small, polite Wikidata client with an on-disk cache (the resolve stage is in :mod:`.resolve`).

Transport (one ``requests.Session``, serial requests, :func:`hglv2.http.request_with_retries`):

* User-Agent ``hglv2/<version> (<project url>[; <contact>]) requests/<version>`` (Wikimedia's
  User-Agent policy; requests without one are rejected);
* Action API calls carry ``maxlag=5``; a ``maxlag`` or ``ratelimited`` error body, HTTP 429 and
  5xx are retried after ``Retry-After`` when the server sends it (capped at ``max_wait``), else after
  an exponential backoff ``min(backoff_cap, backoff_base * 2**(k-1))`` after the k-th failure;
  only the configured API and SPARQL URLs are ever requested;
* time-outs, dropped connections and ``200`` responses whose body is not valid JSON (an HTML error
  page, a truncated body) are retried the same way; after ``max_tries`` tries a
  :class:`~hglv2.errors.NetworkError` is raised;
* every successful response is stored in the cache, keyed by the request (endpoint kind plus the
  sorted parameters, without ``maxlag`` and without the host, so a cache recorded against one
  mirror replays against another). The cache is SQLite in WAL mode with one transaction per
  response, so killing the process never corrupts it and no answered request is sent twice;
* ``offline=True`` replays the cache only; a miss raises :class:`CacheMiss` naming the request.

A cache file ending in ``.jsonl`` is a read-only recording (one JSON object per request:
``{"endpoint", "params", "body"}`` with the API's own JSON as ``body``), the format of the
embedded sample ``data/sample/wikidata_cache.jsonl``; :meth:`ResponseCache.export_jsonl` writes one.

Entities are parsed with qwikidata's entity model (:class:`qwikidata.entity.WikidataItem`);
its *truthy* claims implement "a preferred statement wins, deprecated statements are skipped".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

with warnings.catch_warnings():  # qwikidata's typedefs use a deprecated mypy_extensions.TypedDict
    warnings.simplefilter("ignore", DeprecationWarning)
    from qwikidata.entity import WikidataItem

from hglv2 import __version__, http
from hglv2.errors import InputError, NetworkError
from hglv2.fileio import atomic_open
from hglv2.http import backoff_delay, request_with_retries, retry_after_seconds

DEFAULT_API_URL = "https://www.wikidata.org/w/api.php"
DEFAULT_SPARQL_URL = "https://query.wikidata.org/sparql"
PROJECT_URL = http.PROJECT_URL
CATEGORY_ITEM = "Q4167836"  # Wikimedia category
MAX_BATCH = 50  # wbgetentities limit for ids/titles per call (anonymous users)
_QID = re.compile(r"^Q[1-9][0-9]*$")
_VOLATILE_PARAMS = frozenset({"maxlag"})


class CacheMiss(NetworkError):
    """Offline mode and the cache has no answer for a request (the message names it)."""


def user_agent(contact: str | None = None) -> str:
    """Wikimedia-policy User-Agent: ``hglv2/<v> (<project url>[; contact]) requests/<v>``.

    With a contact this is :func:`hglv2.http.user_agent` (the one the downloads send).
    """
    if contact:
        return http.user_agent(contact, PROJECT_URL)
    return f"hglv2/{__version__} ({PROJECT_URL}) requests/{requests.__version__}"


def is_qid(value: str) -> bool:
    """``True`` for item ids ``Q<positive int>``."""
    return isinstance(value, str) and bool(_QID.match(value))


def qid_number(qid: str) -> int:
    """Numeric part of a QID (sort key: ``Q2 < Q10``)."""
    return int(qid[1:])


def request_key(endpoint: str, params: dict[str, str]) -> str:
    """Cache key of a request: sha256 of the endpoint kind and its sorted, non-volatile params."""
    canon = {k: str(v) for k, v in sorted(params.items()) if k not in _VOLATILE_PARAMS}
    blob = json.dumps([endpoint, canon], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def follow_redirects(redirects: Mapping[str, str], qid: str) -> str:
    """Where ``qid`` ends up through the ``old -> new`` map ``redirects`` (a cycle stops where it
    closes)."""
    seen = set()
    while qid in redirects and qid not in seen:
        seen.add(qid)
        qid = redirects[qid]
    return qid


def describe_request(endpoint: str, params: dict[str, str], width: int = 160) -> str:
    """Short human-readable form of a request, for error messages."""
    if endpoint == "sparql":
        text = "SPARQL " + " ".join(params.get("query", "").split())
    else:
        text = (
            params.get("action", "?")
            + " "
            + " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k in ("ids", "titles", "sites"))
        )
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------
# cache


class ResponseCache:
    """Response bodies keyed by :func:`request_key`; SQLite (read/write) or JSON lines (read-only).

    SQLite runs in WAL mode and commits each :meth:`put`, so a killed process leaves every answered
    request on disk and the file intact.
    """

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path is not None else None
        self._mem: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        self.read_only = False
        if self.path is None:
            return
        if self.path.suffix == ".jsonl":
            self.read_only = True
            if self.path.exists():
                self._load_jsonl(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, endpoint TEXT NOT NULL,"
                " params TEXT NOT NULL, body TEXT NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a usable SQLite cache ({exc})") from None

    def _load_jsonl(self, path: Path) -> None:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    endpoint, params, body = rec["endpoint"], rec["params"], rec["body"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise InputError(f"{path}:{lineno}: not a cache record ({exc})") from None
                self._mem[request_key(endpoint, params)] = json.dumps(body, ensure_ascii=False)

    def get(self, key: str) -> str | None:
        if self._db is not None:
            row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
            return None if row is None else row[0]
        return self._mem.get(key)

    def put(self, key: str, endpoint: str, params: dict[str, str], body: str) -> None:
        if self._db is None:
            if self.path is None:
                self._mem[key] = body
                return
            raise NetworkError(f"{self.path}: a .jsonl cache is read-only; use a .sqlite cache online")
        canon = {k: str(v) for k, v in sorted(params.items()) if k not in _VOLATILE_PARAMS}
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
            (key, endpoint, json.dumps(canon, sort_keys=True, ensure_ascii=False), body),
        )

    def __len__(self) -> int:
        if self._db is not None:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
        return len(self._mem)

    def records(self) -> Iterator[tuple[str, dict[str, str], str]]:
        """(endpoint, params, body) of every SQLite record, in key order."""
        if self._db is None:
            raise NetworkError("records() needs a SQLite cache")
        for endpoint, params, body in self._db.execute(
            "SELECT endpoint, params, body FROM responses ORDER BY key"
        ):
            yield endpoint, json.loads(params), body

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write the cache as a JSON-lines recording (sorted, deterministic); returns the count."""
        n = 0
        with atomic_open(path) as fh:
            for endpoint, params, body in self.records():
                rec = {"endpoint": endpoint, "params": params, "body": json.loads(body)}
                fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
                fh.write("\n")
                n += 1
        return n

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# --------------------------------------------------------------------------------------------
# client


@dataclass
class WikidataClient:
    """Serial, cached, retrying access to the Wikidata Action API and SPARQL endpoint.

    ``sleep`` is injectable so tests run the retry logic without waiting. ``stats`` counts HTTP
    attempts (``http``), successful fresh responses (``fetched``), cache hits and retries by cause.
    """

    cache: ResponseCache
    api_url: str = DEFAULT_API_URL
    sparql_url: str = DEFAULT_SPARQL_URL
    offline: bool = False
    contact: str | None = None
    timeout: float = 60.0
    max_tries: int = 9  # as hglv2.hierarchy.sources.DEFAULT_MAX_TRIES (a light module the CLI reads)
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_wait: float = 300.0
    maxlag: int = 5
    sleep: Callable[[float], None] = time.sleep
    session: requests.Session | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.session is None:
            self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent(self.contact)

    # ---- low level
    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def request(self, endpoint: str, params: dict[str, str], cache: bool = True) -> Any:
        """Answer of one request (``endpoint`` is ``"api"`` or ``"sparql"``), from cache or HTTP.

        ``cache=False``: neither look the request up nor store its answer (the caller caches the
        parts of it, see :meth:`entities`)."""
        key = request_key(endpoint, params)
        cached = self.cache.get(key) if cache else None
        if cached is not None:
            self._count("cache_hits")
            return json.loads(cached)
        if self.offline:
            raise CacheMiss(f"offline and not in cache: {describe_request(endpoint, params)}")
        body_text, body = self._fetch(endpoint, params)
        if cache:
            self.cache.put(key, endpoint, params, body_text)
        self._count("fetched")
        return body

    def _fetch(self, endpoint: str, params: dict[str, str]) -> tuple[str, Any]:
        """HTTP with retries: transport-level ones in :func:`hglv2.http.request_with_retries`
        (429/5xx with Retry-After, time-outs, dropped connections, bodies shorter than their
        Content-Length), body-level ones here (``maxlag``/``ratelimited`` errors, 200 answers that
        are not JSON); both draw on one budget of ``max_tries`` HTTP attempts.
        """
        if endpoint == "api":
            url, send = self.api_url, {**params, "maxlag": str(self.maxlag)}
            headers = {"Accept": "application/json"}
        elif endpoint == "sparql":
            url, send = self.sparql_url, dict(params)
            headers = {"Accept": "application/sparql-results+json"}
        else:  # pragma: no cover - programming error
            raise ValueError(endpoint)
        what = describe_request(endpoint, params)
        budget = self.max_tries
        used = 0  # HTTP attempts so far; every attempt but a success is a failure of this request
        last = ""
        while used < budget:
            retries: list[str] = []

            def on_retry(attempt: int, reason: str, delay: float, retries=retries) -> None:
                retries.append(reason)

            try:
                resp = request_with_retries(
                    self.session,
                    "GET",
                    url,
                    params=send,
                    headers=headers,
                    timeout=self.timeout,
                    max_tries=budget - used,
                    backoff_base=self.backoff_base,
                    backoff_cap=self.backoff_cap,
                    sleep=self.sleep,
                    retry_after_cap=self.max_wait,
                    allowed_bases=[url],
                    on_retry=on_retry,
                    failures_before=used,
                )
            except NetworkError as exc:
                self._count("http", len(retries) + 1)
                self._count("retry_transport", len(retries))
                raise NetworkError(f"{what}: {exc}") from None
            self._count("http", len(retries) + 1)
            self._count("retry_transport", len(retries))
            used += len(retries) + 1
            wait: float | None = None
            text = resp.text
            try:
                body = json.loads(text)
            except ValueError:
                last = f"HTTP {resp.status_code} with a body that is not JSON"
                self._count("retry_not_json")
            else:
                err = body.get("error") if isinstance(body, dict) else None
                if not err:
                    return text, body
                code = str(err.get("code", ""))
                if code not in ("maxlag", "ratelimited"):
                    raise NetworkError(f"{what}: Wikidata error {code}: {err.get('info', '')}")
                last = f"API error {code}"
                self._count(f"retry_{code}")
                wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if used >= budget:
                break
            # `used` failures so far, of any kind: the same schedule as the transport's retries
            self.sleep(
                backoff_delay(used, self.backoff_base, self.backoff_cap)
                if wait is None
                else min(wait, self.max_wait)
            )
        raise NetworkError(f"{what}: failed after {budget} tries (last: {last})")

    # ---- API helpers
    def wbgetentities(
        self,
        *,
        ids: Sequence[str] = (),
        titles: Sequence[str] = (),
        site: str = "commonswiki",
        props: str = "info|claims|labels|sitelinks",
        cache: bool = True,
    ) -> dict:
        """One ``wbgetentities`` call (at most :data:`MAX_BATCH` ids or titles); the ``entities``."""
        if bool(ids) == bool(titles):
            raise ValueError("give either ids or titles")
        items = list(ids) if ids else list(titles)
        if len(items) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} per call")
        params = {"action": "wbgetentities", "format": "json", "props": props, "languages": "en"}
        if "sitelinks" in props:
            params["sitefilter"] = "commonswiki"
        if ids:
            params["ids"] = "|".join(items)
        else:
            params["sites"] = site
            params["titles"] = "|".join(items)
        body = self.request("api", params, cache=cache)
        ents = body.get("entities") if isinstance(body, dict) else None
        if not isinstance(ents, dict):
            what = describe_request("api", params)
            raise NetworkError(f"wbgetentities: no 'entities' in the answer for {what}")
        return ents

    def entities(
        self,
        *,
        ids: Sequence[str] = (),
        titles: Sequence[str] = (),
        site: str = "commonswiki",
        props: str = "info|claims|labels|sitelinks",
    ) -> dict[str, dict[str, Any] | None]:
        """Entities by id or by (NFC-normalised) site title, cached one record per id or title.

        Returns ``{id or title: entity JSON, or None when missing}``. Only the ids/titles not in
        the cache are fetched (sorted, :data:`MAX_BATCH` per ``wbgetentities`` call), so adding one
        landmark fetches only its title. A title maps to the entity whose ``site`` sitelink has
        that (normalised) title. Offline, the misses raise one :class:`CacheMiss` naming them.
        """
        by_title, wanted = requested_keys(ids, titles)
        out: dict[str, dict[str, Any] | None] = {}
        missing: list[str] = []
        for w in wanted:
            endpoint, params = item_record_key(w, by_title, site, props)
            cached = self.cache.get(request_key(endpoint, params))
            if cached is None:
                missing.append(w)
            else:
                self._count("cache_hits")
                out[w] = json.loads(cached).get("entity")
        if missing and self.offline:
            kind = "titles" if by_title else "ids"
            shown = "|".join(missing[:5]) + ("|..." if len(missing) > 5 else "")
            raise CacheMiss(f"offline and not in cache: wbgetentities {kind}={shown} ({len(missing)})")
        for chunk in batched(missing, MAX_BATCH):
            if by_title:
                ents = self.wbgetentities(titles=chunk, site=site, props=props, cache=False)
            else:
                ents = self.wbgetentities(ids=chunk, props=props, cache=False)
            for w, ent in split_entities(ents, chunk, by_title, site).items():
                endpoint, params = item_record_key(w, by_title, site, props)
                body = json.dumps({"entity": ent}, ensure_ascii=False, sort_keys=True)
                self.cache.put(request_key(endpoint, params), endpoint, params, body)
                out[w] = ent
        return out

    def p373(self, names: Sequence[str], batch: int = 100) -> dict[str, list[str]]:
        """Commons category name -> QIDs whose P373 (Commons category) is that name, through SPARQL
        ``VALUES`` queries of ``batch`` names; cached one record per name (endpoint ``p373``), so a
        new landmark sends only its own name. Offline, the misses raise one :class:`CacheMiss`."""
        found: dict[str, list[str]] = {}
        todo: list[str] = []
        for name in sorted(set(names)):
            cached = self.cache.get(request_key("p373", {"name": name}))
            if cached is None:
                todo.append(name)
            else:
                self._count("cache_hits")
                found[name] = list(json.loads(cached).get("qids") or [])
        if todo and self.offline:
            shown = "; ".join(todo[:3]) + ("; ..." if len(todo) > 3 else "")
            raise CacheMiss(f"offline and not in cache: SPARQL P373 for {len(todo)} name(s): {shown}")
        for chunk in batched(todo, batch):
            body = self.request("sparql", {"query": sparql_p373_query(chunk), "format": "json"}, cache=False)
            try:
                bindings = list(body["results"]["bindings"])
            except (KeyError, TypeError):
                raise NetworkError("SPARQL: answer without results.bindings") from None
            for name, qids in p373_matches(bindings, chunk).items():
                params = {"name": name}
                text = json.dumps({"qids": qids})
                self.cache.put(request_key("p373", params), "p373", params, text)
                found[name] = qids
        return found

    def sparql(self, query: str) -> list[dict[str, Any]]:
        """Bindings of a SPARQL SELECT query (``results.bindings``)."""
        body = self.request("sparql", {"query": query, "format": "json"})
        try:
            return list(body["results"]["bindings"])
        except (KeyError, TypeError):
            raise NetworkError("SPARQL: answer without results.bindings") from None


def sparql_p373_query(names: Sequence[str]) -> str:
    """``SELECT ?item ?commonscat`` for items whose P373 (Commons category) is one of ``names``."""

    def lit(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    values = " ".join(lit(n) for n in names)
    return (
        "SELECT ?item ?commonscat WHERE { VALUES ?commonscat { "
        + values
        + " } ?item wdt:P373 ?commonscat . }"
    )


def p373_matches(bindings: Iterable[Any], names: Sequence[str]) -> dict[str, list[str]]:
    """SPARQL bindings of :func:`sparql_p373_query` -> ``{name: QIDs (sorted)}`` for every asked name."""
    got: dict[str, list[str]] = {n: [] for n in names}
    for b in bindings:
        try:
            name, uri = b["commonscat"]["value"], b["item"]["value"]
        except (KeyError, TypeError):
            continue
        qid = uri.rsplit("/", 1)[-1]
        if is_qid(qid) and name in got and qid not in got[name]:
            got[name].append(qid)
    return {n: sorted(q, key=qid_number) for n, q in got.items()}


def nfc(title: str) -> str:
    """A title as MediaWiki compares it: Unicode NFC (MediaWiki normalises every title to NFC)."""
    return unicodedata.normalize("NFC", title)


def _id_order(qid: str) -> tuple[int, str]:
    return (qid_number(qid), qid) if is_qid(qid) else (-1, qid)


def requested_keys(ids: Iterable[str], titles: Iterable[str]) -> tuple[bool, list[str]]:
    """``(by_title, the unique ids in QID order or the unique NFC titles sorted)`` of an entities
    request; exactly one of ``ids`` and ``titles`` may be non-empty."""
    ids, titles = list(ids), list(titles)
    if bool(ids) == bool(titles):
        raise ValueError("give either ids or titles")
    if titles:
        return True, sorted({nfc(t) for t in titles})
    return False, sorted(set(ids), key=_id_order)


def item_record_key(
    value: str, by_title: bool, site: str = "commonswiki", props: str = "info|claims|labels|sitelinks"
) -> tuple[str, dict[str, str]]:
    """``(endpoint, params)`` of the cache record of one entity: ``("title", {site, title, props})``
    or ``("item", {id, props})``; its body is ``{"entity": <the API's JSON or null>}``."""
    if by_title:
        return "title", {"site": site, "title": nfc(value), "props": props}
    return "item", {"id": value, "props": props}


def split_entities(
    entities: dict[str, Any], requested: Sequence[str], by_title: bool, site: str = "commonswiki"
) -> dict[str, dict[str, Any] | None]:
    """One ``wbgetentities`` answer -> ``{requested id or title: entity or None}``.

    By id the answer is keyed by the requested id (a redirect carries ``redirects``). By title a
    found entity is matched through its ``site`` sitelink title (NFC, MediaWiki-normalised); a
    requested title matched by nothing is missing (None)."""
    from hglv2.hierarchy.commons import normalize_title

    if not by_title:
        out: dict[str, dict[str, Any] | None] = {}
        for q in requested:
            ent = entities.get(q)
            ok = isinstance(ent, dict) and "missing" not in ent and "id" in ent
            out[q] = ent if ok else None
        return out
    found: dict[str, dict[str, Any]] = {}
    for ent in entities.values():
        if not isinstance(ent, dict) or "missing" in ent or "id" not in ent:
            continue
        link = (ent.get("sitelinks") or {}).get(site)
        if isinstance(link, dict) and isinstance(link.get("title"), str):
            found.setdefault(normalize_title(link["title"]), ent)
    return {t: found.get(normalize_title(t)) for t in requested}


def batched(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def run_batches(calls: Iterable[Callable[[], None]]) -> None:
    """Run every call; collect offline cache misses and raise one error that names them all."""
    misses: list[str] = []
    for call in calls:
        try:
            call()
        except CacheMiss as exc:
            misses.append(str(exc).removeprefix("offline and not in cache: "))
    if misses:
        shown = "; ".join(misses[:3]) + (f"; ... ({len(misses) - 3} more)" if len(misses) > 3 else "")
        raise CacheMiss(f"offline and {len(misses)} request(s) not in the cache: {shown}")


# --------------------------------------------------------------------------------------------
# entities


@dataclass(frozen=True)
class ItemInfo:
    """What the pipeline keeps of an item: truthy P31/P279/P301/P373 and the P31 statement ranks."""

    qid: str
    label: str | None
    revision: int | None
    p31: tuple[str, ...]
    p31_ranks: tuple[tuple[str, str], ...]
    p279: tuple[str, ...]
    p301: tuple[str, ...]
    p373: tuple[str, ...]
    commons_title: str | None
    redirected_from: str | None = None

    @property
    def is_category_item(self) -> bool:
        return CATEGORY_ITEM in self.p31


def _item_values(item: WikidataItem, prop: str, truthy: bool = True) -> tuple[str, ...]:
    group = item.get_truthy_claim_group(prop) if truthy else item.get_claim_group(prop)
    out: list[str] = []
    for claim in group:
        snak = claim.mainsnak
        if snak.snaktype != "value" or snak.datavalue is None:
            continue
        value = snak.datavalue.value
        value = value.get("id") if isinstance(value, dict) else value
        if isinstance(value, str) and value not in out:
            out.append(value)
    return tuple(out)


def parse_item(entity: dict[str, Any]) -> ItemInfo:
    """Parse one wbgetentities entity (JSON) with qwikidata's ``WikidataItem``."""
    ent = dict(entity)
    for key in ("labels", "descriptions", "aliases", "claims", "sitelinks"):
        if not isinstance(ent.get(key), dict):
            ent[key] = {}
    item = WikidataItem(ent)
    ranks = []
    for claim in item.get_claim_group("P31"):
        snak = claim.mainsnak
        if snak.snaktype == "value" and snak.datavalue is not None:
            ranks.append((snak.datavalue.value.get("id"), claim.rank))
    site = ent["sitelinks"].get("commonswiki")
    redirect = entity.get("redirects")
    return ItemInfo(
        qid=item.entity_id,
        label=item.get_label("en") or None,
        revision=entity.get("lastrevid"),
        p31=tuple(q for q in _item_values(item, "P31") if is_qid(q)),
        p31_ranks=tuple(ranks),
        p279=tuple(q for q in _item_values(item, "P279") if is_qid(q)),
        p301=tuple(q for q in _item_values(item, "P301") if is_qid(q)),
        p373=_item_values(item, "P373"),
        commons_title=site.get("title") if isinstance(site, dict) else None,
        redirected_from=redirect.get("from") if isinstance(redirect, dict) else None,
    )


def fetch_items(
    client: WikidataClient,
    ids: Iterable[str],
    props: str = "info|claims|labels|sitelinks",
    batch: int = MAX_BATCH,
) -> dict[str, ItemInfo | None]:
    """Fetch items by id (cached per id; the uncached ones sorted, ``batch`` per call); redirects
    are followed: the value is the target item. Missing ids map to ``None``.
    """
    ids = sorted(set(ids), key=qid_number)
    out: dict[str, ItemInfo | None] = {}

    def run() -> None:
        ents = client.entities(ids=ids, props=props)
        for qid in ids:
            ent = ents.get(qid)
            if not isinstance(ent, dict) or "missing" in ent or ent.get("type") not in (None, "item"):
                out[qid] = None
            else:
                ent = dict(ent)
                ent.setdefault("type", "item")
                out[qid] = parse_item(ent)

    run_batches([run])
    return out
