"""Errors raised by scg_models. Every message names the offending input."""


class SCGError(ValueError):
    """Bad input to the SCG core: a tensor, a selection, gains or a file."""


class CheckpointError(SCGError):
    """A file that cannot be read as an SCG autoencoder or ControlNet."""


class NoControlNetError(CheckpointError):
    """A readable file that holds no ControlNet (an autoencoder alone, say)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks to run code (or build an unknown object) while loading."""


class FileWriteError(SCGError):
    """A model file that could not be written (a full disk, no permission); nothing was left behind."""
