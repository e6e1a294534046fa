"""Drive ComfyUI's REAL server and frontend in headless Chromium from pytest (stdlib only).

* :func:`comfyui_server` starts the host of this run (:func:`scg_testing.hosts.find_host`, ``main.py --cpu``)
  on a free port with every writable folder (models, custom_nodes, input, output, temp, user, database) in a
  temp dir, custom-node packs symlinked into its ``custom_nodes``, and the frontend of this run
  (:func:`scg_testing.hosts.frontend_root`, served with ``--front-end-root``; None: the host's own package).
* :class:`ChromeSession` speaks plain W3C WebDriver over HTTP to Debian's ``/usr/bin/chromedriver``: no
  Selenium, no browser download. :func:`chromium_page` opens the page, waits until the app is ready, closes
  the Templates dialog a fresh profile shows and installs recorder hooks.
* Page helpers call the frontend's own JavaScript API. The scripts live in ``tests/browser/js/*.js`` (each a
  function body, run after ``prelude.js``); they find what moved between frontend versions by feature, not
  by version number.

Nothing here installs anything: ``.ci/install-browser.sh`` installs Chromium.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scg_testing import torchaudio_stub
from scg_testing.hosts import find_host, frontend_root

CHROMIUM = os.environ.get("SCG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SCG_CHROMEDRIVER", "/usr/bin/chromedriver")
JS_DIR = Path(__file__).resolve().parents[2] / "browser" / "js"
#: docs/browser flags, plus no DNS for outside hosts (the frontend's telemetry fails at once) and no /dev/shm
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost")
#: dialog-store key of the template browser
TEMPLATES_DIALOG_KEY = "global-workflow-template-selector"
SERVER_START_TIMEOUT = float(os.environ.get("SCG_COMFY_START_TIMEOUT", "120"))
PAGE_READY_TIMEOUT = float(os.environ.get("SCG_PAGE_READY_TIMEOUT", "90"))


class HarnessError(RuntimeError):
    """Something in the browser harness failed (the message carries the diagnostics)."""


def skip_reason() -> str | None:
    """Why the browser tier cannot run here (no host, no frontend, no Chromium), or None."""
    reasons = []
    host, fe = find_host(), frontend_root()
    if host is None:
        reasons.append("no ComfyUI host (set COMFYUI_PATH to a ComfyUI checkout)")
    if fe is not None and not (fe / "index.html").is_file():
        reasons.append(f"SCG_FRONTEND_ROOT={fe} has no index.html")
    elif fe is None and importlib.util.find_spec("comfyui_frontend_package") is None:
        reasons.append(f"the host's frontend package is not installed in {sys.executable}")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reasons.append(f"missing {', '.join(missing)} (run .ci/install-browser.sh)")
    return "; ".join(reasons) or None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: Any = None, timeout: float = 10.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "null")


def _wait(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # its own session: only the process we started and its children
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


# --------------------------------------------------------------------------------------------------
# ComfyUI server
# --------------------------------------------------------------------------------------------------

@dataclass
class ComfyServer:
    url: str
    base_dir: Path
    log_path: Path
    proc: subprocess.Popen
    cmd: list[str] = field(default_factory=list)

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def log_tail(self, n: int = 120) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return http_json(self.url + path, timeout=timeout)

    def up(self) -> bool:
        """Whether the server answers; raises when it exited."""
        if self.proc.poll() is not None:
            raise HarnessError(f"ComfyUI exited with {self.proc.returncode} at start-up")
        with contextlib.suppress(OSError, ValueError):
            return bool(self.get("/api/system_stats", timeout=2))
        return False


@contextlib.contextmanager
def comfyui_server(workdir: str | os.PathLike, *, packs: Mapping[str, str | os.PathLike] | None = None,
                   settings: Mapping[str, Any] | None = None, extra_args: Sequence[str] = (),
                   startup_timeout: float = SERVER_START_TIMEOUT) -> Iterator[ComfyServer]:
    """Start the host of this run on a free port; yield a :class:`ComfyServer`; stop it.

    ``<workdir>/base`` is ComfyUI's ``--base-directory`` (models, custom_nodes, input, output, temp, user and the
    database all inside it; whatever the caller put there is kept). ``packs``: ``{folder name: path}``, each a
    symlink in ``base/custom_nodes`` (the folder name is the template browser's module name). ``settings``:
    frontend settings written to ``user/default/comfy.settings.json``. The server log is printed on failure.
    """
    host = find_host()
    if host is None:
        raise HarnessError("no ComfyUI host (set COMFYUI_PATH)")
    wd = Path(workdir)
    base = wd / "base"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    for name, target in (packs or {}).items():
        link = base / "custom_nodes" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(target).resolve(), target_is_directory=True)
    if settings:
        (base / "user" / "default").mkdir(parents=True, exist_ok=True)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(dict(settings)))
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", "PORT",
           "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(base),
           "--database-url", f"sqlite:///{base / 'comfyui.db'}"]
    if (fe := frontend_root()) is not None:
        cmd += ["--front-end-root", str(fe)]
    cmd += list(extra_args)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    for attempt in range(2):
        server = _start(host, cmd, env, wd)
        try:
            _wait(server.up, startup_timeout, interval=0.25, what="ComfyUI to answer")
            break
        except HarnessError as exc:
            _stop_process(server.proc)
            if attempt == 0 and "No module named 'torchaudio'" in server.log_tail():
                stub = torchaudio_stub.write_package(wd / "stubs")  # newer hosts import it at start-up
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), env.get("PYTHONPATH")]))
                continue
            raise HarnessError(f"{exc}\ncmd: {' '.join(server.cmd)}\n--- server log ---\n{server.log_tail()}") from None
    try:
        yield server
    except BaseException:
        print(f"\n--- ComfyUI server log ({server.log_path}) ---\n{server.log_tail(150)}\n", file=sys.stderr)
        raise
    finally:
        _stop_process(server.proc)


def _start(host: Path, cmd: list[str], env: dict, wd: Path) -> ComfyServer:
    port = free_port()
    cmd = [str(port) if c == "PORT" else c for c in cmd]
    log_path = wd / "comfyui-server.log"
    with open(log_path, "wb") as log_f:
        proc = subprocess.Popen(cmd, cwd=str(host), stdout=log_f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=wd / "base", log_path=log_path, proc=proc, cmd=cmd)


def object_info(server_url: str) -> dict:
    return http_json(server_url + "/api/object_info", timeout=30)


def list_templates(server_url: str) -> dict[str, list[str]]:
    """``GET /api/workflow_templates``: ``{pack folder: [template names]}``."""
    return http_json(server_url + "/api/workflow_templates")


def wait_for_prompt(server_url: str, prompt_id: str, timeout: float = 60.0) -> dict:
    """Poll ``/api/history/<prompt_id>`` until the prompt finished; its history entry (``status``, ``outputs``)."""
    def finished():
        entry = (http_json(f"{server_url}/api/history/{prompt_id}") or {}).get(prompt_id)
        return entry if entry and entry.get("status", {}).get("status_str") in ("success", "error") else None
    try:
        return _wait(finished, timeout, interval=0.25, what=f"prompt {prompt_id}")
    except HarnessError as exc:
        raise HarnessError(f"{exc}; queue: {http_json(server_url + '/api/queue')}") from None


def prompt_error_messages(history_entry: Mapping[str, Any]) -> list:
    """The ``execution_error`` / ``execution_interrupted`` messages of a history entry."""
    return [m for m in history_entry.get("status", {}).get("messages", [])
            if m and m[0] in ("execution_error", "execution_interrupted")]


# --------------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------------


class ChromeSession:
    """A minimal W3C WebDriver client for ``/usr/bin/chromedriver``, with Selenium's names for the calls used:
    ``get``, ``execute_script`` (a returned Promise is awaited), ``get_screenshot_as_png``, ``get_log``, ``quit``."""

    def __init__(self, chromium_args: Sequence[str], workdir: Path, script_timeout: float = 120.0):
        self.script_timeout = script_timeout
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log_path = Path(workdir) / "chromedriver.log"
        with open(self.log_path, "wb") as log_f:
            self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.base.rsplit(':', 1)[1]}"], stdout=log_f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.session_id: str | None = None
        try:
            _wait(self._ready, 30, interval=0.1, what="chromedriver to listen")
            caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": list(chromium_args)},
                    "goog:loggingPrefs": {"browser": "ALL"},
                    "timeouts": {"script": int(script_timeout * 1000), "pageLoad": 60_000}}
            self.session_id = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, 60)["sessionId"]
        except BaseException:
            self.quit()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise HarnessError(f"chromedriver exited: {self.log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError, HarnessError):
            return bool(self._call("GET", "/status", timeout=2).get("ready"))
        return False

    def _call(self, method: str, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.script_timeout + 30) as resp:
                return json.loads(resp.read().decode() or "{}").get("value")
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                err = json.loads(exc.read().decode()).get("value", {})
                raise HarnessError(f"{method} {path}: {err.get('error')}: {err.get('message', '')}") from None
            raise HarnessError(f"{method} {path}: HTTP {exc.code}") from None

    def _session(self, path: str) -> str:
        return f"/session/{self.session_id}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._session("/url"), {"url": url})

    def execute_script(self, script: str, *args: Any) -> Any:
        return self._call("POST", self._session("/execute/sync"), {"script": script, "args": list(args)})

    def get_screenshot_as_png(self) -> bytes:
        return base64.b64decode(self._call("GET", self._session("/screenshot")))

    def get_log(self, log_type: str = "browser") -> list[dict]:
        """Console entries since the last call ({level, message, timestamp, source})."""
        return self._call("POST", self._session("/se/log"), {"type": log_type}) or []

    def quit(self) -> None:
        if self.session_id:
            with contextlib.suppress(Exception):
                self._call("DELETE", self._session(""), timeout=15)
            self.session_id = None
        _stop_process(self.proc, grace=5.0)


@functools.cache
def page_script(name: str) -> str:
    """``tests/browser/js/<name>.js`` after ``prelude.js``, wrapped as an async function of the call's arguments."""
    body = (JS_DIR / "prelude.js").read_text() + "\n" + (JS_DIR / f"{name}.js").read_text()
    return "return (async function () {\n" + body + "\n}).apply(null, arguments);"


def run_js(driver: ChromeSession, name: str, *args: Any) -> Any:
    """Run ``js/<name>.js`` in the page; its result JSON-decoded when it returned a JSON string."""
    raw = driver.execute_script(page_script(name), *args)
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return json.loads(raw)
    return raw


def wait_for_app_ready(driver: ChromeSession, timeout: float = PAGE_READY_TIMEOUT) -> dict:
    """Wait until the app finished start-up, close the Templates dialog, install the recorder hooks.

    Ready = app ready + an active workflow + (Templates dialog open, which a fresh profile gets, or the state
    unchanged for 1 s).
    """
    seen = {"sig": None, "since": 0.0, "state": {}}

    def ready():
        state = seen["state"] = run_js(driver, "ready_state") or {}
        if not state.get("ready") or not state.get("activeWorkflow"):
            return False
        if TEMPLATES_DIALOG_KEY in state["dialogs"]:
            return True
        sig = json.dumps([state["dialogs"], state["activeWorkflow"], state["nodeCount"], state["spinner"]])
        if sig != seen["sig"]:
            seen.update(sig=sig, since=time.monotonic())
            return False
        return not state["spinner"] and time.monotonic() - seen["since"] >= 1.0

    try:
        _wait(ready, timeout, what="the ComfyUI frontend app to be ready")
    except HarnessError as exc:
        raise HarnessError(f"{exc}; page: {seen['state']}; console: {driver.get_log()[-20:]}") from None
    close_dialogs(driver, [TEMPLATES_DIALOG_KEY])
    _wait(lambda: TEMPLATES_DIALOG_KEY not in open_dialogs(driver), 10, what="the Templates dialog to close")
    run_js(driver, "install_hooks")
    return seen["state"]


def close_dialogs(driver: ChromeSession, keys: Sequence[str] | None = None) -> dict:
    """Close open dialogs (all when ``keys`` is None) through the frontend's dialog store."""
    return run_js(driver, "close_dialogs", None if keys is None else list(keys))


def open_dialogs(driver: ChromeSession) -> list[str]:
    return run_js(driver, "ready_state").get("dialogs", [])


@contextlib.contextmanager
def chromium_page(server_url: str, workdir: str | os.PathLike,
                  window_size: tuple[int, int] = (1400, 900)) -> Iterator[ChromeSession]:
    """Headless Chromium with a fresh profile in ``workdir``, on ComfyUI's page, ready (see
    :func:`wait_for_app_ready`). The browser console is printed on failure."""
    if reason := skip_reason():
        raise HarnessError(reason)
    profile = Path(workdir) / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir(parents=True)
    args = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window_size[0]},{window_size[1]}"]
    driver = ChromeSession(args, Path(workdir))
    try:
        driver.get(server_url + "/")
        wait_for_app_ready(driver)
        yield driver
    except BaseException:
        with contextlib.suppress(Exception):
            lines = [f"{e.get('level')}: {e.get('message')}" for e in driver.get_log()[-40:]]
            print("\n--- Chromium console (last 40) ---\n" + "\n".join(lines), file=sys.stderr)
        raise
    finally:
        driver.quit()


# --------------------------------------------------------------------------------------------------
# Page helpers (the frontend's own API)
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What the frontend said when a workflow was loaded, and the graph it built."""

    missing_types: list[str]  # from the afterConfigureGraph hook
    missing_nodes_reported: list  # arguments of app.showMissingNodesError (the dialog / error overlay)
    missing_models: list[dict]  # what the missing-models report got ({name, url, directory, ...})
    widget_problems: list[dict]  # values the server would refuse (the frontend loads them silently)
    dialogs: list[str]  # dialog keys open after loading
    toasts: list
    console: list  # console.warn / console.error lines while loading
    nodes: list[dict]  # [{id (str), type, title, has_errors, widgets: {name: value}}]
    error: str | None  # what the load call itself threw

    @property
    def warnings(self) -> list[str]:
        """Everything the frontend (or the widget check) complained about, human-readable."""
        w = [f"load error: {self.error}"] if self.error else []
        w += [f"missing node types: {self.missing_types}"] * bool(self.missing_types)
        w += [f"missing models: {self.missing_models}"] * bool(self.missing_models)
        w += [f"widget {p['type']}#{p['node']}.{p['widget']}={p['value']!r}: {p['problem']}" for p in self.widget_problems]
        for t in self.toasts:
            a0 = (t.get("args") or [{}])[0]
            if t.get("action") == "addAlert" or (isinstance(a0, dict) and a0.get("severity") in ("warn", "error")):
                w.append(f"toast: {a0}")
        return w

    @property
    def ok(self) -> bool:
        return not self.warnings

    def node(self, node_id) -> dict:
        return next(n for n in self.nodes if n["id"] == str(node_id))


def _load(driver: ChromeSession, *args: Any) -> LoadResult:
    data = run_js(driver, "load_workflow", *args)
    if not isinstance(data, dict):
        raise HarnessError(f"unexpected answer from the page: {data!r}")
    rec = data["rec"]
    return LoadResult(
        missing_types=[m if isinstance(m, str) else m.get("type") for call in rec["afterConfigure"] for m in call],
        missing_nodes_reported=rec["missingNodesCalls"],
        missing_models=[m for call in rec["missingModelsCalls"] for m in (call if isinstance(call, list) else [call])],
        widget_problems=data["widgetProblems"], dialogs=data["dialogs"], toasts=rec["toasts"],
        console=rec["console"], nodes=data["nodes"], error=data["error"])


def load_workflow(driver: ChromeSession, workflow: Mapping[str, Any], filename: str = "workflow.json",
                  mode: str = "drop") -> LoadResult:
    """Load a UI-format workflow the way a drop does (``app.handleFile(file, "file_drop")``), or with
    ``mode="loadGraphData"`` through ``app.loadGraphData`` directly."""
    if mode not in ("drop", "loadGraphData"):
        raise ValueError(mode)
    return _load(driver, dict(workflow), filename, mode, None)


def load_template(driver: ChromeSession, pack: str, name: str) -> LoadResult:
    """Load a pack's template the way a click in the template browser does."""
    return _load(driver, None, name + ".json", "template", {"module": pack, "name": name})


def graph_to_prompt(driver: ChromeSession) -> dict:
    """``await app.graphToPrompt()``: the API-format prompt of the current graph."""
    return run_js(driver, "graph_to_prompt")["output"]


@dataclass
class QueueResult:
    """``ok``: the server accepted the prompt (a prompt id, no error, no node errors). ``app.queuePrompt``'s own
    return value is no guide (it is False in some versions even on success)."""

    ok: bool
    prompt_id: str | None
    response: dict | None  # the server's answer to POST /prompt
    error: dict | None  # {message, response} when POST /prompt failed
    node_errors: Any  # what the frontend keeps as the last node errors
    new_dialogs: list[str]  # dialogs the call opened
    error_shown: bool  # the frontend shows the refusal: error dialog, errors panel, or nodes marked with errors
    raw: dict = field(repr=False, default_factory=dict)


def queue_current_graph(driver: ChromeSession) -> QueueResult:
    """Queue the current graph with the frontend's own ``app.queuePrompt(0, 1)`` (the Run button)."""
    data = run_js(driver, "queue")
    error = data["error"] or (data["thrown"] and {"message": data["thrown"]}) or None
    prompt_id = (data["response"] or {}).get("prompt_id")
    return QueueResult(ok=bool(prompt_id) and not error and not data["nodeErrors"], prompt_id=prompt_id,
                       response=data["response"], error=error, node_errors=data["nodeErrors"],
                       new_dialogs=data["newDialogs"],
                       error_shown="global-error" in data["newDialogs"] or bool(data["promptError"] or data["nodeErrors"]),
                       raw=data)


def screenshot(driver: ChromeSession, path: str | os.PathLike) -> Path:
    """Redraw the canvas and save a PNG of the window."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_js(driver, "redraw")
    path.write_bytes(driver.get_screenshot_as_png())
    return path


def previews(driver: ChromeSession, node_ids: Sequence[str], timeout: float = 30.0) -> dict:
    """Wait until each node shows its output images (``app.nodeOutputs`` and loaded ``<img>``s); the page's state."""
    def shown():
        state = run_js(driver, "previews", list(node_ids))
        return state if all(e["outputs"] and len(e["imgs"]) == len(e["outputs"]) and
                            all(i["complete"] and i["w"] > 0 for i in e["imgs"]) for e in state.values()) else None
    try:
        return _wait(shown, timeout, interval=0.25, what="the previews")
    except HarnessError as exc:
        raise HarnessError(f"{exc}: {run_js(driver, 'previews', list(node_ids))}") from None


def page_templates(driver: ChromeSession) -> dict:
    """What the template browser knows: ``{"loaded", "custom": {pack: [names]}, "categories": [nav ids],
    "groups": {heading of the left column: [labels of its entries]}}``."""
    return run_js(driver, "page_templates", TEMPLATES_DIALOG_KEY)
