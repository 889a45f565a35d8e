"""Wikimedia Commons category URLs -> normalised page titles.

GLDv2's ``*_label_to_category.csv`` gives each landmark a URL such as
``http://commons.wikimedia.org/wiki/Category:Sankt_Georgen_(Wien)``. Wikidata stores Commons
sitelinks as MediaWiki page titles, so the URL is turned into the title MediaWiki would use:

1. take the path after ``/wiki/`` (or the ``title=`` query parameter of ``index.php`` URLs),
   drop any ``#fragment``;
2. percent-decode it (UTF-8) and normalise it to Unicode NFC (MediaWiki's title normalisation);
3. underscores become spaces, runs of whitespace collapse to one space, ends are stripped;
4. the namespace prefix is written ``Category:`` whatever its case;
5. the first letter of the page name is upper-cased (MediaWiki's ``$wgCapitalLinks``).

``category_title`` returns the full title (``Category:Sankt Georgen (Wien)``) used with
``wbgetentities&sites=commonswiki``; ``category_name`` returns the name without namespace
(``Sankt Georgen (Wien)``), the form of Wikidata's P373 (Commons category) values. Nothing here
touches the network: the URL is only parsed, never fetched.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import parse_qs, unquote, urlsplit

_HOSTS = ("commons.wikimedia.org", "commons.m.wikimedia.org")
_WS = re.compile(r"[\s_]+")
_NAMESPACE = "Category:"


def _ucfirst(text: str) -> str:
    if not text:
        return text
    first = text[0].upper()
    # characters whose upper case is several letters (German sharp s...) stay as they are
    return (first if len(first) == 1 else text[0]) + text[1:]


def normalize_title(title: str) -> str:
    """Normalise a MediaWiki title: Unicode NFC (as MediaWiki stores and compares titles),
    underscores/whitespace -> one space, first letter upper-cased.

    A ``category:`` prefix in any case becomes ``Category:`` and the name after it is capitalised.
    """
    title = _WS.sub(" ", unicodedata.normalize("NFC", title)).strip()
    if title.lower().startswith("category:"):
        name = _WS.sub(" ", title[len(_NAMESPACE) :]).strip()
        return _NAMESPACE + _ucfirst(name)
    return _ucfirst(title)


def category_title(url: str) -> str:
    """Commons category URL -> normalised page title ``Category:Name``.

    Raises ``ValueError`` (with the reason) when ``url`` is not a Commons category URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("empty category URL")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or parts.hostname not in _HOSTS:
        raise ValueError(f"not a Wikimedia Commons URL: {url!r}")
    if parts.path.startswith("/wiki/"):
        raw = parts.path[len("/wiki/") :]
    elif parts.path.endswith("/index.php"):
        raw = parse_qs(parts.query).get("title", [""])[0]
    else:
        raise ValueError(f"no page title in URL: {url!r}")
    title = normalize_title(unquote(raw, encoding="utf-8", errors="strict"))
    if not title.startswith(_NAMESPACE) or len(title) == len(_NAMESPACE):
        raise ValueError(f"not a Commons category page: {url!r}")
    if any(c in title for c in "<>[]{}|#"):
        raise ValueError(f"invalid character in title: {title!r}")
    return title


def category_name(title: str) -> str:
    """``Category:Name`` -> ``Name`` (the form used by Wikidata's P373 Commons category)."""
    return title[len(_NAMESPACE) :] if title.startswith(_NAMESPACE) else title
