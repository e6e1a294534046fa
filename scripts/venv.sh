# Sourced by scripts/demo.sh and tests/run: make (or reuse) the project's venv and set $PY.
VENV="${SCG_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_quiet() { "$PY" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }
"$PY" -c 'import torch, torchvision' 2>/dev/null || pip_quiet torch==2.14.1 torchvision==0.29.1
pip_quiet -r requirements.txt ${SCG_DEV:+-r requirements-dev.txt}
