# The two commands of the README: `make demo` and `make test`. Both build the virtual environment from the
# pinned requirements when it is missing or older than the pins (`make setup` builds only that).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= artifacts/digits_cnn

.PHONY: setup demo test test-fast gate lint clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, alone and exact, so nothing later can pull a CUDA build.
	$(PY) -m pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The environment alone (the other targets build it too when it is missing or older than the pins).
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/exporter export examples/digits/digits_cnn.pt \
		--recipe recipes/digits_cnn.toml \
		--to all --quantize int8 --out $(DEMO_OUT) --force

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy exporter
	$(PY) -m pytest

# The quick loop for local work: lint, types and the tests not marked slow (CI runs `make test`).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy exporter
	$(PY) -m pytest -m "not slow"

# The CI gate over the bundled recipes (exit codes as documented in the README).
gate: $(STAMP)
	$(VENV)/bin/exporter run recipes/ --jobs 2 --out artifacts/gate \
		--junit artifacts/gate/junit.xml --json artifacts/gate/run.json

clean:
	rm -rf $(VENV) artifacts/*/
