#!/usr/bin/env bash
# Runs the whole test suite (sets up .venv first if needed). Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not slow" or scripts/test.sh tests/test_models.py
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m pytest "$@"
