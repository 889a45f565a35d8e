"""The semi-automatic hierarchy pipeline: Wikidata (wikidata.py, commons.py) -> resolved items
(resolve.py) -> P279 class graph (graph.py) -> cluster proposals and human review files
(clusters.py) -> hierarchy table and diffs (labels.py). ``hglv2 hierarchy --help`` and
``pipelines/hierarchy.mk`` run the stages."""
