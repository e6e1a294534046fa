import contextlib

import torch

from scg_models import AutoencoderConfig, ModularAutoencoder


def random_ae(gonlin="Bipolar", seed=0, **kw) -> ModularAutoencoder:
    """An autoencoder with seeded random weights (std 0.1), frozen, eval mode."""
    torch.manual_seed(seed)
    ae = ModularAutoencoder(AutoencoderConfig(gonlin=gonlin, **kw))
    with torch.no_grad():
        for p in ae.parameters():
            p.normal_(0, 0.1)
    return ae.eval().requires_grad_(False)


def images(b=1, h=64, w=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


@contextlib.contextmanager
def recorded_hints(model: torch.nn.Module):
    """Within the block, a list that collects (detached clones of) the ``hint`` keyword argument of
    every forward call of ``model`` (a ControlNet's control model)."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hint"].detach().clone()),
                                             with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()
