"""Proof at small scale: one any-subset SCG ControlNet against per-group ControlNets, in one command.

    python bench/subset_proof.py [--out DIR]    # 8.5 min wall on a shared 2-core CPU (142 s of CPU time)

What it does, all on the CPU with tiny SD1.5-architecture models (ComfyUI's classes, random
frozen base: 64-channel UNet, 2-layer CLIP, TAESD VAE) and a seeded random 16-module SCG
autoencoder with the authors' ten groups:

1. writes a synthetic image set: procedural images (a colour gradient plus random coloured
   rectangles and discs with hard edges), ``--train-images`` for training and ``--eval-images``
   others for the evaluation, all with the same caption;
2. trains, for the same ``--steps`` with the same recipe, a per-group ControlNet for HC0
   (colour) and one for HC1 (brightness), and one any-subset ControlNet (``--subsets``, pool
   all 16 modules, the default draw probabilities);
3. evaluates with ``python -m train.evaluate`` (fewer sampler steps than the authors' 50, and a
   lower CFG, for speed and because a random text encoder makes CFG meaningless; both stated in
   the table): each group with its per-group model, each group with the any-subset model, no
   control, and the any-subset model given group G's hint with the presence mask of the other
   group (HC0 <-> HC1), which shows whether the mask is used;
4. prints the table and the verdicts, and writes them to ``DIR/proof.md`` and ``DIR/proof.json``.

Claims checked (fixed before the first run): for each group G, (a) both models beat no control
on PSNR colour; (b) the any-subset model given G keeps at least half of the per-group model's
PSNR-colour gain over no control; (c) swapping the presence mask lowers the any-subset model's
PSNR colour for G by at least 10 % of its gain over no control. The numbers of tiny random
models say nothing about real SCG quality; they show the mechanism works end to end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "lib")]  # the pack, and the one tiny SD1.5 builder

GROUPS = ("HC0", "HC1")
PROMPT = "shapes"


def make_images(folder: Path, n: int, res: int, seed: int) -> None:
    """``n`` procedural RGB images ``res`` x ``res``: a random two-colour gradient and 2..4 random
    rectangles or discs of random colours (hard edges), each with the caption :data:`PROMPT`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / (res - 1)
    for i in range(n):
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
        for _ in range(rng.integers(2, 5)):
            colour = rng.uniform(0, 1, 3)
            cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
            if rng.random() < 0.5:
                inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.5, 1.5))
            else:
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[inside] = colour
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(PROMPT + "\n")


def train(base: str, ae: str, data: Path, out: Path, modules: str, a, *extra) -> dict:
    from train.controlnet import build_parser, run

    argv = ["--base", base, "--autoencoder", ae, "--modules", modules, "--data", str(data), "--out", str(out),
            "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
            "--lr", str(a.lr), "--seed", "0", "--workers", "0", "--samples", "0", "--eval-images", "4",
            "--sample-every", "0", "--save-every", "100000", "--log-every", "25", "--no-progress", "--precision",
            "fp32", "--no-gradient-checkpointing", "--precompute", "--cache-dir", str(out.parent / ".cache"), "--cpu",
            *extra]
    t0 = time.time()
    summary = run(build_parser().parse_args(argv))
    summary["train_seconds"] = time.time() - t0
    return summary


def evaluate(base: str, data: Path, out: Path, controlnets: list[str], groups: str, a) -> dict:
    from train.evaluate import build_parser, run

    argv = ["--checkpoint", base, "--images", str(data), "--out", str(out), "--resolution", str(a.resolution),
            "--steps", str(a.sample_steps), "--cfg", str(a.cfg), "--groups", groups, "--device", "cpu",
            "--no-progress", "--seed", "0"]
    for c in controlnets:
        argv += ["--controlnet", c]
    return run(build_parser().parse_args(argv))


def swapped_mask_evaluation(base: str, data: Path, out: Path, controlnet: str, a) -> dict:
    """The any-subset model given group G's hint but the presence mask of the other group."""
    from scg_models.subsets import subset_input
    from train import evaluate as ev

    real = ev.hint_input
    other = {GROUPS[0]: GROUPS[1], GROUPS[1]: GROUPS[0]}

    def swapped(control, selection, images):
        if control.kind != "any_subset":
            return real(control, selection, images)
        ae = control.ae
        p = next(ae.parameters())
        return subset_input(ae, images.to(p.device), [ae.resolve_modules(selection)] * images.shape[0],
                            masks=[ae.resolve_modules(other[selection])] * images.shape[0])

    ev.hint_input = swapped
    try:
        return evaluate(base, data, out, [controlnet], ",".join(GROUPS), a)
    finally:
        ev.hint_input = real


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="scg_subset_proof", help="work folder (default ./scg_subset_proof)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train-images", type=int, default=32)
    p.add_argument("--eval-images", type=int, default=8)
    p.add_argument("--steps", type=int, default=300, help="training steps of every model")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sample-steps", type=int, default=8, help="DDIM steps of the evaluation (authors: 50)")
    p.add_argument("--cfg", type=float, default=1.0, help="CFG of the evaluation (authors: 9.1)")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, ~/comfy/ComfyUI)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # the fastest on a shared machine: more threads contend with other jobs
    # random tiny weights produce subnormal floats, which make CPU arithmetic many times slower (real
    # checkpoints do not); flushing them to zero changes no result beyond float32 rounding
    torch.set_flush_denormal(True)
    t_start = time.time()

    from scg_models import ModularAutoencoder, save_autoencoder
    from scg_testing import tiny_sd15
    from train import sd15

    sd15.import_comfy(a.comfyui, cpu=True)
    tiny_sd15.install()
    out = Path(a.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    make_images(out / "data" / "train", a.train_images, a.resolution, seed=1)
    make_images(out / "data" / "eval", a.eval_images, a.resolution, seed=2)
    base = tiny_sd15.save_checkpoint(tiny_sd15.build_base(seed=0), out / "tiny_sd15.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_autoencoder(ModularAutoencoder(), out / "ae.safetensors")
    ae = str(out / "ae.safetensors")

    runs = {}
    for g in GROUPS:
        runs[g] = train(base, ae, out / "data" / "train", out / "models" / f"{g}.safetensors", g, a)
        print(f"trained per-group {g}: {runs[g]['train_seconds']:.0f} s, eval loss {runs[g]['first_eval_loss']:.4f} "
              f"-> {runs[g]['last_eval_loss']:.4f}", file=sys.stderr)
    runs["any"] = train(base, ae, out / "data" / "train", out / "models" / "any.safetensors", "all", a, "--subsets")
    print(f"trained any-subset: {runs['any']['train_seconds']:.0f} s, eval loss {runs['any']['first_eval_loss']:.4f} "
          f"-> {runs['any']['last_eval_loss']:.4f}", file=sys.stderr)

    models = out / "models"
    t_eval = time.time()
    per_group = evaluate(base, out / "data" / "eval", out / "eval_per_group",
                         [f"{g}={models / (g + '.safetensors')}" for g in GROUPS], ",".join(GROUPS) + ",none", a)
    any_subset = evaluate(base, out / "data" / "eval", out / "eval_any", [str(models / "any.safetensors")],
                          ",".join(GROUPS), a)
    swapped = swapped_mask_evaluation(base, out / "data" / "eval", out / "eval_swapped", str(models / "any.safetensors"),
                                      a)
    eval_seconds = time.time() - t_eval

    def metrics(report, selection):
        return next(r["metrics"] for r in report["rows"] if r["selection"] == selection)

    none = metrics(per_group, "none")
    rows, verdicts = [], []
    keys = ("psnr_grey", "psnr_colour", "ssim_grey", "ssim_colour")
    rows.append(("none", "no control", none))
    for g in GROUPS:
        pg, an, sw = metrics(per_group, g), metrics(any_subset, g), metrics(swapped, g)
        rows += [(g, f"per-group {g}", pg), (g, "any-subset", an),
                 (g, f"any-subset, mask of {GROUPS[1 - GROUPS.index(g)]}", sw)]
        gain_pg, gain_any = pg["psnr_colour"] - none["psnr_colour"], an["psnr_colour"] - none["psnr_colour"]
        drop = an["psnr_colour"] - sw["psnr_colour"]
        verdicts += [
            (f"{g}: per-group beats no control (PSNR colour +{gain_pg:.2f} dB)", gain_pg > 0),
            (f"{g}: any-subset beats no control (PSNR colour +{gain_any:.2f} dB)", gain_any > 0),
            (f"{g}: any-subset keeps >= 50% of the per-group gain ({gain_any:.2f} of {gain_pg:.2f} dB)",
             gain_pg > 0 and gain_any >= 0.5 * gain_pg),
            (f"{g}: the swapped mask costs >= 10% of the any-subset gain ({drop:.2f} dB of {gain_any:.2f})",
             gain_any > 0 and drop >= 0.1 * gain_any),
        ]
    head = ("| selection | ControlNet | PSNR grey (dB) | PSNR colour (dB) | SSIM grey | SSIM colour |\n"
            "|---|---|---|---|---|---|")
    lines = [head] + [f"| `{s}` | {m} | " + " | ".join(f"{v[k]:.2f}" if k.startswith("psnr") else f"{v[k]:.4f}"
                                                       for k in keys) + " |" for s, m, v in rows]
    total = time.time() - t_start
    setup = (f"{a.train_images} training and {a.eval_images} evaluation images, {a.resolution}x{a.resolution} px; "
             f"every ControlNet {a.steps} steps, batch {a.batch_size}, AdamW lr {a.lr}, fp32, seed 0; evaluation "
             f"DDIM {a.sample_steps} steps (authors: 50), CFG {a.cfg} (authors: 9.1), one prompt; training "
             + ", ".join(f"{k} {v['train_seconds']:.0f} s" for k, v in runs.items())
             + f"; evaluation {eval_seconds:.0f} s; total {total:.0f} s ({os.cpu_count()} CPU cores, "
             f"torch threads {torch.get_num_threads()}, subnormals flushed)")
    text = "\n".join(["Setup: " + setup, "", *lines, "", *[f"- [{'x' if ok else ' '}] {v}" for v, ok in verdicts]])
    (out / "proof.md").write_text(text + "\n", encoding="utf-8")
    (out / "proof.json").write_text(json.dumps({"setup": setup, "rows": [
        {"selection": s, "controlnet": m, **v} for s, m, v in rows], "verdicts": [
        {"claim": v, "holds": ok} for v, ok in verdicts], "training": {
        k: {x: v[x] for x in ("first_eval_loss", "last_eval_loss", "train_seconds")} for k, v in runs.items()}},
        indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
