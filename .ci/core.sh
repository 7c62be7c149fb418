#!/usr/bin/env bash
# The headless core without torch, cellpose, napari or Qt: installs, imports, and analyses the
# bundled sample with its label images (what a Dask worker or a measuring CI job needs).
# Usage: .ci/core.sh   (venv in ${CORE_VENV:-/tmp/venv-core}); exits non-zero on any failure.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CORE_VENV:-/tmp/venv-core}
PY=${PYTHON:-python3}
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -e "$REPO"
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
import napari_exouptake.pipeline, napari_exouptake.batch, napari_exouptake.cli  # noqa: F401
for heavy in ("torch", "cellpose", "napari", "qtpy", "PyQt5", "magicgui"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} was installed with the core"
print("core imports without torch, cellpose, napari, Qt")
PY
OUT=$(mktemp -d)
S="$REPO/src/napari_exouptake/sample_data"
"$VENV/bin/exouptake" analyze "$S/images" --config "$S/config.yaml" --labels "$S/labels" --out "$OUT/run"
test -s "$OUT/run/cells.csv"
# segmentation asked for without Cellpose: one line naming the extra, no traceback
set +e
"$VENV/bin/exouptake" segment "$S/images/untreated_000.ome.tif" --config "$S/config.yaml" --out "$OUT/seg" 2> "$OUT/err.txt"
rc=$?
set -e
cat "$OUT/err.txt"
grep -q "napari-exouptake\[cellpose\]" "$OUT/err.txt"
! grep -q Traceback "$OUT/err.txt"
test "$rc" -ne 0
echo "core-only install: OK"
