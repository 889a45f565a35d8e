"""Where a stage's Wikidata answers come from: the API with its response cache, or a JSON dump.

:func:`open_source` opens either behind one interface (:class:`Source`). A stage asks its source
for the client that answers its lookups (:meth:`~Source.client`) and records
:meth:`~Source.with_provenance` beside its summary. The API
source checks its options when it is opened, but creates the client (and with it the cache file)
only when a stage first asks for it, so a stage whose inputs are bad stops before any file is
made. The dump source reads the dump once into a facts table that later stages reuse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hglv2.errors import InputError

if TYPE_CHECKING:
    from hglv2.hierarchy.dump import DumpClient
    from hglv2.hierarchy.wikidata import WikidataClient

#: HTTP tries per request of the API source (the first and eight retries)
DEFAULT_MAX_TRIES = 9


class Source:
    """What every source offers a stage: :meth:`client`, :meth:`provenance` (added to a stage's
    summary as ``source`` when not None) and use as a context manager (:meth:`close` on exit)."""

    _client: Any = None

    def client(self) -> Any:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any] | None:
        """What the answers were read from, for a stage's summary (None: nothing to record)."""
        return None

    def with_provenance(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A stage's ``summary`` with :meth:`provenance` added as ``source`` when there is one."""
        provenance = self.provenance()
        if provenance is not None:
            summary["source"] = provenance
        return summary

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ApiSource(Source):
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

    def close(self) -> None:
        if self._client is not None:
            self._client.cache.close()


class DumpSource(Source):
    """A Wikidata JSON dump (``latest-all.json.bz2|.gz``) and optional redirects (QID pairs or the
    ``redirect`` table dump), read by :mod:`hglv2.hierarchy.dump`; no cache, no network.

    The dump is read once into its facts table (``facts``: default beside the dump), which every
    stage on the same dump reuses; ``threads``: bz2 decompression threads; ``workers``: decoding
    processes (0: decode in this process); by default
    :func:`~hglv2.hierarchy.dump_read.default_parallelism`.
    """

    def __init__(
        self,
        dump: str | os.PathLike[str],
        redirects: str | os.PathLike[str] | None = None,
        progress: bool = True,
        *,
        facts: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.dump = dump
        self.redirects = redirects
        self.progress = progress
        self.facts = facts
        self.threads = threads
        self.workers = workers
        self._client: DumpClient | None = None

    def client(self) -> DumpClient:
        """The client over the dump's facts table (read or built on the first call)."""
        if self._client is None:
            from hglv2.hierarchy.dump import DumpClient, default_facts_path, open_facts
            from hglv2.hierarchy.dump_read import default_parallelism
            from hglv2.hierarchy.dump_redirects import cached_redirects

            facts_path = Path(self.facts) if self.facts is not None else default_facts_path(self.dump)
            threads, workers = default_parallelism(os.fspath(self.dump))
            facts = open_facts(
                self.dump,
                facts_path,
                threads=threads if self.threads is None else self.threads,
                workers=workers if self.workers is None else self.workers,
                progress=self.progress,
            )
            cache = facts_path.with_name(facts_path.name.removesuffix(".parquet") + ".redirects.parquet")
            redirects = cached_redirects(self.redirects, cache) if self.redirects else None
            self._client = DumpClient(facts, redirects)
        return self._client

    def provenance(self) -> dict[str, Any] | None:
        """The dump's name and date, the passes this stage made over it and what its lookups
        missed (:meth:`DumpClient.provenance`)."""
        return None if self._client is None else self._client.provenance()


WikidataSource = Source


def open_source(
    *,
    dump: str | os.PathLike[str] | None = None,
    redirects: str | os.PathLike[str] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    dump_facts: str | os.PathLike[str] | None = None,
    **api: Any,
) -> WikidataSource:
    """A :class:`DumpSource` when ``dump`` is given (the API options are then unused), else an
    :class:`ApiSource` over ``cache_path`` with the API options ``api`` (``offline``, ``api_url``,
    ``sparql_url``, ``contact``, ``timeout``, ``max_tries``); ``dump_facts``: where the dump's
    facts table goes (default beside the dump). Use it as a context manager."""
    if dump is not None:
        return DumpSource(dump, redirects, facts=dump_facts)
    if cache_path is None:
        raise ValueError("give a dump or a cache path")
    return ApiSource(cache_path, **api)
