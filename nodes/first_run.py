"""What the extension sets up when ComfyUI loads it: the ``models/scg`` folder, and the example image
(``workflows/scg_example.jpg``) in ComfyUI's input folder, so the example workflows run the first time.

Nothing a user made is ever replaced: the image is only written where no file of that name exists.
"""
from __future__ import annotations

import logging
import os

import folder_paths

log = logging.getLogger("SCG")

EXAMPLE_IMAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "scg_example.jpg")


def first_run_setup() -> None:
    """Create ``models/scg``; copy the example image into the input folder unless a file of its name is there.

    A failure (e.g. a read-only folder) is logged and never stops ComfyUI from loading the extension.
    """
    try:
        os.makedirs(os.path.join(folder_paths.models_dir, "scg"), exist_ok=True)
        input_dir = folder_paths.get_input_directory()
        os.makedirs(input_dir, exist_ok=True)
        target = os.path.join(input_dir, os.path.basename(EXAMPLE_IMAGE))
        with open(EXAMPLE_IMAGE, "rb") as src, open(target, "xb") as dst:  # "x": never over an existing file
            dst.write(src.read())
        log.info("SCG: copied the example image to %s", target)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("SCG: first-run setup incomplete (%s); the example workflows need scg_example.jpg in %s",
                    exc, folder_paths.get_input_directory())
