"""A fake Wikidata (Action API ``wbgetentities`` + SPARQL P373 lookups) on 127.0.0.1.

Serves a *world* (entities in the API's JSON format, redirects) with the response shapes of the real
services, and injects faults on demand: ``429`` with ``Retry-After``, the ``maxlag`` error, ``503``,
slow answers (client time-outs), truncated JSON and HTML pages with status 200. Used by the tests
and by ``pipelines/make_sample.py`` to record the sample cache. Only for local use: it binds to
127.0.0.1 and never talks to the network.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hglv2.hierarchy.wikidata import request_key

FAULTS = ("429", "maxlag", "503", "timeout", "truncated", "html")
_VALUES = re.compile(r"VALUES\s+\?commonscat\s*\{(.*?)\}", re.S)
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


class World:
    """Entities by QID (full API JSON), redirects (old -> new QID) and the derived indexes."""

    def __init__(self, entities: dict[str, dict[str, Any]], redirects: dict[str, str] | None = None):
        self.entities = entities
        self.redirects = dict(redirects or {})
        self.sitelinks: dict[str, str] = {}
        self.p373: dict[str, list[str]] = {}
        for qid, ent in entities.items():
            link = ent.get("sitelinks", {}).get("commonswiki")
            if link:
                self.sitelinks[link["title"]] = qid
            for claim in ent.get("claims", {}).get("P373", []):
                if claim["rank"] == "deprecated" or claim["mainsnak"]["snaktype"] != "value":
                    continue
                self.p373.setdefault(claim["mainsnak"]["datavalue"]["value"], []).append(qid)

    def view(
        self, ent: dict[str, Any], props: set[str], languages: set[str] | None, sitefilter: set[str] | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ent["type"], "id": ent["id"]}
        if "info" in props:
            for k in ("pageid", "ns", "title", "lastrevid", "modified"):
                out[k] = ent[k]
        if "labels" in props:
            out["labels"] = {k: v for k, v in ent["labels"].items() if languages is None or k in languages}
        if "claims" in props:
            out["claims"] = ent["claims"]
        if "sitelinks" in props:
            out["sitelinks"] = {
                k: v for k, v in ent["sitelinks"].items() if sitefilter is None or k in sitefilter
            }
        return out

    def wbgetentities(self, q: dict[str, str]) -> dict[str, Any]:
        props = set(q.get("props", "info|sitelinks|aliases|labels|descriptions|claims|datatype").split("|"))
        languages = set(q["languages"].split("|")) if "languages" in q else None
        sitefilter = set(q["sitefilter"].split("|")) if "sitefilter" in q else None
        entities: dict[str, Any] = {}
        if "ids" in q:
            ids = q["ids"].split("|")
            if len(ids) > 50:
                return {"error": {"code": "toomanyvalues", "info": "Too many values supplied for ids"}}
            for qid in ids:
                target = self.redirects.get(qid, qid)
                ent = self.entities.get(target)
                if ent is None:
                    entities[qid] = {"id": qid, "missing": ""}
                    continue
                view = self.view(ent, props, languages, sitefilter)
                if target != qid:
                    view["redirects"] = {"from": qid, "to": target}
                entities[qid] = view
        else:
            titles = q.get("titles", "").split("|")
            if len(titles) > 50:
                return {"error": {"code": "toomanyvalues", "info": "Too many values supplied for titles"}}
            n_missing = 0
            for title in titles:
                qid = self.sitelinks.get(title) if q.get("sites") == "commonswiki" else None
                if qid is None:
                    n_missing += 1
                    entities[str(-n_missing)] = {"site": q.get("sites", ""), "title": title, "missing": ""}
                else:
                    entities[qid] = self.view(self.entities[qid], props, languages, sitefilter)
        return {"entities": entities, "success": 1}

    def sparql(self, query: str) -> dict[str, Any]:
        m = _VALUES.search(query)
        bindings = []
        if m and "wdt:P373" in query:
            for lit in _LITERAL.findall(m.group(1)):
                name = lit.replace('\\"', '"').replace("\\\\", "\\")
                for qid in sorted(self.p373.get(name, [])):
                    bindings.append(
                        {
                            "item": {"type": "uri", "value": f"http://www.wikidata.org/entity/{qid}"},
                            "commonscat": {"type": "literal", "value": name},
                        }
                    )
        return {"head": {"vars": ["item", "commonscat"]}, "results": {"bindings": bindings}}


class FakeWikidata:
    """The server. ``fault_for(n, key)`` picks a fault (or ``None``) for the n-th HTTP request.

    ``log`` lists ``(key, answered)`` per request; ``on_request(n)`` runs before each answer;
    when it returns true the request is dropped unanswered (the kill test uses it). ``slow_s`` is
    how long a ``timeout`` fault waits before answering.
    """

    def __init__(
        self, world: World, fault_for: Callable[[int, str], str | None] | None = None, slow_s: float = 0.5
    ):
        self.world = world
        self.fault_for = fault_for
        self.slow_s = slow_s
        self.log: list[tuple[str, bool]] = []
        self.user_agents: set[str] = set()
        self.on_request: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # silence
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                server._handle(self, "sparql" if parts.path.endswith("/sparql") else "api", q)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.api_url = f"http://127.0.0.1:{self.port}/w/api.php"
        self.sparql_url = f"http://127.0.0.1:{self.port}/sparql"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeWikidata:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def answered(self) -> list[str]:
        return [k for k, ok in self.log if ok]

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, endpoint: str, q: dict[str, str]) -> None:
        key = request_key(endpoint, q)
        with self._lock:
            n = len(self.log)
            self.log.append((key, False))
            self.user_agents.add(h.headers.get("User-Agent", ""))
        if self.on_request is not None and self.on_request(n):
            h.close_connection = True
            return  # drop the request unanswered
        fault = self.fault_for(n, key) if self.fault_for else None
        if endpoint == "api" and q.get("action") != "wbgetentities":
            body = {"error": {"code": "badvalue", "info": "Unrecognized value for parameter action"}}
        elif endpoint == "api":
            body = self.world.wbgetentities(q)
        else:
            body = self.world.sparql(q.get("query", ""))
        text = json.dumps(body, ensure_ascii=False).encode("utf-8")
        ctype = "application/json; charset=utf-8" if endpoint == "api" else "application/sparql-results+json"
        if fault == "429":
            return self._send(h, 429, b"Too many requests", "text/plain", {"Retry-After": "7"})
        if fault == "503":
            return self._send(h, 503, b"<html><body>Service Unavailable</body></html>", "text/html")
        if fault == "html":
            page = b"<!DOCTYPE html><html><body>Wikimedia Error</body></html>"
            return self._send(h, 200, page, "text/html")
        if fault == "truncated":
            return self._send(h, 200, text[: len(text) // 2], ctype)
        if fault == "maxlag" and endpoint == "api":
            err = {
                "error": {
                    "code": "maxlag",
                    "info": "Waiting for 10.64.0.1: 7 seconds lagged",
                    "host": "10.64.0.1",
                    "lag": 7,
                    "type": "db",
                }
            }
            return self._send(
                h,
                200,
                json.dumps(err).encode(),
                ctype,
                {"Retry-After": "5", "X-Database-Lag": "7 seconds lagged"},
            )
        if fault == "timeout":
            time.sleep(self.slow_s)
            try:
                self._send(h, 200, text, ctype)
            except OSError:
                pass
            return
        self._send(h, 200, text, ctype)
        with self._lock:
            self.log[n] = (key, True)
