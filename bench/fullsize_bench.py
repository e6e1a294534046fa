"""Full-size SD1.5 figures on the CPU, side by side in one run, each job in its own child process.

    python bench/fullsize_bench.py --threads 2 --json docs/fullsize_cpu.json      # the committed table
    python bench/fullsize_bench.py --only controlnet --batch 2                    # one part
    python bench/fullsize_bench.py --dry                                          # tiny models (tests)

Jobs (bench/fullsize_jobs.py): matmul peaks; ControlNet training at 512 x 512 (the authors'
recipe, ours in fp32, ours in bf16); sampling at 512 x 512 with the hint made beforehand (core's
Apply ControlNet) against inside sampling (SCGControlApply's way); the autoencoder trainer at the
paper's setting (batch 64, crops 128 and 256). Each child reports its times; its peak RSS is the
kernel's (``os.wait4``'s ``ru_maxrss``). Before each job the free memory is checked against the
memory model's estimate (bench/fullsize_memory.py): a job that would not fit is refused, said so.
While a child runs its RSS is watched; past ``--max-gib`` it is stopped and reported.
A benchmark, never a test: the figures depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import fullsize_memory  # noqa: E402  (the checkout on the path first: run by path)

GIB = 2**30


def plan(a) -> list[dict]:
    """The jobs of this run, in order (``kind`` names a function of bench/fullsize_jobs.JOBS)."""
    dry = a.dry
    spec, res = ("tiny", 64) if dry else ("sd15", 512)
    steps, warmup = (1, 1) if dry else (a.steps, 1)
    jobs = []
    if "matmul" in a.only:
        n = 256 if dry else 4096
        jobs += [{"kind": "matmul", "n": n, "dtype": d} for d in ("fp32", "bf16")]
    if "controlnet" in a.only:
        for recipe in a.recipes.split(","):
            for batch in a.batch:
                jobs.append({"kind": "controlnet", "recipe": recipe, "spec": spec, "res": res, "batch": batch,
                             "steps": steps, "warmup": warmup})
    if "sampling" in a.only:
        jobs += [{"kind": "sampling", "path": p, "spec": spec, "res": res, "steps": 2 if dry else a.sample_steps}
                 for p in ("core", "scg")]
    if "autoencoder" in a.only:
        for crop in ([48] if dry else a.crops):
            jobs.append({"kind": "autoencoder", "batch": 4 if dry else 64, "crop": crop, "precision": "fp32",
                         "steps": steps, "warmup": warmup})
    return jobs


def name_of(job: dict) -> str:
    return {"controlnet": lambda j: f"controlnet {j['recipe']} b{j['batch']}",
            "sampling": lambda j: f"sampling {j['path']}",
            "autoencoder": lambda j: f"autoencoder {j['batch']}x{j['crop']} {j['precision']}",
            "matmul": lambda j: f"matmul {j['dtype']} {j['n']}"}[job["kind"]](job)


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) for line in fh}
    return info["MemAvailable"] / 2**20


def run_child(job: dict, threads: int, max_gib: float, timeout_s: float) -> dict:
    """One job in a child process; its result dict plus ``peak_rss_gib`` (kernel) and ``wall_s``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "lib"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(job), "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import psutil

    watch, over, timed_out = psutil.Process(proc.pid), False, False
    while proc.poll() is None:
        try:
            if watch.memory_info().rss / GIB > max_gib:
                over = True
                proc.send_signal(signal.SIGKILL)
            elif time.perf_counter() - t0 > timeout_s:
                timed_out = True
                proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    # the child's own peak comes in its result (ru_maxrss); the parent's view of it is the same number
    result = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None)
    if over:
        return {"error": f"stopped: its RSS passed --max-gib {max_gib:g}", "wall_s": wall}
    if timed_out:
        return {"error": f"stopped after --timeout {timeout_s:g} s", "wall_s": wall}
    if proc.returncode != 0 or result is None:
        return {"error": f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else '?'}",
                "wall_s": wall}
    return {**result, "wall_s": wall}


def child(job: dict, threads: int) -> int:
    import torch

    from bench import fullsize_jobs

    torch.set_num_threads(threads)
    kw = {k: v for k, v in job.items() if k != "kind"}
    if job["kind"] == "controlnet":
        result = fullsize_jobs.controlnet_train(kw.pop("recipe"), **kw)
    elif job["kind"] == "sampling":
        result = fullsize_jobs.sampling(kw.pop("path"), **kw)
    else:
        result = fullsize_jobs.JOBS[job["kind"]](**kw)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def summarize(rows: list[dict]) -> dict:
    """The ratios the table prints (only between jobs that ran)."""
    by = {r["name"]: r for r in rows if "error" not in r and "refused" not in r}
    out = {}
    for name, r in by.items():
        if name.startswith("controlnet authors"):
            batch = name.split()[-1]
            for other in ("ours", "ours-bf16"):
                o = by.get(f"controlnet {other} {batch}")
                if o:
                    out[f"{other} vs authors {batch}: step time"] = o["s_per_step"] / r["s_per_step"]
                    out[f"{other} vs authors {batch}: peak RSS"] = o["peak_rss_gib"] / r["peak_rss_gib"]
    core, scg = by.get("sampling core"), by.get("sampling scg")
    if core and scg:
        out["sampling scg vs core: time (hint inside vs hint made beforehand, sampling only)"] = \
            scg["sample_s"] / core["sample_s"]
        out["sampling scg vs core: time (scg vs core's extract + sample)"] = \
            scg["sample_s"] / (core["sample_s"] + core["extract_s"])
        out["sampling scg - core: peak RSS difference GiB"] = scg["peak_rss_gib"] - core["peak_rss_gib"]
    mm = by.get(next((n for n in by if n.startswith("matmul fp32")), ""), None)
    for name, r in by.items():
        if name.startswith("autoencoder") and mm:
            out[f"{name}: conv GFLOP/s / fp32 matmul peak"] = r["conv_gflop_s"] / mm["gflop_s"]
    return out


def line(r: dict) -> str:
    name = r["name"]
    if "refused" in r:
        return f"{name:32s} REFUSED: {r['refused']}"
    if "error" in r:
        return f"{name:32s} FAILED: {r['error']}"
    kind = r["kind"]
    mem = f"peak RSS {r['peak_rss_gib']:6.2f} GiB"
    if kind == "controlnet":
        return (f"{name:32s} {r['s_per_step']:8.2f} s/step  {mem}  (built {r['rss_built_gib']:.2f} GiB; "
                f"saved for backward {r['saved_for_backward_gib']:.2f} GiB; steps "
                + ", ".join(f"{t:.1f}" for t in r["step_times_s"]) + " s)")
    if kind == "sampling":
        ae = "" if r["ae_extract_peak_gib"] is None else f"; AE extraction peak +{r['ae_extract_peak_gib']:.3f} GiB"
        return (f"{name:32s} {r['sample_s']:8.2f} s for {r['steps']} steps (hint beforehand {r['extract_s']:.2f} s)"
                f"  {mem}{ae}")
    if kind == "autoencoder":
        return (f"{name:32s} {r['img_s']:8.2f} img/s  {r['s_per_step']:.2f} s/step  {r['conv_gflop_per_step']:.1f} "
                f"conv GFLOP/step = {r['conv_gflop_s']:.1f} GFLOP/s  {mem}")
    return f"{name:32s} {r['gflop_s']:8.1f} GFLOP/s"


def _timed(r: dict) -> list[float]:
    """The timed step times: a ControlNet job's list starts with its warm-up steps, an autoencoder job's does not."""
    times = r.get("step_times_s") or []
    return (times[r.get("warmup", 1):] or times) if r["kind"] == "controlnet" else times


def markdown(summary: dict) -> str:
    """The committed JSON as the tables of docs/performance.md (mean of the timed steps)."""
    rows = summary["rows"]
    by = {r["name"]: r for r in rows if "error" not in r and "refused" not in r}
    out = ["| job | time | peak RSS (GiB) | notes |", "|---|---|---|---|"]
    for r in rows:
        if "refused" in r or "error" in r:
            out.append(f"| {r['name']} | - | - | {r.get('refused') or r.get('error')} |")
            continue
        kind, peak = r["kind"], f"{r['peak_rss_gib']:.2f}"
        if kind == "controlnet":
            t = _timed(r)
            out.append(f"| {r['name']} | {sum(t) / len(t):.1f} s/step (steps: "
                       + ", ".join(f"{x:.1f}" for x in t) + f") | {peak} | built {r['rss_built_gib']:.2f} GiB; saved "
                       f"for backward {r['saved_for_backward_gib']:.2f} GiB; warm-up {r['step_times_s'][0]:.1f} s |")
        elif kind == "sampling":
            ae = "" if r["ae_extract_peak_gib"] is None else f"; AE extraction peak +{r['ae_extract_peak_gib']:.3f} GiB"
            how = ("hint made inside sampling" if r["path"] == "scg"
                   else f"hint made beforehand in {r['extract_s']:.2f} s{ae}")
            out.append(f"| {r['name']} | {r['sample_s']:.1f} s for {r['steps']} steps | {peak} | {how} |")
        elif kind == "autoencoder":
            t = _timed(r)
            s = sum(t) / len(t)
            out.append(f"| {r['name']} | {r['batch'] / s:.1f} img/s ({s:.2f} s/step) | {peak} | "
                       f"{r['conv_gflop_per_step']:.0f} conv GFLOP/step = {r['conv_gflop_per_step'] / s:.1f} GFLOP/s |")
        else:
            out.append(f"| {r['name']} | {r['gflop_s']:.1f} GFLOP/s | {peak} | best of 5 |")
    ratios = []

    def mean_step(name):
        t = _timed(by[name])
        return sum(t) / len(t)

    for batch in sorted({r["batch"] for r in by.values() if r["kind"] == "controlnet"}):
        authors = f"controlnet authors b{batch}"
        for other in ("ours", "ours-bf16"):
            name = f"controlnet {other} b{batch}"
            if authors in by and name in by:
                ratios.append(f"| {other} / authors, batch {batch} | step time {mean_step(name) / mean_step(authors):.2f}x "
                              f"| peak RSS {by[name]['peak_rss_gib'] / by[authors]['peak_rss_gib']:.2f}x |")
    if "sampling core" in by and "sampling scg" in by:
        core, scg = by["sampling core"], by["sampling scg"]
        ratios.append(f"| sampling scg / core | time {scg['sample_s'] / (core['sample_s'] + core['extract_s']):.3f}x "
                      f"| peak RSS {scg['peak_rss_gib'] - core['peak_rss_gib']:+.3f} GiB |")
    mm = next((r for n, r in by.items() if n.startswith("matmul fp32")), None)
    for name, r in by.items():
        if r["kind"] == "autoencoder" and mm:
            t = _timed(r)
            gf = r["conv_gflop_per_step"] / (sum(t) / len(t))
            ratios.append(f"| {name} | {gf:.1f} conv GFLOP/s = {100 * gf / mm['gflop_s']:.0f}% of the fp32 matmul "
                          f"rate ({mm['gflop_s']:.0f}) | |")
    if ratios:
        out += ["", "| ratio | | |", "|---|---|---|", *ratios]
    parts = [memory_row(r) for r in rows if r["kind"] == "controlnet" and r["name"] in by]
    if parts:
        out += ["", "| recipe | weights as built (measured) | ControlNet grads + AdamW (2 x fp32, counted) | saved for "
                "backward (measured) | working set (peak - the rest) | peak RSS (measured) |", "|---|---|---|---|---|---|"]
        out += [f"| {p['name']} | {p['built']:.2f} | {p['train_state']:.2f} | {p['saved']:.2f} | {p['working']:.2f} | "
                f"{p['peak']:.2f} |" for p in parts]
    return "\n".join(out)


def memory_row(r: dict) -> dict:
    """A ControlNet job's peak split into the memory model's components (GiB)."""
    state = r["params_m"]["controlnet"] * 1e6 * 12 / GIB  # fp32 gradients + two fp32 AdamW moments
    rest = r["rss_built_gib"] + state + r["saved_for_backward_gib"]
    return {"name": r["name"], "built": r["rss_built_gib"], "train_state": state, "saved": r["saved_for_backward_gib"],
            "working": r["peak_rss_gib"] - rest, "peak": r["peak_rss_gib"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/fullsize_bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="matmul,controlnet,sampling,autoencoder",
                    help="comma-separated parts: matmul, controlnet, sampling, autoencoder")
    ap.add_argument("--recipes", default="authors,ours,ours-bf16", help="ControlNet recipes (bench/fullsize_jobs.RECIPES)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="ControlNet training batch sizes")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after 1 warm-up (training jobs)")
    ap.add_argument("--sample-steps", type=int, default=3, help="sampler steps")
    ap.add_argument("--crops", type=int, nargs="+", default=[128, 256], help="autoencoder crops (batch 64)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each child")
    ap.add_argument("--max-gib", type=float, default=16.0, help="refuse (or stop) a job needing more than this")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a job may run")
    ap.add_argument("--dry", action="store_true", help="tiny models, tiny sizes: checks the script runs")
    ap.add_argument("--json", help="write the rows and ratios here")
    ap.add_argument("--table", metavar="JSON", help="print the tables of a --json file as markdown, run nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.table:
        with open(a.table) as fh:
            print(markdown(json.load(fh)))
        return 0
    if a.child:
        return child(json.loads(a.child), a.threads)
    a.only = [p.strip() for p in a.only.split(",") if p.strip()]
    print(f"full-size benchmark on {platform.processor() or platform.machine()} ({os.cpu_count()} CPUs), "
          f"{a.threads} thread(s) a job, {'DRY (tiny models)' if a.dry else 'SD1.5 architecture, random weights'}; "
          f"memory available at start {available_gib():.1f} GiB, cap {a.max_gib:g} GiB", flush=True)
    rows = []
    for job in plan(a):
        row = {"name": name_of(job), **job}
        need, free = fullsize_memory.estimate(job) if not a.dry else 0.5, available_gib()
        row["estimate_gib"], row["available_gib"] = need, free
        if need > min(a.max_gib, free - 1.0):
            row["refused"] = (f"needs about {need:.1f} GiB (memory model), {free:.1f} GiB available, cap {a.max_gib:g} "
                              "GiB: not started")
        else:
            row.update(run_child(job, a.threads, a.max_gib, a.timeout))
        rows.append(row)
        print(line(row), flush=True)
    ratios = summarize(rows)
    for k, v in ratios.items():
        print(f"  {k}: {v:.3f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "threads": a.threads, "dry": a.dry, "rows": rows, "ratios": ratios}, fh, indent=1)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
