#!/usr/bin/env bash
# The test suite on a fresh machine: a virtual environment, the package with its extras (torch and torchvision
# pinned together by constraints.txt), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
python -m pytest -q -p no:cacheprovider "$@"
