"""The shared HTTP transport of the two network stages (GLDv2 downloads, the Wikidata client).

On ``requests``:

- :func:`make_session` builds a ``requests.Session`` whose User-Agent follows the Wikimedia
  User-Agent policy: ``hglv2/<version> (<project url>; <contact>) requests/<version>``.
- :func:`request_with_retries` sends one request and retries it with capped exponential backoff:

  .. math::  \\text{delay}_k = \\min(\\text{backoff\\_cap},\\ \\text{backoff\\_base} \\cdot 2^{k-1})

  after the k-th failed try (k = 1, 2, ...), or the server's ``Retry-After`` (seconds or an HTTP
  date; capped at ``retry_after_cap``) when it sends one. Retried: the statuses in
  ``retry_statuses`` (429 and 5xx by default), timeouts, connection errors and bodies cut short
  (shorter than their ``Content-Length``). Any other HTTP error status fails at once. After the last
  try it raises :class:`hglv2.errors.NetworkError` naming the URL and the last failure. The first
  retry towards a host is announced once on stderr (:func:`announce_retry`). :class:`Retries`
  bundles a download's timeout, number of tries and backoff.
- :func:`fetch_resumable` streams one file to disk through it, resuming a cut transfer with an
  HTTP ``Range`` request and checking the complete file before it is renamed into place.

Requests are serial (the callers never run them concurrently); the ``sleep`` argument lets tests
run the retry loop without waiting. ``allowed_bases`` makes a caller refuse any URL outside its
configured base URLs (for example a file name with ``../`` joined onto a base).
"""

from __future__ import annotations

import email.utils
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from tqdm.auto import tqdm

from hglv2 import __version__
from hglv2.errors import InputError, NetworkError

#: Where users and server operators can read what hglv2 is (sent in the User-Agent).
PROJECT_URL = "https://github.com/hglv2/hglv2"

#: HTTP statuses retried by default: rate limiting and transient server errors.
RETRY_STATUSES = (429, 500, 502, 503, 504)

_TRANSIENT_ERRORS = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class Retries:
    """How a download retries each request: the arguments of :func:`request_with_retries` that
    set its per-try ``timeout`` (seconds), its number of tries and its backoff schedule."""

    timeout: float = 60.0
    max_tries: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`request_with_retries`."""
        return {
            "timeout": self.timeout,
            "max_tries": self.max_tries,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "sleep": self.sleep,
        }


def user_agent(contact: str, project_url: str = PROJECT_URL) -> str:
    """The policy User-Agent: ``hglv2/<version> (<project url>; <contact>) requests/<version>``.

    ``contact`` is an e-mail address or a URL where the operator of this client can be reached;
    Wikimedia blocks clients that send none.
    """
    contact = (contact or "").strip()
    if not contact or any(c in contact for c in "()\r\n"):
        raise InputError(
            f"user-agent contact {contact!r} must be a non-empty e-mail address or URL "
            "without parentheses or line breaks"
        )
    return f"hglv2/{__version__} ({project_url}; {contact}) requests/{requests.__version__}"


def make_session(user_agent_contact: str, project_url: str = PROJECT_URL) -> requests.Session:
    """A ``requests.Session`` sending the policy User-Agent (see :func:`user_agent`).

    The session does no retries of its own (``request_with_retries`` does them) and keeps its
    connections alive between the serial requests of one stage.
    """
    session = requests.Session()
    session.headers["User-Agent"] = user_agent(user_agent_contact, project_url)
    return session


def check_url(url: str, allowed_bases: Iterable[str]) -> None:
    """Raise :class:`InputError` unless ``url`` lies under one of ``allowed_bases``.

    The URL is normalised first (``.``/``..`` path segments resolved, scheme and host
    lower-cased), so ``base + "/../secret"`` is refused.
    """
    norm = _normalise(url)
    for base in allowed_bases:
        nb = _normalise(base).rstrip("/") + "/"
        if norm == nb.rstrip("/") or norm.startswith(nb):
            return
    raise InputError(f"refusing URL {url!r}: it is outside the configured base URL(s)")


def _normalise(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    segments: list[str] = []
    for seg in parts.path.split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg not in (".",):
            segments.append(seg)
    path = "/".join(segments)
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


_ANNOUNCED: set[str] = set()


def announce_retry(url: str, reason: str, tries_left: int) -> None:
    """Say on stderr, once per host and process, that requests to it are being retried.

    Without it a run without network sits silent through minutes of backoff.
    """
    host = urllib.parse.urlsplit(url).netloc or url
    if host in _ANNOUNCED:
        return
    _ANNOUNCED.add(host)
    short = reason if len(reason) <= 100 else reason[:97] + "..."
    print(
        f"Note: {host} did not answer ({short}); retrying with backoff, up to {tries_left} more "
        "tries per request (Ctrl-C stops; --max-tries and --offline change this)",
        file=sys.stderr,
        flush=True,
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delta seconds or an HTTP date) into seconds >= 0."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, backoff_base: float, backoff_cap: float) -> float:
    """Delay after the ``attempt``-th failed try (1-based): ``min(cap, base * 2**(attempt-1))``."""
    return float(min(backoff_cap, backoff_base * (2 ** max(0, attempt - 1))))


def request_with_retries(
    session: requests.Session,
    method: str,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float],
    max_tries: int,
    backoff_base: float,
    backoff_cap: float,
    sleep: Callable[[float], None] = time.sleep,
    retry_statuses: Iterable[int] = RETRY_STATUSES,
    stream: bool = False,
    allowed_bases: Iterable[str] | None = None,
    retry_after_cap: float = 600.0,
    accept_statuses: Iterable[int] = (),
    on_retry: Callable[[int, str, float], None] | None = None,
    failures_before: int = 0,
) -> requests.Response:
    """Send ``method url`` with retries; return the response (status < 400 or accepted).

    Args:
        session: from :func:`make_session`.
        timeout: seconds, or ``(connect, read)``, passed to requests.
        max_tries: total number of tries (>= 1).
        backoff_base, backoff_cap: the backoff schedule (see the module docstring), in seconds.
        sleep: called with each delay (inject a no-op in tests).
        retry_statuses: HTTP statuses that are retried; other statuses >= 400 fail at once.
        stream: if False the body is read here (a truncated body is retried); if True the caller
            reads it and must close the response (a ``Range`` resume is the caller's business).
        allowed_bases: if given, refuse (InputError) a URL outside these base URLs.
        retry_after_cap: the longest ``Retry-After`` honoured, in seconds.
        accept_statuses: error statuses returned to the caller instead of raised (e.g. 416 for a
            ``Range`` past the end of the file).
        on_retry: called as ``on_retry(attempt, reason, delay)`` before each wait (for logging).
        failures_before: failures of the same logical request already counted by the caller (for
            example body-level failures it retried itself): the k-th failure here waits as the
            ``failures_before + k``-th, so one backoff schedule runs across both layers.

    Raises:
        NetworkError: a non-retried HTTP error status, or the last try failed.
        InputError: the URL is outside ``allowed_bases``.
    """
    if max_tries < 1:
        raise ValueError("max_tries must be >= 1")
    if allowed_bases is not None:
        check_url(url, allowed_bases)
    retry_statuses = frozenset(retry_statuses)
    accept = frozenset(accept_statuses)
    last = "no try made"
    for attempt in range(1, max_tries + 1):
        resp, last, retry_after = _try_once(
            session, method, url, params, headers, timeout, stream, retry_statuses, accept
        )
        if resp is not None:
            return resp
        if attempt == max_tries:
            break
        delay = backoff_delay(failures_before + attempt, backoff_base, backoff_cap)
        if retry_after is not None:
            delay = min(retry_after, retry_after_cap)
        if on_retry is not None:
            on_retry(attempt, last, delay)
        announce_retry(url, last, max_tries - attempt)
        sleep(delay)
    raise NetworkError(f"{method} {url}: failed after {max_tries} tries (last: {last})")


def _try_once(
    session: requests.Session,
    method: str,
    url: str,
    params: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None,
    timeout: float | tuple[float, float],
    stream: bool,
    retry_statuses: frozenset[int],
    accept: frozenset[int],
) -> tuple[requests.Response | None, str, float | None]:
    """One try: ``(response, "", None)``, or ``(None, why it failed, Retry-After seconds or None)``
    for a failure worth retrying; a non-retried error status raises :class:`NetworkError`."""
    try:
        resp = session.request(method, url, params=params, headers=headers, timeout=timeout, stream=stream)
    except _TRANSIENT_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}", None
    if resp.status_code in retry_statuses:
        resp.close()
        return None, f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("Retry-After"))
    if resp.status_code >= 400 and resp.status_code not in accept:
        resp.close()
        raise NetworkError(f"{method} {url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip())
    if stream:
        return resp, "", None
    try:
        _ = resp.content  # reads the body; urllib3 checks it against Content-Length
        return resp, "", None
    except _TRANSIENT_ERRORS as exc:
        resp.close()
        return None, f"body cut short ({type(exc).__name__}: {exc})", None


def fetch_resumable(
    session: requests.Session,
    url: str,
    path: Path,
    *,
    retries: Retries,
    chunk_size: int,
    progress: bool,
    base_url: str,
    verify: Callable[[Path], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Stream ``url`` (under ``base_url``) into ``path`` via ``.<name>.part``, resuming after a cut.

    A cut transfer resumes with an HTTP ``Range`` request, guarded by ``If-Range`` with the first
    response's ETag (``.<name>.part.json`` ties the partial file to its URL and ETag), and is
    checked against ``Content-Length``/``Content-Range``. ``verify(part)`` (optional) checks the
    complete file before it is renamed into place; if it raises, the partial file is removed and
    the error propagates (an interrupt keeps the complete part for the next run). ``on_bytes(n)``
    (optional) is called with the size of each block received (for an overall progress bar).
    """
    part = path.with_name(f".{path.name}.part")
    meta = path.with_name(f".{path.name}.part.json")
    bar = tqdm(
        total=None, unit="B", unit_scale=True, desc=path.name, disable=None if progress else True, leave=False
    )
    try:
        transfer = _Transfer(session, url, part, meta, retries, base_url, bar, on_bytes)
        while not transfer.step(chunk_size):
            pass
        if verify is not None:
            try:
                verify(part)
            except Exception:  # a bad file
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                raise
        os.replace(part, path)
        meta.unlink(missing_ok=True)
    finally:
        bar.close()


class _Transfer:
    """The state of one resumable transfer into ``part`` (``meta`` ties it to its URL and ETag)."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        part: Path,
        meta: Path,
        retries: Retries,
        base_url: str,
        bar: tqdm,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.session, self.url, self.part, self.meta = session, url, part, meta
        self.retries, self.base_url, self.bar, self.on_bytes = retries, base_url, bar, on_bytes
        self.failures = 0
        self.etag: str | None = None
        resumable = False
        if part.exists() and meta.exists():
            try:
                info = json.loads(meta.read_text(encoding="utf-8"))
                self.etag, resumable = info.get("etag"), info.get("url") == url
            except ValueError:
                pass
        if part.exists() and not resumable:
            part.unlink()  # a partial file we cannot tie to this URL: start over

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _fail(self, message: str) -> None:
        """Count a failure; raise :class:`NetworkError` ``message`` once ``max_tries`` are spent."""
        self.failures += 1
        if self.failures >= self.retries.max_tries:
            raise NetworkError(message)

    def _request(self, have: int) -> requests.Response:
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            if self.etag:
                headers["If-Range"] = self.etag  # a changed file comes back whole (200)
        return request_with_retries(
            self.session,
            "GET",
            self.url,
            headers=headers,
            **self.retries.as_kwargs(),
            stream=True,
            allowed_bases=[self.base_url],
            accept_statuses=(416,),
        )

    def step(self, chunk_size: int) -> bool:
        """One request: True when ``part`` holds the whole file, False to try again."""
        have = self._have()
        with self._request(have) as resp:
            if resp.status_code == 416 or (have and resp.status_code == 200):
                self.part.unlink(missing_ok=True)  # server ignored or refused the range: restart
                if resp.status_code == 416:
                    self._fail(f"GET {self.url}: range requests keep failing (HTTP 416)")
                    return False
                have = 0
            total = _total_size(resp, have)
            self.etag = resp.headers.get("ETag") or self.etag
            self.meta.write_text(json.dumps({"etag": self.etag, "url": self.url}), encoding="utf-8")
            self.bar.reset(total=total)
            self.bar.update(have)
            try:
                self._receive(resp, have, chunk_size)
            except requests.exceptions.RequestException as exc:  # cut, reset, read timeout
                if self._have() > have:
                    self.failures = 0  # progress: the count starts again
                else:
                    self._fail(f"GET {self.url}: download keeps breaking off ({exc})")
                r = self.retries
                r.sleep(backoff_delay(self.failures, r.backoff_base, r.backoff_cap))
                return False
        size = self._have()
        if total is not None and size != total:
            self.failures += 1
            if size > total or self.failures >= self.retries.max_tries:
                self.part.unlink(missing_ok=True)
                raise NetworkError(f"GET {self.url}: got {size} bytes, expected {total}")
            return False
        return True

    def _receive(self, resp: requests.Response, have: int, chunk_size: int) -> None:
        with open(self.part, "ab" if have else "wb") as fh:
            for block in resp.iter_content(chunk_size):
                fh.write(block)
                self.bar.update(len(block))
                if self.on_bytes is not None:
                    self.on_bytes(len(block))


def _total_size(resp: requests.Response, have: int) -> int | None:
    """Full file size from ``Content-Range`` (206) or ``have + Content-Length``."""
    rng = resp.headers.get("Content-Range")
    if resp.status_code == 206 and rng and "/" in rng:
        total = rng.rsplit("/", 1)[1]
        start = rng.split()[-1].split("-")[0] if " " in rng else ""
        if start.isdigit() and int(start) != have:
            raise NetworkError(f"{resp.url}: server resumed at byte {start}, asked for {have}")
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None
