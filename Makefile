# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit up install clean dashboards bench docs

# The C extension is compiled by the install: rebuild when its source changes.
$(STAMP): pyproject.toml collectors/receiver/_trace_split.c
	@# The tests start a real Prometheus (Debian's package); CI runs as root.
	@test -x /usr/bin/prometheus || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; }
	@# The deployment tests render deploy/kubernetes with `kubectl kustomize` (Debian's kubectl).
	@command -v kubectl >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y kubernetes-client; }
	@# The PySpark preprocessing test needs a Java runtime (pyspark 4 runs on Java 17).
	@command -v java >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y default-jre-headless; }
	@# The drift report test opens a report in headless Chromium (Debian's chromium).
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@# A C compiler and Python's headers build collectors.receiver._trace_split (the receivers' trace split).
	@command -v gcc >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc; }
	@$(PYTHON) -c "import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-dev; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/observer demo

up: $(STAMP)
	$(VENV)/bin/observer up

# Regenerate dashboards/json/ from dashboards/*.py (grafana-foundation-sdk).
dashboards: $(STAMP)
	$(PY) -m observer.dashboards.build

# Every benchmark, each against its peer measured in the same run (README, "Drift benchmarks").
bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.collectors_otlp
	$(PY) -m benchmarks.seal_cost
	$(PY) -m benchmarks.normalizer_semantic
	$(PY) -m benchmarks.semantic_detection
	$(PY) -m benchmarks.semantic_state
	$(PY) -m benchmarks.online_drift
	$(PY) -m benchmarks.embedding_methods_cost
	$(PY) -m benchmarks.end_to_end

# The documentation site into site/; reference pages are generated from the code (docs/).
docs: $(STAMP)
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# checkov pins older packages than observer, so it has its own virtualenv; built here, before the
# suite runs (the version is declared once, in the test that uses it).
CHECKOV := build/checkov-venv/bin/checkov
$(CHECKOV): $(STAMP)
	$(PY) -c "import tests.test_deploy_checkov as t; t.checkov()"

# Two pytest processes (pytest-xdist): most of the suite waits on Kafka group timeouts and child
# processes, not on the CPU. Tests that start whole processes (the `system` tier) share one of
# them, one at a time (tests/conftest.py). TEST_PROCESSES=0 runs the suite in one process.
TEST_PROCESSES ?= 2
test: $(STAMP) $(CHECKOV)
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadgroup $(PYTEST_ARGS)

# The fast tier: in-process tests and doctests, no broker, no subprocess (tests/tiers.py).
test-unit: $(STAMP)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .observer .pytest_cache site
