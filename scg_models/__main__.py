"""Command line: ``python -m scg_models {convert,extract,bench} ...`` (``-h`` for help)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .dtypes import DTYPES
from .errors import SCGError

DEFAULT_MODEL = Path(__file__).with_name("weights") / "scg_default.safetensors"


def cmd_convert(a) -> None:
    from . import formats

    if not (a.controlnet or a.autoencoder):
        raise SCGError("convert: give --controlnet OUT and/or --autoencoder OUT")
    raw = formats.read_file(a.src)
    parts = []
    ae = formats.autoencoder_from_raw(raw, a.src)
    if a.controlnet:
        sd = formats.controlnet_state_dict(raw.tensors, a.src)
        cn = formats.ControlNetFile(sd, ae, {})
        formats.save_controlnet(cn, a.controlnet, DTYPES.get(a.dtype), info={"source_file": os.path.basename(a.src)})
        n = sum(v.numel() for v in sd.values())
        parts.append(f"ControlNet {len(sd)} tensors, {n / 1e6:.1f} M params, {a.dtype or 'as stored'} -> {a.controlnet}")
    if a.autoencoder:
        formats.save_autoencoder(ae, a.autoencoder)
        parts.append(f"autoencoder {ae.config.gonlin} {ae.n_vector}x{ae.vector_length}, "
                     f"groups {','.join(ae.groups)} -> {a.autoencoder}")
    print("converted " + os.path.basename(a.src) + ": " + "; ".join(parts))


def _images(paths) -> list[str]:
    """Files given, and the images under folders given (regular files only, no link loops)."""
    from .imaging import scan_images

    found = []
    for p in paths:
        if os.path.isdir(p):
            files, skipped = scan_images(p)
            found += files
            for reason, n in sorted(skipped.items()):
                print(f"skipped {n} entr{'y' if n == 1 else 'ies'} in {p}: {reason}", file=sys.stderr)
        else:
            found.append(p)
    return found


def _save_png(image, path: Path) -> None:
    """Write a 3 x H x W tensor in [0, 1] as an 8-bit RGB PNG (fast zlib level: previews, not archives)."""
    import numpy as np
    from PIL import Image

    arr = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path, compress_level=1)


def cmd_extract(a) -> None:
    import numpy as np
    import torch

    from . import load_autoencoder
    from .imaging import ImageFileError, load_image

    model = a.model or DEFAULT_MODEL
    if not Path(model).is_file():
        raise SCGError(f"--model: {model} not found; pass an autoencoder file (.safetensors, the authors' .pth or .ckpt)")
    ae = load_autoencoder(model)
    groups = [g.strip() for g in a.groups.split(",") if g.strip()] if a.groups else list(ae.groups)
    selections = [(g, ae.resolve_modules(g)) for g in groups]
    paths = list(_images(a.images))
    if not paths:
        raise SCGError("extract: no images given")
    os.makedirs(a.output, exist_ok=True)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(it, **_):
            return it
    written = 0
    if a.grid:
        from .grid import group_grid
    for p in tqdm(paths, desc="extract", unit="img", disable=len(paths) < 2):
        try:
            pixels = load_image(p, dtype=np.float32)
        except ImageFileError as e:  # unreadable images are reported, not fatal
            print(f"skipped {p}: {e}", file=sys.stderr)
            continue
        try:
            x = ae.check_images(torch.from_numpy(pixels).permute(2, 0, 1)[None], name=str(p))
        except SCGError as e:  # e.g. smaller than the kernel: reported, not fatal
            print(f"skipped {e}", file=sys.stderr)
            continue
        p = Path(p)
        if a.grid:
            sheet = group_grid(ae, x, [g for g in groups if g in ae.groups] or None)[0]
            _save_png(sheet, Path(a.output) / f"{p.stem}_groups.png")
            written += 1
        for name, mods in selections:
            prev = ae.preview(x, mods, a.gains or None)[0]
            _save_png(prev, Path(a.output) / f"{p.stem}_{name.replace('+', '_').replace(',', '_')}.png")
            written += 1
    print(f"wrote {written} PNGs ({len(paths)} images x {len(selections)} groups"
          f"{' + a sheet of all groups each' if a.grid else ''}) to {a.output}")


def cmd_bench(a) -> None:
    from . import bench

    model = None
    if a.model:
        from . import load_autoencoder

        model = load_autoencoder(a.model)
    bench.run(size=a.size, batch=a.batch, repeats=a.repeats, device=a.device, dtype=a.dtype, threads=a.threads,
              model=model)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _tolerant_console() -> None:
    """Never crash on a console that cannot show a character (e.g. Windows cp1252): our own messages are
    ASCII, but file names and messages from elsewhere may not be; those get backslash escapes instead."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv=None) -> int:
    _tolerant_console()
    ap = argparse.ArgumentParser(prog="python -m scg_models", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="authors' SCG ControlNet .ckpt -> ComfyUI ControlNet + our autoencoder")
    c.add_argument("src")
    c.add_argument("--controlnet", help="output ControlNet .safetensors (loads with ComfyUI's ControlNetLoader)")
    c.add_argument("--autoencoder", help="output autoencoder .safetensors (our format)")
    c.add_argument("--dtype", choices=list(DTYPES), help="cast the ControlNet weights")
    e = sub.add_parser("extract", help="write preview PNGs per image and group")
    e.add_argument("images", nargs="+", help="image files or folders")
    e.add_argument("--groups", help="comma-separated groups, e.g. HC0,HC3 (default: all groups)")
    e.add_argument("--gains", help="per-module gains, e.g. 0:1.5,4:0.5")
    e.add_argument("--model", help=f"autoencoder file (default: {DEFAULT_MODEL.name}, shipped)")
    e.add_argument("--grid", action="store_true", help="also write one sheet of every group per image")
    e.add_argument("-o", "--output", required=True, help="output folder")
    b = sub.add_parser("bench", help="ms/image of hint extraction, ours vs the authors' way")
    b.add_argument("--size", type=_positive, default=512, help="image side in pixels (default 512)")
    b.add_argument("--batch", type=_positive, default=1, help="images per call (default 1)")
    b.add_argument("--repeats", type=_positive, default=20, help="interleaved timed pairs per selection (default 20)")
    b.add_argument("--threads", type=_positive, default=1,
                   help="torch threads, the same for both paths (default 1: steadiest on a busy machine)")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    b.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="model and image dtype (default fp32)")
    b.add_argument("--model", help="time this autoencoder file instead of random released-shape weights")
    a = ap.parse_args(argv)
    try:
        {"convert": cmd_convert, "extract": cmd_extract, "bench": cmd_bench}[a.cmd](a)
    except SCGError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
