"""What the extension sets up when ComfyUI loads it: the ``models/scg`` folder, and the example images
(``workflows/scg_example*.jpg``: the photo and its sketch, ink, hazy and dark renderings) in ComfyUI's input
folder, so the example workflows run the first time.

Nothing a user made is ever replaced: an image is only written where no file of its name exists.
"""
from __future__ import annotations

import glob
import logging
import os

import folder_paths

log = logging.getLogger("SCG")

WORKFLOW_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")


def example_images() -> list[str]:
    """The shipped example images (full paths), sorted by name."""
    return sorted(glob.glob(os.path.join(glob.escape(WORKFLOW_DIR), "scg_example*.jpg")))


def _copy_new(src: str, target: str) -> bool:
    """Copy ``src`` to ``target`` unless ``target`` exists; True when copied. A partial copy is removed."""
    try:
        dst = open(target, "xb")  # "x": never over an existing file (or link)
    except FileExistsError:
        return False
    try:
        with dst, open(src, "rb") as f:
            dst.write(f.read())
    except BaseException:
        os.unlink(target)
        raise
    return True


def first_run_setup() -> None:
    """Create ``models/scg``; copy each example image into the input folder unless a file of its name is there.

    A failure (e.g. a read-only folder) is logged and never stops ComfyUI from loading the extension.
    """
    try:
        os.makedirs(os.path.join(folder_paths.models_dir, "scg"), exist_ok=True)
        input_dir = folder_paths.get_input_directory()
        os.makedirs(input_dir, exist_ok=True)
        copied = [os.path.basename(src) for src in example_images()
                  if _copy_new(src, os.path.join(input_dir, os.path.basename(src)))]
        if copied:
            log.info("SCG: copied the example images %s to %s", ", ".join(copied), input_dir)
    except OSError as exc:
        log.warning("SCG: first-run setup incomplete (%s); the example workflows need the images "
                    "workflows/scg_example*.jpg in %s", exc, folder_paths.get_input_directory())
