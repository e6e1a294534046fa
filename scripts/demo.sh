#!/usr/bin/env bash
# The main job on the embedded defaults: previews of every group of the shipped autoencoder on the
# sample image (into out/), then the extraction benchmark. No downloads, no model files needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
if [ -f scg_models/weights/scg_default.safetensors ] && [ -f workflows/scg_example.jpg ]; then
  "$PY" -m scg_models extract workflows/scg_example.jpg --grid -o out/previews
fi
"$PY" -m scg_models bench
