#!/usr/bin/env bash
# The main job on the shipped autoencoder: previews of every group on the sample image (into
# out/previews), then a short extraction benchmark (python -m scg_models bench for the full one).
# No downloads beyond the venv's requirements, no model files needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
"$PY" -m scg_models extract workflows/scg_example.jpg --grid -o out/previews
"$PY" -m scg_models bench --repeats 8
