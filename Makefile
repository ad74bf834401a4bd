# Two commands do everything on a fresh machine:
#   make run    create the environment if missing, then run the default campaign
#   make test   create the environment if missing (and PostgreSQL), then lint and run the tests
# and one for a quick signal: make test-fast (lint, the pure tier, one smoke campaign).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision builds that pip takes from this machine's local disk (x86_64, Python 3.11).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# pytest-xdist workers of `make test`: two cores, and the suite waits on servers and subprocesses
# often enough that two workers keep both busy (TEST_WORKERS=0 runs it in one process). A test
# module runs on one worker (--dist loadfile), so its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: run test test-fast lint lint-imports bench compare env clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev,team,dask]'
	touch $@

run: env
	$(BIN)/baldflow run --workspace baldflow-workspace
	@echo "(make does not activate $(VENV): to type baldflow, mlflow, prefect or dvc by name in this shell, run: source $(BIN)/activate)"

# Ruff, then the manual (docs/, mkdocs.yml) built in strict mode: a broken link or anchor, or a
# page missing from the nav, fails here; then the import contracts of docs/architecture.md
# ([tool.importlinter] in pyproject.toml).
lint: env
	$(BIN)/ruff check baldflow flows tasks tests benchmarks docs
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site
	$(MAKE) --no-print-directory lint-imports

# import-linter finds a package's modules by walking its folder, and baldflow.flows and
# baldflow.tasks live outside baldflow/ ([tool.setuptools.package-dir]): the contracts are checked
# on a tree of links in which they sit inside it, imported from there (lint-imports puts its
# working directory first on sys.path).
IMPORT_TREE := build/import-tree
lint-imports: env
	rm -rf $(IMPORT_TREE)
	mkdir -p $(IMPORT_TREE)/baldflow
	ln -s $(CURDIR)/baldflow/* $(CURDIR)/flows $(CURDIR)/tasks $(IMPORT_TREE)/baldflow/
	cd $(IMPORT_TREE) && $(abspath $(BIN))/lint-imports --no-cache $(CURDIR)/pyproject.toml

# The team tests need Debian's postgresql (and openssh-server's sshd for the ssh remotes) and
# the browser checks its chromium (all installed here when missing, as root or with sudo); the
# Label Studio tests its own virtual environment (built once per machine, about a minute).
test: lint
	bash .ci/ensure-postgresql
	bash .ci/ensure-chromium
	bash .ci/ensure-openssh-server
	$(BIN)/python -m baldflow.stack.label_studio ensure-venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

# About a minute on 2 cores (two workers), with no PostgreSQL, Chromium or Label Studio: the tests
# that need nothing heavy (marker `pure`, set by tests/conftest.py) and one real three-round
# campaign (Prefect, MLflow, DVC, git) checked by the rules of `baldflow verify`.
test-fast: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "pure or smoke"

# Speed benchmarks, with batchbald_redux and baal as peers (not part of the test run).
bench: env
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py

# The strategy comparison of dvc.yaml (about 30 minutes on 2 cores).
compare: env
	PATH=$(BIN):$$PATH $(BIN)/dvc repro

clean:
	rm -rf $(VENV)
