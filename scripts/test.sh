#!/usr/bin/env bash
# The test suite on a fresh machine: a virtual environment, the package with all its extras (torch and torchvision
# pinned together by constraints.txt), qt's fused CPU kernel built, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
# qt's fused CPU kernel compiles once here (20-45 s, said on stderr) rather than silently inside the first test that
# needs it; without a compiler it says so and the tests of the eager path still run
qtvit build-ext || true
python -m pytest -q -p no:cacheprovider "$@"
