"""The semi-automatic hierarchy pipeline: Wikidata (the API client and its cache in wikidata.py, or
a JSON dump in dump.py; sources.py opens either, commons.py reads Commons titles) -> resolved items
(resolve.py) -> P279 class graph (graph.py) -> cluster proposals and human review files
(clusters.py) -> hierarchy table and diffs (labels.py). ``hglv2 hierarchy --help`` and
``pipelines/hierarchy.mk`` run the stages."""
