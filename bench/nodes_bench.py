"""Speed and memory of SCGControlApply against core's Apply ControlNet, side by side in one run.

    python bench/nodes_bench.py [--size 512] [--steps 20] [--repeats 5] [--modules HC0] [--cpu]

Both paths run the same tiny SD1.5-architecture graph in a real ComfyUI (found like the
host tests find it): Apply node -> KSampler (euler, CFG 7) at sizexsize.

* core: HypercolumnExtract's hint image computed once beforehand (resolution = size), fed to core's
        Apply ControlNet with the ControlNet as 'Load SCG ControlNet' gives it (the hint stage decodes it);
* SCG:  SCGControlApply on the ordinary image (extraction inside the sampling run).

Runs alternate (core, SCG, SCG, core, ...) so both see the same machine load; the figures
are medians and fastest runs; on a CPU also the process's CPU time, which other
processes on a shared machine disturb less than wall time. Printed: the time ratio
SCG/core (target <= 1.05), the same ratio derived from the extraction time alone, the autoencoder's peak
memory on top while it makes the hint inside sampling (target <= 50 MB at 512x512), and
how far core's path (the hint carried by HypercolumnExtract's [0, 1] hint image) lands from SCG's exact one.

The UNet here is tiny, so the extraction weighs far more against it than against a real
SD1.5 UNet: the ratio is an upper bound of what a real model sees.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_host(cpu: bool):
    # a script, not a test: it puts the pack root and the shared test helpers (what pytest's
    # ``pythonpath`` gives the tests) and then the host found like the host tier finds it on sys.path
    sys.path.append(str(ROOT))
    sys.path.append(str(ROOT / "tests" / "lib"))
    from scg_testing.hosts import find_host

    host = find_host()
    if host is None:
        sys.exit("no ComfyUI host found ($COMFYUI_PATH, the ComfyUI holding this folder, ~/comfy/ComfyUI)")
    sys.path.insert(0, str(host))
    import torch
    from comfy.cli_args import args
    args.cpu = cpu or not torch.cuda.is_available()
    # SDPA attention on the CPU too (ComfyUI's CPU default is a slower chunked attention): a faster
    # UNet makes the extraction weigh more, so the ratio below is, if anything, pessimistic
    args.use_pytorch_cross_attention = True
    import asyncio

    import nodes
    assert asyncio.run(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes"))
    return host, nodes, sys.modules[str(ROOT).replace(".", "_x_")]


def peak_memory(fn, device):
    """(result, peak bytes allocated on top of what was live before) of ``fn()``."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return out, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="sampling steps (on a CPU try 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each path (on a CPU try 3)")
    p.add_argument("--modules", default="HC0")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is there")
    a = p.parse_args(argv)

    host, nodes, pack = setup_host(a.cpu)
    import comfy.model_management as mm
    import comfy.utils
    import numpy as np
    import torch
    from PIL import Image

    from scg_testing.host import conditioning, random_ae, tiny_controlnet, tiny_unet

    comfy.utils.PROGRESS_BAR_ENABLED = False
    device = mm.get_torch_device()
    # random tiny weights drive some activations into subnormal floats, which are many times slower on
    # CPUs and would swamp what is measured here; real checkpoints do not do this
    # (the flag is per thread, so on a CPU one thread does all the work)
    flush = torch.set_flush_denormal(True)
    if device.type == "cpu":
        torch.set_num_threads(1)
    unet = tiny_unet()
    cn = tiny_controlnet(unet)
    scg_ae = pack.nodes.common.SCGAutoencoder(random_ae(seed=0), "bench")
    loaded_cn = cn.copy()  # what 'Load SCG ControlNet' gives: the hint stage in front of the control model
    loaded_cn.control_model = pack.nodes.scg_controlnet.with_adapter(
        cn, pack.scg_models.geometry.HintGeometry.of(scg_ae.ae), encoded=True)
    pos, neg = conditioning()
    img = Image.open(ROOT / "workflows" / "scg_example.jpg").convert("RGB").resize((a.size, a.size))
    image = torch.from_numpy(np.asarray(img).copy()).float().div(255)[None]
    latent = {"samples": torch.zeros(1, 4, a.size // 8, a.size // 8)}
    K = nodes.NODE_CLASS_MAPPINGS
    sampler = K["KSampler"]()

    def ksample(p_, n_):
        return sampler.sample(unet, 0, a.steps, 7.0, "euler", "normal", p_, n_, latent)[0]["samples"]

    with torch.inference_mode():
        hint = K["HypercolumnExtract"].execute(image=image, scg_autoencoder=scg_ae, modules=a.modules, gains="",
                                               grid="off", resolution=a.size).args[0]

        def core_path():
            c = K["ControlNetApplyAdvanced"]().apply_controlnet(pos, neg, loaded_cn, hint, 1.0, 0.0, 1.0)
            return ksample(*c)

        def scg_path():
            c = K["SCGControlApply"].execute(positive=pos, negative=neg, control_net=cn, image=image, strength=1.0,
                                             start_percent=0.0, end_percent=1.0, scg_autoencoder=scg_ae,
                                             modules=a.modules, gains="").args
            return ksample(*c)

        print(f"ComfyUI {host} * {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} * "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, subnormals flushed: {flush}")
        print(f"tiny SD1.5-architecture UNet/ControlNet, {a.size}x{a.size}, {a.steps} euler steps, CFG 7, "
              f"modules {a.modules}, hint {tuple(hint.shape[1:3])}")
        x_none = ksample(pos, neg)
        x_core, x_scg = core_path(), scg_path()  # warm-up (and the outputs compared below)
        t_core, t_scg = [], []  # (wall s, CPU s of this process)
        for r in range(a.repeats):
            pair = ((core_path, t_core), (scg_path, t_scg))
            for fn, acc in (pair if r % 2 == 0 else pair[::-1]):  # ABBA: neither path always goes first
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                acc.append((time.perf_counter() - t0, time.process_time() - c0))
        for i, what in ((0, "wall"), (1, "CPU")):
            if i == 1 and device.type == "cuda":
                break
            core_t, scg_t = [t[i] for t in t_core], [t[i] for t in t_scg]
            mc, ms = statistics.median(core_t), statistics.median(scg_t)
            print(f"{what} time per run, median (fastest) of {a.repeats}: core Apply ControlNet with a precomputed "
                  f"hint {mc * 1000:.0f} ms ({min(core_t) * 1000:.0f}); SCGControlApply {ms * 1000:.0f} ms "
                  f"({min(scg_t) * 1000:.0f})")
            print(f"  time ratio SCG / core ({what}): {ms / mc:.3f} median, {min(scg_t) / min(core_t):.3f} fastest   "
                  "(target <= 1.05)")
        run_ms = statistics.median([t[0] for t in t_core]) * 1000

        # the extraction as sampling does it (the ControlNet copy's preprocess_image hook), alone: time, memory
        resized = torch.zeros(1, 3, a.size, a.size)
        for modules in dict.fromkeys([a.modules, "all"]):
            c = K["SCGControlApply"].execute(positive=pos, negative=neg, control_net=cn, image=image, strength=1.0,
                                             start_percent=0.0, end_percent=1.0, scg_autoencoder=scg_ae,
                                             modules=modules, gains="").args[0][0][1]["control"]
            hook = c.preprocess_image
            mm.load_models_gpu(c.get_models() + [hook.patcher])
            hook(resized)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                hook(resized)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_ext = (time.perf_counter() - t0) / 5
            out, peak = peak_memory(lambda hook=hook: hook(resized), device)
            print(f"extraction of {modules} at {a.size}x{a.size}: {t_ext * 1000:.1f} ms, so SCG / core = "
                  f"{1 + t_ext * 1000 / run_ms:.3f} when derived from one core run; autoencoder peak memory on top "
                  f"{peak / 2**20:.1f} MB (target <= 50 MB; the padded hint itself "
                  f"{out.numel() * out.element_size() / 2**20:.1f} MB)")
        effect = (x_scg - x_none).norm().item()
        rel = (x_core - x_scg).norm().item() / effect
        print(f"core path (HypercolumnExtract's hint image, {hint.shape[1]}x{hint.shape[2]}) vs SCGControlApply: "
              f"|diff| / |control effect| = {rel:.2e}")


if __name__ == "__main__":
    main()
