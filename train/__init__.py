"""Trainers that reuse :mod:`scg_models`: the modular autoencoder (``python -m train.autoencoder``),
its analysis (``python -m train.analyze``) and SCG ControlNets on ComfyUI's own model code
(``python -m train.controlnet``). Not imported by the ComfyUI extension."""
import os

# CPU threads sleep instead of spinning while they wait. On a shared or busy machine spinning
# OpenMP threads made a 2-thread training step ~18x slower than a 1-thread one (measured on
# 2 cores). Effective only when this runs before torch is first imported (``python -m train....``).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
