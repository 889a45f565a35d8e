"""Messages that must not mislead: retries are announced (once), not silent."""

from __future__ import annotations

import socket

import pytest
import requests

from hglv2 import http
from hglv2.errors import NetworkError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_retries_towards_a_host_are_announced_once(capsys, monkeypatch):
    monkeypatch.setattr(http, "_ANNOUNCED", set())
    url = f"http://127.0.0.1:{_closed_port()}/x"
    for _ in range(2):  # two requests, 3 tries each: one note in all
        with pytest.raises(NetworkError, match="failed after 3 tries"):
            http.request_with_retries(
                requests.Session(),
                "GET",
                url,
                timeout=2,
                max_tries=3,
                backoff_base=0.0,
                backoff_cap=0.0,
                sleep=lambda s: None,
            )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"Note: 127.0.0.1:{url.split(':')[2].split('/')[0]} did not answer (")
    assert "retrying with backoff, up to 2 more tries" in err[0]
