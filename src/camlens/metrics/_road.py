"""ROAD (RemOve And Debias): removed pixels filled in by noisy linear imputation, a sparse
linear system solved by multigrid-preconditioned conjugate gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _adapted, _check_maps, _classes, _probabilities

_ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def noisy_linear_impute(
    inputs: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0,
    tol: float = 1e-7, max_iter: int = 200,
) -> Tensor:
    """ROAD's noisy linear imputation, batched: every removed pixel becomes the weighted
    mean of its 8 neighbours inside the image (1/6 direct, 1/12 diagonal; removed
    neighbours are unknowns too), plus Gaussian noise of std ``noise``.

    Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449. The linear system (symmetric
    positive definite on the removed pixels) is solved for all images and channels at once
    by conjugate gradients (float64) preconditioned with one geometric multigrid V-cycle
    (float32; bilinear transfers, Galerkin coarse operators, damped Jacobi smoothing), a
    few images at a time, until the residual of every image and channel is below ``tol``
    times that of its right-hand side (at most ``max_iter`` iterations; 7 to 9 on
    224 x 224 images with 10 to 90 % removed). With the default ``tol`` the result is
    within 1e-6 (measured: 2e-7, float32 rounding) of an exact sparse solve on [0, 1]-scaled
    images, for holes of any shape and size.
    ``inputs`` (N, C, H, W), ``removed`` (N, H, W) bool.
    """
    x = inputs.float()
    n, c, h, w = x.shape
    removed = removed.to(device=x.device, dtype=torch.bool).view(n, h, w)
    # float64: holes far from any known pixel make the system ill-conditioned (float32
    # stalls at errors around 1e-3); MPS has no float64
    solve_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    chunks = []
    for start in range(0, n, _ROAD_CHUNK):
        part = slice(start, start + _ROAD_CHUNK)
        chunks.append(_impute_chunk(x[part].to(solve_dtype), removed[part], tol, max_iter).to(x))
    z = torch.cat(chunks) if chunks else x.clone()
    u = removed.to(x.dtype)[:, None]
    if noise:
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = z + u * torch.randn(z.shape, generator=g, dtype=z.dtype).to(z) * noise
    return torch.where(u > 0, z, x).to(inputs.dtype)


_ROAD_CHUNK = 4  # images solved together: bounds memory, and converged chunks stop early
_ROAD_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_ROAD_OMEGA = 0.8  # Jacobi damping of the multigrid smoother
_ROAD_DENSE = 100  # the coarsest level has at most this many points, solved densely


class _Level(NamedTuple):
    """One multigrid level: a 9-point stencil per point (N, 9, H, W), centre at 4, with an
    identity row where the point is not an unknown; ``active`` (N, 1, H, W) marks the
    unknowns; ``stride`` per dim: 2 where the next level halves it, 1 where it keeps it
    (at most 4 points); ``dense_inv`` (N, HW, HW) on the coarsest level only."""

    k: Tensor
    active: Tensor
    inv_diag: Tensor
    stride: tuple[int, int]
    dense_inv: Tensor | None


def _stencil(k: Tensor, z: Tensor) -> Tensor:
    """Apply a per-point 9-point stencil ``k`` (N, 9, H, W) to ``z`` (N, C, H, W)."""
    h, w = z.shape[-2:]
    zp = F.pad(z, (1, 1, 1, 1))
    out = k[:, 4:5] * z
    for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
        if d != 4:
            out.addcmul_(k[:, d : d + 1], zp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
    return out


def _along(dim: int, part: slice) -> tuple[slice, ...]:
    return (slice(None),) * (dim % 4) + (part,)


def _prolong(zc: Tensor, lev: _Level) -> Tensor:
    """Bilinear interpolation from the next coarser level onto ``lev``'s unknowns: per
    coarsened dim, coarse point j lands on fine 2 j, fine 2 j + 1 is the mean of j, j + 1."""
    out = zc
    for dim, stride, size in ((-1, lev.stride[1], lev.k.shape[3]),
                              (-2, lev.stride[0], lev.k.shape[2])):
        if stride == 2:
            m = out.shape[dim]
            shape = list(out.shape)
            shape[dim] = 2 * m - 1
            up = out.new_empty(shape)
            up[_along(dim, slice(0, None, 2))] = out
            up[_along(dim, slice(1, None, 2))] = (
                out[_along(dim, slice(0, -1))] + out[_along(dim, slice(1, None))]) * 0.5
            out = up[_along(dim, slice(0, size))]
    return out * lev.active


def _restrict(r: Tensor, lev: _Level, size: tuple[int, int]) -> Tensor:
    """The transpose of ``_prolong``: ``lev``'s residual onto the coarser level."""
    out = r * lev.active
    for dim, stride, m in ((-2, lev.stride[0], size[0]), (-1, lev.stride[1], size[1])):
        if stride == 2:
            pad = [0, 0, 0, 0]
            pad[2 * (-1 - dim)] = 1
            pad[2 * (-1 - dim) + 1] = 2 * m - out.shape[dim]
            g = F.pad(out, pad)  # fine i at 1 + i, zeros around: length 2 m + 1
            even = g[_along(dim, slice(0, None, 2))]
            out = g[_along(dim, slice(1, None, 2))] + (
                even[_along(dim, slice(0, -1))] + even[_along(dim, slice(1, None))]) * 0.5
    return out


def _level(k: Tensor, active: Tensor) -> _Level:
    h, w = k.shape[2:]
    inv_diag = 1 / k[:, 4:5]
    if h * w <= _ROAD_DENSE or max(h, w) <= 4:
        # dense inverse of the coarsest operator (a pseudo-inverse: with no known pixel at
        # all the operator is singular, and the right-hand side is then zero)
        n, m = k.shape[0], h * w
        idx = torch.arange(m, device=k.device).view(h, w)
        mat = k.new_zeros(n, m, m)
        for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
            rows = idx[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            cols = rows + dy * w + dx
            vals = k[:, d, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            mat[:, rows.flatten(), cols.flatten()] = vals.flatten(1)
        mat = (mat + mat.transpose(1, 2)).double() / 2
        dense_inv = torch.linalg.pinv(mat, hermitian=True).to(k.dtype)
        return _Level(k, active, inv_diag, (1, 1), dense_inv)
    stride = (2 if h > 4 else 1, 2 if w > 4 else 1)
    return _Level(k, active, inv_diag, stride, None)


def _coarsen(lev: _Level) -> tuple[Tensor, Tensor]:
    """The Galerkin operator R A P of the next level, found by probing with 9 colours:
    coarse points of one colour (position mod 3) have disjoint stencils."""
    n, _, h, w = lev.k.shape
    size = (h // 2 + 1 if lev.stride[0] == 2 else h, w // 2 + 1 if lev.stride[1] == 2 else w)
    iy = torch.arange(size[0], device=lev.k.device)
    ix = torch.arange(size[1], device=lev.k.device)
    colour = (iy % 3)[:, None] * 3 + (ix % 3)[None, :]
    probes = (colour == torch.arange(9, device=colour.device)[:, None, None]).to(lev.k)
    probes = probes[None].expand(n, 9, *size)
    y = _restrict(_stencil(lev.k, _prolong(probes, lev)), lev, size)
    cols = [((iy + dy) % 3)[:, None] * 3 + ((ix + dx) % 3)[None, :] for dy, dx in _ROAD_OFFSETS]
    kc = y.gather(1, torch.stack(cols)[None].expand(n, 9, *size))
    active = kc[:, 4:5] > 0
    kc[:, 4:5] += (~active).to(kc)
    return kc, active.to(kc)


def _vcycle(levels: list[_Level], r: Tensor, i: int = 0) -> Tensor:
    """One symmetric V-cycle on ``levels[i:]`` for the residual ``r``, from zero."""
    lev = levels[i]
    if lev.dense_inv is not None:
        n, c, h, w = r.shape
        flat = r.reshape(n, c, h * w).transpose(1, 2)
        return (lev.dense_inv @ flat).transpose(1, 2).reshape(r.shape)
    z = r * lev.inv_diag * _ROAD_OMEGA
    coarse = levels[i + 1].k.shape[2:]
    z = z + _prolong(_vcycle(levels, _restrict(r - _stencil(lev.k, z), lev, coarse), i + 1), lev)
    return z + (r - _stencil(lev.k, z)) * lev.inv_diag * _ROAD_OMEGA


def _impute_chunk(x: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """The exact (noise-free) imputation of a few images by multigrid-preconditioned CG."""
    n, c, h, w = x.shape
    u = removed.to(x.dtype)[:, None]
    weights = torch.tensor(_ROAD_WEIGHTS, dtype=x.dtype, device=x.device).flatten()
    ones = F.pad(torch.ones_like(u), (1, 1, 1, 1))  # 1 inside the image
    up = F.pad(u, (1, 1, 1, 1))
    k = torch.empty(n, 9, h, w, dtype=x.dtype, device=x.device)
    s = torch.zeros_like(u)
    for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
        if d != 4:
            win = (slice(None), slice(None), slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
            s += weights[d] * ones[win]
            k[:, d : d + 1] = -weights[d] * up[win] * u
    k[:, 4:5] = torch.where(u > 0, s, torch.ones_like(s))
    # known neighbours move to the right-hand side (in float32, a fast convolution: its
    # rounding moves the solution by at most that relative rounding, maximum principle)
    kernel = weights.float().view(1, 1, 3, 3).expand(c, 1, 3, 3)
    b = F.conv2d(F.pad((x * (1 - u)).float(), (1, 1, 1, 1)), kernel, groups=c).to(x) * u
    # the preconditioner runs in float32 (half the memory traffic, fast convolutions);
    # the flexible (Polak-Ribiere) CG step tolerates its rounding
    levels = [_level(k.float(), u.float())]
    while levels[-1].dense_inv is None:
        levels.append(_level(*_coarsen(levels[-1])))

    def precondition(r: Tensor) -> Tensor:
        return _vcycle(levels, r.float()).to(r)

    z = torch.zeros_like(x)
    r = b.clone()
    norm_b = b.flatten(2).norm(dim=2).clamp_min(1e-30)[..., None, None]
    zr = precondition(r)
    p = zr
    rz = (r * zr).sum((2, 3), keepdim=True)
    for _ in range(max_iter):
        if bool(((r.flatten(2).norm(dim=2)[..., None, None] / norm_b) <= tol).all()):
            break
        ap = _stencil(k, p)
        denom = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(denom > 0, rz / torch.where(denom > 0, denom, 1), 0.0)
        z = z + alpha * p
        r = r - alpha * ap
        zr_new = precondition(r)
        rz_new = (r * zr_new).sum((2, 3), keepdim=True)
        step = (r * (zr_new - zr)).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, step / torch.where(rz > 0, rz, 1), 0.0)
        p = zr_new + beta * p
        zr, rz = zr_new, rz_new
    return z


def road(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any = None, *,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), order: str = "morf",
    noise: float = 0.01, seed: int = 0, batch_size: int = 64,
) -> Tensor:
    """ROAD (RemOve And Debias): class probabilities (B, P) after removing ``p`` % of the
    pixels and imputing them by noisy linear imputation.

    ``order="morf"`` removes the most relevant pixels first (a faithful map makes the
    probability fall fast: lower is better), ``"lerf"`` the least relevant (higher is
    better). A pixel is removed when its saliency is at or above the ``100 - p``
    percentile (``morf``), or at or below the ``p`` percentile (``lerf``), with
    interpolated percentiles as NumPy's. Rong et al. 2022, https://arxiv.org/abs/2202.00449
    """
    model, inputs, _ = _adapted(model, inputs)
    maps = _check_maps(inputs, maps)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    ps = [float(p) for p in percentiles]
    if not ps or any(not 0 < p < 100 for p in ps):
        raise ValueError(f"percentiles must lie strictly between 0 and 100, got {list(ps)}")
    classes = _classes(model, inputs, target)
    b = inputs.shape[0]
    flat = maps.flatten(1).double()
    if order == "lerf":
        flat = 1 - flat
    q = torch.tensor([1 - p / 100 for p in ps], dtype=flat.dtype, device=flat.device)
    thresholds = torch.quantile(flat, q, dim=1).T  # (B, P)
    removed = flat[:, None, :] >= thresholds[:, :, None]  # (B, P, HW)
    removed = removed.view(b * len(ps), *inputs.shape[2:])
    owners = torch.arange(b, device=inputs.device).repeat_interleave(len(ps))
    imputed = noisy_linear_impute(inputs[owners], removed, noise=noise, seed=seed)
    probs = _probabilities(model, lambda part: imputed[part], classes[owners], owners.numel(),
                           batch_size)
    return probs.view(b, len(ps))
