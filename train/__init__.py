"""Trainers that reuse :mod:`scg_models`: the modular autoencoder (``python -m train.autoencoder``)
and its analysis (``python -m train.analyze``). Not imported by the ComfyUI extension."""
