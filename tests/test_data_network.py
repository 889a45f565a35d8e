"""hglv2.http and hglv2.gldv2.download against a flaky HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from hglv2 import __version__
from hglv2.errors import InputError, NetworkError
from hglv2.http import (
    backoff_delay,
    check_url,
    make_session,
    request_with_retries,
    retry_after_seconds,
    user_agent,
)


class FlakyServer:
    """Serves ``files`` (path -> bytes); ``plan[path]`` is a list of actions used one per request.

    Actions: ``"ok"``, ``"503"``, ``"429"`` (with Retry-After: 7), ``"404"``, ``"drop"`` (send the
    headers and half of the requested bytes, then close the connection). Honours ``Range: bytes=N-``.
    """

    def __init__(self, files: dict[str, bytes], plan: dict[str, list[str]] | None = None):
        self.files = files
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.log: list[tuple[str, str | None, str | None]] = []  # (path, Range, User-Agent)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # silence
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                server.log.append((self.path, self.headers.get("Range"), self.headers.get("User-Agent")))
                queue = server.plan.get(self.path, [])
                action = queue.pop(0) if queue else "ok"
                if action in ("503", "404", "429") or self.path not in server.files:
                    code = 404 if self.path not in server.files else int(action)
                    self.send_response(code)
                    if code == 429:
                        self.send_header("Retry-After", "7")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[self.path]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                if action == "drop":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _fast(**kw):
    sleeps: list[float] = []
    kw.setdefault("timeout", 5)
    kw.setdefault("max_tries", 5)
    kw.setdefault("backoff_base", 1.0)
    kw.setdefault("backoff_cap", 4.0)
    return sleeps, dict(kw, sleep=sleeps.append)


def test_user_agent_policy():
    ua = user_agent("ops@example.org")
    assert ua.startswith(f"hglv2/{__version__} (")
    assert "ops@example.org)" in ua and ua.endswith(f"requests/{requests.__version__}")
    for bad in ("", "  ", "a (b)", "x\ny"):
        with pytest.raises(InputError):
            user_agent(bad)
    assert make_session("ops@example.org").headers["User-Agent"] == ua


def test_backoff_schedule_and_retry_after():
    assert [backoff_delay(k, 0.5, 3.0) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    # HTTP date 30 s after "now"
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=0.0) == pytest.approx(30.0)


def test_check_url():
    check_url("http://h/a/b.csv", ["http://h/a"])
    check_url("http://H/a/b.csv", ["http://h/a/"])
    for bad in ("http://h/a/../etc/passwd", "http://h/ab.csv", "http://other/a/b.csv", "https://h/a/b"):
        with pytest.raises(InputError, match="outside"):
            check_url(bad, ["http://h/a"])


def test_retries_503_then_succeeds_and_sends_user_agent():
    with FlakyServer({"/f": b"hello"}, {"/f": ["503", "503"]}) as srv:
        sleeps, kw = _fast()
        resp = request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert resp.content == b"hello"
        assert sleeps == [1.0, 2.0]
        assert len(srv.log) == 3 and all(ua.startswith("hglv2/") for _, _, ua in srv.log)


def test_retry_after_is_honoured_and_capped():
    with FlakyServer({"/f": b"x"}, {"/f": ["429", "429"]}) as srv:
        sleeps, kw = _fast(retry_after_cap=5.0)
        request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [5.0, 5.0]
        sleeps, kw = _fast()
        srv.plan["/f"] = ["429"]
        request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [7.0]


def test_truncated_body_is_retried():
    with FlakyServer({"/f": b"0123456789" * 100}, {"/f": ["drop", "drop"]}) as srv:
        sleeps, kw = _fast()
        resp = request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert resp.content == b"0123456789" * 100 and len(sleeps) == 2


def test_gives_up_with_network_error():
    with FlakyServer({"/f": b"x"}, {"/f": ["503"] * 10}) as srv:
        sleeps, kw = _fast(max_tries=3)
        with pytest.raises(NetworkError, match="failed after 3 tries.*HTTP 503"):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert sleeps == [1.0, 2.0] and len(srv.log) == 3


def test_404_fails_at_once():
    with FlakyServer({}) as srv:
        sleeps, kw = _fast()
        with pytest.raises(NetworkError, match="404"):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/nope", **kw)
        assert sleeps == [] and len(srv.log) == 1


def test_connection_refused_is_retried_then_fails():
    with FlakyServer({}) as srv:
        url = srv.url
    sleeps, kw = _fast(max_tries=2, timeout=1)
    with pytest.raises(NetworkError, match="ConnectionError"):
        request_with_retries(make_session("t@example.org"), "GET", url + "/f", **kw)
    assert sleeps == [1.0]


def test_allowed_bases_refuses_before_sending():
    with FlakyServer({"/f": b"x"}) as srv:
        sleeps, kw = _fast(allowed_bases=[srv.url + "/meta"])
        with pytest.raises(InputError):
            request_with_retries(make_session("t@example.org"), "GET", srv.url + "/f", **kw)
        assert srv.log == []
