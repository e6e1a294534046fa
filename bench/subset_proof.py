"""Proof at small scale: one any-subset SCG ControlNet against per-group ControlNets, in one command.

    python bench/subset_proof.py [--out DIR]    # about 6 min on this project's 2-core CPU

What it does, all on the CPU, with tiny SD1.5-architecture models (ComfyUI's classes) and the
shipped SCG autoencoder (scg_models/weights/scg_default.safetensors: HC0 colour, HC1 brightness):

1. writes a synthetic image set: procedural images (a colour gradient plus random coloured
   rectangles and discs with hard edges), ``--train-images`` for training and ``--eval-images``
   others for the evaluation, all with the same caption;
2. trains a tiny base on the training images, as SD1.5 is trained before any ControlNet: a small
   KL VAE (SD1.5's kind, 8x down, 4 latent channels, latents scaled to SD1.5's unit std), then the
   64-channel UNet as an eps-predictor (the 2-layer CLIP stays random: one caption). Without this
   the latents of a random VAE are almost constant and every ControlNet learns a correction of the
   random UNet that does not depend on its input;
3. trains, for the same ``--steps`` with the same recipe (three processes at once, one thread
   each), a per-group ControlNet for HC0 and one for HC1, and one any-subset ControlNet
   (``--subsets``, pool ``--pool``, default all 16 modules, the default draw probabilities);
4. evaluates with ``python -m train.evaluate`` (8 sampler steps instead of the authors' 50 and
   CFG 1 instead of 9.1, for speed and because one caption makes guidance meaningless; both stated
   in the table): each group with its per-group model, each group with the any-subset model, no
   control, and the any-subset model given group G's hint with the presence mask of the other
   group (HC0 <-> HC1); then the held-out denoising loss (the training objective, fixed noise) of
   the same conditions and of the any-subset model over random subsets, with each subset's own
   mask and with another subset's mask;
5. prints the tables and the verdicts, and writes them to ``DIR/proof.md`` and ``DIR/proof.json``.

Claims (a)-(c) were fixed before the first run of this script (its first version, on a random
base); (d) was added after trial runs in which (c) did not hold (see docs/any_subset.md). For each
group G: (a) both models beat no control on PSNR colour; (b) the any-subset model given G keeps at
least half of the per-group model's PSNR-colour gain over no control; (c) swapping the presence
mask lowers the any-subset model's PSNR colour for G by at least 10 % of its gain over no control.
(d) Over random subsets, another subset's mask costs at least 10 % of the any-subset model's
held-out denoising-loss gain over no control. Numbers of tiny models say nothing about real SCG
quality; they show whether the mechanism works end to end.
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


#: ``--lighting``: the range of the darkest and of the brightest end of the light over an image
LIGHTING = {"none": None, "moderate": ((0.35, 0.65), (0.75, 1.0)), "strong": ((0.1, 0.5), (0.7, 1.0))}


def make_images(folder: Path, n: int, res: int, seed: int, lighting: str = "none") -> None:
    """``n`` procedural RGB images ``res`` x ``res``: a random two-colour gradient and 2..4 random
    rectangles or discs of random colours (hard edges), each with the caption :data:`PROMPT`.
    ``lighting`` (:data:`LIGHTING`) other than "none": lit by a random linear light from dark to
    bright, so that brightness varies over the image apart from the colours."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / (res - 1)

    def ramp():  # 0 -> 1 across the image in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        return ((t - t.min()) / max(t.max() - t.min(), 1e-6))[..., None]

    for i in range(n):
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        t = ramp()
        img = a * (1 - t) + b * t
        for _ in range(rng.integers(2, 5)):
            colour = rng.uniform(0, 1, 3)
            cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
            if rng.random() < 0.5:
                inside = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.5, 1.5))
            else:
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            img[inside] = colour
        if LIGHTING[lighting]:
            (d0, d1), (b0, b1) = LIGHTING[lighting]
            dark, bright = rng.uniform(d0, d1), rng.uniform(b0, b1)
            img = img * (dark + (bright - dark) * ramp())
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(PROMPT + "\n")


def load_images(folder: Path) -> torch.Tensor:
    """The ``.png`` images of ``folder`` in name order, Nx3xHxW float in [0, 1]."""
    from scg_models.imaging import load_image

    return torch.stack([torch.from_numpy(load_image(f, np.float32)).permute(2, 0, 1)
                        for f in sorted(folder.glob("*.png"))])


#: The proof's base: the tiny UNet and CLIP of the test tiers, and a small KL VAE of SD1.5's kind
#: (AutoencoderKL, 8x down, 4 latent channels; 32-32-64-64 channels instead of 128-256-512-512).
PROOF_VAE = {"kind": "kl", "embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}


def pretrain_vae(base, folder: Path, steps: int, lr: float, batch_size: int, seed: int = 0) -> list[float]:
    """Train the base's VAE (in place) as an autoencoder of the images in ``folder`` (MSE on the
    posterior mean), then rescale its latents (exactly, in the 1x1 convolutions around them) so
    that the UNet sees about unit std, as SD1.5's VAE with its 0.18215 factor gives. Returns the
    reconstruction MSE ([-1, 1] pixels) of every 50th step."""
    import torch.nn.functional as F

    images = load_images(folder) * 2 - 1
    vae = base.vae.first_stage_model
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)]
        z = vae.encode(x)
        loss = F.mse_loss(vae.decode(z), x)
        opt.zero_grad(set_to_none=True)
        (loss + 1e-4 * z.pow(2).mean()).backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        c = 1.0 / (base.model.latent_format.scale_factor * float(vae.encode(images[:256]).std()))
        k = vae.quant_conv.out_channels // 2  # the posterior's mean channels come first
        vae.quant_conv.weight[:k] *= c
        vae.quant_conv.bias[:k] *= c
        vae.post_quant_conv.weight /= c
    return losses


def pretrain_base(base, folder: Path, steps: int, lr: float, batch_size: int, seed: int = 0) -> list[float]:
    """Train the tiny UNet of ``base`` (in place) as an eps-predictor of the images in ``folder``
    with the one caption, so that "no control" is a working denoiser of this image family and what a
    ControlNet adds on top of it has to come from its input. Returns the loss of every 50th step."""
    import torch.nn.functional as F

    from train import sd15

    images = load_images(folder)
    latents = sd15.encode_images(base, images)
    context = sd15.encode_text(base, [PROMPT])
    unet, ms = base.unet, base.model.model_sampling
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        x0, noise = latents[idx], torch.randn((batch_size, *latents.shape[1:]), generator=g)
        sigma = ms.sigmas[torch.randint(0, len(ms.sigmas), (batch_size,), generator=g)]
        x_t = ms.noise_scaling(sigma, noise, x0)
        eps = unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma).float(), context=context.expand(batch_size, -1, -1),
                   transformer_options={})
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
    unet.eval().requires_grad_(False)
    return losses


def train_argv(base: str, ae: str, data: Path, out: Path, modules: str, a, *extra) -> list[str]:
    """The ``train.controlnet`` command line of one model of the proof (all share the recipe)."""
    return ["--base", base, "--autoencoder", ae, "--modules", modules, "--data", str(data), "--out", str(out),
            "--resolution", str(a.resolution), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
            "--lr", str(a.lr), "--seed", "0", "--workers", "0", "--samples", "0", "--eval-images", "4",
            "--sheet-every", "0", "--ckpt-every", "100000", "--log-every", "25", "--no-progress", "--precision",
            "fp32", "--no-gradient-checkpointing", "--precompute", "--cache-dir", str(out.with_suffix(".cache")),
            "--device", "cpu", *(["--comfyui", a.comfyui] if a.comfyui else []), *extra]


def train_all(jobs: dict[str, list[str]], logs: Path) -> dict[str, dict]:
    """Train every model at once, one single-threaded child process each (this script with
    ``--train-child``); returns each one's summary (the trainer's ``end`` record)."""
    import subprocess

    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "lib"), os.environ.get("PYTHONPATH", "")])}
    procs = {}
    for name, argv in jobs.items():
        with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
            procs[name] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--train-child", *argv],
                                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    summaries = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            for other in procs.values():
                other.kill()
            raise SystemExit(f"training {name} failed (exit {proc.returncode}); see {logs / (name + '.log')}")
        out = Path(jobs[name][jobs[name].index("--out") + 1])
        with open(out.with_suffix(".train") / "metrics.jsonl", encoding="utf-8") as fh:
            summaries[name] = [r for r in map(json.loads, fh) if r.get("event") == "end"][-1]
    return summaries


def train_child(argv: list[str]) -> int:
    """One training of :func:`train_all`, in this process: one thread, subnormals flushed, tiny-base hook."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from scg_testing import tiny_sd15
    from train.controlnet import train

    tiny_sd15.install()
    return train(argv)


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


@torch.no_grad()
def denoising_losses(base_path: str, models: Path, folder: Path, pool: str, draws: int = 4) -> dict:
    """Held-out eps-prediction MSE (the training objective) of every condition, on the images in
    ``folder`` at the trainer's evaluation timesteps, one fixed noise per image and timestep:
    the base alone, each per-group model with its hint, the any-subset model with hint and mask
    of G, and with G's hint but the other group's mask; and over ``draws`` random subsets per image
    (drawn from ``pool`` as in training, another seed), the any-subset model with each subset's
    mask and with the mask of another random subset. Returns ``{condition: loss}``."""
    from scg_models import formats
    from scg_models.subsets import SubsetPolicy, draw_subset, input_channels, subset_input
    from train import sd15
    from train.controlnet import EVAL_TIMESTEPS

    base = sd15.load_base(base_path)
    unet, ms = base.unet.eval(), base.model.model_sampling
    images = load_images(folder)
    latents = sd15.encode_images(base, images)
    context = sd15.encode_text(base, [PROMPT]).expand(len(images), -1, -1)

    def controlnet(name):
        cn = formats.load_controlnet_file(models / f"{name}.safetensors")
        width = cn.state_dict["input_hint_block.0.weight"].shape[1]
        net = sd15.build_controlnet(base.unet_config, hint_channels=width)
        net.load_state_dict({k: v.float() for k, v in cn.state_dict.items()})
        return net.eval(), cn.autoencoder.eval()

    def loss(net, hint):
        total = 0.0
        for t in EVAL_TIMESTEPS:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(7919 * t))
            sigma = ms.sigmas[torch.full((len(images),), t)]
            x_t = ms.noise_scaling(sigma, noise, latents)
            if net is None:
                eps = unet(ms.calculate_input(sigma, x_t), ms.timestep(sigma).float(), context=context,
                           transformer_options={})
            else:
                eps = sd15.predict_noise(unet, net, ms, x_t, sigma, context, hint)
            total += float(torch.nn.functional.mse_loss(eps, noise))
        return total / len(EVAL_TIMESTEPS)

    out = {"none": loss(None, None)}
    any_net, ae = controlnet("any")
    assert any_net.input_hint_block[0].in_channels == input_channels(ae.n_vector)
    for g in GROUPS:
        net, pg_ae = controlnet(g)
        out[f"per-group {g}"] = loss(net, pg_ae.hint(images, pg_ae.resolve_modules(g)))
        mods, other = ae.resolve_modules(g), ae.resolve_modules(GROUPS[1 - GROUPS.index(g)])
        out[f"any-subset {g}"] = loss(any_net, subset_input(ae, images, [mods] * len(images)))
        out[f"any-subset {g}, mask of other"] = loss(any_net, subset_input(ae, images, [mods] * len(images),
                                                                            masks=[other] * len(images)))
    policy, pool_modules, position = SubsetPolicy(), ae.resolve_modules(pool), 0
    right, wrong = [], []
    for _ in range(draws):
        hints, masks = [], []
        while len(hints) < len(images):
            s, t = (draw_subset(policy, pool_modules, ae.groups, 12345, position + k) for k in (0, 1))
            position += 2
            if s and s != t:
                hints.append(s), masks.append(t)
        right.append(loss(any_net, subset_input(ae, images, hints)))
        wrong.append(loss(any_net, subset_input(ae, images, hints, masks=masks)))
    out["any-subset random subsets"] = sum(right) / draws
    out["any-subset random subsets, mask of another"] = sum(wrong) / draws
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-child"]:
        return train_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="scg_subset_proof", help="work folder (default ./scg_subset_proof)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--eval-images", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000, help="training steps of every model")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sample-steps", type=int, default=8, help="DDIM steps of the evaluation (authors: 50)")
    p.add_argument("--cfg", type=float, default=1.0, help="CFG of the evaluation (authors: 9.1)")
    p.add_argument("--base-steps", type=int, default=1000, help="training steps of the tiny base UNet")
    p.add_argument("--vae-steps", type=int, default=300, help="training steps of the tiny base VAE")
    p.add_argument("--base", help="the tiny base of an earlier run (DIR/tiny_sd15.safetensors): skips its training")
    p.add_argument("--base-lr", type=float, default=1e-3)
    p.add_argument("--autoencoder", default=os.path.join(ROOT, "scg_models", "weights", "scg_default.safetensors"))
    p.add_argument("--lighting", choices=sorted(LIGHTING), default="none",
                   help="light the images from dark to bright (default none: flat light)")
    p.add_argument("--pool", default="all", help="modules the any-subset model draws its subsets from")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH, ~/comfy/ComfyUI)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # the fastest on a shared machine: more threads contend with other jobs
    # random tiny weights produce subnormal floats, which make CPU arithmetic many times slower (real
    # checkpoints do not); flushing them to zero changes no result beyond float32 rounding
    torch.set_flush_denormal(True)
    t_start = time.time()

    from scg_testing import tiny_sd15
    from train import sd15

    sd15.import_comfy(a.comfyui, cpu=True)
    tiny_sd15.install()
    out = Path(a.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    make_images(out / "data" / "train", a.train_images, a.resolution, seed=1, lighting=a.lighting)
    make_images(out / "data" / "eval", a.eval_images, a.resolution, seed=2, lighting=a.lighting)
    t_base = time.time()
    vae_losses, base_losses = [], []
    if a.base:  # a base of an earlier run of this script (same images, same recipe)
        base = a.base
    else:
        spec = {**tiny_sd15.TINY_SPEC, "vae": PROOF_VAE}
        tiny = tiny_sd15.build_base(spec, seed=0)
        torch.set_num_threads(os.cpu_count() or 1)  # nothing else runs meanwhile
        vae_losses = pretrain_vae(tiny, out / "data" / "train", a.vae_steps, 2e-3, 16)
        print(f"VAE: {a.vae_steps} steps, {time.time() - t_base:.0f} s, loss {vae_losses[0]:.4f} -> "
              f"{vae_losses[-1]:.4f}", file=sys.stderr)
        base_losses = pretrain_base(tiny, out / "data" / "train", a.base_steps, a.base_lr, 8)
        torch.set_num_threads(1)
        base = tiny_sd15.save_checkpoint(tiny, out / "tiny_sd15.safetensors", spec)
    base_seconds = time.time() - t_base
    print(f"UNet: {a.base_steps} steps, base ready after {base_seconds:.0f} s, loss "
          f"{(base_losses or [0])[0]:.4f} -> {(base_losses or [0])[-1]:.4f}", file=sys.stderr)
    ae = a.autoencoder

    data, models = out / "data" / "train", out / "models"
    jobs = {g: train_argv(base, ae, data, models / f"{g}.safetensors", g, a) for g in GROUPS}
    jobs["any"] = train_argv(base, ae, data, models / "any.safetensors", a.pool, a, "--subsets")
    t_train = time.time()
    runs = train_all(jobs, out / "logs")
    train_seconds = time.time() - t_train
    for k, v in runs.items():
        print(f"trained {k}: {v['seconds']:.0f} s, eval loss {v['first_eval_loss']:.4f} -> {v['last_eval_loss']:.4f}",
              file=sys.stderr)

    t_eval = time.time()
    pg_models = [f"{g}={models / (g + '.safetensors')}" for g in GROUPS]
    per_group = evaluate(base, out / "data" / "eval", out / "eval_per_group", pg_models, ",".join(GROUPS) + ",none", a)
    any_subset = evaluate(base, out / "data" / "eval", out / "eval_any", [str(models / "any.safetensors")],
                          ",".join(GROUPS), a)
    swapped = swapped_mask_evaluation(base, out / "data" / "eval", out / "eval_swapped", str(models / "any.safetensors"),
                                      a)
    losses = denoising_losses(base, out / "models", out / "data" / "eval", a.pool)
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
    right, wrong = losses["any-subset random subsets"], losses["any-subset random subsets, mask of another"]
    cost, gain = wrong - right, losses["none"] - right
    verdicts.append((f"random subsets: another subset's mask costs >= 10% of the any-subset model's held-out "
                     f"denoising-loss gain ({cost:.4f} of {gain:.4f})", gain > 0 and cost >= 0.1 * gain))
    loss_lines = ["| condition | held-out denoising loss (eps MSE) |", "|---|---|",
                  *[f"| {k} | {v:.4f} |" for k, v in losses.items()]]
    head = ("| selection | ControlNet | PSNR grey (dB) | PSNR colour (dB) | SSIM grey | SSIM colour |\n"
            "|---|---|---|---|---|---|")
    lines = [head] + [f"| `{s}` | {m} | " + " | ".join(f"{v[k]:.2f}" if k.startswith("psnr") else f"{v[k]:.4f}"
                                                       for k in keys) + " |" for s, m, v in rows]
    total = time.time() - t_start
    setup = (f"{a.train_images} training and {a.eval_images} evaluation images, {a.resolution}x{a.resolution} px, "
             f"lighting {a.lighting}; "
             f"base: VAE {a.vae_steps} steps, UNet {a.base_steps} steps ({base_seconds:.0f} s"
             + (f", reused from {a.base}" if a.base else "") + f"); every ControlNet {a.steps} steps, batch {a.batch_size}, AdamW lr {a.lr}, fp32, seed 0; evaluation "
             f"DDIM {a.sample_steps} steps (authors: 50), CFG {a.cfg} (authors: 9.1), one prompt; training "
             f"({len(runs)} processes at once, one thread each) {train_seconds:.0f} s wall ("
             + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in runs.items())
             + f"); evaluation {eval_seconds:.0f} s; total {total:.0f} s ({os.cpu_count()} CPU cores, "
             f"torch threads {torch.get_num_threads()}, subnormals flushed)")
    text = "\n".join(["Setup: " + setup, "", *lines, "", *loss_lines, "",
                      *[f"- [{'x' if ok else ' '}] {v}" for v, ok in verdicts]])
    (out / "proof.md").write_text(text + "\n", encoding="utf-8")
    (out / "proof.json").write_text(json.dumps({"setup": setup, "rows": [
        {"selection": s, "controlnet": m, **v} for s, m, v in rows], "verdicts": [
        {"claim": v, "holds": ok} for v, ok in verdicts], "training": {
        k: {"steps": v["step"], **{x: v[x] for x in ("first_eval_loss", "last_eval_loss", "seconds")}}
        for k, v in runs.items()},
        "base": {"vae_steps": a.vae_steps, "unet_steps": a.base_steps, "seconds": base_seconds,
                 "vae_losses": vae_losses, "unet_losses": base_losses}, "denoising_losses": losses},
        indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
