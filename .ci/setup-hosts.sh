#!/usr/bin/env bash
# Lay out the support matrix the host and browser tiers run on, where it is missing:
#   ~/comfy/ComfyUI        ComfyUI 0.8.0 (its frontend 1.35.9 comes from its requirements)
#   ~/comfy/ComfyUI-0.33   ComfyUI 0.33.0
#   ~/comfy/frontend-1.58.1  comfyui-frontend-package 1.58.1 (served with --front-end-root)
# The ComfyUI checkouts come from local git mirrors when this machine has them ($SCG_MIRRORS);
# nothing here reaches beyond the package registries. Missing pieces are reported, never fatal:
# tests/run then reports the tier it could not run.
set -uo pipefail
home="${SCG_COMFY_HOME:-$HOME/comfy}"
mirrors="${SCG_MIRRORS:-/work/.mirror}"
tool="$(dirname "$0")/../../shared/tools/comfyui-host"
mkdir -p "$home"
lay() { # MIRROR DEST
  [ -d "$2/comfy" ] && return 0
  if [ -d "$mirrors/$1/repo" ] && [ -x "$tool" ]; then
    "$tool" "$mirrors/$1/repo" "$2" || echo "!!! could not lay out $2"
  else
    echo "!!! $2 is missing and no mirror of $1 is on this machine: that end of the matrix will not run"
  fi
}
lay pollockjj+ComfyUI "$home/ComfyUI"
lay yzkee+ComfyUI "$home/ComfyUI-0.33"
fe="$home/frontend-1.58.1"
if [ ! -f "$fe/comfyui_frontend_package/static/index.html" ]; then
  python3 -m pip install -q --no-deps --target "$fe" comfyui-frontend-package==1.58.1 \
    || echo "!!! frontend 1.58.1 could not be installed"
fi
exit 0
