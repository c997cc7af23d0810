# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: serve test install install-test system-deps lint bench clean docs docs-build config-reference screenshots test-unit test-integration test-deploy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# pdqhash has no wheel for most machines: say up front when a compiler is needed and missing.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	@$(BIN)/python .ci/build-deps
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	@$(BIN)/python .ci/build-deps
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-docs

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/horde-scanner serve

# Programs the tests drive for real (sshd, ffmpeg, chromium); installed only when missing.
system-deps:
	@./.ci/system-deps

# Two workers, a test file each at a time: most tests wait on processes and sockets, so the
# suite takes about half as long on a 2-core machine (`pytest -p no:xdist` runs it in one).
test: install-test system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The fast set a developer runs on every change (well under a minute), and the others on their own.
test-unit: install-test
	$(BIN)/python -m pytest -q tests/unit

test-integration: install-test system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests/integration

test-deploy: install-test system-deps
	$(BIN)/python -m pytest -q tests/deploy

lint: install-test
	$(BIN)/ruff check horde_scanner local_gpu tests bench
	$(BIN)/mypy horde_scanner local_gpu

# The docs site on http://127.0.0.1:8000 (mkdocs and the Material theme: the `docs` extra, also
# in `test`). The suite builds it with --strict (tests/integration/test_docs.py).
$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	@$(BIN)/python .ci/build-deps
	$(PIP) -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

docs-build: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# docs/reference/configuration.md is generated from horde_scanner/config.py; a test fails when
# it is stale, and this target writes it again.
config-reference: install
	$(BIN)/horde-scanner config reference -o docs/reference/configuration.md

# The docs' pictures (docs/images/): the review page, the policy dry run and the dashboard,
# taken by the suite's Chromium (and a real Prometheus); never edited by hand.
screenshots: install-test system-deps
	$(BIN)/python -m tests.screenshots docs/images

bench: install-test
	$(BIN)/python -m bench.validate

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
