# The two commands of the README: `make run` and `make test`. Each makes its own .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test bench lint clean system-tools

# Debian packages some tests and benchmarks use (promtool and prometheus, wrk, Chromium and
# its driver). Installed when missing and this runs as root with apt-get; otherwise the tests
# that need them skip and say why.

run: $(STAMP)
	$(BIN)/gateway --env-file $${GATEWAY_ENV_FILE:-dev.env} serve

demo: $(STAMP)
	$(BIN)/gateway --env-file $${GATEWAY_ENV_FILE:-dev.env} demo --auto

test: $(STAMP) system-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The benchmark report (docs/benchmarks.md, benchmarks/results/<date>/); not part of the tests.
bench: $(STAMP) system-tools
	PYTHONPATH=. $(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

system-tools:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; } || \
	  echo "could not install$$missing: the tests that need them will skip"; \
	fi
