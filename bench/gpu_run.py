"""Everything a lent GPU should measure, in at most 8 minutes, written to one JSON file.

    python bench/gpu_run.py --out gpu_run.json          # on a CUDA machine (one GPU)
    python bench/gpu_run.py --dry --out dry.json        # CPU, tiny models, seconds (what CI runs)

Measured, in this order (one process; peak memory reset before each job):

1. the chip's dense matmul rate, bf16 and fp32 (TF32 on, as the trainers set it);
2. the autoencoder trainer (train.autoencoder's step, batch 64, crops 128 and 256), fp32 and bf16
   autocast: images/s and achieved TFLOP/s (convolutions, counted from their shapes) next to the
   measured matmul rate and the data-sheet peak (bench/train_bench.PEAKS);
3. the full-size ControlNet trainer (SD1.5 architecture, random weights) at 512 x 512, batch 4:
   the authors' recipe against ours (bf16, checkpointing, cached latents), and ours in fp32:
   steps/s and ``torch.cuda.max_memory_allocated``, next to the memory model's prediction;
4. sampling at 512 x 512 (20 steps, CFG): SD1.5 + SCG ControlNet with the hint made inside
   sampling against core's ControlNet with the hint made beforehand: time and peak memory.

Jobs still waiting when ``--budget`` seconds have gone are skipped (said so in the JSON); a job
that fails is recorded with its error and the rest go on. The JSON holds every job's dict and the
ratios; docs/performance.md says how to fill the README's GPU table from it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "tests", "lib")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench import fullsize_jobs, fullsize_memory  # noqa: E402  (the checkout on the path first)
from bench.train_bench import peak_for  # noqa: E402


def plan(dry: bool) -> list[tuple[str, object, dict]]:
    """(name, function, keyword arguments) of every job, in order."""
    spec, res, batch = ("tiny", 64, 2) if dry else ("sd15", 512, 4)
    steps, warmup = (1, 1) if dry else (10, 3)
    jobs: list[tuple[str, object, dict]] = [
        (f"matmul {d}", fullsize_jobs.matmul_peak, {"n": 256 if dry else 8192, "dtype": d, "reps": 3 if dry else 10})
        for d in ("bf16", "fp32")]
    for crop in ([48] if dry else [128, 256]):
        for precision in ("bf16", "fp32"):
            jobs.append((f"autoencoder {crop} {precision}", fullsize_jobs.ae_train,
                         {"batch": 4 if dry else 64, "crop": crop, "precision": precision, "steps": 2 if dry else 20,
                          "warmup": 1 if dry else 3}))
    for recipe in ("ours-bf16", "authors", "ours"):
        jobs.append((f"controlnet {recipe} b{batch}", fullsize_jobs.controlnet_train,
                     {"recipe": recipe, "spec": spec, "res": res, "batch": batch, "steps": steps, "warmup": warmup}))
    for path in ("scg", "core"):
        jobs.append((f"sampling {path}", fullsize_jobs.sampling,
                     {"path": path, "spec": spec, "res": res, "steps": 2 if dry else 20}))
    return jobs


def ratios(results: dict, device_name: str) -> dict:
    """Speed-ups, memory and fractions of peak from the jobs that ran."""
    ok = {k: v for k, v in results.items() if "error" not in v and "skipped" not in v}
    out: dict = {}
    _, sheet = peak_for(device_name)
    for name, r in ok.items():
        if name.startswith("autoencoder"):
            mm = ok.get(f"matmul {r['precision']}")
            if mm:
                out[f"{name}: conv TFLOP/s / measured matmul"] = r["conv_gflop_s"] / mm["gflop_s"]
            if sheet:
                peak = sheet[0] if r["precision"] == "bf16" else sheet[1]
                out[f"{name}: conv TFLOP/s / data-sheet peak ({peak:g})"] = r["conv_gflop_s"] / 1e3 / peak
    batch = next((r["batch"] for n, r in ok.items() if n.startswith("controlnet")), None)
    authors = ok.get(f"controlnet authors b{batch}")
    for recipe in ("ours-bf16", "ours"):
        ours = ok.get(f"controlnet {recipe} b{batch}")
        if ours and authors:
            out[f"{recipe} vs authors: steps/s"] = authors["s_per_step"] / ours["s_per_step"]
            if "cuda_peak_gib" in ours:
                out[f"{recipe} vs authors: peak memory"] = ours["cuda_peak_gib"] / authors["cuda_peak_gib"]
    scg, core = ok.get("sampling scg"), ok.get("sampling core")
    if scg and core:
        out["sampling scg vs core: time"] = scg["sample_s"] / (core["sample_s"] + core["extract_s"])
        if "cuda_peak_gib" in scg:
            out["sampling scg - core: peak memory GiB"] = scg["cuda_peak_gib"] - core["cuda_peak_gib"]
    return out


def free_memory(device: torch.device) -> None:
    if "comfy.model_management" in sys.modules:
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gpu_run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_run.json", help="the JSON file to write (default gpu_run.json)")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny models: checks the script end to end in seconds")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which waiting jobs are skipped")
    ap.add_argument("--only", help="comma-separated name prefixes of the jobs to run (default: all)")
    a = ap.parse_args(argv)
    if not a.dry and not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False); use --dry on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if a.dry else torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as both trainers set them
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} (dry run)"
    jobs = plan(a.dry)
    if a.only:
        wanted = [w.strip() for w in a.only.split(",") if w.strip()]
        jobs = [j for j in jobs if any(j[0].startswith(w) for w in wanted)]
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    print(f"gpu_run on {name}: {len(jobs)} jobs, budget {a.budget:g} s", flush=True)
    for job_name, fn, kw in jobs:
        elapsed = time.perf_counter() - t0
        if elapsed > a.budget:
            results[job_name] = {"skipped": f"out of time ({elapsed:.0f} s of {a.budget:g} s used)"}
            print(f"  {job_name}: skipped (out of time)", flush=True)
            continue
        free_memory(device)
        t = time.perf_counter()
        try:
            results[job_name] = fn(**kw, device=str(device))
        except Exception as e:  # one failing job must not cost the others their figures
            results[job_name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        results[job_name]["job_wall_s"] = time.perf_counter() - t
        print(f"  {job_name}: {json.dumps({k: v for k, v in results[job_name].items() if k != 'traceback'})[:400]}",
              flush=True)
    free_memory(device)
    batch = 2 if a.dry else 4
    summary = {
        "device": name, "dry": a.dry, "torch": torch.__version__, "wall_s": time.perf_counter() - t0,
        "data_sheet_peak_tflops": dict(zip(("bf16", "tf32", "fp32"), peak_for(name)[1] or ())),
        "results": results, "ratios": ratios(results, name),
        "memory_model_prediction": fullsize_memory.cuda_prediction("ours-bf16", batch=4, res=512),
        "batch": batch,
    }
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v:.3f}")
    with open(a.out, "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"wrote {a.out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
