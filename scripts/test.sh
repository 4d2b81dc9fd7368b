#!/usr/bin/env bash
# Runs the whole test suite (sets up .venv first if needed). Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not slow" or scripts/test.sh tests/test_models.py
# The tests run in one worker process per core (pytest-xdist, at most 4: each test's train and
# evaluate commands use several threads themselves); -n 0 after it runs them in this process.
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m pytest -n auto --maxprocesses=4 --dist=worksteal "$@"
