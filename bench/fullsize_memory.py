"""The memory model of full-size SD1.5 ControlNet training and sampling (docs/performance.md).

Components, in GiB, for the SD1.5 architecture (parameter counts: ComfyUI's classes, printed by
every full-size run): weights of the frozen UNet, VAE and CLIP and of the trained ControlNet;
the ControlNet's fp32 gradients and AdamW state (two fp32 moments); activations kept for the
backward pass, per image at 512 x 512 (:data:`ACTIVATIONS_GIB`, measured by
``bench/fullsize_jobs.SavedBytes`` in the committed CPU run); the cache of latents and text.

:func:`estimate` is what a benchmark checks against the free memory before it starts (and what
the refusal message prints); :func:`cuda_prediction` is the predicted CUDA peak of a recipe.
"""
from __future__ import annotations

GIB = 2**30
#: millions of parameters (SD1.5 architecture built with ComfyUI's classes)
PARAMS_M = {"unet": 859.52, "controlnet": 361.28, "vae": 83.65, "clip": 123.65}
#: per image at 512 x 512 (GiB), by recipe, from the committed CPU run of bench/fullsize_bench.py:
#: what autograd keeps for the backward pass (``SavedBytes``: with checkpointing only the block inputs) ...
ACTIVATIONS_GIB = {"authors": 4.34, "ours": 0.19, "ours-bf16": 0.12}
#: ... and the working set on top of everything else at the peak (peak RSS minus weights as built,
#: gradients, AdamW state and saved tensors): with checkpointing, one layer recomputed with its
#: backward (on the CPU ComfyUI's chunked attention dominates it; bf16 halves it)
WORKING_GIB = {"authors": 0.08, "ours": 1.82, "ours-bf16": 1.04}
#: what a process holds besides the weights (the interpreter, torch, ComfyUI): built RSS - weights
OVERHEAD_GIB = 0.6


def weights_gib(names, bytes_per_param: float) -> float:
    return sum(PARAMS_M[n] for n in names) * 1e6 * bytes_per_param / GIB


def training_components(recipe: str, batch: int, res: int = 512, on_cuda: bool = False) -> dict:
    """Per-component GiB of ControlNet training (``on_cuda``: with cached latents the VAE and CLIP
    stay in host memory, ComfyUI offloads them; on the CPU everything is in RAM). Activations and the
    working set scale with batch x pixels (an assumption: measured at batch 1, 512 x 512)."""
    bf16 = recipe.endswith("bf16")
    scale = batch * (res / 512) ** 2
    parts = {
        "unet weights (frozen, " + ("bf16)" if bf16 else "fp32)"): weights_gib(["unet"], 2 if bf16 else 4),
        "controlnet weights (fp32)": weights_gib(["controlnet"], 4),
        "controlnet gradients (fp32)": weights_gib(["controlnet"], 4),
        "AdamW state (2 x fp32)": weights_gib(["controlnet"], 8),
        "activations kept for backward": ACTIVATIONS_GIB[recipe] * scale,
        "working set (recompute, casts, attention chunks)": WORKING_GIB[recipe] * scale,
    }
    if not (recipe != "authors" and on_cuda):
        parts["vae + clip weights (fp32)"] = weights_gib(["vae", "clip"], 4)
    return parts


def estimate(job: dict) -> float:
    """GiB a CPU job of bench/fullsize_bench.py needs at its peak (the refusal check)."""
    kind = job["kind"]
    if kind == "controlnet":
        return sum(training_components(job["recipe"], job["batch"], job["res"]).values()) + OVERHEAD_GIB
    if kind == "sampling":  # fp32 weights, activations of CFG's batch of 2 are small next to them
        return weights_gib(["unet", "controlnet", "vae", "clip"], 4) + 1.0 + OVERHEAD_GIB
    if kind == "autoencoder":  # measured: 45-62 fp32 copies of the batch of crops at the peak (docs); 64 assumed
        return job["batch"] * job["crop"] ** 2 * 3 * 4 * 64 / GIB + OVERHEAD_GIB
    if kind == "matmul":
        return 3 * job["n"] ** 2 * 4 / GIB + 0.5
    raise ValueError(kind)


def cuda_prediction(recipe: str = "ours-bf16", batch: int = 4, res: int = 512) -> dict:
    """Predicted ``torch.cuda.max_memory_allocated`` of a training recipe, GiB, with its parts."""
    parts = training_components(recipe, batch, res, on_cuda=True)
    parts["CUDA context, cuDNN/cuBLAS workspaces, allocator slack (assumed)"] = 1.5
    return {"recipe": recipe, "batch": batch, "res": res, "parts": parts, "total_gib": sum(parts.values())}
