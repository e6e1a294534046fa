"""The modular autoencoder's training objective (paper sec. 3; ../shared/docs/scg-paper.md sec. 2).

For an image I (normalised, Bx3xSxS) and a transformed copy I' = L_delta(I), delta = (t_x, t_y, theta):

* reconstruction  ``L_rec = ||D(f) - I||^2`` and ``L_rec' = ||m*(D(f') - I')||^2`` (tied decoder D),
* equivariance    ``L_equ = sum_i ||m*(f'(i) - M_i(delta) f(i))||^2``: every module's features of I' are
  predicted from *that module's own* features of I by a learned vlxvl matrix M_i(delta), read by
  linear interpolation from a per-module table over delta (:class:`EquivarianceCodebook`);
  no cross-module terms,
* symmetry        ``L_sym = sum_i sum_mn ||e_m - M_i(delta*_mn) e_n||^2`` with
  ``delta*_mn = sum_delta softmax_delta(M_i,mn(delta)/T)*delta`` over the table's grid (the paper's form, with
  the positive sign of the authors' later code),

with validity masks ``m`` that drop pixels and feature cells whose receptive field came
from outside the image (masked terms are means over all positions, the invalid ones counting
zero, so that a batch split over processes averages to the same loss). One step runs a
translation pass (theta = 0) and a rotation pass
(theta ~ U(-max_rotate, max_rotate)); both passes share the one 3-D table.

How delta reaches the table. Feature cell p' of f' is centred on pixel ``s*p' + o`` of I'
(stride s, ``o = (K-1)/2 - padding``). Its source point in I is ``q = A^-^1(s*p' + o)``,
i.e. ``u = (q - o)/s`` in feature cells. The prediction reads the original features at
the nearest cell ``n = round(u)`` and the table at the sub-cell residual ``r = u - n in
[-1/2, 1/2]^2`` and the rotation angle theta: ``f^'(p') = M(r_x, r_y, theta)*f(n)`` (the authors'
``pred_ks = 1``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import kornia
import torch
import torch.nn as nn
import torch.nn.functional as F

from scg_models import ModularAutoencoder

PASSES = ("trans", "rot")


@dataclass
class LossWeights:
    """Weights of the loss terms (paper: L_rec + lambda1*L_equ + lambda2*L_sym)."""

    rec: float = 1.0        # ||D(f) - I||^2
    rec_trans: float = 1.0  # ||m*(D(f') - I')||^2, per pass
    rec_pred: float = 0.0   # ||m*(D(f^') - I')||^2, per pass (the authors' later code; not in the paper)
    equ: float = 1.0        # lambda1, per pass
    sym: float = 0.1        # lambda2

    def to_dict(self) -> dict:
        return asdict(self)


# --- the table of prediction matrices -----------------------------------------------------
class EquivarianceCodebook(nn.Module):
    """Per-module prediction matrices M_i(delta) in R^{vlxvl} on a grid over delta = (t_x, t_y, theta).

    ``table``: n_rotate x n_translate x n_translate x n_vector x vl x vl. Translation axes
    span the sub-cell residual [-1/2, 1/2] (feature cells) with grid points on both ends;
    the theta axis is periodic, ``n_rotate`` points at ``-pi + 2pik/n_rotate`` (theta = 0 is a grid
    point when ``n_rotate`` is even). Initialised to the identity plus U(+/-init_noise).
    """

    def __init__(self, n_vector: int, vector_length: int, n_translate: int = 9, n_rotate: int = 16,
                 init_noise: float = 1e-2):
        super().__init__()
        if n_translate < 2 or n_rotate < 1:
            raise ValueError(f"codebook grid: need n_translate >= 2 and n_rotate >= 1; got {n_translate}, {n_rotate}")
        self.n_vector, self.vector_length = n_vector, vector_length
        self.n_translate, self.n_rotate = n_translate, n_rotate
        eye = torch.eye(vector_length).expand(n_rotate, n_translate, n_translate, n_vector, -1, -1)
        noise = torch.empty(eye.shape).uniform_(-init_noise, init_noise)
        self.table = nn.Parameter(eye + noise)

    def grid_deltas(self) -> torch.Tensor:
        """delta of every grid point, Gx3 (t_x, t_y in cells, theta in radians), in ``table`` order."""
        t = torch.linspace(-0.5, 0.5, self.n_translate, device=self.table.device)
        th = -math.pi + 2 * math.pi * torch.arange(self.n_rotate, device=self.table.device) / self.n_rotate
        g_th, g_y, g_x = torch.meshgrid(th, t, t, indexing="ij")
        return torch.stack([g_x, g_y, g_th], -1).reshape(-1, 3)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """Matrices at ``delta`` (Nx3: t_x, t_y in [-1/2, 1/2] cells, theta radians) -> Nxn_vectorxvlxvl.

        Trilinear interpolation (periodic in theta); translations outside [-1/2, 1/2] are clamped.
        """
        nt, nr = self.n_translate, self.n_rotate
        d = delta.float()
        ax = ((d[:, 0] + 0.5) * (nt - 1)).clamp(0, nt - 1)
        ay = ((d[:, 1] + 0.5) * (nt - 1)).clamp(0, nt - 1)
        ix0 = ax.floor().clamp(max=nt - 2)
        iy0 = ay.floor().clamp(max=nt - 2)
        wx, wy = ax - ix0, ay - iy0
        ar = torch.remainder((d[:, 2] + math.pi) / (2 * math.pi) * nr, nr)
        ir0 = ar.floor()
        wr = ar - ir0
        ix0, iy0, ir0 = ix0.long(), iy0.long(), ir0.long() % nr
        ir1 = (ir0 + 1) % nr
        table = self.table.reshape(nr * nt * nt, -1)
        out = 0
        for ir, fr in ((ir0, 1 - wr), (ir1, wr)):
            for iy, fy in ((iy0, 1 - wy), (iy0 + 1, wy)):
                for ix, fx in ((ix0, 1 - wx), (ix0 + 1, wx)):
                    w = (fr * fy * fx).to(table.dtype)
                    out = out + w[:, None] * table.index_select(0, (ir * nt + iy) * nt + ix)
        return out.view(-1, self.n_vector, self.vector_length, self.vector_length)


def symmetry_loss(codebook: EquivarianceCodebook, temperature: float = 0.1) -> torch.Tensor:
    """``mean_{i,m,n} ||e_m - M_i(delta*_mn) e_n||^2`` (paper sec. 3, positive sign; delta* detached).

    ``delta*_mn`` is the softmax(M_i,mn(delta)/T)-weighted mean of the grid's delta (circular mean in theta):
    where the table maps channel n onto channel m most strongly. The loss asks that there
    M_i maps e_n exactly onto e_m: channels inside a module are transformed copies.
    """
    nv, vl = codebook.n_vector, codebook.vector_length
    grid = codebook.grid_deltas()                                        # Gx3
    logits = codebook.table.detach().float().reshape(-1, nv, vl, vl) / temperature
    p = logits.softmax(0)                                                # Gxnvxvlxvl
    tx = torch.einsum("g,gimn->imn", grid[:, 0], p)
    ty = torch.einsum("g,gimn->imn", grid[:, 1], p)
    th = torch.atan2(torch.einsum("g,gimn->imn", grid[:, 2].sin(), p),
                     torch.einsum("g,gimn->imn", grid[:, 2].cos(), p))
    star = torch.stack([tx, ty, th], -1).reshape(-1, 3)                 # (i,m,n)x3
    M = codebook(star).view(nv, vl, vl, nv, vl, vl)                      # [i,m,n] -> all modules' M
    i = torch.arange(nv, device=M.device)[:, None, None]
    m = torch.arange(vl, device=M.device)[None, :, None]
    n = torch.arange(vl, device=M.device)[None, None, :]
    col = M[i, m, n, i, :, n]                                            # nvxvlxvlxvl: M_i(delta*_mn) e_n
    target = torch.eye(vl, device=M.device, dtype=col.dtype)[None, :, None, :]   # e_m
    return (col - target).pow(2).sum(-1).mean()


# --- transforms -------------------------------------------------------------------------
def affine_matrices(angle_deg: torch.Tensor, shift_px: torch.Tensor, size: int) -> torch.Tensor:
    """Bx2x3 source->destination pixel maps: rotate by ``angle_deg`` about the centre, then shift.

    angle_deg: B; shift_px: Bx2 (x, y, pixels). Pixel centres at integer coordinates.
    """
    b = angle_deg.shape[0]
    c = torch.full((b, 2), (size - 1) / 2, dtype=angle_deg.dtype, device=angle_deg.device)
    m = kornia.geometry.transform.get_rotation_matrix2d(c, angle_deg, torch.ones_like(c))
    return torch.cat([m[..., :2], m[..., 2:] + shift_px[..., None]], -1)


def warp(x: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """I' = L_delta(I) (bilinear, zeros outside) and its pixel validity mask (Bx1xSxS, 1 = from inside)."""
    size = tuple(x.shape[-2:])
    xt = kornia.geometry.transform.warp_affine(x, A.to(x.dtype), size, mode="bilinear", padding_mode="zeros",
                                               align_corners=True)
    ones = torch.ones_like(x[:, :1])
    m = kornia.geometry.transform.warp_affine(ones, A.to(x.dtype), size, mode="bilinear", padding_mode="zeros",
                                              align_corners=True)
    return xt, (m > 0.999).to(x.dtype)


def source_cells(A: torch.Tensor, feat_hw: tuple[int, int], stride: int, offset: float) -> torch.Tensor:
    """Source position in I, in feature-cell units, of every cell of f': Bxhxwx2 (x, y)."""
    h, w = feat_hw
    ys, xs = torch.meshgrid(torch.arange(h, device=A.device, dtype=A.dtype),
                            torch.arange(w, device=A.device, dtype=A.dtype), indexing="ij")
    pts = torch.stack([xs, ys], -1).reshape(1, -1, 2) * stride + offset
    Ainv = kornia.geometry.transform.invert_affine_transform(A.float())
    Ainv = torch.cat([Ainv, Ainv.new_tensor([0, 0, 1]).expand(A.shape[0], 1, 3)], 1)
    q = kornia.geometry.linalg.transform_points(Ainv, pts.float().expand(A.shape[0], -1, -1))
    return ((q - offset) / stride).reshape(A.shape[0], h, w, 2)


# --- the model under training ----------------------------------------------------------------
class Trainee(nn.Module):
    """The autoencoder plus its codebook; ``forward`` returns every loss term.

    Holding both in one module lets DDP synchronise them and torch.compile see one graph.
    """

    def __init__(self, ae: ModularAutoencoder, codebook: EquivarianceCodebook, weights: LossWeights,
                 temperature: float = 0.1, mask_margin: float | None = None, passes=PASSES):
        super().__init__()
        self.ae, self.codebook, self.weights = ae, codebook, weights
        self.temperature = float(temperature)
        self.radius = (ae.kernel_size - 1) / 2
        #: pixels a receptive field's centre keeps from the image border (default: the kernel radius)
        self.mask_margin = self.radius if mask_margin is None else float(mask_margin)
        self.offset = self.radius - ae.padding
        self.passes = tuple(passes)
        bad = [p for p in self.passes if p not in PASSES]
        if bad or not self.passes:
            raise ValueError(f"passes: {list(passes)}; choose from {PASSES}")

    # the autoencoder with a kernel composed once per step (same ops as ae.encode / ae.decode)
    def encode(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.ae.activate(F.conv2d(x, w.to(x.dtype), stride=self.ae.stride, padding=self.ae.padding))

    def decode(self, w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(f, w.to(f.dtype), stride=self.ae.stride, padding=self.ae.padding)

    def _cell_mask(self, src: torch.Tensor, size: int, feat_hw) -> torch.Tensor:
        """Bxhxw validity of each f' cell: its own receptive field inside I', its source's inside I,
        and the nearest source cell's receptive field inside I."""
        s, o, R, mg = self.ae.stride, self.offset, self.radius, self.mask_margin
        h, w = feat_hw
        dev = src.device
        cy = torch.arange(h, device=dev) * s + o
        cx = torch.arange(w, device=dev) * s + o
        own = (((cy - R >= 0) & (cy + R <= size - 1))[:, None] & ((cx - R >= 0) & (cx + R <= size - 1))[None, :])
        q = src * s + o
        inside = ((q >= mg) & (q <= size - 1 - mg)).all(-1)
        nq = src.round() * s + o
        near = ((nq - R >= 0) & (nq + R <= size - 1)).all(-1)
        return own[None] & inside & near

    def predict(self, f: torch.Tensor, src: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """f^' = M_i(r, theta)*f(i)(n) per module: f BxCxhxw, src Bxh'xw'x2, theta B (radians)."""
        B, C, h, w = f.shape
        nv, vl = self.ae.n_vector, self.ae.vector_length
        hp, wp = src.shape[1:3]
        n = src.round()
        r = (src - n).reshape(B, -1, 2)
        nx = n[..., 0].clamp(0, w - 1).long()
        ny = n[..., 1].clamp(0, h - 1).long()
        idx = (ny * w + nx).reshape(B, 1, -1).expand(-1, C, -1)
        fs = f.flatten(2).gather(2, idx)                                     # BxCxP
        fs = fs.view(B, nv, vl, -1).permute(0, 3, 1, 2)                      # BxPxnvxvl
        delta = torch.cat([r, theta.view(B, 1, 1).expand(-1, r.shape[1], 1).to(r.dtype)], -1)
        M = self.codebook(delta.reshape(-1, 3)).view(B, -1, nv, vl, vl)
        pred = torch.einsum("bpnij,bpnj->bpni", M.to(fs.dtype), fs)
        return pred.reshape(B, hp, wp, C).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, transforms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
        """Loss terms for a batch.

        x: Bx3xSxS images in [0, 1]. transforms: pass name -> (A Bx2x3 source->dest pixel
        maps, theta B radians). Returns floats-as-tensors: ``rec``, per pass ``rec_<p>``,
        ``equ_<p>`` (and ``pred_<p>``), ``sym``, and ``total`` (weighted sum).
        """
        ae, lw = self.ae, self.weights
        x = ae.normalize(x)
        S = x.shape[-1]
        w = ae.kernel()
        f = self.encode(w, x)
        rec = self.decode(w, f)
        so = rec.shape[-1]
        out = {"rec": F.mse_loss(rec.float(), x[..., :so, :so].float())}
        total = lw.rec * out["rec"]
        for name in self.passes:
            A, theta = transforms[name]
            # geometry in fp32 even under autocast: bf16 coordinates would be off by a quarter pixel
            with torch.autocast(x.device.type, enabled=False):
                xt, pix = warp(x.float(), A.float())
                src = source_cells(A.float(), f.shape[-2:], ae.stride, self.offset)
            ft = self.encode(w, xt)
            cell = self._cell_mask(src, S, ft.shape[-2:]).unsqueeze(1).float()
            pred = self.predict(f, src, theta)
            # masked means over *all* positions (not only the valid ones): a batch split over
            # processes then averages to exactly the loss of the whole batch
            equ = ((pred.float() - ft.float()).pow(2) * cell).mean()
            pix = pix[..., :so, :so]
            rect = self.decode(w, ft)
            rec_t = ((rect.float() - xt[..., :so, :so].float()).pow(2) * pix).mean()
            out[f"rec_{name}"], out[f"equ_{name}"] = rec_t, equ
            total = total + lw.rec_trans * rec_t + lw.equ * equ
            if lw.rec_pred:
                recp = self.decode(w, pred * cell)
                out[f"pred_{name}"] = ((recp.float() - xt[..., :so, :so].float()).pow(2) * pix).mean()
                total = total + lw.rec_pred * out[f"pred_{name}"]
            out[f"valid_{name}"] = cell.mean().detach()
        with torch.autocast(x.device.type, enabled=False):
            out["sym"] = symmetry_loss(self.codebook, self.temperature)
        out["total"] = total + lw.sym * out["sym"]
        return out
