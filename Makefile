# Palaver: every target works on a fresh clone; the virtualenv is built on first use and rebuilt
# only when requirements/*.txt change. With DATABASE_URL / REDIS_URL unset (environment and .env)
# the embedded PostgreSQL and Redis under var/ are used; see config/embedded.py.

SHELL := /bin/bash
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
REQUIREMENTS := $(wildcard requirements/*.txt)
# Type-checked: the whole tree, tests and benchmarks included (what is left out, and why, is
# [tool.mypy]'s exclude in pyproject.toml).
MYPY_TARGETS := .
PYTEST_ARGS ?=
# pytest-xdist workers: each gets its own test database and Redis database (config/settings_test.py).
PYTEST_WORKERS ?= 2

.PHONY: help venv migrate run test lint bench mutation stop clean

help:
	@echo "make run      build what is missing, migrate, print the demo sign-in, serve on 127.0.0.1:\$${PORT:-8000} with a Celery worker"
	@echo "make test     run the test suite (PYTEST_ARGS='-k name' to narrow it, PYTEST_WORKERS=1 for one process)"
	@echo "make lint     ruff check, ruff format --check, mypy, account-app migrations that lock a table"
	@echo "make migrate  migrate the public schema, then every account schema"
	@echo "make bench    run each benchmarks/*.py"
	@echo "make mutation mutation testing (mutmut) of tenancy, sign-in, secrets, parser, formatter"
	@echo "make .env     write a development .env with fresh secrets (never overwrites)"
	@echo "make stop     stop the embedded PostgreSQL and Redis, if running"
	@echo "make clean    stop them and remove .venv and var/"

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	@touch $@

# Rerun when write_env.py changes: it adds a newly generated secret to an existing .env and never
# changes a value already there.
.env: scripts/write_env.py | $(STAMP)
	$(BIN)/python scripts/write_env.py .env

migrate: $(STAMP) .env
	$(BIN)/python manage.py migrate_accounts

# Static files are not collected: whitenoise serves them from the finders (WHITENOISE_USE_FINDERS).
run: migrate
	$(BIN)/python manage.py demo_user
	$(BIN)/python scripts/run_all.py

# pytest's exit code 5 means it collected no tests; like any non-zero code it fails the target.
test: $(STAMP) .env
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_ircd.sh
	@status=0; $(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest ran no tests, which counts as a failure" >&2; fi; \
	exit $$status

# mypy's django-stubs plugin imports the settings, hence .env. scripts/check_migrations.py applies
# the account-app migrations in a scratch schema it rolls back: it needs the database.
lint: $(STAMP) .env
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/ruff format --check ."; $(BIN)/ruff format --check . || status=1; \
	echo "$(BIN)/mypy $(MYPY_TARGETS)"; $(BIN)/mypy $(MYPY_TARGETS) || status=1; \
	echo "$(BIN)/python scripts/check_migrations.py"; $(BIN)/python scripts/check_migrations.py || status=1; \
	exit $$status

bench: $(STAMP) .env
	@status=0; \
	for script in benchmarks/[!_]*.py; do \
		echo "== $$script"; $(BIN)/python "$$script" || status=1; \
	done; \
	exit $$status

# Mutation testing (not in CI: it takes tens of minutes). Configuration: [tool.mutmut] in
# pyproject.toml; the score per module is printed at the end and recorded in docs/mutation.md.
MUTATION_JOBS ?= 1
mutation: $(STAMP) .env
	rm -rf mutants
	@status=0; $(BIN)/mutmut run --max-children $(MUTATION_JOBS) || status=$$?; \
	$(BIN)/python scripts/mutation_score.py || status=1; \
	exit $$status

# Without the virtualenv (config.embedded needs it), fall back to signalling the pid files.
stop:
	@if [ -x $(BIN)/python ]; then \
		$(BIN)/python -m config.embedded stop; \
	else \
		for pidfile in var/pgdata/postmaster.pid var/redis/redis.pid; do \
			if [ -f $$pidfile ]; then \
				pid=$$(head -n 1 $$pidfile); \
				kill -INT $$pid 2>/dev/null || true; \
				for _ in $$(seq 100); do kill -0 $$pid 2>/dev/null || break; sleep 0.2; done; \
			fi; \
		done; \
	fi

clean: stop
	rm -rf $(VENV) var
