"""ComfyUI nodes of SCG: thin adapters around ``scg_models`` (types, devices, dtypes, memory management)."""
from .apply import SCGControlApply
from .extract import HypercolumnExtract
from .loaders import LoadSCGAutoencoder, LoadSCGControlNet

NODES = [LoadSCGAutoencoder, LoadSCGControlNet, HypercolumnExtract, SCGControlApply]

__all__ = ["NODES", "HypercolumnExtract", "LoadSCGAutoencoder", "LoadSCGControlNet", "SCGControlApply"]
