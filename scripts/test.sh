#!/usr/bin/env bash
# Fresh Python 3.11 machine -> virtualenv with jaxalign[test] -> the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pytest -q tests "$@"
