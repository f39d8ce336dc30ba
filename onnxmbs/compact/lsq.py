"""Reconstruction, part 3 — ridge-regularised least squares from accumulated normal equations.

A layer is one or several independent linear systems (*blocks*: one per conv group; a
dense conv or a Gemm is one block). For each block the rows ``x`` (inputs, plus a column
of ones when the layer has a bias) and ``y`` (targets) of every batch are folded into
``A = Σ xᵀx``, ``B = Σ xᵀy`` and ``Σ y²`` (each batch's product in float32, the sums in float64), so memory is ``dim² + dim·outputs``
per block, whatever the number of rows.

The solve is ridge regression *towards the inherited weights* ``W0``:
``(A + λ·s·I) W = B + λ·s·W0`` with ``s`` the mean of A's diagonal, so an under-determined
system (few images, many inputs) stays near the weights the layer already had instead of
shrinking to zero.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np

logger = logging.getLogger(__name__)

SYRK_DIM = 1024  # blocks at least this wide take Σ xᵀx by syrk (measured: 0.69 s vs 1.00 s at dim 4,608)


def blas_threads(threads: int | None):
    """A context with BLAS on ``threads`` threads (threadpoolctl, when installed; None: as it is)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _blas():
    """scipy's BLAS wrappers (for syrk), or None without scipy (an optional dependency)."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas


def _solve(a: np.ndarray, b: np.ndarray, w0: np.ndarray, lam: float) -> tuple[np.ndarray, bool]:
    """The solution of ``(a + lam·I) w = b + lam·w0`` and whether it is exact (False: a least-squares fallback).
    Only ``a``'s upper triangle is read (the Cholesky factor's)."""
    lhs = a.copy()
    lhs.flat[::lhs.shape[0] + 1] += lam
    rhs = b + lam * w0
    try:
        import scipy.linalg as sl  # optional: Cholesky, half the work of numpy's LU
    except ImportError:
        sl = None
    if sl is not None:
        try:
            return sl.cho_solve(sl.cho_factor(lhs, lower=False, check_finite=False, overwrite_a=True), rhs,
                                check_finite=False), True
        except np.linalg.LinAlgError:
            pass
    lhs = _symmetric(a)
    lhs.flat[::lhs.shape[0] + 1] += lam
    try:
        return np.linalg.solve(lhs, rhs), True
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0], False


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle (diagonal included) is ``upper``'s."""
    full = np.triu(upper)
    full += np.triu(upper, 1).T
    return full


class NormalEquations:
    """Σ xᵀx, Σ xᵀy and Σ y² of ``blocks`` independent systems with ``dim`` inputs and ``outputs`` targets.

    Wide blocks (``dim`` >= :data:`SYRK_DIM`, SciPy installed) keep Σ xᵀx as its upper triangle only
    (syrk's product, a third less work), which is all the Cholesky factor reads; :attr:`a` is the
    symmetric matrix either way."""

    def __init__(self, blocks: int, dim: int, outputs: int, *, buffer: int = 16 << 20) -> None:
        self.upper = dim >= SYRK_DIM and _blas() is not None
        self.sums = np.zeros((blocks, dim, dim))  # Σ xᵀx (its upper triangle when self.upper)
        self.b = np.zeros((blocks, dim, outputs))
        self.yy = np.zeros(blocks)
        self.rows = 0
        self.buffer = max(1, buffer // (4 * blocks * (dim + outputs)))  # rows held before one product
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0

    @property
    def a(self) -> np.ndarray:
        """Σ xᵀx per block (blocks, dim, dim), symmetric."""
        self.flush()
        return np.stack([_symmetric(m) for m in self.sums]) if self.upper else self.sums

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows ``x`` (rows, blocks, dim) and targets ``y`` (rows, blocks, outputs); the products are taken
        over a few batches' rows at once (fewer, larger float32 products, each added to the float64 sums)."""
        self.pending.append((np.asarray(x, np.float32), np.asarray(y, np.float32)))
        self.held += x.shape[0]
        self.rows += x.shape[0]
        if self.held >= self.buffer:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.concatenate([p[0] for p in self.pending]) if len(self.pending) > 1 else self.pending[0][0]
        y = np.concatenate([p[1] for p in self.pending]) if len(self.pending) > 1 else self.pending[0][1]
        self.pending, self.held = [], 0
        xb = np.ascontiguousarray(x.transpose(1, 0, 2))
        yb = np.ascontiguousarray(y.transpose(1, 0, 2))
        if self.upper:
            blas = _blas()
            for g in range(xb.shape[0]):
                self.sums[g] += blas.ssyrk(1.0, xb[g], trans=1)
            self.b += np.matmul(xb.transpose(0, 2, 1), yb)
        else:  # many small blocks (grouped, depthwise): one batched general product
            xt = np.ascontiguousarray(xb.transpose(0, 2, 1))
            self.sums += xt @ xb
            self.b += xt @ yb
        self.yy += np.einsum("gro,gro->g", yb, yb, dtype=np.float64)

    def merge(self, other: NormalEquations) -> None:
        """Add ``other``'s sums (the same layer's equations over other rows) to these."""
        self.flush()
        other.flush()
        if self.sums.shape != other.sums.shape or self.b.shape != other.b.shape or self.upper != other.upper:
            raise ValueError(f"cannot add normal equations of shape {other.b.shape} to {self.b.shape}")
        self.sums = self.sums + other.sums  # new arrays: either side may be a read-only view from Ray's object store
        self.b = self.b + other.b
        self.yy = self.yy + other.yy
        self.rows += other.rows

    def __getstate__(self) -> dict:
        self.flush()  # what travels (to or from a Ray worker) is the sums, never pending rows
        return self.__dict__.copy()

    def solve(self, w0: np.ndarray, ridge: float) -> np.ndarray:
        """Ridge solution towards ``w0`` (blocks, dim, outputs); ``w0`` itself when there were no rows."""
        return self.fit(w0, ridge)[0]

    def fit(self, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, float, float]:
        """The ridge solution towards ``w0`` and the relative errors (:meth:`residual`) of ``w0`` and of it.

        The solution's error needs no ``A·w`` product: ``(A + λI)·w = B + λ·w0`` gives
        ``wᵀA w = wᵀB + λ·wᵀ(w0 − w)``, so only ``w0``'s costs a ``dim² × outputs`` product."""
        inherited = self.residual(w0)
        if self.rows == 0:
            return w0, inherited, inherited
        out = np.empty_like(self.b)
        dim = self.sums.shape[1]
        quad, exact = 0.0, True
        for g in range(self.sums.shape[0]):  # BLAS on its own threads: measured faster than one at dim 2,304, 4,608
            lam = ridge * max(float(np.trace(self.sums[g])) / dim, 1e-12)
            out[g], ok = _solve(self.sums[g], self.b[g], w0[g], lam)
            exact &= ok
            quad += float(np.einsum("do,do->", out[g], self.b[g])) + lam * float(
                np.einsum("do,do->", out[g], w0[g] - out[g]))
        total = float(self.yy.sum())
        if not exact:
            return out, inherited, self.residual(out)
        fitted = 0.0 if total <= 0 else max(total - 2 * float(np.einsum("gdo,gdo->", out, self.b)) + quad, 0.0) / total
        return out, inherited, fitted

    def residual(self, w: np.ndarray) -> float:
        """Σ ‖y − x·w‖² over all rows and blocks, divided by Σ ‖y‖² (0 = exact)."""
        self.flush()
        total = float(self.yy.sum())
        if total <= 0:
            return 0.0
        cross = np.einsum("gdo,gdo->", w, self.b)
        return max(total - 2 * cross + self._quad(w), 0.0) / total

    def _quad(self, w: np.ndarray) -> float:
        """Σ wᵀA w; from an upper triangle U (A = U + Uᵀ − diag): 2·wᵀU w − wᵀdiag w."""
        if not self.upper:
            return float(np.einsum("gdo,gdo->", w, self.sums @ w))
        diag = np.einsum("gdd->gd", self.sums)
        return float(2 * np.einsum("gdo,gdo->", w, self.sums @ w) - np.einsum("gd,gdo,gdo->", diag, w, w))
