#!/usr/bin/env bash
# Download the small wheels the GPU machine lacks into benchmarks/gpu/wheels/ (ignored by git), for
# check.sh to install offline with --no-deps. Target: CPython 3.12, manylinux x86_64 (the lent machine).
# What is already there (torch, numpy, onnx, onnxruntime, opencv, scikit-learn, matplotlib, typer, rich,
# timm and their dependencies: PyYAML, tqdm, packaging, ml_dtypes, protobuf, pillow) is not fetched.
# Prints the total size: it must stay well under the 64 MiB that may travel with a checkout.
set -eu
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/benchmarks/gpu/wheels"
PY="${PYTHON:-python3}"
mkdir -p "$DEST"
PACKAGES=(
  "pydicom>=3.0"                                          # base dependency of usedge (DICOM input)
  "optuna>=4.0" alembic "sqlalchemy>=2" greenlet mako colorlog   # usedge augment search
  "onnxscript>=0.5,<0.8" onnx-ir "onnxconverter-common>=1.16"     # usedge export (dynamo exporter, FP16)
  pytest pluggy iniconfig                                 # the gpu-marked tests
)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST" \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "${PACKAGES[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
ls -l "$DEST"
du -sh "$DEST"
