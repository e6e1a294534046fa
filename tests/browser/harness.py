"""Drive ComfyUI's REAL frontend in headless Chromium from pytest.

What this module gives you:

* :func:`comfyui_server` -- a context manager that starts the real ComfyUI server
  (``main.py --cpu``) on a free localhost port with *every* writable directory
  (models, custom_nodes, input, output, temp, user, sqlite db) inside a temp dir,
  optionally with custom-node packs symlinked into its ``custom_nodes`` folder.
* :func:`chromium_page` -- a context manager that starts ``/usr/bin/chromium`` in
  headless mode through the distro's ``/usr/bin/chromedriver`` (spoken to with the
  plain W3C WebDriver HTTP protocol by :class:`ChromeSession`: stdlib only, no
  Selenium, nothing downloaded), opens
  the ComfyUI page, waits until the frontend app is ready, closes the "Templates"
  dialog a fresh profile shows, and installs small recorder hooks in the page.
* Page helpers that call the frontend's OWN JavaScript API (frontend package
  1.35.9; see the constants below for the names used):
  :func:`load_workflow`, :func:`load_template`, :func:`graph_to_prompt`,
  :func:`queue_current_graph`, :func:`screenshot`, :func:`page_templates`,
  :func:`close_dialogs`.
* Server helpers: :func:`wait_for_prompt`, :func:`list_templates`, :func:`object_info`.

Nothing here installs anything; run ``.ci/install-browser.sh`` once per machine.
Use :func:`browser_skip_reason` / :func:`host_skip_reason` to skip when the
host or the browser is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

CHROMIUM = os.environ.get("SCG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SCG_CHROMEDRIVER", "/usr/bin/chromedriver")

#: Flags from docs/browser.md, plus two that keep a hermetic run
#: fast: no DNS for outside hosts (the frontend's Sentry/Firebase/remote-config
#: requests then fail at once instead of waiting) and no /dev/shm dependence.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
)

#: Dialog keys used by the frontend's dialog store (``useDialogStore``, pinia id "dialog").
TEMPLATES_DIALOG_KEY = "global-workflow-template-selector"
MISSING_NODES_DIALOG_KEY = "global-missing-nodes"
MISSING_MODELS_DIALOG_KEY = "global-missing-models-warning"

SERVER_START_TIMEOUT = float(os.environ.get("SCG_COMFY_START_TIMEOUT", "120"))
PAGE_READY_TIMEOUT = float(os.environ.get("SCG_PAGE_READY_TIMEOUT", "90"))


class HarnessError(RuntimeError):
    """Something in the browser harness failed (message includes diagnostics)."""


# --------------------------------------------------------------------------------------
# Discovery / skip reasons
# --------------------------------------------------------------------------------------


def comfyui_path() -> Path:
    """The ComfyUI checkout to run, in the order tests/find_host.py uses.

    ``$COMFYUI_PATH`` if set; else the ComfyUI whose ``custom_nodes/`` holds this
    repository; else ``~/comfy/ComfyUI``. The first that has a ``main.py`` wins
    (the last candidate is returned when none has, for the skip message).
    """
    repo = Path(__file__).resolve().parents[2]
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if repo.parent.name == "custom_nodes":
        candidates.append(repo.parent.parent)
    candidates.append(Path.home() / "comfy" / "ComfyUI")
    for c in candidates:
        if (c / "main.py").is_file():
            return c.resolve()
    return candidates[0]


def comfyui_python() -> str:
    """Python used to run the ComfyUI server: ``$COMFYUI_PYTHON`` or the test's own."""
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def host_skip_reason() -> str | None:
    """Why the ComfyUI host can't be used here, or None when it can."""
    root = comfyui_path()
    if not (root / "main.py").is_file():
        return (
            f"ComfyUI host not found: no main.py in {root} "
            "(set COMFYUI_PATH to a ComfyUI checkout)"
        )
    if comfyui_python() == sys.executable:
        import importlib.util

        if importlib.util.find_spec("comfyui_frontend_package") is None:
            return (
                "ComfyUI host found but its frontend is not installed in this Python "
                f"({sys.executable}): pip install -r {root / 'requirements.txt'}"
            )
    return None


def browser_skip_reason() -> str | None:
    """Why headless Chromium can't be driven here, or None when it can."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return (
            f"headless browser not available: missing {', '.join(missing)} "
            "(run .ci/install-browser.sh)"
        )
    return None


# --------------------------------------------------------------------------------------
# ComfyUI server
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_json(url: str, data: Any = None, timeout: float = 10.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode() or "null")


@dataclass
class ComfyServer:
    url: str
    port: int
    workdir: Path
    base_dir: Path
    log_path: Path
    proc: subprocess.Popen
    custom_nodes_dir: Path
    cmd: list[str] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return _http_json(self.url + path, timeout=timeout)


def _write_extra_model_paths(path: Path, model_paths: Mapping[str, Any]) -> None:
    """Write an extra_model_paths.yaml (ComfyUI's own format, one section)."""
    lines = ["scg_browser_test:"]
    for key, value in model_paths.items():
        if isinstance(value, (list, tuple)):
            value = "\n".join(str(v) for v in value)
        value = str(value)
        if "\n" in value:
            lines.append(f"  {key}: |")
            lines.extend(f"    {v}" for v in value.splitlines())
        else:
            lines.append(f"  {key}: {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


def _stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # own session: only the server's group
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def comfyui_server(
    *,
    workdir: str | os.PathLike | None = None,
    custom_node_packs: Mapping[str, str | os.PathLike] | None = None,
    model_paths: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    comfyui_root: str | os.PathLike | None = None,
    python: str | None = None,
    port: int | None = None,
    startup_timeout: float = SERVER_START_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Iterator[ComfyServer]:
    """Start the real ComfyUI server; yield a :class:`ComfyServer`; stop it.

    * ``workdir``: where everything is written (a fresh temp dir if None; that one
      is deleted afterwards). ComfyUI gets ``--base-directory <workdir>/base`` so
      models/, custom_nodes/, input/, output/, temp/, user/ all live there, plus
      ``--database-url sqlite:///<workdir>/base/comfyui.db``.
    * ``custom_node_packs``: ``{folder_name: path}``; each becomes a symlink
      ``<base>/custom_nodes/<folder_name> -> path`` (the folder name is what
      ``GET /api/workflow_templates`` reports as the pack name).
    * ``model_paths``: optional ``{folder_type: path_or_paths}`` written to an
      ``extra_model_paths.yaml`` passed with ``--extra-model-paths-config``
      (e.g. ``{"checkpoints": "/x/ckpts", "custom_nodes": "/y"}``).
    * ``settings``: frontend settings pre-seeded in ``user/default/comfy.settings.json``.
    * On a failed start the server log is included in the raised error; on any
      exception inside the block the log tail is printed (pytest shows it).
    """
    root = Path(comfyui_root) if comfyui_root else comfyui_path()
    if not (root / "main.py").is_file():
        raise HarnessError(f"no ComfyUI main.py under {root}")
    own_tmp = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="scg-comfy-")) if own_tmp else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    base = wd / "base"
    cn_dir = base / "custom_nodes"
    for sub in ("models", "input", "output", "temp", "user/default"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    cn_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (custom_node_packs or {}).items():
        link = cn_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(target).resolve(), target_is_directory=True)
    if settings:
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(dict(settings)))

    port = port or free_port()
    cmd = [
        python or comfyui_python(),
        "main.py",
        "--cpu",
        "--listen", "127.0.0.1",
        "--port", str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",
        "--base-directory", str(base),
        "--database-url", f"sqlite:///{base / 'comfyui.db'}",
    ]
    if model_paths:
        yaml_path = wd / "extra_model_paths.yaml"
        _write_extra_model_paths(yaml_path, model_paths)
        cmd += ["--extra-model-paths-config", str(yaml_path)]
    cmd += list(extra_args)

    run_env = dict(os.environ)
    run_env["PYTHONDONTWRITEBYTECODE"] = "1"  # don't litter the ComfyUI checkout
    run_env["PYTHONUNBUFFERED"] = "1"
    if env:
        run_env.update(env)

    log_path = wd / "comfyui-server.log"
    log_f = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd,
        cwd=str(root),
        stdout=log_f,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=run_env,
        start_new_session=True,
    )
    server = ComfyServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        workdir=wd,
        base_dir=base,
        log_path=log_path,
        proc=proc,
        custom_nodes_dir=cn_dir,
        cmd=cmd,
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise HarnessError(
                    f"ComfyUI exited with code {proc.returncode} during start-up.\n"
                    f"cmd: {' '.join(cmd)}\n--- server log ---\n{server.log_tail(120)}"
                )
            try:
                server.get("/api/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"ComfyUI not ready after {startup_timeout:.0f}s.\n"
                    f"cmd: {' '.join(cmd)}\n--- server log ---\n{server.log_tail(120)}"
                )
            time.sleep(0.25)
        try:
            yield server
        except BaseException:
            # the test body failed: show what the server said (pytest prints captured stderr)
            print(f"\n--- ComfyUI server log ({log_path}) ---\n{server.log_tail(150)}\n", file=sys.stderr)
            raise
    finally:
        _stop_process(proc)
        log_f.close()
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


def object_info(server_url: str, node_class: str | None = None) -> dict:
    path = "/api/object_info" + (f"/{node_class}" if node_class else "")
    return _http_json(server_url.rstrip("/") + path, timeout=30)


def list_templates(server_url: str) -> dict[str, list[str]]:
    """What ``GET /api/workflow_templates`` returns: ``{pack_folder: [template names]}``."""
    return _http_json(server_url.rstrip("/") + "/api/workflow_templates")


def wait_for_prompt(server_url: str, prompt_id: str, timeout: float = 60.0, poll: float = 0.25) -> dict:
    """Poll ``GET /history/<prompt_id>`` until the prompt finished; return its history entry.

    The entry has ``status.status_str`` ("success" | "error"), ``status.messages``
    and ``outputs``. Raises :class:`HarnessError` on timeout (with the queue state).
    """
    url = server_url.rstrip("/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hist = _http_json(f"{url}/api/history/{prompt_id}")
        entry = (hist or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"].get("status_str") in ("success", "error"):
                return entry
        time.sleep(poll)
    try:
        queue = _http_json(f"{url}/api/queue")
    except Exception as exc:  # pragma: no cover - diagnostics only
        queue = repr(exc)
    raise HarnessError(f"prompt {prompt_id} not finished after {timeout}s; queue: {queue}")


def prompt_error_messages(history_entry: Mapping[str, Any]) -> list:
    """The ``execution_error`` / ``execution_interrupted`` messages of a history entry."""
    return [
        m for m in history_entry.get("status", {}).get("messages", [])
        if m and m[0] in ("execution_error", "execution_interrupted")
    ]


# --------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------


class WebDriverError(HarnessError):
    """An error answered by chromedriver (e.g. a JavaScript exception in the page)."""


class ChromeSession:
    """A minimal W3C WebDriver client for Debian's /usr/bin/chromedriver (stdlib only).

    It speaks the plain WebDriver HTTP protocol to a chromedriver process it starts
    itself, so the tests need no Python package and never download a browser.
    Method names follow Selenium's ``WebDriver`` for the few calls used here:
    ``get``, ``execute_script`` (a returned Promise is awaited, per W3C),
    ``save_screenshot``, ``get_log("browser")``, ``execute_cdp_cmd``, ``quit``.
    """

    def __init__(self, chromium_args: Sequence[str], workdir: Path, *, script_timeout: float = 120.0,
                 page_load_timeout: float = 60.0, start_timeout: float = 30.0):
        self.workdir = Path(workdir)
        self.script_timeout = script_timeout
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "chromedriver.log"
        self._log_f = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"],
            stdout=self._log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.session_id: str | None = None
        try:
            _wait(self._driver_ready, start_timeout, interval=0.1, what="chromedriver to listen")
            caps = {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": list(chromium_args)},
                "goog:loggingPrefs": {"browser": "ALL"},
                "timeouts": {"script": int(script_timeout * 1000), "pageLoad": int(page_load_timeout * 1000)},
            }
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, timeout=start_timeout + 30)
            self.session_id = value["sessionId"]
            self.capabilities = value.get("capabilities", {})
        except BaseException:
            self.quit()
            raise

    def _driver_ready(self) -> bool:
        if self.proc.poll() is not None:
            raise HarnessError(f"chromedriver exited with {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-2000:]}")
        try:
            return bool(self._call("GET", "/status", timeout=2).get("ready"))
        except (OSError, HarnessError):
            return False

    def _call(self, method: str, path: str, payload: Any = None, timeout: float | None = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.script_timeout + 30) as resp:
                data = json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read().decode()).get("value", {})
            except ValueError:
                err = {}
            raise WebDriverError(
                f"{method} {path}: {err.get('error', exc.code)}: {err.get('message', '')}".strip()
            ) from None
        return data.get("value")

    def _s(self, path: str) -> str:
        if not self.session_id:
            raise HarnessError("no WebDriver session")
        return f"/session/{self.session_id}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    @property
    def current_url(self) -> str:
        return self._call("GET", self._s("/url"))

    def execute_script(self, script: str, *args: Any) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def execute_cdp_cmd(self, cmd: str, params: Mapping[str, Any] | None = None) -> Any:
        """Chrome DevTools Protocol command through chromedriver (e.g. Input.dispatchMouseEvent)."""
        return self._call("POST", self._s("/goog/cdp/execute"), {"cmd": cmd, "params": dict(params or {})})

    def get_screenshot_as_png(self) -> bytes:
        import base64
        return base64.b64decode(self._call("GET", self._s("/screenshot")))

    def save_screenshot(self, path: str | os.PathLike) -> bool:
        Path(path).write_bytes(self.get_screenshot_as_png())
        return True

    def get_log(self, log_type: str = "browser") -> list[dict]:
        """Console entries since the last call ({level, message, timestamp, source})."""
        return self._call("POST", self._s("/se/log"), {"type": log_type}) or []

    def quit(self) -> None:
        if self.session_id:
            with contextlib.suppress(Exception):
                self._call("DELETE", self._s(""), timeout=15)
            self.session_id = None
        if self.proc is not None:
            _stop_process(self.proc, grace=5.0)
        with contextlib.suppress(Exception):
            self._log_f.close()


# Everything below runs inside the page and uses only the frontend's own objects:
#   window.comfyAPI.app.app  -- the ComfyApp instance (same object as window.app)
#   window.comfyAPI.api.api  -- the ComfyApi instance
#   pinia stores via the Vue app mounted on #vue-app (ids "dialog", "toast",
#   "execution", "workflowTemplates").

_JS_PRELUDE = r"""
const app = window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app;
const api = window.comfyAPI && window.comfyAPI.api && window.comfyAPI.api.api;
const pinia = (() => {
  const el = document.querySelector('#vue-app');
  return el && el.__vue_app__ && el.__vue_app__.config.globalProperties.$pinia;
})();
const store = (id) => (pinia && pinia._s.get(id)) || null;
const dialogKeys = () => { const d = store('dialog'); return d ? d.dialogStack.map(x => x.key) : []; };
const safe = (v) => { try { return JSON.parse(JSON.stringify(v)); } catch (e) { return String(v); } };
"""

_JS_READY_STATE = _JS_PRELUDE + r"""
if (!window.app || !app || !app.vueAppReady || !app.canvas || !app.graph || !pinia) {
  return JSON.stringify({ready: false});
}
const em = app.extensionManager;
const wf = em && em.workflow && em.workflow.activeWorkflow;
return JSON.stringify({
  ready: true,
  dialogs: dialogKeys(),
  activeWorkflow: wf ? wf.path : null,
  tutorialCompleted: em.setting.get('Comfy.TutorialCompleted'),
  spinner: !!em.spinner,
  nodeCount: app.graph.nodes.length,
});
"""

_JS_CLOSE_DIALOGS = _JS_PRELUDE + r"""
const keys = arguments[0];
const d = store('dialog');
const closed = [];
if (d) {
  for (const k of [...dialogKeys()]) {
    if (keys === null || keys.includes(k)) { d.closeDialog({key: k}); closed.push(k); }
  }
}
return JSON.stringify({closed, left: dialogKeys()});
"""

# Recorder hooks. Installed once per page. They observe, never change, behaviour:
# * an extension with the afterConfigureGraph(missingNodeTypes) hook, which
#   ComfyApp.loadGraphData calls with the list of node types that are not in
#   LiteGraph.registered_node_types (strings, or {type, hint} for subgraphs);
# * wrappers of app.showMissingNodesError / app.showMissingModelsError (the
#   calls loadGraphData makes to open the warning dialogs), which call through;
# * $onAction on the toast store (validation warnings, load errors);
# * console.warn / console.error capture.
_JS_INSTALL_HOOKS = _JS_PRELUDE + r"""
if (window.__scgHarness) return 'already';
const H = window.__scgHarness = {
  rec: null,
  reset() {
    this.rec = {afterConfigure: [], missingNodesCalls: [], missingModelsCalls: [],
                toasts: [], console: [], dialogsBefore: dialogKeys()};
  },
};
H.reset();
app.registerExtension({
  name: 'SCG.BrowserTestHarness',
  async afterConfigureGraph(missingNodeTypes) {
    H.rec.afterConfigure.push(safe(missingNodeTypes || []));
  },
});
const origNodes = app.showMissingNodesError;
app.showMissingNodesError = function (types) {
  H.rec.missingNodesCalls.push(safe(types));
  return origNodes.apply(this, arguments);
};
const origModels = app.showMissingModelsError;
app.showMissingModelsError = function (models, paths) {
  H.rec.missingModelsCalls.push(safe(models));
  return origModels.apply(this, arguments);
};
const toast = app.extensionManager.toast;
if (toast && toast.$onAction) {
  toast.$onAction(({name, args}) => {
    if (name === 'add' || name === 'addAlert') H.rec.toasts.push({action: name, args: safe(args)});
  });
}
for (const level of ['warn', 'error']) {
  const orig = console[level].bind(console);
  console[level] = (...args) => {
    if (H.rec.console.length < 200) {
      H.rec.console.push({level, text: args.map(a => {
        if (a instanceof Error) return a.stack || String(a);
        if (typeof a === 'object') { try { return JSON.stringify(a); } catch (e) { return String(a); } }
        return String(a);
      }).join(' ')});
    }
    return orig(...args);
  };
}
return 'installed';
"""

_JS_LOAD_WORKFLOW = _JS_PRELUDE + r"""
const [workflow, filename, mode, template] = arguments;
const H = window.__scgHarness;
H.reset();
let error = null;
try {
  if (mode === 'template') {
    // Same as the template browser (useTemplateWorkflows().loadWorkflowTemplate):
    // fetch(api.apiURL(`/workflow_templates/${module}/${name}.json`)) then
    // app.loadGraphData(json, true, true, name, {openSource: "template"}).
    const resp = await fetch(api.apiURL(`/workflow_templates/${template.module}/${template.name}.json`));
    if (!resp.ok) throw new Error(`template fetch failed: HTTP ${resp.status}`);
    const json = await resp.json();
    await app.loadGraphData(json, true, true, template.name, {openSource: 'template'});
  } else if (mode === 'drop') {
    // Same call the canvas drop handler makes: app.handleFile(file, "file_drop").
    const file = new File([JSON.stringify(workflow)], filename, {type: 'application/json'});
    await app.handleFile(file, 'file_drop');
  } else {
    await app.loadGraphData(workflow, true, true, filename.replace(/\.json$/, ''), {});
  }
} catch (e) {
  error = String(e && e.stack || e);
}
// let the dialogs / toasts that loading queued settle
await new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)));
// The frontend keeps invalid widget values silently (the server only rejects them
// on queue), so check them against the widgets' own options (from /object_info).
const widgetProblems = [];
for (const n of app.graph.nodes) {
  if (!(n.constructor && n.constructor.nodeData)) continue;  // placeholder of a missing node type
  for (const w of (n.widgets || [])) {
    const o = w.options || {};
    if (w.type === 'combo' && Array.isArray(o.values) && !o.values.includes(w.value)) {
      widgetProblems.push({node: n.id, type: n.type, widget: w.name, value: safe(w.value),
                           problem: 'not in list', allowed: o.values.slice(0, 20)});
    } else if (w.type === 'number' && typeof w.value === 'number') {
      if ((typeof o.min === 'number' && w.value < o.min) || (typeof o.max === 'number' && w.value > o.max)) {
        widgetProblems.push({node: n.id, type: n.type, widget: w.name, value: w.value,
                             problem: 'out of range', min: o.min, max: o.max});
      }
    } else if (w.type === 'number' && typeof w.value !== 'number') {
      widgetProblems.push({node: n.id, type: n.type, widget: w.name, value: safe(w.value), problem: 'not a number'});
    }
  }
}
const nodes = app.graph.nodes.map(n => ({
  id: n.id,
  type: n.type,
  title: n.title,
  mode: n.mode,
  has_errors: !!n.has_errors,
  widgets: Object.fromEntries((n.widgets || []).filter(w => w.name).map(w => [w.name, safe(w.value)])),
  widgets_values: safe(n.widgets_values === undefined ? null : n.widgets_values),
}));
return JSON.stringify({
  error,
  widgetProblems,
  rec: H.rec,
  dialogs: dialogKeys(),
  nodes,
  links: app.graph.links ? (app.graph.links.size !== undefined ? app.graph.links.size : Object.keys(app.graph.links).length) : 0,
});
"""

_JS_GRAPH_TO_PROMPT = _JS_PRELUDE + r"""
const p = await app.graphToPrompt();
return JSON.stringify({output: p.output, workflow: p.workflow});
"""

_JS_QUEUE = _JS_PRELUDE + r"""
const H = window.__scgHarness;
if (H) H.reset();
const before = dialogKeys();
let response = null, error = null, ok = null, thrown = null;
const orig = api.queuePrompt;
api.queuePrompt = async function () {
  try {
    response = await orig.apply(this, arguments);
    return response;
  } catch (e) {
    error = {message: String(e && e.message || e), response: safe(e && e.response || null)};
    throw e;
  }
};
try {
  ok = await app.queuePrompt(0, 1);   // what the "Run" button's Comfy.QueuePrompt command calls
} catch (e) {
  thrown = String(e && e.stack || e);
} finally {
  api.queuePrompt = orig;
}
const ex = store('execution');
return JSON.stringify({
  ok, response: safe(response), error, thrown,
  lastNodeErrors: safe(ex ? ex.lastNodeErrors : null),
  newDialogs: dialogKeys().filter(k => !before.includes(k)),
  console: H ? H.rec.console : [],
  toasts: H ? H.rec.toasts : [],
});
"""

_JS_PAGE_TEMPLATES = _JS_PRELUDE + r"""
let st = store('workflowTemplates');
let opened = false;
if (!st) {
  // The store lives in the template browser; opening it once creates the store.
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  opened = true;
  for (let i = 0; i < 100 && !(st = store('workflowTemplates')); i++) await new Promise(r => setTimeout(r, 50));
}
if (!st) return JSON.stringify({error: 'workflowTemplates store not found'});
await st.loadWorkflowTemplates();
if (opened) { const d = store('dialog'); if (d) d.closeDialog({key: arguments[0]}); }
const custom = {};
for (const t of st.enhancedTemplates) {
  if (t.sourceModule && t.sourceModule !== 'default') (custom[t.sourceModule] ||= []).push(t.name);
}
const categories = [];
for (const g of st.navGroupedTemplates) {
  for (const item of (g.items || [g])) if (item && item.id) categories.push(item.id);
}
return JSON.stringify({loaded: st.isLoaded, custom, categories});
"""


def _run_js(driver, script: str, *args: Any) -> Any:
    """Run an async function body in the page; JSON-decode its (stringified) result."""
    wrapped = "return (async function () {\n" + script + "\n}).apply(null, arguments);"
    raw = driver.execute_script(wrapped, *args)
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def browser_console_log(driver) -> list[dict]:
    """Chromium console entries since the last call (goog:loggingPrefs is set by chromium_page)."""
    try:
        return driver.get_log("browser")
    except Exception:  # pragma: no cover - depends on driver support
        return []


def _wait(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")


def wait_for_app_ready(driver, timeout: float = PAGE_READY_TIMEOUT, dismiss_templates: bool = True) -> dict:
    """Wait until the ComfyUI app finished its start-up workflow, then close the Templates dialog.

    Start-up order in GraphView (frontend 1.35.9): ``await app.setup()`` then
    ``window.app = app`` then ``initializeWorkflow()``. On a fresh profile (the
    harness always uses one) that sets ``Comfy.TutorialCompleted``, loads a blank
    workflow and opens the Templates dialog (key ``global-workflow-template-selector``);
    with a seeded ``Comfy.TutorialCompleted: true`` it loads the default graph
    instead. Readiness = app ready + an active workflow + (Templates dialog open, or
    the state stable for 1 s).
    """
    state: dict = {}
    stable_since = [None]
    last_sig = [None]

    def ready():
        nonlocal state
        state = _run_js(driver, _JS_READY_STATE) or {}
        if not state.get("ready") or not state.get("activeWorkflow"):
            return False
        if TEMPLATES_DIALOG_KEY in state.get("dialogs", []):
            return True
        sig = json.dumps([state.get("dialogs"), state.get("activeWorkflow"), state.get("nodeCount"), state.get("spinner")])
        now = time.monotonic()
        if sig != last_sig[0]:
            last_sig[0], stable_since[0] = sig, now
            return False
        return state.get("tutorialCompleted") and not state.get("spinner") and now - stable_since[0] >= 1.0

    try:
        _wait(ready, timeout, what="the ComfyUI frontend app to be ready")
    except HarnessError as exc:
        raise HarnessError(f"{exc}; last page state: {state}; console: {browser_console_log(driver)[-20:]}") from None
    if dismiss_templates:
        close_dialogs(driver, [TEMPLATES_DIALOG_KEY])
        _wait(lambda: TEMPLATES_DIALOG_KEY not in (_run_js(driver, _JS_READY_STATE).get("dialogs") or []),
              10, what="the Templates dialog to close")
    _run_js(driver, _JS_INSTALL_HOOKS)
    return state


def close_dialogs(driver, keys: Sequence[str] | None = None) -> dict:
    """Close open frontend dialogs (all when ``keys`` is None) via the dialog store."""
    return _run_js(driver, _JS_CLOSE_DIALOGS, list(keys) if keys is not None else None)


def open_dialogs(driver) -> list[str]:
    return _run_js(driver, _JS_READY_STATE).get("dialogs", [])


@contextlib.contextmanager
def chromium_page(
    server_url: str,
    *,
    workdir: str | os.PathLike | None = None,
    window_size: tuple[int, int] = (1400, 900),
    ready_timeout: float = PAGE_READY_TIMEOUT,
    dismiss_templates: bool = True,
    extra_flags: Sequence[str] = (),
) -> Iterator[Any]:
    """Start headless Chromium (distro binary + chromedriver), open ComfyUI, wait until ready.

    Yields a :class:`ChromeSession` (W3C WebDriver over HTTP to
    /usr/bin/chromedriver, Selenium-like method names). The page has the recorder hooks installed (see
    :func:`load_workflow`) and no Templates dialog. A fresh ``--user-data-dir`` is
    used (deleted afterwards unless ``workdir`` is given). On an exception the
    browser console is printed.
    """
    reason = browser_skip_reason()
    if reason:
        raise HarnessError(reason)
    own_tmp = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="scg-chromium-")) if own_tmp else Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    profile = wd / "chromium-profile"
    if profile.exists():
        shutil.rmtree(profile)
    profile.mkdir(parents=True)

    args = list(CHROMIUM_FLAGS) + [
        f"--user-data-dir={profile}",
        f"--window-size={window_size[0]},{window_size[1]}",
        *extra_flags,
    ]
    driver = ChromeSession(args, wd)
    try:
        driver.get(server_url.rstrip("/") + "/")
        wait_for_app_ready(driver, timeout=ready_timeout, dismiss_templates=dismiss_templates)
        yield driver
    except BaseException:
        with contextlib.suppress(Exception):
            entries = browser_console_log(driver)
            print("\n--- Chromium console (last 40) ---", file=sys.stderr)
            for e in entries[-40:]:
                print(f"{e.get('level')}: {e.get('message')}", file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Page helpers (frontend's own API)
# --------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What happened when a workflow was loaded into the page."""

    missing_node_types: list  # from the afterConfigureGraph hook (str, or {type, hint} in subgraphs)
    missing_nodes_dialog: list  # arguments of app.showMissingNodesError calls
    missing_models: list  # arguments of app.showMissingModelsError calls (flattened)
    dialogs: list[str]  # dialog keys open after loading
    toasts: list  # toast store add/addAlert calls during loading
    console: list  # console.warn/error lines during loading
    nodes: list[dict]  # [{id, type, title, mode, widgets: {name: value}, widgets_values}]
    error: str | None  # exception thrown by the load call itself
    #: widget values the server would reject on queue (combo value not in its list,
    #: number out of min/max); the frontend itself loads these silently.
    widget_problems: list = field(default_factory=list)
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def missing_types(self) -> list[str]:
        out = []
        for m in self.missing_node_types:
            out.append(m if isinstance(m, str) else m.get("type"))
        return out

    @property
    def warnings(self) -> list[str]:
        """Human-readable list of everything the frontend complained about."""
        w = []
        if self.error:
            w.append(f"load error: {self.error}")
        if self.missing_node_types:
            w.append(f"missing node types: {self.missing_node_types}")
        if self.missing_models:
            w.append(f"missing models: {self.missing_models}")
        for p in self.widget_problems:
            w.append(f"widget {p.get('type')}#{p.get('node')}.{p.get('widget')}={p.get('value')!r}: {p.get('problem')}")
        for key in (MISSING_NODES_DIALOG_KEY, MISSING_MODELS_DIALOG_KEY, "global-error"):
            if key in self.dialogs:
                w.append(f"dialog open: {key}")
        for t in self.toasts:
            args = t.get("args") or [{}]
            a0 = args[0] if args else {}
            if t.get("action") == "addAlert" or (isinstance(a0, dict) and a0.get("severity") in ("warn", "error")):
                w.append(f"toast: {a0}")
        return w

    @property
    def ok(self) -> bool:
        return not self.warnings

    def node(self, node_id) -> dict:
        for n in self.nodes:
            if str(n["id"]) == str(node_id):
                return n
        raise KeyError(node_id)


def load_workflow(
    driver,
    workflow: Mapping[str, Any],
    *,
    filename: str = "workflow.json",
    mode: str = "drop",
    close_warning_dialogs: bool = True,
) -> LoadResult:
    """Load a UI-format workflow like a drag-and-drop and report the frontend's warnings.

    ``mode="drop"`` (default) builds a ``File`` in the page and awaits
    ``app.handleFile(file, "file_drop")`` -- exactly what the canvas drop handler
    calls, which parses the JSON and calls ``app.loadGraphData(wf, true, true,
    name, {openSource: "file_drop"})``. ``mode="loadGraphData"`` calls
    ``app.loadGraphData`` directly.

    Missing node types are taken from the ``afterConfigureGraph(missingNodeTypes)``
    extension hook (always called by loadGraphData) and cross-checked with the
    ``app.showMissingNodesError`` call that opens the "missing nodes" dialog
    (key ``global-missing-nodes``). Warning dialogs are closed afterwards unless
    ``close_warning_dialogs`` is False (the keys seen are still reported).
    """
    if mode not in ("drop", "loadGraphData"):
        raise ValueError(mode)
    return _load(driver, dict(workflow), filename, mode, None, close_warning_dialogs)


def load_template(driver, pack: str, name: str, *, close_warning_dialogs: bool = True) -> LoadResult:
    """Load a custom-node pack's template the way the template browser does.

    Fetches ``/api/workflow_templates/<pack>/<name>.json`` in the page and calls
    ``app.loadGraphData(json, true, true, name, {openSource: "template"})``
    (``useTemplateWorkflows().loadWorkflowTemplate`` in the frontend). Same
    :class:`LoadResult` as :func:`load_workflow`.
    """
    return _load(driver, None, name + ".json", "template", {"module": pack, "name": name}, close_warning_dialogs)


def _load(driver, workflow, filename, mode, template, close_warning_dialogs) -> LoadResult:
    data = _run_js(driver, _JS_LOAD_WORKFLOW, workflow, filename, mode, template)
    if not isinstance(data, dict):
        raise HarnessError(f"unexpected result from page: {data!r}")
    rec = data.get("rec") or {}
    missing = []
    for call in rec.get("afterConfigure", []):
        missing.extend(call)
    models = []
    for call in rec.get("missingModelsCalls", []):
        models.extend(call if isinstance(call, list) else [call])
    result = LoadResult(
        missing_node_types=missing,
        missing_nodes_dialog=rec.get("missingNodesCalls", []),
        missing_models=models,
        dialogs=data.get("dialogs", []),
        toasts=rec.get("toasts", []),
        console=rec.get("console", []),
        nodes=data.get("nodes", []),
        error=data.get("error"),
        widget_problems=data.get("widgetProblems", []),
        raw=data,
    )
    if close_warning_dialogs:
        close_dialogs(driver, [MISSING_NODES_DIALOG_KEY, MISSING_MODELS_DIALOG_KEY])
    return result


def graph_to_prompt(driver, *, with_workflow: bool = False) -> Any:
    """``await app.graphToPrompt()`` -> the API-format prompt (``output``).

    With ``with_workflow=True`` returns ``{"output": ..., "workflow": ...}``.
    """
    data = _run_js(driver, _JS_GRAPH_TO_PROMPT)
    return data if with_workflow else data["output"]


@dataclass
class QueueResult:
    #: Note: app.queuePrompt returns ``!lastNodeErrors`` and the server answers
    #: ``node_errors: {}`` on success, so its return value is False even when the
    #: prompt was accepted; it is kept in ``queue_prompt_returned``. ``ok`` is True
    #: when the server accepted the prompt (a prompt_id, no error, no node errors).
    ok: bool
    prompt_id: str | None
    response: dict | None  # server's POST /prompt response on success
    error: dict | None  # {message, response} when POST /prompt failed (HTTP 400 etc.)
    node_errors: Any  # execution store's lastNodeErrors
    new_dialogs: list[str]  # e.g. "global-error" when the frontend showed an error dialog
    queue_prompt_returned: Any = None
    raw: dict = field(repr=False, default_factory=dict)


def queue_current_graph(driver) -> QueueResult:
    """Queue the current graph with the frontend's own ``app.queuePrompt(0, 1)``.

    That is what the Run button's ``Comfy.QueuePrompt`` command calls: it runs
    ``app.graphToPrompt()`` and ``api.queuePrompt()`` (POST /prompt) and turns
    errors into a dialog. The harness wraps ``api.queuePrompt`` for the duration
    of the call to capture the server's response or error body.
    """
    data = _run_js(driver, _JS_QUEUE)
    resp = data.get("response") or None
    error = data.get("error") or (data.get("thrown") and {"message": data["thrown"]}) or None
    node_errors = data.get("lastNodeErrors")
    prompt_id = (resp or {}).get("prompt_id")
    return QueueResult(
        ok=bool(prompt_id) and not error and not node_errors,
        prompt_id=prompt_id,
        response=resp,
        error=error,
        node_errors=node_errors,
        new_dialogs=data.get("newDialogs", []),
        queue_prompt_returned=data.get("ok"),
        raw=data,
    )


def screenshot(driver, path: str | os.PathLike) -> Path:
    """Redraw the canvas and save a PNG screenshot of the window."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        _run_js(driver, _JS_PRELUDE + "app.canvas.setDirty(true, true); app.canvas.draw(true, true); return 'ok';")
    if not driver.save_screenshot(str(path)):
        raise HarnessError(f"screenshot failed: {path}")
    return path


def page_templates(driver) -> dict:
    """What the frontend's template browser knows (pinia store ``workflowTemplates``).

    Returns ``{"loaded": bool, "custom": {pack: [names]}, "categories": [nav ids]}``;
    a pack's templates show up as category ``extension-<pack>``.
    """
    return _run_js(driver, _JS_PAGE_TEMPLATES, TEMPLATES_DIALOG_KEY)
