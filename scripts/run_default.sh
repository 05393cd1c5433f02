#!/usr/bin/env bash
# Fresh Python 3.11 machine -> virtualenv with jaxalign -> the default job (DPO on the built-in task).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/python -m jaxalign.main --config=configs/dpo.py --workdir="${1:-runs/dpo}"
