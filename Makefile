# histoxai: `make demo` runs the pipeline on phantom data; `make test` runs the test suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs

.PHONY: install test demo lint bench lock clean

install: $(STAMP)  ## create .venv and install the project with pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

test: install  ## run the whole test suite
	$(BIN)/python -m pytest

demo: install  ## phantom -> ingest -> split on two samples, into $(OUT)/demo
	$(BIN)/python -m histoxai.demo --out $(OUT)/demo

lint: install
	$(BIN)/ruff check .

bench: install  ## benchmarks; figures go to $(OUT)/bench/results.json and .md
	$(BIN)/python -m tests.bench.run --out $(OUT)/bench

lock:  ## re-resolve the environment from pyproject.toml and rewrite constraints.txt
	rm -rf /tmp/histoxai-lock && $(PYTHON) -m venv /tmp/histoxai-lock
	/tmp/histoxai-lock/bin/python -m pip install -q --upgrade "pip==26.3"
	/tmp/histoxai-lock/bin/python -m pip install -q -e ".[dev]"
	{ echo "# Exact versions of every package in the project's environment (make install uses it)."; \
	  echo "# Regenerate after changing pyproject.toml dependencies: make lock"; \
	  /tmp/histoxai-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
