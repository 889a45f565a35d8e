"""Count the HTTP requests the resolve (and graph) stages make for N uncached titles.

Builds a world of N fictional landmarks with :func:`make_sample.build_world` (same mix of
resolution paths as the sample: sitelinks, category items with P301, redirects, P373 fallbacks,
missing titles), serves it from :mod:`fake_wikidata` on 127.0.0.1 and runs the stages with an
empty cache. Not a test: prints the figures.

    python -m pipelines.count_requests [--landmarks 1000] [--seed 7]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from hglv2.hierarchy.graph import fetch_graph  # noqa: E402
from hglv2.hierarchy.resolve import resolve_categories  # noqa: E402
from hglv2.hierarchy.wikidata import ResponseCache, WikidataClient  # noqa: E402
from pipelines.fake_wikidata import FakeWikidata  # noqa: E402
from pipelines.make_sample import build_world  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    world, landmarks = build_world(args.landmarks, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp, FakeWikidata(world) as srv:
        client = WikidataClient(
            ResponseCache(Path(tmp) / "c.sqlite"), api_url=srv.api_url, sparql_url=srv.sparql_url
        )
        kinds: Counter[str] = Counter()
        orig = client.request

        def counting(endpoint, params, cache=True):
            kind = "sparql" if endpoint == "sparql" else ("titles" if "titles" in params else "ids")
            kinds[kind] += 1
            return orig(endpoint, params, cache=cache)

        client.request = counting
        rows = resolve_categories(client, [(lm["landmark_id"], lm["category"]) for lm in landmarks])
        n_resolve = len(srv.log)
        at_resolve = Counter(kinds)  # the graph stage's calls are counted apart
        fetch_graph(client, rows)
        n_graph = len(srv.log) - n_resolve
    titles = sum(1 for r in rows if r["title"])
    paths = Counter(r["resolution"] for r in rows)
    print(f"{args.landmarks} landmarks, {titles} valid titles (uncached)")
    print("resolution paths: " + ", ".join(f"{k}={v}" for k, v in sorted(paths.items())))
    print(
        f"resolve: {n_resolve} requests = {at_resolve['titles']} wbgetentities by title (50 per call) + "
        f"{at_resolve['sparql']} SPARQL P373 fallback + {at_resolve['ids']} wbgetentities by id "
        "(P301 targets, fallback items)"
    )
    print(
        f"resolve requests per 1,000 titles: {1000 * n_resolve / titles:.1f} "
        f"(title lookups alone: {1000 * at_resolve['titles'] / titles:.1f})"
    )
    print(f"graph (P279 ancestors, once for all landmarks): {n_graph} requests")


if __name__ == "__main__":
    main()
