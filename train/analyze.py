"""The science check: what did each module learn?

    python -m train.analyze MODEL [MODEL2 ...] [--png tuning.png] [--json out.json]
    python -m train.analyze MODEL --write-groups [--groups groups.json]

Prints per module: luminance vs colour-opponent energy (chroma fraction), orientation
selectivity (drifting gratings at 16 orientations x 12 spatial frequencies, luminance and
colour-opponent), preferred spatial frequency and the module type; then the counts the
paper's claim is checked against (colour, luminance, oriented modules with OSI >= 0.5).
With several models the summaries are printed side by side. Writes the tuning curves (and
the kernels) of every model as PNG. ``--write-groups`` rewrites a model's groups: derived
from its kernels, or the ones in ``--groups`` (a user override).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

import numpy as np
import torch

import scg_models
from scg_models.analysis import (
    COLOUR_MIN_CHROMA,
    LUMINANCE_MAX_CHROMA,
    ORIENTED_MIN_OSI,
    WEAK_MAX_STRENGTH,
    derive_groups,
    grating_responses,
    module_tuning,
    rgb_kernels,
    summary,
)
from scg_models.groups import validate_groups

from .viz import grid, line_plot, save_png

if TYPE_CHECKING:
    from PIL import Image

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def table(tunings) -> str:
    rows = [f"{'mod':>3} {'type':<9} {'chroma':>6} {'OSI':>5} {'gOSI':>5} {'sf c/px':>7} {'str.':>4} "
            f"{'rot.r':>5} {'sh.r':>5}  "
            f"{'channel OSIs':<23} {'pref. orientations (deg)':<24} colour"]
    for t in tunings:
        rows.append(f"{t.module:>3} {t.kind:<9} {t.chroma:>6.2f} {t.osi:>5.2f} {t.gosi:>5.2f} {t.pref_sf:>7.3f} "
                    f"{t.strength:>4.2f} "
                    f"{t.rot_residual:>5.2f} {t.shift_residual:>5.2f}  "
                    f"{' '.join(f'{v:.2f}' for v in t.osi_channels):<23} "
                    f"{' '.join(f'{v:.0f}' for v in t.pref_orientation):<24} {','.join(t.colour_dir)}")
    return "\n".join(rows)


def summary_lines(name: str, s: dict) -> dict[str, str]:
    return {
        "model": name,
        f"colour modules (chroma >= {COLOUR_MIN_CHROMA})": str(s["colour_modules"]),
        f"luminance modules (chroma <= {LUMINANCE_MAX_CHROMA})": str(s["luminance_modules"]),
        f"oriented modules (OSI >= {ORIENTED_MIN_OSI})": str(s["oriented_modules"]),
        "their OSIs": ",".join(f"{v:.2f}" for v in s["oriented_osis"]) or "-",
        "mean module OSI": f"{s['mean_osi']:.2f}",
        f"weak modules (strength < {WEAK_MAX_STRENGTH})": str(s["weak_modules"]),
        "span residual under rotation (mean, not weak)": f"{s['mean_rot_residual']:.3f}",
        "span residual under 1-2 px shifts (mean)": f"{s['mean_shift_residual']:.3f}",
        "types colour/oriented/luminance/mixed/weak": "/".join(str(s["kinds"][k]) for k in
                                                               ("colour", "oriented", "luminance", "mixed", "weak")),
    }


def side_by_side(cols: list[dict[str, str]]) -> str:
    keys = list(cols[0])
    w0 = max(len(k) for k in keys)
    ws = [max(len(c[k]) for k in keys) for c in cols]
    lines = []
    for k in keys:
        lines.append(f"{k:<{w0}}  " + "  ".join(f"{c[k]:>{w}}" for c, w in zip(cols, ws)))
    return "\n".join(lines)


def tuning_png(ae, tunings, title: str) -> Image:
    """Per module: orientation tuning (each channel, at its preferred colour and frequency) and
    spatial-frequency tuning; plus the module's kernels."""
    from PIL import Image, ImageDraw

    R, ori, sfs = grating_responses(ae)
    vl = ae.vector_length
    k = rgb_kernels(ae).numpy()
    tiles = []
    for t in tunings:
        curves_o, curves_f = [], []
        for c in range(vl):
            r = R[t.module * vl + c]
            a = int(r.amax((1, 2)).argmax())
            f = int(r[a].amax(0).argmax())
            deg = np.degrees(ori.numpy())
            curves_o.append((str(c), np.append(deg, 180.0), np.append(r[a, :, f].numpy(), r[a, 0, f].item()),
                             COLOURS[c % len(COLOURS)]))
            curves_f.append((str(c), sfs.numpy(), r[a].amax(0).numpy(), COLOURS[c % len(COLOURS)]))
        po = line_plot(curves_o, f"module {t.module} ({t.kind}) OSI {t.osi:.2f}", "orientation deg", (300, 170))
        pf = line_plot(curves_f, f"chroma {t.chroma:.2f}, pref {t.pref_sf:.3f} c/px", "sf c/px", (300, 170),
                       log_x=True)
        mk = k[t.module * vl:(t.module + 1) * vl]
        m = float(np.abs(mk).max()) or 1.0
        K = mk.shape[-1]
        strip = Image.new("RGB", (vl * (K * 3 + 4) + 4, K * 3 + 8), (255, 255, 255))
        for c in range(vl):
            a = (np.clip(0.5 + 0.5 * mk[c] / m, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
            strip.paste(Image.fromarray(a).resize((K * 3, K * 3), Image.NEAREST), (4 + c * (K * 3 + 4), 4))
        tile = Image.new("RGB", (po.width + pf.width + strip.width, max(po.height, strip.height)), (255, 255, 255))
        tile.paste(po, (0, 0))
        tile.paste(pf, (po.width, 0))
        tile.paste(strip, (po.width + pf.width, 0))
        tiles.append(tile)
    g = grid(tiles, 2)
    out = Image.new("RGB", (g.width, g.height + 20), (255, 255, 255))
    ImageDraw.Draw(out).text((6, 4), title, fill=(0, 0, 0))
    out.paste(g, (0, 20))
    return out


def load_model(path: str):
    """An autoencoder file, or a train.autoencoder checkpoint (to watch a run as it trains)."""
    from scg_models.safe_pickle import safe_load

    from .autoencoder import TRAINER, Recipe, build_models
    from .runtime import CHECKPOINT_FORMAT

    if path.endswith(".pt"):
        ck = safe_load(path)
        if isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT and ck.get("trainer") == TRAINER:
            ae, _ = build_models(Recipe(**ck["recipe"]))
            ae.load_state_dict({k[3:]: v for k, v in ck["model"].items() if k.startswith("ae.")})
            ae.config.info = {"steps": ck["step"], "command": "checkpoint " + path}
            return ae.eval().requires_grad_(False)
    return scg_models.load_autoencoder(path)


def analyze(path: str) -> tuple:
    ae = load_model(path)
    tunings = module_tuning(ae)
    return ae, tunings, summary(tunings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="autoencoder files (any format scg_models reads) or "
                   "train.autoencoder checkpoints (.pt)")
    p.add_argument("--png", help="tuning-curve PNG (default: <model>.tuning.png next to each model; "
                   "with several models, a suffix per model)")
    p.add_argument("--no-png", action="store_true", help="write no PNG")
    p.add_argument("--json", help="write every number as JSON here")
    p.add_argument("--write-groups", action="store_true", help="rewrite the (single) model's groups: derived "
                   "from its kernels, or --groups")
    p.add_argument("--groups", help="JSON [{name, modules, description}, ...] for --write-groups")
    a = p.parse_args(argv)
    report, cols = {}, []
    for i, path in enumerate(a.models):
        ae, tunings, s = analyze(path)
        name = os.path.basename(path)
        print(f"== {path}: {ae.n_vector} modules x {ae.vector_length}, kernel {ae.kernel_size}, "
              f"{ae.config.info.get('steps', '?')} steps")
        print(table(tunings))
        print("groups in the file: " + "; ".join(f"{k} {v}" for k, v in ae.groups.items()))
        print()
        cols.append(summary_lines(name, s))
        report[path] = {"summary": s, "modules": [t.to_dict() for t in tunings], "groups": ae.config.groups,
                        "info": {k: ae.config.info.get(k) for k in ("command", "steps", "data")}}
        if not a.no_png:
            if a.png:
                root, ext = os.path.splitext(a.png)
                out = a.png if len(a.models) == 1 else f"{root}.{i}{ext or '.png'}"
            else:
                out = os.path.splitext(path)[0] + ".tuning.png"
            save_png(tuning_png(ae, tunings, f"{path}: tuning to drifting gratings (per channel) and kernels"), out)
            print(f"tuning curves: {out}\n")
        if a.write_groups:
            if len(a.models) != 1:
                raise SystemExit("--write-groups takes exactly one model")
            if a.groups:
                with open(a.groups) as fh:
                    groups = validate_groups(json.load(fh), ae.n_vector)
                how = f"given ({a.groups})"
            else:
                groups, how = derive_groups(ae, tunings), "derived (train.analyze --write-groups)"
            ae.set_groups(groups)
            scg_models.save_autoencoder(ae, path, info={"groups": how})
            print(f"wrote groups into {path}: " + "; ".join(f"{g['name']} {g['modules']}" for g in groups))
    print(side_by_side(cols))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
