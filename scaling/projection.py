"""Variable projection for forms with linear coefficients: scan the nonlinear parameters on a dense grid and
solve the nonnegative linear coefficients in closed form per cell.

For a·(C+b)^c + d the grid is 64 log b x 48 log(-c) cells; (a, d) per cell is a tiny nonnegative least-squares
problem (every active set is tried). The best cells seed the fitter (``fit.py``) and all cells near the optimum
give the conditioning spread (``conditioning.py``). The scan covers the part of parameter space the paper's grid
misses (its b <= 95 GFLOPs and d <= 5e-4 are orders of magnitude below fitted values of b ~ 1e8, d ~ 0.1).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Keeps the normal equations solvable when a column vanishes (a parameter pinned at a floor).
RIDGE = 1e-14


def spd_solve(a, b):
    """Solves a @ x = b for a small symmetric positive-definite a (p <= ~6) by an unrolled Cholesky.

    Plain elementwise arithmetic, so XLA fuses it with the surrounding vmapped LM step instead of issuing one
    batched LAPACK call per step for millions of 2x2..5x5 systems.
    """
    p = a.shape[-1]
    low = [[None] * p for _ in range(p)]
    for i in range(p):
        for j in range(i + 1):
            acc = a[..., i, j] - sum(low[i][k] * low[j][k] for k in range(j))
            if i == j:
                low[i][i] = jnp.sqrt(jnp.maximum(acc, 1e-300))
            else:
                low[i][j] = acc / low[j][j]
    z = []
    for i in range(p):
        z.append((b[..., i] - sum(low[i][k] * z[k] for k in range(i))) / low[i][i])
    sol = [None] * p
    for i in reversed(range(p)):
        sol[i] = (z[i] - sum(low[k][i] * sol[k] for k in range(i + 1, p))) / low[i][i]
    return jnp.stack(sol, axis=-1)


def _subset_masks(k: int) -> np.ndarray:
    return np.array(list(itertools.product((0.0, 1.0), repeat=k)), dtype=np.float64)


def _nnls_normal(gram, rhs, yy):
    """min_c c^T gram c - 2 c^T rhs + yy subject to c >= 0 (k <= 3), by trying every active set.

    Works on the normal equations (weighted Gram matrix and right-hand side) so the per-point data never needs
    to be touched per cell. Columns are rescaled to unit norm first; returns (coef, weighted SSE).
    """
    k = gram.shape[-1]
    scale = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)) + 1e-300
    g = gram / jnp.outer(scale, scale)
    r = rhs / scale
    masks = jnp.asarray(_subset_masks(k))

    def solve(m):
        a = g * jnp.outer(m, m) + jnp.diag(1.0 - m) + RIDGE * jnp.eye(k)
        c = spd_solve(a, r * m) * m
        sse = yy - 2.0 * c @ r + c @ g @ c
        feasible = jnp.all(c >= 0.0) & jnp.isfinite(sse)
        return c, jnp.where(feasible, jnp.maximum(sse, 0.0), jnp.inf)

    coefs, sses = jax.vmap(solve)(masks)
    best = jnp.argmin(sses)
    return coefs[best] / scale, sses[best]


def _solve_cells(form, loss, nl_grid, x, y, w):
    """(linear coefficients [m, k], weighted SSE [m]) of every cell of the nonlinear grid."""
    prof = form.profile
    # Log-space objectives are approximated by relative (1/y^2-weighted) linear least squares.
    w_fit = w if (loss == "mse" and form.fit_space == "linear") else w / (y * y)
    # Basis [cells, n, k] depends on x only: when x is shared by all sets (bootstrap) it is built once.
    basis = jax.vmap(lambda nl: prof.basis(nl, x))(nl_grid)
    gram = jnp.einsum("mnk,mnl,n->mkl", basis, basis, w_fit)
    rhs = jnp.einsum("mnk,n->mk", basis, w_fit * y)
    return jax.vmap(_nnls_normal, in_axes=(0, 0, None))(gram, rhs, jnp.sum(w_fit * y * y))


def profile_seeds(form, loss, n_seeds, nl_grid, x, y, w):
    """The n_seeds best cells of the dense nonlinear grid, linear coefficients solved exactly (as theta)."""
    coefs, sses = _solve_cells(form, loss, nl_grid, x, y, w)
    sses = jnp.where(jnp.isfinite(sses), sses, jnp.inf)
    _, idx = jax.lax.top_k(-sses, n_seeds)
    return jax.vmap(form.profile.assemble)(nl_grid[idx], coefs[idx])


def profile_cells(form, loss, nl_grid, x, y, w):
    """Every cell of the grid as theta [m, p] (linear coefficients solved), and whether the solve was feasible."""
    coefs, sses = _solve_cells(form, loss, nl_grid, x, y, w)
    return jax.vmap(form.profile.assemble)(nl_grid, coefs), jnp.isfinite(sses)


def grid(form, x) -> np.ndarray:
    """The dense nonlinear grid [m, k] for points x (zeros((1, 1)) for forms without a profile)."""
    if form.profile is None:
        return np.zeros((1, 1))
    x = np.asarray(x)
    return form.profile.grid(x.reshape(-1, form.n_inputs) if form.n_inputs > 1 else x.reshape(-1))


def set_grids(form, xs, ws) -> np.ndarray:
    """Each set's own grid, from its positive-weight points: [m, k] when all sets share one, else [B, m, k]."""
    xs, ws = np.asarray(xs), np.asarray(ws)
    if xs.ndim == (1 if form.n_inputs == 1 else 2):  # one x shared by every set
        xs = np.broadcast_to(xs, (ws.shape[0],) + xs.shape)
    grids, seen = [], {}
    for x, w in zip(xs, ws):
        used = x[w > 0]
        key = np.unique(used, axis=0).tobytes()
        if key not in seen:
            seen[key] = grid(form, used)
        grids.append(seen[key])
    if len(seen) == 1:
        return grids[0]
    return np.stack(grids)
