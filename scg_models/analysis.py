"""What each module of an autoencoder encodes, measured from its kernel; groups derived from it.

Pure PyTorch. Used by ``python -m train.analyze`` and by the trainer to name the groups of a
model it trained (the authors chose theirs by eye for one checkpoint).

Measures, per module (``vector_length`` channels):

* colour: the kernel as weights on RGB input in [0, 1] (``W / std``), split per pixel into
  luminance (1,1,1)/sqrt(3) and the two colour-opponent axes (1,-1,0)/sqrt(2), (1,1,-2)/sqrt(6); the
  *chroma fraction* is the opponent share of the energy (0: pure luminance, 1: pure colour);
* drifting gratings: F1 response amplitude of every channel to sinusoidal gratings
  (luminance, red-green and blue-yellow) at ``n_orient`` orientations x ``n_sf`` spatial
  frequencies (1/48 ... 0.5 c/px) x 8 phases, at the centre of a receptive field (exactly the encoder's output
  for that cell, activation included). Each channel is read in its strongest colour
  direction, at its preferred spatial frequency;
* orientation selectivity index per channel, ``OSI = (R_pref - R_orth)/(R_pref + R_orth)``,
  and its global form ``gOSI = |sum R(phi) e^{2i phi}| / sum R(phi)``; a module's OSI is the mean over
  its channels;
* preferred spatial frequency (cycles/pixel) of the module (its channels' summed tuning);
* strength: the module's peak grating response relative to the strongest module's. A module
  below 0.2 is *weak* (it barely answers any grating: an unused module whose kernel is still
  mostly its random initialisation); its OSI is not meaningful and the counts leave it out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .autoencoder import ModularAutoencoder

#: colour axes on RGB: luminance, red-green, blue-yellow (orthonormal)
COLOUR_AXES = {"lum": (1 / math.sqrt(3),) * 3, "rg": (1 / math.sqrt(2), -1 / math.sqrt(2), 0.0),
               "by": (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6))}
#: thresholds used to name module types
COLOUR_MIN_CHROMA = 0.5   # chroma fraction at or above: colour(-opponent) module
LUMINANCE_MAX_CHROMA = 0.2  # at or below: luminance module
ORIENTED_MIN_OSI = 0.5    # module OSI at or above: oriented module
WEAK_MAX_STRENGTH = 0.2   # peak grating response below this share of the strongest module's: weak


@dataclass
class ModuleTuning:
    module: int
    chroma: float          # colour-opponent share of the kernel energy, 0..1
    energy: float          # kernel energy (RGB weights), for reference
    osi: float             # mean channel OSI (pref - orth)/(pref + orth)
    osi_channels: list     # per channel
    gosi: float            # mean channel global OSI (1 - circular variance)
    pref_orientation: list  # per channel, degrees in [0, 180)
    pref_sf: float         # cycles/pixel
    dc: float              # response to a uniform luminance step, relative to the peak grating response
    colour_dir: list       # per channel: lum / rg / by, the grating colour it answers most
    strength: float        # peak grating response / the strongest module's, 0..1
    kind: str              # colour / oriented / luminance / mixed / weak
    rot_residual: float = float("nan")    # share of a rotated kernel outside the module's span (mean over angles)
    shift_residual: float = float("nan")  # the same for sub-stride shifts of 1-2 pixels

    def to_dict(self) -> dict:
        return asdict(self)


def rgb_kernels(ae: ModularAutoencoder) -> torch.Tensor:
    """Composite kernel as weights on RGB input in [0, 1] (C x 3 x K x K, float32, CPU)."""
    with torch.no_grad():
        return ae.kernel().detach().float().cpu() / ae.std.detach().float().cpu().view(1, 3, 1, 1)


def colour_energy(ae: ModularAutoencoder) -> torch.Tensor:
    """Per module energy on (luminance, red-green, blue-yellow): n_vector x 3."""
    k = rgb_kernels(ae)
    axes = torch.tensor([COLOUR_AXES[a] for a in ("lum", "rg", "by")])      # 3 axes x 3 RGB
    proj = torch.einsum("ar,crhw->cahw", axes, k)
    e = proj.pow(2).sum((-2, -1))                                            # C x 3
    return e.view(ae.n_vector, ae.vector_length, 3).sum(1)


def sf_grid(n_sf: int = 12, lo: float = 1 / 48, hi: float = 0.5) -> torch.Tensor:
    """Log-spaced spatial frequencies (cycles/pixel) up to the pixel grid's Nyquist frequency."""
    return torch.logspace(math.log10(lo), math.log10(hi), n_sf)


@torch.no_grad()
def grating_responses(ae: ModularAutoencoder, n_orient: int = 16, n_sf: int = 12, n_phase: int = 8,
                      contrast: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F1 amplitudes of every channel: C x 3 colour directions x n_orient x n_sf.

    Gratings ``0.5 + contrast*cos(2pi*sf*(x cos phi + y sin phi) + phase)*axis`` in RGB [0, 1]
    over one receptive field, normalised as the model does; the response is the kernel's
    dot product with it (the encoder's output at a cell whose field sees it) then the
    activation. Returns (responses, orientations in radians, spatial frequencies c/px).
    """
    w = ae.kernel().detach().float().cpu()
    K = w.shape[-1]
    ori = torch.arange(n_orient) * math.pi / n_orient
    sfs = sf_grid(n_sf)
    ph = torch.arange(n_phase) * 2 * math.pi / n_phase
    c = torch.arange(K, dtype=torch.float32) - (K - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    proj = xx[None] * ori.cos()[:, None, None] + yy[None] * ori.sin()[:, None, None]   # O x K x K
    arg = 2 * math.pi * sfs[None, :, None, None, None] * proj[:, None, None] + ph[None, None, :, None, None]
    wave = arg.cos()                                                                    # O x F x P x K x K
    mean = ae.mean.detach().float().cpu().view(3)
    std = ae.std.detach().float().cpu().view(3)
    out = []
    for a in ("lum", "rg", "by"):
        axis = torch.tensor(COLOUR_AXES[a]) * math.sqrt(3)   # equal norm on every axis; lum = (1, 1, 1)
        img = 0.5 + contrast * wave[..., None, :, :] * axis.view(3, 1, 1)              # O x F x P x 3 x K x K
        x = (img - mean.view(3, 1, 1)) / std.view(3, 1, 1)
        resp = torch.einsum("ofprhw,crhw->cofp", x, w)
        resp = ae.activate(resp)
        f1 = (resp * torch.exp(-1j * ph)).sum(-1).abs() * 2 / n_phase                  # C x O x F
        out.append(f1)
    return torch.stack(out, 1), ori, sfs


def _osi(curve: torch.Tensor, ori: torch.Tensor) -> tuple[float, float, float]:
    """(OSI, gOSI, preferred orientation in degrees) of one orientation tuning curve."""
    n = curve.numel()
    i = int(curve.argmax())
    pref, orth = float(curve[i]), float(curve[(i + n // 2) % n])
    osi = (pref - orth) / (pref + orth) if pref + orth > 0 else 0.0
    z = (curve * torch.exp(2j * ori)).sum()
    gosi = float(z.abs() / curve.sum()) if float(curve.sum()) > 0 else 0.0
    return osi, gosi, math.degrees(float(ori[i]))


@torch.no_grad()
def module_tuning(ae: ModularAutoencoder, n_orient: int = 16, n_sf: int = 12) -> list[ModuleTuning]:
    """Colour, orientation and spatial-frequency tuning of every module."""
    R, ori, sfs = grating_responses(ae, n_orient, n_sf)        # C x 3 x O x F
    ce = colour_energy(ae)                                      # nv x 3
    k = rgb_kernels(ae)
    dc_resp = ae.activate(k.sum((1, 2, 3)).abs())               # response to +1 on all RGB pixels
    vl = ae.vector_length
    peaks = R.view(ae.n_vector, -1).amax(1)
    strength = peaks / peaks.max().clamp(min=1e-12)
    rot_res, shift_res = span_residuals(ae)
    out = []
    for i in range(ae.n_vector):
        osis, gosis, prefs, dirs = [], [], [], []
        peak_mod = 0.0
        for ch in range(i * vl, (i + 1) * vl):
            r = R[ch]                                           # 3 x O x F
            best = r.amax((1, 2))
            a = int(best.argmax())
            f = int(r[a].amax(0).argmax())
            o, g, p = _osi(r[a, :, f], ori)
            osis.append(o), gosis.append(g), prefs.append(round(p, 1)), dirs.append(("lum", "rg", "by")[a])
            peak_mod = max(peak_mod, float(best.max()))
        sf_curve = R[i * vl:(i + 1) * vl].amax(2).amax(1).sum(0)   # F
        e = ce[i]
        chroma = float((e[1] + e[2]) / e.sum()) if float(e.sum()) > 0 else 0.0
        osi = sum(osis) / len(osis)
        dc = float(dc_resp[i * vl:(i + 1) * vl].max()) * 0.25 / max(peak_mod, 1e-12)
        kind = ("weak" if float(strength[i]) < WEAK_MAX_STRENGTH else
                "colour" if chroma >= COLOUR_MIN_CHROMA else
                "oriented" if osi >= ORIENTED_MIN_OSI else
                "luminance" if chroma <= LUMINANCE_MAX_CHROMA else "mixed")
        out.append(ModuleTuning(i, chroma, float(k[i * vl:(i + 1) * vl].pow(2).sum()), osi,
                                [round(v, 3) for v in osis], sum(gosis) / len(gosis), prefs,
                                float(sfs[int(sf_curve.argmax())]), dc, dirs, float(strength[i]), kind,
                                float(rot_res[i]), float(shift_res[i])))
    return out


@torch.no_grad()
def span_residuals(ae: ModularAutoencoder, n_angles: int = 16, shifts=((1, 0), (0, 1), (2, 0), (0, 2), (1, 1), (2, 2)),
                   pad: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """How closed each module's span is under rotation and sub-stride shifts: n_vector, n_vector.

    Each module's ``vector_length`` kernels are rotated (``n_angles`` angles over 360 degrees, 0 left
    out) or shifted by 1-2 pixels (kornia, bilinear); the residual is the share of the
    transformed kernels' energy that no linear combination of the module's own kernels
    reproduces. 0 means that a vl x vl matrix M(delta) predicts the module's transformed features
    exactly - the equivariance the training asks for - and is what an isotropic module gets for
    free; random kernels of size K have residuals near 1.
    """
    import kornia

    w = ae.kernel().detach().float().cpu()
    w = torch.nn.functional.pad(w, (pad,) * 4)
    C, _, H, W = w.shape
    vl = ae.vector_length
    flat = w.reshape(C, 3, H, W)

    def residual(t: torch.Tensor) -> torch.Tensor:   # t: C x 3 x H x W transformed kernels
        out = []
        for i in range(ae.n_vector):
            B = flat[i * vl:(i + 1) * vl].reshape(vl, -1)
            T = t[i * vl:(i + 1) * vl].reshape(vl, -1)
            proj = T @ torch.linalg.pinv(B) @ B
            e = T.pow(2).sum()
            out.append(float((T - proj).pow(2).sum() / e) if float(e) > 0 else 0.0)
        return torch.tensor(out)

    angles = [360.0 * k / n_angles for k in range(1, n_angles)]
    rot = torch.stack([residual(kornia.geometry.transform.rotate(flat, torch.full((C,), a))) for a in angles]).mean(0)
    move = kornia.geometry.transform.translate
    sh = torch.stack([residual(move(flat, torch.tensor([list(d)] * C, dtype=torch.float32))) for d in shifts]).mean(0)
    return rot, sh


def summary(tunings: list[ModuleTuning]) -> dict:
    """Counts against the paper's claim: colour, luminance and oriented modules (weak modules
    left out of the counts; ``mean_osi`` is over the modules that are not weak)."""
    live = [t for t in tunings if t.kind != "weak"] or tunings
    return {
        "colour_modules": sum(t.chroma >= COLOUR_MIN_CHROMA for t in live),
        "luminance_modules": sum(t.chroma <= LUMINANCE_MAX_CHROMA for t in live),
        "oriented_modules": sum(t.osi >= ORIENTED_MIN_OSI for t in live),
        "oriented_osis": sorted((round(t.osi, 2) for t in live if t.osi >= ORIENTED_MIN_OSI), reverse=True),
        "mean_osi": sum(t.osi for t in live) / len(live),
        "weak_modules": sum(t.kind == "weak" for t in tunings),
        "mean_rot_residual": sum(t.rot_residual for t in live) / len(live),
        "mean_shift_residual": sum(t.shift_residual for t in live) / len(live),
        "kinds": {k: sum(t.kind == k for t in tunings) for k in ("colour", "oriented", "luminance", "mixed", "weak")},
    }


def derive_groups(ae: ModularAutoencoder, tunings: list[ModuleTuning] | None = None) -> list[dict]:
    """Named groups for a trained model, in the authors' order and meaning (HC0 ... HC5).

    * HC0 colour: modules with chroma fraction >= 0.5 (at least the most chromatic one);
    * the achromatic rest, split by orientation selectivity and preferred spatial frequency
      (the upper third of their frequencies counts as high):
      HC1 brightness: non-oriented modules below the high frequencies (at least one);
      HC2 edges: the oriented modules (OSI >= 0.5) but the best; HC3: the most
      orientation-selective module (the authors use theirs for sketches and line art);
      HC4 high and HC5 the highest spatial frequencies (non-oriented); weak modules go to HC5.
    HC0-HC5 partition the modules as the authors' do, except that HC2 equals HC3 when there is
    a single oriented module; a group that would be empty is left out. Aliases follow:
    ``colour`` (HC0), ``brightness`` (HC1), ``edges`` (HC2 + HC3), ``structure`` (all but colour).
    Every description records the measures that placed its modules there.
    """
    t = tunings or module_tuning(ae)
    nv = ae.n_vector
    live = [m for m in t if m.kind != "weak"] or list(t)
    weak = [m for m in t if m not in live]
    colour = [m for m in live if m.chroma >= COLOUR_MIN_CHROMA] or [max(live, key=lambda m: m.chroma)]
    rest = sorted((m for m in live if m not in colour), key=lambda m: (m.pref_sf, -m.osi))
    groups: dict[str, list] = {k: [] for k in ("HC0", "HC1", "HC2", "HC3", "HC4", "HC5")}
    groups["HC0"] = colour
    if rest:
        sfs = sorted(m.pref_sf for m in rest)
        hi_cut = sfs[min(len(sfs) - 1, (2 * len(sfs)) // 3)]
        oriented = [m for m in rest if m.osi >= ORIENTED_MIN_OSI]
        flat = [m for m in rest if m not in oriented]
        groups["HC1"] = [m for m in flat if m.pref_sf < hi_cut] or [(flat or rest)[0]]
        oriented = [m for m in oriented if m not in groups["HC1"]]
        high = sorted((m for m in flat if m not in groups["HC1"]), key=lambda m: m.pref_sf)
        if oriented:
            best = max(oriented, key=lambda m: m.osi)
            groups["HC3"] = [best]
            groups["HC2"] = [m for m in oriented if m is not best] or [best]
        if len(high) == 1 and not weak:
            groups["HC4"] = high
        elif high:
            cut = max(1, len(high) // 2)
            groups["HC4"], groups["HC5"] = high[:cut], high[cut:]
    groups["HC5"] = groups["HC5"] + weak
    by_mod = {m.module: m for m in t}

    def desc(what: str, mods: list[int]) -> str:
        stats = "; ".join(f"{i}: chroma {by_mod[i].chroma:.2f}, OSI {by_mod[i].osi:.2f}, {by_mod[i].pref_sf:.3f} c/px"
                          + (" (weak)" if by_mod[i].kind == "weak" else "") for i in mods)
        return f"{what} (derived: {stats})"

    whats = {"HC0": "colour: colour-opponent modules", "HC1": "brightness: low-frequency luminance modules",
             "HC2": "edges: oriented luminance modules", "HC3": "edges: the most orientation-selective module",
             "HC4": "high spatial frequency", "HC5": "highest spatial frequency and weak modules"}
    ids = {k: sorted(m.module for m in v) for k, v in groups.items()}
    out = [{"name": k, "modules": v, "description": desc(whats[k], v)} for k, v in ids.items() if v]
    edges = sorted(set(ids["HC2"]) | set(ids["HC3"]))
    aliases = (("colour", ids["HC0"], "alias of HC0"), ("brightness", ids["HC1"], "alias of HC1"),
               ("edges", edges, "HC2 and HC3: every oriented module"),
               ("structure", sorted(set(range(nv)) - set(ids["HC0"])), "every module but the colour ones"))
    out += [{"name": n, "modules": m, "description": d} for n, m, d in aliases if m]
    return out
