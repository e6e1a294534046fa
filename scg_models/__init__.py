"""SCG core: the modular autoencoder, its hint and its checkpoint formats. Pure PyTorch."""
from .autoencoder import AUTHORS_MEAN, AUTHORS_STD, AutoencoderConfig, ModularAutoencoder, minmax
from .errors import CheckpointError, SCGError, UnsafeCheckpointError
from .formats import load_autoencoder, save_autoencoder
from .groups import AUTHORS_GROUPS, parse_gains

__all__ = ["AUTHORS_GROUPS", "AUTHORS_MEAN", "AUTHORS_STD", "AutoencoderConfig", "CheckpointError",
           "ModularAutoencoder", "SCGError", "UnsafeCheckpointError", "load_autoencoder", "minmax",
           "parse_gains", "save_autoencoder"]
