# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test up install clean dashboards bench

# The C extension is compiled by the install: rebuild when its source changes.
$(STAMP): pyproject.toml collectors/_trace_split.c
	@# The tests start a real Prometheus (Debian's package); CI runs as root.
	@test -x /usr/bin/prometheus || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; }
	@# The deployment tests render deploy/kubernetes with `kubectl kustomize` (Debian's kubectl).
	@command -v kubectl >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y kubernetes-client; }
	@# The PySpark preprocessing test needs a Java runtime (pyspark 4 runs on Java 17).
	@command -v java >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y default-jre-headless; }
	@# The drift report test opens a report in headless Chromium (Debian's chromium).
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	@# A C compiler and Python's headers build collectors._trace_split (the receivers' trace split).
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
	$(PY) -m dashboards.build

# Every benchmark, each against its peer measured in the same run (README, "Drift benchmarks").
bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.collectors_otlp

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .observer .pytest_cache
