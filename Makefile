# hglv2 — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV  ?= .venv
PY    := $(VENV)/bin/python
HGLV2 := $(VENV)/bin/hglv2
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench bench-tables bench-check hierarchy clean

install: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml changes. torch/torchvision come pinned.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@# the review page's browser test drives Debian's chromium (never downloaded at test time)
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver (the review page's browser test)"; \
	  { apt-get install -y -qq chromium chromium-driver || { apt-get update -qq && \
	    apt-get install -y -qq chromium chromium-driver; }; } >/dev/null 2>&1 || \
	  echo "chromium: not installed (the browser test will skip)"; \
	fi
	touch $(STAMP)

# The suite in TEST_JOBS parallel processes (pytest-xdist; the machine's 2 cores by default):
# --dist loadgroup keeps the tests of one xdist_group (the gloo ranks, tests/conftest.py) in one worker.
TEST_JOBS ?= 2
test: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadgroup

# ruff, the layer contracts of DESIGN.md (import-linter) and declared vs imported dependencies (deptry)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

# The main job on the embedded data: the hierarchy pipeline on data/sample (offline) with its
# review page, synthetic landmark images drawn from that hierarchy, four losses trained and
# evaluated, report + plots. Six query images per evaluation landmark (the suite has two): three
# times the queries, so the report's 95% intervals (bootstrap over queries, one seed) are tight
# enough to rank the headline pair, at almost no cost (evaluation is a small part of a run).
# DEMO_SEEDS=0,1,2 adds the seed variance (hierarchical bootstrap) at three times the training time.
DEMO_HIERARCHY := out/hierarchy/hierarchy.parquet
REVIEW_PAGE    := out/hierarchy/review.html
DEMO_SEEDS ?= 0
demo: hierarchy
	$(HGLV2) benchmark --set data.synthetic.hierarchy=$(DEMO_HIERARCHY) --set data.synthetic.query_images=6 \
		--seeds $(DEMO_SEEDS) --out runs/benchmark/demo
	@echo "review page: $(abspath $(REVIEW_PAGE))"

# Every benchmark at small sizes (a few minutes on 2 cores; the GPU check runs on the CPU without
# CUDA); FULL=1 runs each at the sizes of its published figures.
bench: install
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b $(if $(FULL),,--quick) || exit 1; done

# The performance tables of docs/performance.md, written from benchmarks/results/*.json (the
# results files the benchmark scripts write; no figure is typed by hand).
bench-tables:
	$(PY) benchmarks/_tables.py

# Every table's benchmark run again into $(RECHECK), each figure compared with the committed one
# (flags those more than 20% apart; about 15 minutes on 2 idle cores).
RECHECK ?= benchmarks/results/recheck
bench-check:
	$(PY) benchmarks/_tables.py --rerun $(RECHECK)

# The semi-automatic hierarchy pipeline (file targets in pipelines/hierarchy.mk).
hierarchy: install
	@if [ -f pipelines/hierarchy.mk ]; then \
	  $(MAKE) --no-print-directory -f pipelines/hierarchy.mk PY=$(abspath $(PY)) all; \
	else echo "hierarchy pipeline: not built yet"; fi
	@if [ -f $(REVIEW_PAGE) ]; then echo "review page: $(abspath $(REVIEW_PAGE))"; fi

clean:
	rm -rf out runs .pytest_cache .ruff_cache

# The documentation site (MkDocs + Material + mkdocstrings), built offline into site/.
.PHONY: docs
docs: install
	$(VENV)/bin/mkdocs build --strict -d site
