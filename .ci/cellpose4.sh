#!/usr/bin/env bash
# Cellpose 4 (CP-SAM) compatibility check: own venv, cellpose 4, tests/test_cellpose4.py.
# Usage: .ci/cellpose4.sh            (venv in ${CP4_VENV:-/tmp/venv-cp4}, reused when present)
# Exits non-zero when the install or any test fails. No model weights are downloaded.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CP4_VENV:-/tmp/venv-cp4}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [[ ! -x $VENV/bin/python ]]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1 cellpose==4.2.1.1
# the package itself, without re-resolving torch/cellpose; napari is not needed here
python -m pip install -q --no-deps -e "$REPO"
python -m pip install -q numpy scipy scikit-image tifffile imagecodecs imageio pandas \
  pydantic PyYAML pytest
python - <<'PY'
from importlib.metadata import version
v = version("cellpose")
assert v.startswith("4."), f"expected cellpose 4, got {v}"
print("cellpose", v, "torch", version("torch"))
PY
cd "$REPO"
python -m pytest tests/test_cellpose4.py -v -p no:cacheprovider -s "$@"
