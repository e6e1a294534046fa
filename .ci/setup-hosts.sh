#!/usr/bin/env bash
# Lay out the support matrix the host and browser tiers run on, where it is missing:
#   $SCG_COMFY_HOME/ComfyUI                      ComfyUI 0.8.0 (its frontend 1.35.9 comes from its requirements)
#   $SCG_COMFY_HOME/ComfyUI-0.33                 ComfyUI 0.33.0
#   $SCG_COMFY_HOME/frontend-1.58.1              comfyui-frontend-package 1.58.1 (served with --front-end-root)
#   $SCG_COMFY_HOME/ComfyUI-Advanced-ControlNet  Advanced-ControlNet 1.5.8 (loaded as a second pack by the tests)
# SCG_COMFY_HOME defaults to ~/comfy. The sources are the archives in $SCG_HOST_ARCHIVES (default: the
# shared/hosts folder beside this checkout); the frontend comes from PyPI. Nothing else is reached.
# A piece that cannot be laid out is reported with one "!!!" line; tests/run then reports the tier it could
# not run (and fails under CI=true).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
home="${SCG_COMFY_HOME:-$HOME/comfy}"
archives="${SCG_HOST_ARCHIVES:-$repo/../shared/hosts}"
mkdir -p "$home"
version_of() { python3 -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["__version__"])' "$1/comfyui_version.py" 2>/dev/null; }
lay() { # ARCHIVE FOLDER-IN-ARCHIVE DEST [VERSION]
  local archive="$archives/$1" dest="$3" want="${4:-}"
  if [ -e "$dest" ]; then
    if [ -n "$want" ] && [ "$(version_of "$dest")" != "$want" ]; then
      echo "!!! $dest holds ComfyUI $(version_of "$dest" || echo '?'), not $want: move it away to test against $want"
    fi
    return 0
  fi
  if [ ! -f "$archive" ]; then
    echo "!!! $dest is missing and $archive is not there: that part of the matrix will not run"
    return 0
  fi
  local tmp; tmp="$(mktemp -d "$home/.unpack.XXXXXX")"
  if tar -xzf "$archive" -C "$tmp" && [ -d "$tmp/$2" ] && mv "$tmp/$2" "$dest"; then
    echo "laid out $dest from $(basename "$archive")"
  else
    echo "!!! could not unpack $archive into $dest"
  fi
  rm -rf "$tmp"
}
lay ComfyUI-0.8.0.tar.gz ComfyUI-0.8.0 "$home/ComfyUI" 0.8.0
lay ComfyUI-0.33.0.tar.gz ComfyUI-0.33.0 "$home/ComfyUI-0.33" 0.33.0
lay ComfyUI-Advanced-ControlNet-1.5.8.tar.gz ComfyUI-Advanced-ControlNet "$home/ComfyUI-Advanced-ControlNet"
fe="$home/frontend-1.58.1"
if [ ! -f "$fe/comfyui_frontend_package/static/index.html" ]; then
  python3 -m pip install -q --no-deps --target "$fe" comfyui-frontend-package==1.58.1 \
    || echo "!!! frontend 1.58.1 could not be installed"
fi
exit 0
