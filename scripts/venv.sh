# Sourced by scripts/demo.sh and tests/run: make (or reuse) the project's venv and set $PY.
#
# torch is never installed twice. A new venv is based on the first interpreter that already imports
# torch: $SCG_PYTHON, else ComfyUI's own venv (venv/ or .venv/ in $COMFYUI_PATH, in the ComfyUI holding
# this folder in custom_nodes/, or in ~/comfy/ComfyUI), else python3. A plain interpreter lends its
# packages through --system-site-packages; a venv (whose packages --system-site-packages would not see)
# through a .pth file naming its site-packages. Only when none imports torch is torch installed:
# $SCG_TORCH (default "torch torchvision"; with SCG_DEV the tested torch==2.14.1 torchvision==0.29.1)
# from $SCG_TORCH_INDEX when set, e.g.
# SCG_TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU-only wheels.
# SCG_VENV picks the venv's folder (default .venv); SCG_DEV=1 adds requirements-dev.txt.
VENV="${SCG_VENV:-.venv}"
_scg_has_torch() { [ -n "$1" ] && command -v "$1" >/dev/null && "$1" -c 'import torch' 2>/dev/null; }
_scg_comfy_pythons() {
  local root
  for root in "${COMFYUI_PATH:-}" "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)" "$HOME/comfy/ComfyUI"; do
    [ -n "$root" ] && [ -f "$root/main.py" ] || continue
    ls "$root"/venv/bin/python "$root"/.venv/bin/python 2>/dev/null || true
  done
}
if [ ! -x "$VENV/bin/python" ]; then
  _scg_base=""
  for _scg_cand in "${SCG_PYTHON:-}" $(_scg_comfy_pythons) python3; do
    if _scg_has_torch "$_scg_cand"; then _scg_base="$_scg_cand"; break; fi
  done
  if [ -z "$_scg_base" ]; then
    "${SCG_PYTHON:-python3}" -m venv "$VENV"
  elif "$_scg_base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    # a venv: base ours on the same Python and read its packages (torch) after our own
    "$_scg_base" -m venv "$VENV"
    "$_scg_base" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
      > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_scg_base_env.pth"
    echo "venv.sh: $VENV reuses the torch of $_scg_base"
  else
    "$_scg_base" -m venv --system-site-packages "$VENV"
    echo "venv.sh: $VENV reuses the torch of $_scg_base (--system-site-packages)"
  fi
fi
PY="$VENV/bin/python"
pip_quiet() { "$PY" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
if ! _scg_has_torch "$PY"; then
  # the test suite gets the versions it is tested with; a user the current ones
  _scg_torch="${SCG_TORCH:-${SCG_DEV:+torch==2.14.1 torchvision==0.29.1}}"
  _scg_torch="${_scg_torch:-torch torchvision}"
  echo "venv.sh: no torch found; installing $_scg_torch${SCG_TORCH_INDEX:+ from $SCG_TORCH_INDEX}"
  # shellcheck disable=SC2086
  pip_quiet ${SCG_TORCH_INDEX:+--index-url "$SCG_TORCH_INDEX"} $_scg_torch
fi
# pip runs again only when the requirement lists changed since the last install into this venv
_scg_stamp="$(cat requirements.txt ${SCG_DEV:+requirements-train.txt requirements-dev.txt} | cksum)"
if [ "$(cat "$VENV/.scg_requirements" 2>/dev/null)" != "$_scg_stamp" ]; then
  pip_quiet -r requirements.txt ${SCG_DEV:+-r requirements-dev.txt}
  echo "$_scg_stamp" > "$VENV/.scg_requirements"
fi
