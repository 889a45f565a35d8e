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
#
# The vote: an open_clip image model proposes clusters for the landmarks still without one
# (`hglv2 hierarchy vote`); the proposals wait in $(OUT)/votes_review.csv until a reviewer accepts
# or rejects them in $(REVIEW)/vote_decisions.csv (VOTE_ACCEPT=SHARE accepts clear majorities).
#   make -f pipelines/hierarchy.mk DATA=path VOTE_IMAGES="shards/train shards/index shards/test" \
#        VOTE_ARGS="--weights ViT-L-14.bin --device cuda"
# Without VOTE_IMAGES the vote is skipped with a note, except on the embedded sample: there images
# are drawn for its landmarks (pipelines/sample_images.py) and a tiny untrained model votes, which
# shows the mechanics only (its votes mean nothing and stay pending).
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
VOTE_IMAGES ?=
VOTE_ARGS  ?=
VOTE_ACCEPT ?=

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
VOTE_DECISIONS := $(wildcard $(REVIEW)/vote_decisions.csv)
SAMPLE_IMAGES := $(OUT)/sample_images
ifeq ($(VOTE_IMAGES)$(abspath $(DATA)),$(abspath data/sample))
  VOTE_IMAGES := $(SAMPLE_IMAGES)/train $(SAMPLE_IMAGES)/index $(SAMPLE_IMAGES)/test
  VOTE_ARGS   := --model-config pipelines/hglv2-demo-tiny.json --random-weights 0 --batch-size 64 $(VOTE_ARGS)
  VOTE_INPUTS := $(SAMPLE_IMAGES)/truth.csv
endif
# the vote runs when images are configured and open_clip is installed (found, not imported: an
# import of open_clip loads torch, seconds on every make run, dry runs included)
VOTE       := $(if $(VOTE_IMAGES),$(shell $(PY) -c "import importlib.util as u, sys; sys.exit(u.find_spec('open_clip') is None)" >/dev/null 2>&1 && echo 1))
VOTES      := $(if $(VOTE),$(OUT)/votes.parquet)

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

.PHONY: all table review export clean vote-note
# No .DELETE_ON_ERROR: every stage commits all its outputs together or none of them
# (hglv2.fileio.commit_together), so a failed stage leaves the old outputs complete, older than the
# inputs that changed, and make reruns it next time. GNU make 4.3 with .DELETE_ON_ERROR deleted the
# untouched sibling targets of a failed grouped rule (hierarchy.csv beside hierarchy.parquet).

all: vote-note $(OUT)/hierarchy.parquet $(OUT)/anchors.json $(if $(PUBLISHED),$(OUT)/diff.json) export \
	$(OUT)/review.html

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

vote-note:
	@$(if $(VOTE_IMAGES),$(if $(VOTE),true,echo "vote: skipped (open_clip is not installed: pip install 'hglv2[vote]')"),\
	  echo "vote: skipped (no images configured: VOTE_IMAGES=folders of tar shards)")

$(SAMPLE_IMAGES)/truth.csv: $(wildcard $(DATA)/*.csv)
	$(PY) -m pipelines.sample_images --metadata $(DATA) --out $(SAMPLE_IMAGES)

$(OUT)/votes.parquet $(OUT)/votes_review.csv &: $(OUT)/proposals.parquet $(CLUSTERS) $(VOTE_INPUTS)
	$(HG) vote --proposals $(OUT)/proposals.parquet --clusters $(CLUSTERS) \
		--metadata $(DATA) $(foreach i,$(VOTE_IMAGES),--images $(i)) \
		--out $(OUT)/votes.parquet --review-csv $(OUT)/votes_review.csv --cache-dir $(OUT)/vote_cache \
		$(if $(VOTE_ACCEPT),--accept-above $(VOTE_ACCEPT)) $(VOTE_ARGS) --json $(OUT)/vote.json

$(OUT)/hierarchy.parquet $(OUT)/hierarchy.csv &: $(OUT)/proposals.parquet $(CLUSTERS) $(DECISIONS) $(OVERRIDES) \
		$(VOTES) $(VOTE_DECISIONS)
	$(HG) apply --proposals $(OUT)/proposals.parquet --clusters $(CLUSTERS) --decisions $(DECISIONS) \
		--overrides $(OVERRIDES) $(if $(VOTES),--votes $(VOTES) $(if $(VOTE_DECISIONS),--vote-decisions $(VOTE_DECISIONS))) \
		--out $(OUT)/hierarchy.parquet --csv $(OUT)/hierarchy.csv --json $(OUT)/coverage.json

$(OUT)/review.html: $(OUT)/hierarchy.parquet $(OUT)/proposals.parquet $(VOTES) $(PUBLISHED) \
		$(if $(VOTE),$(VOTE_INPUTS))
	$(HG) report --hierarchy $(OUT)/hierarchy.parquet --proposals $(OUT)/proposals.parquet \
		$(if $(VOTES),--votes $(VOTES)) $(foreach p,$(PUBLISHED),--published $(p)) --metadata $(DATA) \
		$(if $(VOTE),$(foreach i,$(VOTE_IMAGES),--images $(i))) --out $@ --json $(OUT)/review.json

$(OUT)/diff.json: $(OUT)/hierarchy.parquet $(PUBLISHED)
	$(HG) diff $(OUT)/hierarchy.parquet $(PUBLISHED) --metadata $(DATA) --out-csv $(OUT)/diff_disagreements.csv \
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
