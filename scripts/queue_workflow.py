"""Queue an API-format workflow on a running ComfyUI over HTTP and save the images it outputs.

    python scripts/queue_workflow.py "workflows/api/SCG hypercolumn preview.json" --server http://127.0.0.1:8188 --out out/

Standard library only. Exit status 0 when the workflow ran; 1 with the server's message when it was refused or
failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def call(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def run(server: str, prompt: dict, out: Path, timeout: float = 600.0) -> list[Path]:
    # 1. queue it: POST /prompt with the API-format workflow and an id for this client
    answer = json.loads(call(f"{server}/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())}))
    prompt_id = answer["prompt_id"]
    # 2. wait until its history entry says it finished
    deadline = time.monotonic() + timeout
    while (entry := json.loads(call(f"{server}/history/{prompt_id}")).get(prompt_id)) is None or \
            entry["status"]["status_str"] not in ("success", "error"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s")
        time.sleep(0.5)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"prompt {prompt_id} failed: {entry['status']['messages']}")
    # 3. fetch every output image with GET /view
    saved = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            path = out / image["filename"]
            path.write_bytes(call(f"{server}/view?{query}"))
            saved.append(path)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="an API-format workflow (e.g. one in workflows/api/)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the images (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        saved = run(args.server.rstrip("/"), json.loads(args.workflow.read_text(encoding="utf-8")), args.out)
    except urllib.error.HTTPError as exc:  # refused: the body says which node and input
        print(f"ComfyUI refused the workflow (HTTP {exc.code}): {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
