"""One optimiser step of an SCG ControlNet against a frozen SD1.5 base (``train.controlnet``).

:class:`Trainer` holds what a step needs: the frozen base and autoencoder, the trainable
ControlNet (DDP-wrapped, optionally compiled) and its optimiser (:func:`make_optimizer`).
:meth:`Trainer.step` is the whole step: per micro-batch the inputs (clean latent, text, what the
ControlNet receives, noise, timestep), the epsilon-prediction loss, backward; then one AdamW step.
:class:`SubsetTrainer` is the any-subset variant (``--subsets``).

A batch (:func:`train.cn_data.collate`) carries the target image (``image``, Bx3xRxR in [0, 1]:
its latent is what the UNet denoises), ``position`` (the sample positions: the noise, timestep
and caption dropout of a sample depend only on it), and either ``caption`` strings or the cached
``latent``/``text``. What the ControlNet receives for a batch is one method,
:meth:`Trainer.input_of`; today it is made from the target image itself (pattern completion).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .runtime import Dist

#: noise levels of the fixed-noise evaluation loss (timesteps of SD1.5's 1000-step schedule)
EVAL_TIMESTEPS = (50, 250, 500, 750, 950)


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Constant learning rate (the authors'), after an optional linear warm-up."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The RNG of one sample position: noise, timestep and caption dropout depend only on
    (seed, position), never on the process or on how many ran before (exact resume, DDP = 1 GPU)."""
    # torch's CPU generator keeps only 32 bits of a seed: mix both numbers into 32 well-spread bits
    mixed = np.random.SeedSequence([int(seed) % 2**63, int(position) % 2**63]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(mixed))


def make_optimizer(controlnet: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW over the ControlNet's parameters (fused kernels on CUDA)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=weight_decay, **fused)


class Trainer:
    """One ControlNet being trained against a frozen SD1.5 base.

    ``base``: :class:`train.sd15.Base`; ``ae``: the frozen SCG autoencoder; ``modules``: module
    indices of the hint; ``controlnet``: the trainable ``comfy.cldm.cldm.ControlNet``. Batches are
    dicts from :func:`train.cn_data.collate` (``image`` Bx3xRxR in [0, 1], ``position``, and
    either ``caption`` strings or cached ``latent``/``text``). ``dist``: DDP over its processes.
    """

    def __init__(self, base, ae, modules, controlnet, *, device, precision="fp32", checkpointing=False,
                 lr=1e-5, weight_decay=1e-2, seed=0, caption_dropout=0.0, max_grad_norm=0.0, dist: Dist | None = None,
                 compile: bool = False):
        from . import sd15

        self.base, self.modules, self.device = base, list(modules), torch.device(device)
        self.precision, self.seed, self.caption_dropout = precision, int(seed), float(caption_dropout)
        self.max_grad_norm = float(max_grad_norm)
        self.ae = ae.to(self.device).float().eval().requires_grad_(False)
        base.model.to(self.device).requires_grad_(False).eval()
        self.unet, self.model_sampling = base.unet, base.model.model_sampling
        self.controlnet = controlnet.to(self.device).float().train().requires_grad_(True)
        if checkpointing:
            sd15.enable_checkpointing(self.unet, self.controlnet)
        else:
            sd15.disable_checkpointing(self.unet, self.controlnet)
        self.net = dist.wrap(self.controlnet, gradient_as_bucket_view=True) if dist else self.controlnet
        # --compile: both networks' forward passes through torch.compile (the modules themselves stay as they are)
        self.net_forward = torch.compile(self.net) if compile else self.net
        self.unet_forward = torch.compile(self.unet) if compile else self.unet
        self.optimizer = make_optimizer(self.controlnet, lr, weight_decay, self.device)
        self._empty = None

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def hint(self, images: torch.Tensor) -> torch.Tensor:
        """The SCG hint, in fp32 outside autocast: exactly ``ae.hint`` as at inference."""
        with torch.autocast(self.device.type, enabled=False):
            return self.ae.hint(images.to(self.device, non_blocking=True), self.modules).float()

    def input_of(self, batch: dict) -> torch.Tensor:
        """The ControlNet's input for a batch: the hint of ``self.modules`` (:class:`SubsetTrainer`:
        hint and presence mask of each sample's drawn subset)."""
        return self.hint(batch["image"])

    def sheet_input(self, images: torch.Tensor) -> torch.Tensor:
        """The ControlNet's input when sampling the progress sheets (``images`` on any device)."""
        return self.ae.hint(images.to(self.device), self.modules)

    def empty_text(self) -> torch.Tensor:
        if self._empty is None:
            from . import sd15

            self._empty = sd15.encode_text(self.base, [""])[0].to(self.device)
        return self._empty

    def inputs(self, batch: dict):
        """Clean latents, text conditioning and hint on the device, plus per-sample randomness."""
        from . import sd15

        if "latent" in batch:
            latent = batch["latent"].to(self.device, non_blocking=True).float()
            context = batch["text"].to(self.device, non_blocking=True).float()
        else:
            latent = sd15.encode_images(self.base, batch["image"]).to(self.device)
            context = sd15.encode_text(self.base, batch["caption"]).to(self.device)
        hint = self.input_of(batch)
        noise, timesteps, drop = [], [], []
        for p in batch["position"].tolist():
            g = sample_generator(self.seed, p)
            noise.append(torch.randn(latent.shape[1:], generator=g))
            timesteps.append(int(torch.randint(0, len(self.model_sampling.sigmas), (1,), generator=g)))
            drop.append(float(torch.rand((), generator=g)) < self.caption_dropout)
        if any(drop):
            context = torch.where(torch.tensor(drop, device=self.device).view(-1, 1, 1), self.empty_text(), context)
        noise = torch.stack(noise).to(self.device)
        return latent, context, hint, noise, torch.tensor(timesteps, device=self.device)

    def loss(self, latent, context, hint, noise, timesteps, net=None) -> torch.Tensor:
        from . import sd15

        sigma = self.model_sampling.sigmas.to(self.device)[timesteps]
        x_t = self.model_sampling.noise_scaling(sigma, noise, latent)
        with self.autocast():
            eps = sd15.predict_noise(self.unet_forward, net or self.net_forward, self.model_sampling, x_t, sigma,
                                     context, hint)
        return F.mse_loss(eps.float(), noise.float())

    def step(self, batches: list[dict], lr: float) -> float:
        """Forward/backward over ``batches`` (gradient accumulation), then one AdamW step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        n = len(batches)
        for i in range(n):
            inputs = self.inputs(batches[i])
            sync = i == n - 1 or self.net is self.controlnet
            with contextlib.nullcontext() if sync else self.net.no_sync():
                loss = self.loss(*inputs)
                (loss / n).backward()
            total += float(loss.detach()) / n
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def eval_loss(self, batch: dict) -> float:
        """Fixed-noise loss of ``batch`` at :data:`EVAL_TIMESTEPS` (comparable between steps)."""
        latent, context, hint, _, _ = self.inputs(batch)
        total = 0.0
        self.controlnet.eval()
        for t in EVAL_TIMESTEPS:
            g = torch.Generator().manual_seed(self.seed + 7919 * t)
            noise = torch.randn(latent.shape, generator=g).to(self.device)
            ts = torch.full((latent.shape[0],), t, device=self.device)
            total += float(self.loss(latent, context, hint, noise, ts, net=self.controlnet))
        self.controlnet.train()
        return total / len(EVAL_TIMESTEPS)


class SubsetTrainer(Trainer):
    """:class:`Trainer` of an any-subset ControlNet: each sample's modules are drawn from the pool
    ``modules`` by ``policy`` as a pure function of (seed, sample position); the input is the
    hint of the kept modules (gains 1) and their presence mask, B x (3 + n_vector) x h x w."""

    def __init__(self, *args, policy, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy

    def subsets_of(self, positions) -> list[list[int]]:
        from scg_models.subsets import draw_subset

        return [draw_subset(self.policy, self.modules, self.ae.groups, self.seed, int(p)) for p in positions]

    @torch.no_grad()
    def input_of(self, batch: dict) -> torch.Tensor:
        from scg_models.subsets import subset_input

        positions = batch.get("subset_position", batch["position"]).tolist()
        with torch.autocast(self.device.type, enabled=False):
            return subset_input(self.ae, batch["image"].to(self.device), self.subsets_of(positions)).float()

    def sheet_input(self, images: torch.Tensor) -> torch.Tensor:
        from scg_models.subsets import subset_input

        return subset_input(self.ae, images.to(self.device), [self.modules] * images.shape[0])

    @torch.no_grad()
    def eval_loss(self, batch: dict) -> float:
        """As :meth:`Trainer.eval_loss`; the k-th evaluation image always gets the subset of
        position -1-k (the evaluation batch's positions are all 0)."""
        fixed = dict(batch, subset_position=-1 - torch.arange(len(batch["position"])))
        return super().eval_loss(fixed)
