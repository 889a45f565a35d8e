"""Where a stage's Wikidata answers come from: the API with its response cache, or a JSON dump.

:func:`open_source` opens either behind one interface. A stage asks its source for a client
holding what it needs (:meth:`~ApiSource.for_resolve`, :meth:`~ApiSource.for_graph`,
:meth:`~ApiSource.for_ids`) and records :meth:`~ApiSource.provenance` beside its summary. The API
source checks its options when it is opened, but creates the client (and with it the cache file)
only when a stage first asks for it, so a stage whose inputs are bad stops before any file is
made. The dump source reads the dump once per stage, keeping only what that stage asks about.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hglv2.errors import InputError

if TYPE_CHECKING:
    from hglv2.hierarchy.dump import DumpClient
    from hglv2.hierarchy.wikidata import WikidataClient

#: HTTP tries per request of the API source (the first and eight retries)
DEFAULT_MAX_TRIES = 9


class ApiSource:
    """The Wikidata Action API and SPARQL endpoint through :class:`WikidataClient` and its cache.

    ``cache_path``: ``.sqlite`` (read/write) or a ``.jsonl`` recording (only with ``offline``);
    a missing cache with ``offline`` is an :class:`~hglv2.errors.InputError` when the source is
    opened. ``max_tries``: HTTP tries per request.
    """

    def __init__(
        self,
        cache_path: str | os.PathLike[str],
        *,
        offline: bool = False,
        api_url: str | None = None,
        sparql_url: str | None = None,
        contact: str | None = None,
        timeout: float = 60.0,
        max_tries: int = DEFAULT_MAX_TRIES,
    ) -> None:
        self.cache_path = Path(cache_path)
        self.offline = offline
        self.api_url = api_url
        self.sparql_url = sparql_url
        self.contact = contact
        self.timeout = timeout
        self.max_tries = max_tries
        self._client: WikidataClient | None = None
        self._check()

    def _check(self) -> None:
        path, offline = self.cache_path, self.offline
        if not offline and path.suffix == ".jsonl":
            raise InputError(f"{path}: a .jsonl recording is read-only; use it with --offline")
        if offline and not path.exists():
            raise InputError(f"{path}: no such cache (needed with --offline)")

    def open_client(self) -> WikidataClient:
        """A new client over the cache (called once, on the first request for a client)."""
        from hglv2.hierarchy.wikidata import (
            DEFAULT_API_URL,
            DEFAULT_SPARQL_URL,
            ResponseCache,
            WikidataClient,
        )

        return WikidataClient(
            ResponseCache(self.cache_path),
            api_url=self.api_url or DEFAULT_API_URL,
            sparql_url=self.sparql_url or DEFAULT_SPARQL_URL,
            offline=self.offline,
            contact=self.contact,
            timeout=self.timeout,
            max_tries=self.max_tries,
        )

    def client(self) -> WikidataClient:
        if self._client is None:
            self._client = self.open_client()
        return self._client

    def for_resolve(self, categories: Iterable[tuple[int, str]]) -> WikidataClient:
        """The client that answers the resolve stage for ``(landmark_id, category URL)`` pairs."""
        return self.client()

    def for_graph(self, resolved: Iterable[dict[str, Any]]) -> WikidataClient:
        """The client that answers the graph stage for resolved landmark rows."""
        return self.client()

    def for_ids(self, ids: Iterable[str]) -> WikidataClient:
        """The client that answers lookups of the items ``ids``."""
        return self.client()

    def provenance(self) -> dict[str, Any] | None:
        """What the answers were read from, for a stage's summary (None: the API and its cache)."""
        return None

    def with_provenance(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A stage's ``summary``; the API source adds nothing."""
        return summary

    def close(self) -> None:
        if self._client is not None:
            self._client.cache.close()

    def __enter__(self) -> ApiSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DumpSource:
    """A Wikidata JSON dump (``latest-all.json.bz2|.gz``) and an optional redirect list
    (``old,new`` QID pairs), read by :mod:`hglv2.hierarchy.dump`; no cache, no network."""

    def __init__(
        self,
        dump: str | os.PathLike[str],
        redirects: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.dump = dump
        self.redirects = redirects
        self.progress = progress
        self._client: DumpClient | None = None

    def _keep(self, client: DumpClient) -> DumpClient:
        self._client = client
        return client

    def for_resolve(self, categories: Iterable[tuple[int, str]]) -> DumpClient:
        from hglv2.hierarchy.dump import client_for_resolve

        return self._keep(client_for_resolve(self.dump, categories, self.redirects, self.progress))

    def for_graph(self, resolved: Iterable[dict[str, Any]]) -> DumpClient:
        from hglv2.hierarchy.dump import client_for_graph

        return self._keep(client_for_graph(self.dump, resolved, self.redirects, self.progress))

    def for_ids(self, ids: Iterable[str]) -> DumpClient:
        from hglv2.hierarchy.dump import client_for_ids

        return self._keep(client_for_ids(self.dump, ids, self.redirects, self.progress))

    def provenance(self) -> dict[str, Any] | None:
        """The dump's name and date and what the last pass kept (:meth:`DumpIndex.provenance`)."""
        return None if self._client is None else self._client.index.provenance()

    def with_provenance(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A stage's ``summary`` with :meth:`provenance` added as ``source``."""
        provenance = self.provenance()
        if provenance is not None:
            summary["source"] = provenance
        return summary

    def close(self) -> None:
        pass

    def __enter__(self) -> DumpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WikidataSource = ApiSource | DumpSource


def open_source(
    *,
    dump: str | os.PathLike[str] | None = None,
    redirects: str | os.PathLike[str] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    **api: Any,
) -> WikidataSource:
    """A :class:`DumpSource` when ``dump`` is given (the API options are then unused), else an
    :class:`ApiSource` over ``cache_path`` with the API options ``api`` (``offline``, ``api_url``,
    ``sparql_url``, ``contact``, ``timeout``, ``max_tries``). Use it as a context manager."""
    if dump is not None:
        return DumpSource(dump, redirects)
    if cache_path is None:
        raise ValueError("give a dump or a cache path")
    return ApiSource(cache_path, **api)
