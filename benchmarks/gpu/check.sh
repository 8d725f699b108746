#!/usr/bin/env bash
# The GPU check in one command, for a GPU machine that may be lent for minutes only:
#
#   bash benchmarks/gpu/wheels.sh                 # beforehand, on a machine with the package index
#   bash benchmarks/gpu/check.sh OUT              # on the GPU machine (no network): < 10 min in all
#   bash benchmarks/gpu/check.sh --dry-run OUT    # anywhere: same code on the CPU, tiny sizes (make test)
#
# The GPU machine we can get has Python 3.12, torch + CUDA, onnx, onnxruntime (CPU build), opencv,
# scikit-learn, matplotlib, typer, rich and timm, but not pydicom, optuna, onnxscript, ...: wheels.sh
# puts those small wheels in benchmarks/gpu/wheels/ (ignored by git, well under the 64 MiB that may
# travel with the checkout; carry that folder), and this script installs them and usedge with
# `pip install --no-deps` into a private folder. Results: OUT/<gpu>.json, OUT/<gpu>.md (copy both to
# benchmarks/results/gpu/), OUT/log.txt, OUT/pytest.txt, OUT/install.txt: at most 5 files.
# With the device tool: run(command="bash benchmarks/gpu/check.sh $OUT/gpu", carry=["benchmarks/gpu/wheels"],
# timeout_s=600); each step is skipped with the reason when the budget would not cover it.
set -u
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; shift; fi
OUT="${1:?usage: check.sh [--dry-run] OUT}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=540                      # seconds for everything, installation included (the limit is 600)
SITE=""
if [ -z "$DRY" ]; then
  SITE="${TMPDIR:-/tmp}/usedge-gpu-site"
  {
    echo "# install $(date -u +%FT%TZ)"
    if ls "$ROOT"/benchmarks/gpu/wheels/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" "$ROOT"/benchmarks/gpu/wheels/*.whl \
        || for w in "$ROOT"/benchmarks/gpu/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done
    else
      echo "no wheels in benchmarks/gpu/wheels (run benchmarks/gpu/wheels.sh first): steps needing them will fail"
    fi
    # usedge itself, without dependencies (the checkout stays first on PYTHONPATH either way)
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --quiet --target "$SITE" "$ROOT" \
      || echo "pip could not install usedge (no setuptools?): running it from the checkout"
  } > "$OUT/install.txt" 2>&1
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export OMP_NUM_THREADS=1      # tiny sizes: one thread per process spins least on a shared CPU
  BUDGET=1800                   # measures nothing: a busy CPU may take its time (about 45 s of CPU time)
  echo "# dry run: nothing installed" > "$OUT/install.txt"
fi
LEFT=$(( BUDGET - ($(date +%s) - START) ))
echo "install: $(( $(date +%s) - START )) s; $LEFT s left for the check" | tee -a "$OUT/install.txt"
exec "$PY" "$ROOT/benchmarks/gpu/check.py" "$OUT" $DRY --budget-s "$LEFT"
