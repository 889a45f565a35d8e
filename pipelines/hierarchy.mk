# The hierarchy pipeline as file targets: a re-run only redoes the stages whose inputs changed
# (edit data/review/decisions.csv -> only apply, diff and export run again).
#
#   make -f pipelines/hierarchy.mk                          # offline, on the embedded sample
#   make -f pipelines/hierarchy.mk DATA=path ONLINE=1 CONTACT=you@example.org
#   make -f pipelines/hierarchy.mk DATA=path DUMP=latest-all.json.gz [REDIRECTS=redirects.csv|...-redirect.sql.gz]
#
# DATA holds GLDv2 metadata in the release layout: train_label_to_category.csv and/or
# index_label_to_category.csv (both numberings are resolved in ONE run: one cache, one class graph,
# one cluster vocabulary; the tables are keyed by (numbering, landmark_id)), optional train.csv and
# index_image_to_landmark.csv for image counts, optional train_/index_label_to_hierarchical.csv to
# diff against (each numbering against its own file). Offline, answers come from the recording
# $(DATA)/wikidata_cache.jsonl; online they are fetched and cached in $(OUT)/wikidata.sqlite.
SHELL      := /bin/bash
PY         ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
DATA       ?= data/sample
REVIEW     ?= data/review
OUT        ?= out/hierarchy
ONLINE     ?= 0
CONTACT    ?=
API_URL    ?=
SPARQL_URL ?=
DEPTH      ?= 12
DUMP       ?=
REDIRECTS  ?=

HG         := $(PY) -m hglv2.cli hierarchy
CATEGORIES := $(wildcard $(DATA)/train_label_to_category.csv $(DATA)/index_label_to_category.csv)
IMAGES     := $(wildcard $(DATA)/train.csv $(DATA)/index_image_to_landmark.csv)
PUBLISHED  := $(wildcard $(DATA)/train_label_to_hierarchical.csv $(DATA)/index_label_to_hierarchical.csv)
ifeq ($(CATEGORIES),)
  $(error no train_ or index_label_to_category.csv in DATA=$(DATA))
endif
CLUSTERS   := $(REVIEW)/clusters.csv
DECISIONS  := $(REVIEW)/decisions.csv
OVERRIDES  := $(REVIEW)/landmark_overrides.csv

ifeq ($(ONLINE),1)
  NET       := --cache $(OUT)/wikidata.sqlite $(if $(CONTACT),--contact "$(CONTACT)") \
               $(if $(API_URL),--api-url "$(API_URL)") $(if $(SPARQL_URL),--sparql-url "$(SPARQL_URL)")
  CACHE_DEP :=
else
  NET       := --cache $(DATA)/wikidata_cache.jsonl --offline
  CACHE_DEP := $(DATA)/wikidata_cache.jsonl
endif

# The dump route: resolve, graph and validate-anchors read a Wikidata JSON dump instead of the API.
# The first of them reads the dump once into $(OUT)/dump_facts.parquet; the others reuse it.
# REDIRECTS: old,new QID pairs or wikidatawiki-*-redirect.sql.gz (with the -page.sql.gz beside it).
ifneq ($(DUMP),)
  NET       := --dump $(DUMP) $(if $(REDIRECTS),--redirects $(REDIRECTS)) --dump-facts $(OUT)/dump_facts.parquet
  CACHE_DEP := $(DUMP)
endif

.PHONY: all table review export clean
# No .DELETE_ON_ERROR: every stage commits all its outputs together or none of them
# (hglv2.fileio.commit_together), so a failed stage leaves the old outputs complete, older than the
# inputs that changed, and make reruns it next time. GNU make 4.3 with .DELETE_ON_ERROR deleted the
# untouched sibling targets of a failed grouped rule (hierarchy.csv beside hierarchy.parquet).

all: $(OUT)/hierarchy.parquet $(OUT)/anchors.json $(if $(PUBLISHED),$(OUT)/diff.json) export

table: $(OUT)/hierarchy.parquet

$(OUT)/resolved.parquet: $(CATEGORIES) $(CACHE_DEP)
	$(HG) resolve $(foreach c,$(CATEGORIES),--categories $(c)) --out $@ --json $(OUT)/resolve.json $(NET)

$(OUT)/graph_nodes.parquet $(OUT)/graph_edges.parquet $(OUT)/graph.graphml &: $(OUT)/resolved.parquet $(CACHE_DEP)
	$(HG) graph --resolved $< --out-dir $(OUT) --depth $(DEPTH) --json $(OUT)/graph.json $(NET)

$(OUT)/anchors.json: $(CLUSTERS) $(CACHE_DEP)
	$(HG) validate-anchors --clusters $(CLUSTERS) --json $@ $(NET)

$(OUT)/proposals.parquet $(OUT)/pending.csv &: $(OUT)/resolved.parquet $(OUT)/graph_edges.parquet \
		$(OUT)/graph_nodes.parquet $(CLUSTERS) $(IMAGES)
	$(HG) propose --resolved $(OUT)/resolved.parquet --graph-dir $(OUT) --clusters $(CLUSTERS) \
		$(foreach i,$(IMAGES),--images $(i)) --out $(OUT)/proposals.parquet --pending $(OUT)/pending.csv \
		--json $(OUT)/propose.json

$(OUT)/hierarchy.parquet $(OUT)/hierarchy.csv &: $(OUT)/proposals.parquet $(CLUSTERS) $(DECISIONS) $(OVERRIDES)
	$(HG) apply --proposals $(OUT)/proposals.parquet --clusters $(CLUSTERS) --decisions $(DECISIONS) \
		--overrides $(OVERRIDES) --out $(OUT)/hierarchy.parquet --csv $(OUT)/hierarchy.csv \
		--json $(OUT)/coverage.json

$(OUT)/diff.json: $(OUT)/hierarchy.parquet $(PUBLISHED)
	$(HG) diff $(OUT)/hierarchy.parquet $(PUBLISHED) --out-csv $(OUT)/diff_disagreements.csv \
		--seed-decisions $(OUT)/diff_seed_decisions.csv --confusion-csv $(OUT)/diff_confusion.csv --json $@

review: $(OUT)/proposals.parquet
	$(HG) review --proposals $< --clusters $(CLUSTERS) --decisions $(DECISIONS) --overrides $(OVERRIDES)

# Parquet splits with the new labels, through `hglv2 export` when that command exists.
export: $(OUT)/hierarchy.parquet
	@if $(PY) -m hglv2.cli export --help >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) $(OUT)/splits/manifest.json; \
	else \
	  echo "hglv2 export is not available here: skipping the Parquet splits (table: $(OUT)/hierarchy.parquet)"; \
	fi

$(OUT)/splits/manifest.json: $(OUT)/hierarchy.parquet
	$(PY) -m hglv2.cli export --metadata $(DATA) --hierarchy $(OUT)/hierarchy.parquet --out $(OUT)/splits

clean:
	rm -rf $(OUT)
