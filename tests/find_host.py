"""Print the ComfyUI checkout the host tests use, or nothing (exit 1) when there is none.

Order: $COMFYUI_PATH, the ComfyUI that holds this extension in custom_nodes/, ~/comfy/ComfyUI.
"""
import os
import sys
from pathlib import Path


def find_host() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("COMFYUI_PATH")]
    if here.parent.name == "custom_nodes":
        candidates.append(str(here.parent.parent))
    candidates.append(str(Path.home() / "comfy" / "ComfyUI"))
    for c in candidates:
        if c and (Path(c) / "comfy" / "model_management.py").is_file() and (Path(c) / "nodes.py").is_file():
            return Path(c).resolve()
    return None


if __name__ == "__main__":
    host = find_host()
    if host is None:
        sys.exit(1)
    print(host)
