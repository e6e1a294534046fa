"""Speed and memory of the SCG ControlNet trainer: the authors' recipe against ours, in one run.

    python bench/controlnet_train_bench.py           # CUDA: full SD1.5 architecture (random weights), 512^2, batch 4
    python bench/controlnet_train_bench.py --cpu     # CPU: the same comparison on the tiny SD1.5-architecture base

Recipes (every one runs ``train.controlnet.Trainer.step``: SCG hint, eps-loss, backward, AdamW):

* ``authors``  fp32, no gradient checkpointing, latents and text embeddings encoded every step
  with the VAE and CLIP (as the authors' Lightning code does);
* ``ours``     bf16 autocast with the frozen UNet stored in bf16, gradient checkpointing,
  latents and text embeddings from the cache (``--precompute``);
* ``ours-nockpt`` the same without checkpointing (the memory/speed trade, for reference).

Targets (issue 5): ``ours`` at least 2x the authors' steps/s, and at most 24 GiB peak at
batch 4. Peak = ``torch.cuda.max_memory_allocated`` over the measured steps (model weights
included). Weights are random: speed and memory do not depend on their values. A benchmark,
never a test: numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "lib")]  # the pack, and the one tiny/random SD1.5 builder

RECIPES = {
    "authors": {"precision": "fp32", "checkpointing": False, "cache": False},
    "ours": {"precision": "bf16", "checkpointing": True, "cache": True},
    "ours-nockpt": {"precision": "bf16", "checkpointing": False, "cache": True},
}
TARGET_SPEEDUP, TARGET_PEAK_GIB = 2.0, 24.0


def synthetic_batch(k: int, batch: int, images: torch.Tensor, captions: list[str], cached: dict | None) -> dict:
    """Training batch ``k`` of the benchmarks: ``batch`` images taken in turn from ``images``
    (Nx3xRxR), with their cached ``latent``/``text`` when ``cached`` holds them, else captions."""
    idx = [(k * batch + j) % images.shape[0] for j in range(batch)]
    b = {"position": torch.tensor([k * batch + j for j in range(batch)]), "image": images[idx]}
    if cached is not None:
        b.update(latent=cached["latent"][idx], text=cached["text"][idx])
    else:
        b["caption"] = [captions[i] for i in idx]
    return b


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_recipe(name, base, ae, modules, images, captions, device, steps, warmup, batch):
    import comfy.model_management as mm

    from train import sd15
    from train.controlnet import Trainer

    cfg = RECIPES[name]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = name != "authors"  # ours: fixed shapes -> cuDNN autotuning (the trainer's default)
    bf16 = cfg["precision"] == "bf16"
    base.unet.to(torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32)
    controlnet = sd15.build_controlnet(base, seed=0)
    trainer = Trainer(base, ae, modules, controlnet, device=device, precision=cfg["precision"],
                      checkpointing=cfg["checkpointing"], lr=1e-5)
    cached = None
    if cfg["cache"]:  # what --precompute writes once; read from memory here (the loader overlaps disk reads)
        cached = {"latent": sd15.encode_images(base, images), "text": sd15.encode_text(base, captions)}
        if device.type == "cuda":
            cached = {k: v.pin_memory() for k, v in cached.items()}
        mm.unload_all_models()  # the VAE and CLIP are not needed while training from the cache
        base.model.to(device)

    def batch_at(k):
        return synthetic_batch(k, batch, images, captions, cached)

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    for k in range(warmup):
        losses.append(trainer.step([batch_at(k)], 1e-5))
    _sync(device)
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        losses.append(trainer.step([batch_at(k)], 1e-5))
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"recipe": name, **cfg, "steps": steps, "s_per_step": dt / steps, "steps_per_s": steps / dt,
           "images_per_s": steps * batch / dt, "loss_first": losses[0], "loss_last": losses[-1]}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del trainer, controlnet
    cached = None  # frees the cached latents (batch_at still refers to the name)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (default when CUDA is missing)")
    ap.add_argument("--spec", choices=["auto", "sd15", "tiny"], default="auto",
                    help="auto: the full SD1.5 architecture on CUDA, the tiny one on the CPU")
    ap.add_argument("--resolution", type=int, help="default 512 (sd15), 64 (tiny)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, help="measured steps per recipe (default 10 on CUDA, 3 on the CPU)")
    ap.add_argument("--warmup", type=int, help="unmeasured steps first (default 3 on CUDA, 1 on the CPU)")
    ap.add_argument("--recipes", default="authors,ours,ours-nockpt", help=f"comma-separated: {', '.join(RECIPES)}")
    ap.add_argument("--comfyui", help="ComfyUI checkout (default: as the trainer finds it)")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")

    from train import sd15

    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    host = sd15.import_comfy(a.comfyui, cpu=not cuda)
    import comfy.ldm.modules.attention as attention

    from scg_models import ModularAutoencoder

    spec_name = a.spec if a.spec != "auto" else ("sd15" if cuda else "tiny")
    from scg_testing import tiny_sd15

    spec = tiny_sd15.SD15_SPEC if spec_name == "sd15" else tiny_sd15.TINY_SPEC
    res = a.resolution or (512 if spec_name == "sd15" else 64)
    steps = a.steps or (10 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    t0 = time.perf_counter()
    base = tiny_sd15.build_base(spec, seed=0)
    build_s = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ae = ModularAutoencoder()
        n = 2 * a.batch
        images = F.interpolate(torch.rand(n, 3, res // 16, res // 16), size=(res, res), mode="bicubic",
                               align_corners=False).clamp(0, 1)
    captions = [f"a photograph of thing number {i}, detailed" for i in range(n)]
    modules = ae.resolve_modules("HC0")
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6
              for k, m in (("unet", base.unet), ("clip", base.clip.cond_stage_model),
                           ("vae", base.vae.first_stage_model))}
    print(f"device: {name} ({device}); torch {torch.__version__}; ComfyUI {host}; attention "
          f"{getattr(attention.optimized_attention, '__name__', '?')}; "
          f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn tf32 {torch.backends.cudnn.allow_tf32}")
    print(f"models: {spec_name} architecture, random weights (UNet {params['unet']:.1f} M, CLIP {params['clip']:.1f} M, "
          f"VAE {params['vae']:.1f} M params; built in {build_s:.1f} s); {res}x{res}, batch {a.batch}, "
          f"hint {ae.output_size(res, res)[0]}^2 of HC0; {warmup} warm-up + {steps} measured steps per recipe")
    results = []
    for r in recipes:
        out = run_recipe(r, base, ae, modules, images, captions, device, steps, warmup, a.batch)
        results.append(out)
        mem = f", peak {out['peak_gib']:.2f} GiB (reserved {out['peak_reserved_gib']:.2f})" if cuda else ""
        print(f"  {r:12s} {out['precision']}, checkpointing {'on ' if out['checkpointing'] else 'off'}, "
              f"{'cached latents' if out['cache'] else 'encode per step'}: {out['steps_per_s']:.3f} steps/s "
              f"({out['s_per_step']:.3f} s/step, {out['images_per_s']:.2f} img/s){mem}", flush=True)
    by = {o["recipe"]: o for o in results}
    summary = {"device": name, "spec": spec_name, "resolution": res, "batch": a.batch, "results": results}
    if "authors" in by and "ours" in by:
        speedup = by["ours"]["steps_per_s"] / by["authors"]["steps_per_s"]
        summary["speedup"] = speedup
        line = f"ours vs authors: {speedup:.2f}x the step rate (target >= {TARGET_SPEEDUP:g}x"
        line += (": met)" if speedup >= TARGET_SPEEDUP else ": NOT met)")
        if cuda:
            peak = by["ours"]["peak_gib"]
            line += (f"; ours peaks at {peak:.2f} GiB (target <= {TARGET_PEAK_GIB:g} GiB: "
                     f"{'met' if peak <= TARGET_PEAK_GIB else 'NOT met'}); the authors' at {by['authors']['peak_gib']:.2f} GiB")
        else:
            line += "; CPU run: proves the script runs, the targets are for a GPU at 512^2 with the full models"
        print(line)
    print("JSON " + json.dumps(summary))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
