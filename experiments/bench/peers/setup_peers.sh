#!/usr/bin/env bash
# Create the peer venv (FuxiCTR 2.3.10) at experiments/bench/.venv-peers.
# Idempotent: does nothing when the marker file exists (pass --force to rebuild).
#
# Order matters: torch is installed FIRST and pinned, so that fuxictr's unpinned
# `torch` requirement is already satisfied and pip never pulls a multi-GB CUDA build.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEER_VENV:-$HERE/../.venv-peers}"
MARKER="$VENV/.peers-installed"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"

if [[ "${1:-}" == "--force" ]]; then
  rm -rf "$VENV"
fi
if [[ -f "$MARKER" ]]; then
  echo "peer venv ready: $VENV (delete $MARKER or pass --force to rebuild)"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --upgrade pip
# 1) torch, pinned, alone.
"${PIP[@]}" install "$TORCH_PIN"
# 2) FuxiCTR and its runtime needs. The constraint keeps torch where it is.
#    polars<2: polars 2.x removed scan_csv(dtypes=...), which FuxiCTR's CSV reader uses.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__)' > "$CONSTRAINTS"
"${PIP[@]}" install -c "$CONSTRAINTS" \
  "fuxictr==2.3.10" "polars<2" scikit-learn pandas pyarrow pyyaml h5py numpy tqdm
"$VENV/bin/python" - <<'PY'
import torch, polars, fuxictr
from fuxictr.pytorch.models import BaseModel  # noqa: F401
print("torch", torch.__version__, "| polars", polars.__version__, "| fuxictr", fuxictr.__version__)
assert not torch.version.cuda, "peer venv got a CUDA torch build"
PY
touch "$MARKER"
echo "peer venv ready: $VENV"
