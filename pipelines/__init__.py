"""The semi-automatic hierarchy pipeline's helpers: the sample generator, the fake Wikidata server
and the request counter (run as ``python -m pipelines.<name>``)."""
