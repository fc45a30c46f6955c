#!/usr/bin/env bash
# Create the OutRank peer venv (outrank==0.97.5) at experiments/bench/.venv-outrank.
# Idempotent: does nothing when the marker file exists (pass --force to rebuild).
#
# outrank needs xxhash<4: with xxhash 4 every run fails with "Strings must be encoded before
# hashing" (BENCHMARKS.md). It does not need torch. Its own requirements pull numba, scipy,
# scikit-learn, pandas, seaborn, pathos (and flake8 / pre-commit, unused at run time).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${OUTRANK_VENV:-$HERE/../.venv-outrank}"
MARKER="$VENV/.outrank-installed"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
  rm -rf "$VENV"
fi
if [[ -f "$MARKER" ]]; then
  echo "outrank venv ready: $VENV (delete $MARKER or pass --force to rebuild)"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "outrank==0.97.5" "xxhash<4"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import numba, xxhash  # noqa: F401
from outrank.algorithms.feature_ranking import ranking_mi_numba  # noqa: F401
print("outrank", md.version("outrank"), "| xxhash", md.version("xxhash"), "| numba", md.version("numba"),
      "| numpy", md.version("numpy"))
assert int(md.version("xxhash").split(".")[0]) < 4, "outrank 0.97.5 needs xxhash<4"
PY
touch "$MARKER"
echo "outrank venv ready: $VENV"
