"""Queue an API-format workflow on a running ComfyUI over HTTP and save the images it outputs.

    python scripts/queue_workflow.py "workflows/api/SCG hypercolumn preview.json" --server http://127.0.0.1:8188 --out out/

Standard library only. Each image is saved under its output node's title (``Every group (grid).png``; a node
with several images gets ``_1``, ``_2``..., two nodes with one title get their node ids; a file of that name in
the folder is replaced). Exit status 0
when the workflow ran; 1 when it was refused or failed, with the error (node, input, message) on stderr.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


class WorkflowError(Exception):
    """The server refused the workflow or a node failed; the message says which node, input and why."""


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
        raise WorkflowError(run_error(entry["status"]["messages"], prompt))
    # 3. fetch every output image with GET /view, named after its node's title
    saved = []
    for path, image in named_outputs(entry["outputs"], prompt, out):
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        path.write_bytes(call(f"{server}/view?{query}"))
        saved.append(path)
    return saved


# ---------------------------------------------------------------------------------------------------
# file names and error messages
# ---------------------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"(?:[^A-Za-z0-9 ._,+()-]|\.\.+)+")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_name(text: str, fallback: str = "output", limit: int = 80) -> str:
    """A file name stem from a node title, valid on Linux, macOS and Windows: letters, digits, spaces and
    ``._,+()-`` kept, every run of other characters (and of dots) one ``_``, no leading/trailing dots or spaces, at most
    ``limit`` characters, never a reserved device name; ``fallback`` when nothing readable is left."""
    stem = re.sub("_{2,}", "_", _UNSAFE.sub("_", text)).strip(" .")[:limit].strip(" .")
    if not stem.strip("_"):
        stem = fallback
    if stem.split(".")[0].upper() in _RESERVED:
        stem = "_" + stem
    return stem


def title_of(prompt: dict, node_id: str) -> str:
    node = prompt.get(node_id, {})
    return str(node.get("_meta", {}).get("title") or node.get("class_type") or f"node {node_id}")


def named_outputs(outputs: dict, prompt: dict, out: Path) -> list[tuple[Path, dict]]:
    """(path, image) for each image of a history entry's ``outputs``: ``<title>.<ext>`` after the image's node;
    ``<title>_<n>`` for a node's n-th of several images; ``<title>_<node id>`` when titles collide."""
    stems = {node_id: safe_name(title_of(prompt, node_id), f"node_{safe_name(node_id)}") for node_id in outputs}
    shared = {s for s in stems.values() if list(stems.values()).count(s) > 1}
    named = []
    for node_id, output in outputs.items():
        images = output.get("images", [])
        stem = f"{stems[node_id]}_{safe_name(node_id)}" if stems[node_id] in shared else stems[node_id]
        for n, image in enumerate(images, 1):
            ext = Path(image["filename"]).suffix.lower() or ".png"
            named.append((out / f"{stem}{f'_{n}' if len(images) > 1 else ''}{ext}", image))
    return named


def _node(prompt: dict, node_id, class_type: str | None = None) -> str:
    node_id = str(node_id)
    kind = class_type or prompt.get(node_id, {}).get("class_type", "?")
    title = title_of(prompt, node_id)
    return f"node {node_id} '{title}' ({kind})" if title != kind else f"node {node_id} ({kind})"


def refusal_error(body: str, prompt: dict) -> str:
    """What an HTTP 400 from ``POST /prompt`` says, one line per node error: node, input, message."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.strip()[:2000]
    if not isinstance(answer, dict):
        return str(answer)[:2000]
    error = answer.get("error") or {}
    head = error.get("message", "refused") if isinstance(error, dict) else str(error)
    if isinstance(error, dict) and error.get("details"):
        head += f": {error['details']}"
    lines = [head]
    for node_id, info in (answer.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            where = _node(prompt, node_id, info.get("class_type"))
            name = (err.get("extra_info") or {}).get("input_name")
            message = err.get("message", "")
            details = err.get("details", "")
            if details and details not in message:
                message = f"{message}: {details}" if message else details
            lines.append(f"  {where}" + (f", input '{name}'" if name else "") + f": {message}")
    return "\n".join(lines)


def run_error(messages: list, prompt: dict) -> str:
    """What a failed run's history says: the node that failed and its exception's message (no traceback)."""
    for event, data in messages:
        if event == "execution_error":
            kind = str(data.get("exception_type", "")).rsplit(".", 1)[-1]  # a type name, not a module path
            message = str(data.get("exception_message", "")).strip()
            return f"{_node(prompt, data.get('node_id'), data.get('node_type'))} failed: " + \
                (f"{kind}: {message}" if kind else message)
        if event == "execution_interrupted":
            return f"interrupted at {_node(prompt, data.get('node_id'), data.get('node_type'))}"
    return "the run failed without an error message"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="an API-format workflow (e.g. one in workflows/api/)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the images (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        prompt = json.loads(args.workflow.read_text(encoding="utf-8"))
        saved = run(args.server.rstrip("/"), prompt, args.out)
    except urllib.error.HTTPError as exc:  # refused: the body says which node and input
        print(f"ComfyUI refused the workflow (HTTP {exc.code}): "
              f"{refusal_error(exc.read().decode(errors='replace'), prompt)}", file=sys.stderr)
        return 1
    except WorkflowError as exc:
        print(f"the workflow failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # no server, no file, not JSON
        print(exc, file=sys.stderr)
        return 1
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
